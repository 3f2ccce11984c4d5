"""Physical memory sources: one read-by-physical-address interface.

Every decoder reads through :class:`PhysMemory`.  Sources are read-only
(files are opened read-only and mapped with ``ACCESS_READ``); only
:class:`SparseMemory`, the memory encoders and the model write into, has a
``write`` method.  A read of bytes the source does not hold raises
:class:`~pykho.errors.MemoryFault` naming the address.
"""

from __future__ import annotations

from .base import CowMemory, PhysMemory, SparseMemory, MemoryFault, ReadOnlyView
from .bump import Bump
from .iomem import parse_iomem
from .overlay import LayeredMemory, NotCaptured, StrictCowMemory
from .sources import RawImage, SparseDir, ElfDump, open_source

__all__ = ["Bump", "parse_iomem", "LayeredMemory", "NotCaptured", "StrictCowMemory", "CowMemory", "PhysMemory", "SparseMemory", "MemoryFault", "ReadOnlyView", "RawImage",
           "SparseDir", "ElfDump", "open_source"]
