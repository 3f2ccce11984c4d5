"""The memory interface and the sparse in-memory implementation."""

from __future__ import annotations

import bisect
import struct
from typing import TYPE_CHECKING

from ..errors import MemoryFault

if TYPE_CHECKING:
    from ..abi import mem as _abi_mem

__all__ = ["PAGE_SHIFT", "PAGE_SIZE", "CowMemory", "PhysMemory", "ReadOnlyView", "SparseMemory"]

PAGE_SIZE = 4096
PAGE_SHIFT = 12
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class PhysMemory:
    """Read-only physical memory: the base of every source.

    Subclasses implement :meth:`ranges` (sorted, non-overlapping ``(start,
    end)`` pairs of what they hold) and :meth:`_read` for a span known to be
    inside one range.  Instances satisfy :class:`pykho.abi.mem.PhysMemory`,
    the protocol the decoders read through.
    """

    name = "memory"
    _starts_cache: list[int] | None = None

    def ranges(self) -> list[tuple[int, int]]:
        raise NotImplementedError

    def _read(self, phys: int, size: int) -> bytes:
        raise NotImplementedError

    def _range_index(self, phys: int) -> int:
        rs = self._sorted_starts()
        i = bisect.bisect_right(rs, phys) - 1
        return i

    def _sorted_starts(self) -> list[int]:
        cache = self._starts_cache
        if cache is None:
            cache = [s for s, _ in self.ranges()]
            self._starts_cache = cache
        return cache

    def contains(self, phys: int, size: int = 1) -> bool:
        if phys < 0 or size < 0:
            return False
        rs = self.ranges()
        i = self._range_index(phys)
        while 0 <= i < len(rs):
            s, e = rs[i]
            if not (s <= phys < e):
                return False
            if phys + size <= e:
                return True
            size -= e - phys
            phys = e
            i += 1
        return size <= 0

    def read(self, phys: int, size: int, structure: str = "memory") -> bytes:
        if size < 0 or phys < 0 or phys + size > 1 << 64:
            raise MemoryFault(phys, size, self.name, structure)
        if size == 0:
            return b""
        rs = self.ranges()
        i = self._range_index(phys)
        out: list[bytes] = []
        want, at = size, phys
        while want:
            if not (0 <= i < len(rs)) or not (rs[i][0] <= at < rs[i][1]):
                raise MemoryFault(phys, size, self.name, structure)
            n = min(want, rs[i][1] - at)
            out.append(self._read(at, n))
            at += n
            want -= n
            i += 1
        return out[0] if len(out) == 1 else b"".join(out)

    def read_u64(self, phys: int, structure: str = "memory") -> int:
        v: int = _U64.unpack(self.read(phys, 8, structure))[0]
        return v

    def read_u32(self, phys: int, structure: str = "memory") -> int:
        v: int = _U32.unpack(self.read(phys, 4, structure))[0]
        return v

    def describe(self) -> str:
        return self.name


#: methods whose override changes what a page of a SparseMemory reads as, or
#: what a write does to it (see SparseMemory.__init_subclass__)
_READ_METHODS = ("read", "_read", "_page", "ranges", "contains")
_WRITE_METHODS = (*_READ_METHODS, "write")


