"""The simulated machine: RAM, memblock, page frames and their allocator.

Memory cost is proportional to what is written and preserved, never to RAM
size: contents live in :class:`~pykho.memory.SparseMemory`, page states in
interval sets.  The page allocator *records* what the real kernel would
report as bad page state or list corruption instead of crashing:
a range freed twice, a preserved page handed out or freed before restore.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from ..memory import SparseMemory

PAGE_SIZE = 4096
PAGE_SHIFT = 12
MEMBLOCK_NONE = 0
MEMBLOCK_KHO_SCRATCH = 0x40
MEMBLOCK_RSRV_KERN = 0x20
MEMBLOCK_RSRV_NOINIT = 0x08
ARCH_LOW_ADDRESS_LIMIT = 0xFFFFFFFF
PAGEBLOCK = 2 << 20


class FaultSite:
    """Fault injection at one allocation site: of the calls made from now on,
    skip ``after`` and fail the next ``count``."""

    def __init__(self, count: int = 0, after: int = 0):
        self.count, self.after, self.calls, self.injected = count, after, 0, 0

    def arm(self, count: int, after: int = 0):
        self.count, self.after, self.calls = count, after, 0

    def fail(self) -> bool:
        i = self.calls
        self.calls += 1
        if self.after <= i < self.after + self.count:
            self.injected += 1
            return True
        return False


class IntervalSet:
    """Disjoint half-open intervals, merged on insert."""

    def __init__(self, items=()):
        self.starts: list[int] = []
        self.ends: list[int] = []
        for s, e in items:
            self.add(s, e)

    def __iter__(self):
        return iter(zip(self.starts, self.ends))

    def __len__(self):
        return len(self.starts)

    def total(self) -> int:
        return sum(e - s for s, e in self)

    def overlaps(self, s: int, e: int) -> list[tuple[int, int]]:
        """The parts of [s, e) already in the set."""
        out = []
        i = bisect.bisect_right(self.ends, s)
        while i < len(self.starts) and self.starts[i] < e:
            out.append((max(s, self.starts[i]), min(e, self.ends[i])))
            i += 1
        return out

    def contains(self, s: int, e: int) -> bool:
        i = bisect.bisect_right(self.starts, s) - 1
        return i >= 0 and self.ends[i] >= e

    def add(self, s: int, e: int):
        if e <= s:
            return
        i = bisect.bisect_left(self.ends, s)
        j = i
        while j < len(self.starts) and self.starts[j] <= e:
            s = min(s, self.starts[j])
            e = max(e, self.ends[j])
            j += 1
        self.starts[i:j] = [s]
        self.ends[i:j] = [e]

    def remove(self, s: int, e: int):
        if e <= s:
            return
        i = bisect.bisect_right(self.ends, s)
        new_s, new_e = [], []
        j = i
        while j < len(self.starts) and self.starts[j] < e:
            if self.starts[j] < s:
                new_s.append(self.starts[j])
                new_e.append(s)
            if self.ends[j] > e:
                new_s.append(e)
                new_e.append(self.ends[j])
            j += 1
        self.starts[i:j] = new_s
        self.ends[i:j] = new_e

    def copy(self) -> IntervalSet:
        c = IntervalSet()
        c.starts, c.ends = list(self.starts), list(self.ends)
        return c


@dataclass
class Violation:
    kind: str
    start: int
    end: int
    detail: str
    kernel: str = ""
    step: str = ""

    def as_dict(self) -> dict:
        return {"kind": self.kind, "start": self.start, "end": self.end, "detail": self.detail,
                "kernel": self.kernel, "step": self.step}

    def __str__(self):
        return f"{self.kind}: [0x{self.start:x}-0x{self.end:x}) {self.detail}"


@dataclass
class Region:
    base: int
    size: int
    flags: int = 0
    nid: int = 0

    @property
    def end(self):
        return self.base + self.size


class Memblock:
    """``memblock.memory`` and ``memblock.reserved``, with scratch-only mode.

    Allocation is top-down (the kernel's default) over memory regions minus
    reserved ones; in scratch-only mode only ``MEMBLOCK_KHO_SCRATCH`` memory
    is eligible.
    """

    def __init__(self):
        self.memory: list[Region] = []
        self.reserved = IntervalSet()
        self.reserved_kern = IntervalSet()
        self.noinit = IntervalSet()
        self.scratch_only = False
        self.faults = FaultSite()

    def add(self, base, size, nid=0, flags=0):
        for r in self.memory:
            if r.base == base and r.size == size:
                return
        self.memory.append(Region(base, size, flags, nid))
        self.memory.sort(key=lambda r: r.base)

    def mark_kho_scratch(self, base, size) -> int:
        end = base + size
        out = []
        for r in self.memory:
            if r.end <= base or r.base >= end:
                out.append(r)
                continue
            # split around [base, end)
            if r.base < base:
                out.append(Region(r.base, base - r.base, r.flags, r.nid))
            s, e = max(r.base, base), min(r.end, end)
            out.append(Region(s, e - s, r.flags | MEMBLOCK_KHO_SCRATCH, r.nid))
            if r.end > end:
                out.append(Region(end, r.end - end, r.flags, r.nid))
        self.memory = sorted(out, key=lambda r: r.base)
        return 0

    def scratch_ranges(self) -> IntervalSet:
        return IntervalSet((r.base, r.end) for r in self.memory if r.flags & MEMBLOCK_KHO_SCRATCH)

    def reserve(self, base, size, kern=False):
        self.reserved.add(base, base + size)
        if kern:
            self.reserved_kern.add(base, base + size)

    def free(self, base, size):
        self.reserved.remove(base, base + size)
        self.reserved_kern.remove(base, base + size)

    def alloc(self, size, align=PAGE_SIZE, start=0, end=None, nid=None, kern=True) -> int:
        """Top-down allocation; 0 on failure (as ``memblock_phys_alloc``).

        A zero-sized request returns the aligned top of the highest free gap
        without reserving anything (what 7.2's global scratch of size 0 gets).
        """
        if self.faults.fail():
            return 0
        for r in sorted(self.memory, key=lambda r: r.base, reverse=True):
            if self.scratch_only and not r.flags & MEMBLOCK_KHO_SCRATCH:
                continue
            if nid is not None and r.nid != nid:
                continue
            lo, hi = max(r.base, start), min(r.end, end + 1 if end is not None else r.end)
            if hi <= lo:
                continue
            for a, b in reversed(_subtract([(lo, hi)], self.reserved)):
                cand = (b - size) & ~(align - 1)
                if cand >= a and cand > 0:
                    if size:
                        self.reserve(cand, size, kern)
                    return cand
        return 0

    def kern_size(self, limit=None, nid=None, nodes=None) -> int:
        total = 0
        for s, e in self.reserved_kern:
            if limit is not None:
                e = min(e, limit + 1)
            if e > s:
                total += e - s
        return total


class PageAllocator:
    """Buddy-allocator stand-in over page ranges, tracking KHO page state.

    ``free`` records a double free; ``alloc`` never returns preserved pages
    (it records a violation if the free set contains one); ``preserved``
    holds blocks the incoming kernel reserved from the map, until restored.
    """

    def __init__(self, kernel_name: str, violations: list):
        self.free_set = IntervalSet()
        self.preserved: dict[int, int] = {}          # phys -> order, reserved from the map, not yet restored
        self.preserved_set = IntervalSet()
        self.restored: set[int] = set()
        self.restored_set = IntervalSet()
        self.violations = violations
        self.kernel = kernel_name
        self.step = ""
        self.faults = FaultSite()

    def _v(self, kind, s, e, detail):
        self.violations.append(Violation(kind, s, e, detail, self.kernel, self.step))

    def free(self, s: int, e: int, why: str):
        dup = self.free_set.overlaps(s, e)
        for a, b in dup:
            self._v("double-free", a, b, f"{why}: pages already free in the buddy allocator")
        for a, b in self.preserved_set.overlaps(s, e):
            self._v("preserved-freed-before-restore", a, b, f"{why}: preserved pages freed before restore")
        self.free_set.add(s, e)

    def alloc(self, size: int, high_first: bool = False, within: IntervalSet | None = None,
              avoid: IntervalSet | None = None, align: int = PAGE_SIZE) -> int:
        if self.faults.fail():
            return 0
        items = list(self.free_set)
        if high_first:
            items.reverse()
        for s, e in items:
            cands = [(s, e)]
            if within is not None:
                cands = within.overlaps(s, e)
            for a, b in (reversed(cands) if high_first else cands):
                segs = [(a, b)]
                if avoid is not None:
                    segs = _subtract([(a, b)], avoid)
                for x, y in (reversed(segs) if high_first else segs):
                    if high_first:
                        p = (y - size) & ~(align - 1)
                        ok = p >= x
                    else:
                        p = (x + align - 1) & ~(align - 1)
                        ok = p + size <= y
                    if ok:
                        for pa, pb in self.preserved_set.overlaps(p, p + size):
                            self._v("preserved-handed-out", pa, pb, "allocator handed out preserved pages")
                        self.free_set.remove(p, p + size)
                        return p
        return 0

    def reserve_preserved(self, phys: int, order: int):
        self.preserved[phys] = order
        self.preserved_set.add(phys, phys + (PAGE_SIZE << order))
        self.free_set.remove(phys, phys + (PAGE_SIZE << order))

    def restore(self, phys: int) -> int | None:
        order = self.preserved.pop(phys, None)
        if order is None:
            return None
        self.preserved_set.remove(phys, phys + (PAGE_SIZE << order))
        self.restored.add(phys)
        self.restored_set.add(phys, phys + (PAGE_SIZE << order))
        return order

    def unpreserved_parts(self, s: int, e: int) -> list[tuple[int, int]]:
        """The parts of [s, e) that the map did not reserve (neither still
        reserved nor restored): memory this kernel may already have reused."""
        return _subtract(_subtract([(s, e)], self.preserved_set), self.restored_set)


def _subtract(ranges, iv: IntervalSet):
    out = []
    for s, e in ranges:
        cur = s
        for a, b in iv.overlaps(s, e):
            if a > cur:
                out.append((cur, a))
            cur = max(cur, b)
        if cur < e:
            out.append((cur, e))
    return out


@dataclass
class Machine:
    """Physical RAM (ranges with NUMA nodes) and its contents."""

    ram: list[tuple[int, int, int]] = field(default_factory=lambda: [(0x100000, 1 << 30, 0)])
    mem: SparseMemory = None

    def __post_init__(self):
        if self.mem is None:
            self.mem = SparseMemory([(s, e) for s, e, _ in self.ram], name="machine RAM")

    @property
    def nodes(self) -> list[int]:
        return sorted({n for _, _, n in self.ram})

    def total(self) -> int:
        return sum(e - s for s, e, _ in self.ram)
