"""pykho: userspace toolkit for Linux Kexec HandOver (KHO)."""

from ._version import __version__

__all__ = ["__version__"]
