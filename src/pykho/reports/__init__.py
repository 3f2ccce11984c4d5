"""Reports: what users read (inspect, validate, map)."""
