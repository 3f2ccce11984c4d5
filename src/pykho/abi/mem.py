"""The physical memory the ABI codecs read through (and the encoders write into).

The codecs of :mod:`pykho.abi` never name a memory class: they take any
object with the methods of :class:`PhysMemory` (decoders) or
:class:`WritableMemory` (encoders).  :class:`pykho.memory.PhysMemory` and its
sources satisfy these protocols; so may a test's ten-line fake.

Two optional methods let a source skip the copy a ``read`` makes of a whole
page.  They are looked up with :func:`page_bytes_of` / :func:`page_buffer_of`
(``getattr``, not a class check), and a source that has neither, or has them
set to ``None``, is simply read with ``read``:

``page_bytes(pfn) -> bytes | bytearray | memoryview | None``
    The 4 KiB at ``pfn << 12``, exactly what ``read(pfn << 12, 4096)``
    returns, without a copy; ``None`` when the source has no such buffer at
    hand (the caller then reads).  The buffer may be the source's own
    storage: it is valid until the next write, and callers do not keep it
    across one.
``page_buffer(pfn) -> bytearray | None``
    The same page as a mutable buffer whose edits are writes to the memory
    (what ``write`` would do to that page); ``None`` when there is none.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Protocol

__all__ = ["PAGE_SHIFT", "PAGE_SIZE", "Buffer", "PageBufferFn", "PageBuffers", "PageBytes", "PageBytesFn",
           "PhysMemory", "WritableMemory", "page_buffer_of", "page_bytes_of", "read_u32", "read_u64", "write_u64"]

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

#: bytes the decoders accept: what ``read`` returns or a page buffer
Buffer = bytes | bytearray | memoryview

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class PhysMemory(Protocol):
    """Read-only physical memory, addressed by physical address.

    ``read`` returns exactly ``size`` bytes or raises
    :class:`~pykho.errors.MemoryFault` (naming ``structure``) when any of
    them is outside the source; ``contains`` says whether ``read`` would
    succeed; ``ranges`` lists what the source holds as sorted,
    non-overlapping ``(start, end)`` pairs.
    """

    def read(self, phys: int, size: int, structure: str = ...) -> bytes: ...

    def contains(self, phys: int, size: int = ...) -> bool: ...

    def ranges(self) -> list[tuple[int, int]]: ...


class WritableMemory(PhysMemory, Protocol):
    """Memory the encoders write a handover into (raises MemoryFault outside RAM)."""

    def write(self, phys: int, data: bytes) -> None: ...


class PageBytes(Protocol):
    """The optional read fast path (see the module's text)."""

    def page_bytes(self, pfn: int) -> Buffer | None: ...


class PageBuffers(Protocol):
    """The optional write fast path (see the module's text)."""

    def page_buffer(self, pfn: int) -> bytearray | None: ...


PageBytesFn = Callable[[int], bytes | bytearray | memoryview | None]
PageBufferFn = Callable[[int], bytearray | None]


def page_bytes_of(mem: object) -> PageBytesFn | None:
    """``mem.page_bytes`` when the source offers it, else None."""
    fn: PageBytesFn | None = getattr(mem, "page_bytes", None)
    return fn


def page_buffer_of(mem: object) -> PageBufferFn | None:
    """``mem.page_buffer`` when the source offers it, else None."""
    fn: PageBufferFn | None = getattr(mem, "page_buffer", None)
    return fn


def read_u64(mem: PhysMemory, phys: int, structure: str = "memory") -> int:
    """The little-endian u64 at ``phys``."""
    v: int = _U64.unpack(mem.read(phys, 8, structure))[0]
    return v


def read_u32(mem: PhysMemory, phys: int, structure: str = "memory") -> int:
    """The little-endian u32 at ``phys``."""
    v: int = _U32.unpack(mem.read(phys, 4, structure))[0]
    return v


def write_u64(mem: WritableMemory, phys: int, value: int) -> None:
    """Store ``value`` (mod 2**64) little-endian at ``phys``."""
    mem.write(phys, _U64.pack(value & 0xFFFFFFFFFFFFFFFF))
