"""Memory assembled for a prediction when the capture lacks pieces.

:class:`LayeredMemory` serves one range from a second source and everything
else from the base: the verdict uses it to put the scratch array where the
handover says it is when the dump does not hold it (the debugfs copy does).
"""

from __future__ import annotations

from ..abi import mem as _abi_mem
from ..errors import MemoryFault
from .base import PAGE_SHIFT, PAGE_SIZE, CowMemory, PhysMemory

__all__ = ["LayeredMemory", "NotCaptured", "StrictCowMemory"]


class LayeredMemory(PhysMemory):
    """``base`` memory with ``[start, start + size)`` served from ``top``."""

    def __init__(self, base: _abi_mem.PhysMemory, top: _abi_mem.PhysMemory, start: int, size: int) -> None:
        self.base, self.top, self.s, self.e = base, top, start, start + size
        self.name = getattr(base, "name", "memory")

    def ranges(self) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for a, b in sorted(list(self.base.ranges()) + [(self.s, self.e)]):
            if out and a <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], b))
            else:
                out.append((a, b))
        return out

    def contains(self, phys: int, size: int = 1) -> bool:
        if self.s <= phys and phys + size <= self.e:
            return True
        return bool(self.base.contains(phys, size))

    def read(self, phys: int, size: int, structure: str = "memory") -> bytes:
        if self.s <= phys and phys + size <= self.e:
            return bytes(self.top.read(phys, size, structure))
        if phys + size <= self.s or phys >= self.e:
            return bytes(self.base.read(phys, size, structure))
        # a read that covers part of the layer (a whole page around it): the
        # layer's bytes over the base's, the base read where it holds memory
        try:
            out = bytearray(self.base.read(phys, size, structure))
        except MemoryFault:
            out = bytearray(size)
        a, b = max(phys, self.s), min(phys + size, self.e)
        out[a - phys:b - phys] = self.top.read(a, b - a, structure)
        return bytes(out)


class NotCaptured(Exception):
    """A prediction needed memory the capture does not hold."""

    def __init__(self, phys: int) -> None:
        self.phys = phys
        super().__init__(f"memory at 0x{phys:x} is not in what was given")


class StrictCowMemory(CowMemory):
    """Copy-on-write over a base that holds only a few known pages (a root
    FDT file and a scratch array placed where the handover says): reading a
    page that was neither given nor written raises :class:`NotCaptured`, so a
    model run on it stops where the evidence ends instead of guessing."""

    _writing = False
    # written pages are what reads return, as in CowMemory: the page fast paths stay
    page_bytes = CowMemory.page_bytes
    page_buffer = CowMemory.page_buffer

    def _page(self, pfn: int) -> bytes | bytearray:
        pg = self.pages.get(pfn)
        if pg is not None:
            return pg
        phys = pfn << PAGE_SHIFT
        if self.base.contains(phys, PAGE_SIZE):
            return bytes(self.base.read(phys, PAGE_SIZE))
        if self._writing:
            return bytes(PAGE_SIZE)
        raise NotCaptured(phys)

    def write(self, phys: int, data: bytes) -> None:
        self._writing = True
        try:
            super().write(phys, data)
        finally:
            self._writing = False