class SparseMemory(PhysMemory):
    """RAM of a (simulated) machine; only pages ever written cost memory.

    ``ram`` lists the physical ranges that exist.  Pages of RAM never written
    read as ``fill`` bytes (zero by default).  This is the source encoders
    write handovers into and the model's physical memory.

    It offers the decoders' page fast paths (:mod:`pykho.abi.mem`):
    :meth:`page_bytes` and :meth:`page_buffer` hand out the stored page of a
    pfn ever written.  A subclass that overrides how pages read or are
    written loses them (they become None) unless it defines them again.
    """

    def __init__(self, ram: list[tuple[int, int]] | None = None, fill: int = 0, name: str = "sparse memory"):
        self._ram = sorted(ram) if ram else [(0, 1 << 52)]
        self.pages: dict[int, bytearray] = {}
        self.fill = fill
        self.name = name

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        own = vars(cls)
        if "page_bytes" not in own and any(m in own for m in _READ_METHODS):
            setattr(cls, "page_bytes", None)   # noqa: B010 (mypy: a method cannot be assigned)
        if "page_buffer" not in own and any(m in own for m in _WRITE_METHODS):
            setattr(cls, "page_buffer", None)  # noqa: B010

    def ranges(self) -> list[tuple[int, int]]:
        return self._ram

    def page_bytes(self, pfn: int) -> bytes | bytearray | memoryview | None:
        """The stored page ``pfn`` (no copy), None when never written."""
        return self.pages.get(pfn)

    def page_buffer(self, pfn: int) -> bytearray | None:
        """The stored page ``pfn``, edits to which are writes; None when never written."""
        return self.pages.get(pfn)

    def _page(self, pfn: int) -> bytes | bytearray:
        pg = self.pages.get(pfn)
        if pg is None:
            return bytes([self.fill]) * PAGE_SIZE
        return pg

    def _read(self, phys: int, size: int) -> bytes:
        first, last = phys >> PAGE_SHIFT, (phys + size - 1) >> PAGE_SHIFT
        if first == last:
            off = phys & (PAGE_SIZE - 1)
            pg: bytes | bytearray | None = self.pages.get(first)
            if pg is None:                   # never written: fill, or (CowMemory) the base's bytes
                pg = self._page(first)
            return bytes(pg[off:off + size])
        parts: list[bytes] = []
        at, want = phys, size
        while want:
            off = at & (PAGE_SIZE - 1)
            n = min(want, PAGE_SIZE - off)
            parts.append(bytes(self._page(at >> PAGE_SHIFT)[off:off + n]))
            at += n
            want -= n
        return b"".join(parts)

    def page_view(self, pfn: int) -> bytearray | None:
        """The stored page (bytearray) or None when never written (as :meth:`page_buffer`)."""
        return self.pages.get(pfn)

    def write(self, phys: int, data: bytes) -> None:
        if not self.contains(phys, len(data)):
            raise MemoryFault(phys, len(data), self.name, "write")
        at, pos = phys, 0
        while pos < len(data):
            off = at & (PAGE_SIZE - 1)
            n = min(len(data) - pos, PAGE_SIZE - off)
            pfn = at >> PAGE_SHIFT
            pg = self.pages.get(pfn)
            if pg is None:
                pg = self.pages[pfn] = bytearray([self.fill]) * PAGE_SIZE
            pg[off:off + n] = data[pos:pos + n]
            at += n
            pos += n

    def write_u64(self, phys: int, value: int) -> None:
        self.write(phys, _U64.pack(value & 0xFFFFFFFFFFFFFFFF))

    def zero(self, phys: int, size: int) -> None:
        """Forget pages fully covered (read back as ``fill``), clear the rest."""
        end = phys + size
        at = phys
        while at < end:
            off = at & (PAGE_SIZE - 1)
            n = min(end - at, PAGE_SIZE - off)
            pfn = at >> PAGE_SHIFT
            if n == PAGE_SIZE:
                self.pages.pop(pfn, None)
            elif pfn in self.pages:
                self.pages[pfn][off:off + n] = bytes([self.fill]) * n
            at += n

    def scramble(self, phys: int, size: int, pattern: bytes = b"\xa5") -> None:
        """Overwrite pages that exist with garbage (what the next kernel sees
        in memory the old kernel did not preserve).  Never-written pages stay
        unwritten: they cost nothing and read as ``fill``."""
        end = phys + size
        for pfn in [p for p in self.pages if phys >> PAGE_SHIFT <= p < (end + PAGE_SIZE - 1) >> PAGE_SHIFT]:
            self.pages[pfn][:] = (pattern * PAGE_SIZE)[:PAGE_SIZE]

    def snapshot(self) -> SparseMemory:
        m = SparseMemory(self._ram, self.fill, self.name)
        m.pages = {k: bytearray(v) for k, v in self.pages.items()}
        return m

    def written_ranges(self) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for pfn in sorted(self.pages):
            s = pfn << PAGE_SHIFT
            if out and out[-1][1] == s:
                out[-1] = (out[-1][0], s + PAGE_SIZE)
            else:
                out.append((s, s + PAGE_SIZE))
        return out


