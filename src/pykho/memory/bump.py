"""A bump page allocator for encoders, tests, fuzzing and the benchmark.

The ABI encoders (radix tree, kho-v1 chunk list, vmalloc chunks, KHO blocks)
take a ``page()`` or ``alloc(size)`` callable to get memory for the
metadata they write.  :class:`Bump` hands out never-written (zero) pages
from ``base`` up; with an ``rng`` it leaves random gaps and can fail a
fraction of the requests (the fuzzer's allocation-failure paths).
"""

from __future__ import annotations

import random

__all__ = ["Bump"]

PAGE = 4096
#: the smallest kmalloc cache kho-v1 bitmaps of 6.16/6.17 come from
SMALL_ALIGN = 512


class Bump:
    """Zeroed pages from ``base`` up; small objects packed into pages.

    Without ``rng``: pages are consecutive, ``alloc(size)`` below a page
    aligns to 512 bytes (kmalloc-512) and packs.  With ``rng`` (fuzzing):
    ``base`` defaults to a random page below 128 MiB, 30 % of the pages are
    preceded by a gap of 1-7 pages, a ``fail`` fraction of the requests
    returns None, and small objects are packed unaligned inside fresh pages.
    The random draws are made in a fixed order, so a seed replays.
    """

    def __init__(self, base: int | None = None, rng: random.Random | None = None, fail: float = 0.0) -> None:
        self.rng = rng
        if base is None:
            if rng is None:
                raise ValueError("Bump needs a base address or an rng")
            base = rng.randrange(0x100, 0x8000) << 12
        self.next = base
        self.fail = fail
        self.pages: list[int] = []
        self._small = 0
        self._small_end = 0

    def page(self) -> int | None:
        rng = self.rng
        if rng is not None:
            if self.fail and rng.random() < self.fail:
                return None
            if rng.random() < 0.3:
                self.next += PAGE * rng.randrange(1, 8)
        p = self.next
        self.next += PAGE
        self.pages.append(p)
        return p

    def alloc(self, size: int) -> int | None:
        if self.rng is None:
            align = PAGE if size >= PAGE else SMALL_ALIGN
            p = (self.next + align - 1) & ~(align - 1)
            self.next = p + size
            return p
        if size >= PAGE:
            first = self.page()
            self.next += ((size - 1) // PAGE) * PAGE
            return first
        if self._small + size > self._small_end or not self._small_end:
            q = self.page()
            if q is None:
                return None
            self._small, self._small_end = q, q + PAGE
        p = self._small
        self._small += size
        return p

    def free(self, phys: int) -> None:
        """Freed memory is not reused."""
