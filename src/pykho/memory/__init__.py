"""Physical memory sources: one read-by-physical-address interface.

Every decoder reads through :class:`PhysMemory`.  Sources are read-only
(files are opened read-only and read by offset); only
:class:`SparseMemory`, the memory encoders and the model write into, has a
``write`` method.  A read of bytes the source does not hold raises
:class:`~pykho.errors.MemoryFault` naming the address.
"""

from __future__ import annotations

from ..errors import MemoryFault
from .base import CowMemory, PhysMemory, ReadOnlyView, SparseMemory
from .bump import Bump
from .iomem import parse_iomem
from .overlay import LayeredMemory, NotCaptured, StrictCowMemory
from .sources import ElfDump, RawImage, SparseDir, open_source

__all__ = ["Bump", "CowMemory", "ElfDump", "LayeredMemory", "MemoryFault", "NotCaptured", "PhysMemory", "RawImage",
           "ReadOnlyView", "SparseDir", "SparseMemory", "StrictCowMemory", "open_source", "parse_iomem"]
