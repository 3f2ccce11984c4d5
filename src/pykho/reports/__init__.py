"""Reports: what users read (inspect, validate, map).

Shared by the CLI and the ``pykho`` facade: :func:`doubted`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["doubted"]


def doubted(ho: Any, rep: dict[str, Any]) -> dict[str, Any]:
    """A validate report on memory at a doubtful base (``ho.base_doubt``)
    cannot tell the verdict: ``verdict.populate`` becomes ``unknown`` and the
    model's prediction at that base is kept under ``verdict.at_this_base``."""
    v = rep.get("verdict")
    why = getattr(ho, "base_doubt", None)
    if why and v is not None and v.get("populate") != "unknown":
        v["at_this_base"] = {"populate": v["populate"], "outcome": v.get("outcome", "")}
        v["populate"] = "unknown"
        v["incomplete"] = True
        v["outcome"] = (f"cannot tell: {why} (at this base the model predicts: "
                        f"{v['at_this_base']['outcome'] or v['at_this_base']['populate']})")
    return rep
