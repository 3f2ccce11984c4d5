"""pykho: userspace toolkit for Linux Kexec HandOver (KHO)."""

__version__ = "0.1.0"