class ReadOnlyView(PhysMemory):
    """A read-only window on another source (what decoders get)."""

    def __init__(self, inner: PhysMemory) -> None:
        self.inner = inner
        self.name = inner.name

    def ranges(self) -> list[tuple[int, int]]:
        return self.inner.ranges()

    def _read(self, phys: int, size: int) -> bytes:
        return self.inner._read(phys, size)


class CowMemory(SparseMemory):
    """Copy-on-write RAM over a read-only source: the model boots a kernel on
    a captured dump without ever writing to it.  Pages never written read
    from ``base`` where it holds them, as ``fill`` elsewhere in ``ram``;
    ``unknown_reads`` counts reads that fell outside what ``base`` holds.
    """

    # pages written (copied from ``base`` first) are what reads return: the
    # page fast paths stay
    page_buffer = SparseMemory.page_buffer
    #: the RAM range :meth:`page_bytes` found the last page in
    _page_range: tuple[int, int] | None = None

    def page_bytes(self, pfn: int) -> bytes | bytearray | memoryview | None:
        """The stored page ``pfn`` if written, else the base's own page
        when the base hands it out without a copy (read-only); None otherwise."""
        pg = self.pages.get(pfn)
        if pg is not None:
            return pg
        fast = getattr(self.base, "page_bytes", None)
        if fast is None:
            return None
        phys = pfn << PAGE_SHIFT
        r = self._page_range
        if r is None or not (r[0] <= phys and phys + PAGE_SIZE <= r[1]):
            if not self.contains(phys, PAGE_SIZE):
                return None
            r = self.ranges()[self._range_index(phys)]
            if phys + PAGE_SIZE <= r[1]:
                self._page_range = r            # the RAM range the last page came from (they are fixed)
        got: bytes | bytearray | memoryview | None = fast(pfn)
        return got

    def __init__(self, base: PhysMemory, ram: list[tuple[int, int]], name: str | None = None) -> None:
        super().__init__(ram, 0, name or f"{base.name} (copy-on-write)")
        self.base = base
        self.unknown_reads = 0

    def _page(self, pfn: int) -> bytes | bytearray:
        pg = self.pages.get(pfn)
        if pg is not None:
            return pg
        phys = pfn << PAGE_SHIFT
        if self.base.contains(phys, PAGE_SIZE):
            return self.base.read(phys, PAGE_SIZE)
        self.unknown_reads += 1
        out = bytearray(PAGE_SIZE)
        for s, e in self.base.ranges():
            a, b = max(s, phys), min(e, phys + PAGE_SIZE)
            if a < b:
                out[a - phys:b - phys] = self.base.read(a, b - a)
        return bytes(out)

    def write(self, phys: int, data: bytes) -> None:
        first, last = phys >> PAGE_SHIFT, (phys + max(len(data), 1) - 1) >> PAGE_SHIFT
        for pfn in range(first, last + 1):
            if pfn not in self.pages and self.contains(pfn << PAGE_SHIFT, PAGE_SIZE):
                self.pages[pfn] = bytearray(self._page(pfn))
        super().write(phys, data)

    def zero(self, phys: int, size: int) -> None:
        """Really zero (forgetting a page would expose the base's bytes)."""
        end = phys + size
        at = phys
        while at < end:
            off = at & (PAGE_SIZE - 1)
            n = min(end - at, PAGE_SIZE - off)
            pfn = at >> PAGE_SHIFT
            if n == PAGE_SIZE:
                self.pages[pfn] = bytearray(PAGE_SIZE)
            else:
                self.write(at, bytes(n))
            at += n

    def scramble(self, phys: int, size: int, pattern: bytes = b"\xa5") -> None:
        end = phys + size
        for pfn in range(phys >> PAGE_SHIFT, (end + PAGE_SIZE - 1) >> PAGE_SHIFT):
            if pfn in self.pages or self.base.contains(pfn << PAGE_SHIFT, 1):
                self.pages[pfn] = bytearray((pattern * PAGE_SIZE)[:PAGE_SIZE])


if TYPE_CHECKING:
    # every source is something the decoders (and SparseMemory the encoders) accept
    _reads: type[_abi_mem.PhysMemory] = PhysMemory
    _writes: type[_abi_mem.WritableMemory] = SparseMemory
    _fast: type[_abi_mem.PageBytes] = SparseMemory
    _fast_w: type[_abi_mem.PageBuffers] = SparseMemory
