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

    def update(self, runs: list[tuple[int, int]]) -> None:
        """Add many intervals at once (sorted or not): one merge, not one
        list insertion per interval."""
        if not runs:
            return
        if len(runs) < 8:
            for s, e in runs:
                self.add(s, e)
            return
        merged = merge_runs(sorted(list(zip(self.starts, self.ends)) + [r for r in runs if r[1] > r[0]]))
        self.starts = [a for a, _ in merged]
        self.ends = [b for _, b in merged]

    def complement(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The parts of [lo, hi) not in the set."""
        out = []
        at = lo
        i = bisect.bisect_right(self.ends, lo)
        while i < len(self.starts) and self.starts[i] < hi:
            if self.starts[i] > at:
                out.append((at, self.starts[i]))
            at = max(at, self.ends[i])
            i += 1
        if at < hi:
            out.append((at, hi))
        return out


def merge_runs(runs) -> list[tuple[int, int]]:
    """Sorted (start, end) pairs with overlapping or touching ones joined."""
    out: list[tuple[int, int]] = []
    for s, e in runs:
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def block_runs(order: int, physs) -> list[tuple[int, int]]:
    """The blocks of one order (strictly ascending addresses, as a leaf's
    bits give them; a list or a numpy array) as coalesced (start, end) runs:
    a fully preserved leaf is one run, whatever its 32768 blocks."""
    size = PAGE_SIZE << order
    if hasattr(physs, "dtype"):              # a numpy array (numpy is optional)
        import numpy as np
        if len(physs) == 0:
            return []
        a = physs.astype(np.uint64, copy=False)
        first, last = int(a[0]), int(a[-1])
        if last - first == (len(a) - 1) * size:
            return [(first, last + size)]       # strictly ascending and spanning: contiguous
        brk = np.nonzero(a[1:] != a[:-1] + np.uint64(size))[0]
        starts = np.concatenate(([0], brk + 1))
        ends = np.concatenate((brk, [len(a) - 1]))
        return [(int(a[i]), int(a[j]) + size) for i, j in zip(starts.tolist(), ends.tolist())]
    out: list[tuple[int, int]] = []
    for p in sorted(physs):
        if out and p == out[-1][1]:
            out[-1] = (out[-1][0], p + size)
        else:
            out.append((p, p + size))
    return out


class PreservedBlocks:
    """The blocks a kernel reserved from the map and not yet restored, kept
    as runs of equal-order blocks per order: memory O(runs), not O(blocks)
    (a fully preserved 1 TiB is one run).  Behaves like a ``phys -> order``
    mapping for lookups; iterating yields every block (small maps only)."""

    def __init__(self) -> None:
        #: order -> sorted list of (start, end) runs of blocks of that order
        self._runs: dict[int, list[tuple[int, int]]] = {}
        self._starts: dict[int, list[int]] = {}
        self.removed: set[int] = set()
        self._count = 0

    def add_runs(self, order: int, runs: list[tuple[int, int]]) -> None:
        if not runs:
            return
        cur = self._runs.get(order, [])
        self._runs[order] = merge_runs(sorted(cur + runs)) if cur else merge_runs(runs)
        self._starts[order] = [a for a, _ in self._runs[order]]
        self._count = sum((e - s) // (PAGE_SIZE << o) for o, rs in self._runs.items() for s, e in rs) - \
            len(self.removed)

    def __setitem__(self, phys: int, order: int) -> None:
        self.removed.discard(phys)
        self.add_runs(order, [(phys, phys + (PAGE_SIZE << order))])

    def get(self, phys: int, default: int | None = None) -> int | None:
        if phys in self.removed:
            return default
        for order, starts in self._starts.items():
            i = bisect.bisect_right(starts, phys) - 1
            if i >= 0:
                s, e = self._runs[order][i]
                if phys < e and (phys - s) % (PAGE_SIZE << order) == 0:
                    return order
        return default

    def __getitem__(self, phys: int) -> int:
        order = self.get(phys)
        if order is None:
            raise KeyError(phys)
        return order

    def __contains__(self, phys: object) -> bool:
        return isinstance(phys, int) and self.get(phys) is not None

    def pop(self, phys: int, default: int | None = None) -> int | None:
        order = self.get(phys)
        if order is None:
            return default
        self.removed.add(phys)
        self._count -= 1
        return order

    def __len__(self) -> int:
        return self._count

    def items(self):
        for order, rs in sorted(self._runs.items()):
            size = PAGE_SIZE << order
            for s, e in rs:
                for p in range(s, e, size):
                    if p not in self.removed:
                        yield p, order

    def __iter__(self):
        return (p for p, _ in self.items())

    def block_at(self, addr: int) -> tuple[int, int] | None:
        """(phys, order) of the reserved block holding ``addr``."""
        for order, starts in self._starts.items():
            i = bisect.bisect_right(starts, addr) - 1
            if i >= 0:
                s, e = self._runs[order][i]
                if addr < e:
                    size = PAGE_SIZE << order
                    return s + (addr - s) // size * size, order
        return None

    def next_block(self, addr: int, end: int) -> int | None:
        """The first reserved block start in ``[addr, end)``, if any."""
        best = None
        for order, starts in self._starts.items():
            size = PAGE_SIZE << order
            i = max(bisect.bisect_right(starts, addr) - 1, 0)
            while i < len(starts):
                s, e = self._runs[order][i]
                if s >= end:
                    break
                p = max(s, s + (max(addr - s, 0) + size - 1) // size * size)
                while p < e and p in self.removed:
                    p += size
                if p < e and p < end:
                    best = p if best is None else min(best, p)
                    break
                i += 1
        return best

    def runs(self) -> list[tuple[int, int]]:
        """Every reserved byte range, all orders together, coalesced."""
        return merge_runs(sorted(r for rs in self._runs.values() for r in rs))


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


class MemblockPanic(Exception):
    """memblock called panic() (its region array could not grow)."""


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

    #: INIT_MEMBLOCK_MEMORY_REGIONS: the static region array, which cannot
    #: grow before ``memblock_allow_resize`` (x86: end of e820__memblock_setup)
    INIT_REGIONS = 128

    def __init__(self) -> None:
        self.memory: list[Region] = []
        self.reserved = IntervalSet()
        self.reserved_kern = IntervalSet()
        #: kernel reservations whose region has a node id: every one with
        #: NUMA=n (all nid 0); with NUMA=y only those made before NUMA init,
        #: which numa_clear_kernel_node_hotplug tags with their node
        #: (mm/numa_memblks.c:355-361); a later memblock_reserve_kern passes
        #: NUMA_NO_NODE (include/linux/memblock.h:138-141)
        self.reserved_kern_nid = IntervalSet()
        #: new kernel reservations still get a node id (False after NUMA init)
        self.kern_nid_known = True
        self.noinit = IntervalSet()
        self.scratch_only = False
        self.faults = FaultSite()
        self.can_resize = True
        #: a grown region array would have to come from where there is none
        self.grow_fails = False
        #: allocations stay below this (memblock.current_limit: mapped RAM)
        self.limit: int | None = None

    def _grow(self, need: int) -> bool:
        """``memblock_double_array`` when ``need`` regions do not fit: panics
        before ``memblock_allow_resize``; False when the array cannot grow."""
        if need > self.INIT_REGIONS:
            if not self.can_resize:
                raise MemblockPanic("memblock: cannot resize memory array")
            if self.grow_fails:
                return False
        return True

    def _merge(self) -> None:
        out: list[Region] = []
        for r in sorted(self.memory, key=lambda r: r.base):
            if out and out[-1].end == r.base and out[-1].flags == r.flags and out[-1].nid == r.nid:
                out[-1] = Region(out[-1].base, out[-1].size + r.size, r.flags, r.nid)
            else:
                out.append(r)
        self.memory = out

    def add(self, base, size, nid=0, flags=0) -> int:
        """``memblock_add_range``: the parts of [base, base+size) no region
        covers become new regions (flags 0), merged with equal neighbours.
        0, or -ENOMEM when the region array could not grow (nothing added)."""
        if not size:
            return 0
        end = base + size
        new, at = [], base
        for r in sorted(self.memory, key=lambda r: r.base):
            if r.end <= at:
                continue
            if r.base >= end:
                break
            if r.base > at:
                new.append(Region(at, r.base - at, flags, nid))
            at = max(at, r.end)
        if at < end:
            new.append(Region(at, end - at, flags, nid))
        if not new:
            return 0
        if not self.memory:
            self.memory = new[:1]
            new = new[1:]
        if not self._grow(len(self.memory) + len(new)):
            return -12
        self.memory.extend(new)
        self._merge()
        return 0

    def mark_kho_scratch(self, base, size) -> int:
        """``memblock_mark_kho_scratch``: isolate [base, base+size) and flag
        it (room for two more regions is needed first)."""
        if not size:
            return 0
        if not self._grow(len(self.memory) + 2):
            return -12
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
        self._merge()
        return 0

    def scratch_ranges(self) -> IntervalSet:
        return IntervalSet((r.base, r.end) for r in self.memory if r.flags & MEMBLOCK_KHO_SCRATCH)

    def reserve(self, base, size, kern=False, nid=None):
        """``memblock_reserve`` (``kern``: ``memblock_reserve_kern``); ``nid``:
        the node an allocation asked for, which its region keeps
        (mm/memblock.c:1561-1562; the fallback to any node passes none)."""
        self.reserved.add(base, base + size)
        if kern:
            self.reserved_kern.add(base, base + size)
            if self.kern_nid_known or nid is not None:
                self.reserved_kern_nid.add(base, base + size)

    def free(self, base, size):
        self.reserved.remove(base, base + size)
        self.reserved_kern.remove(base, base + size)
        self.reserved_kern_nid.remove(base, base + size)

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
            if self.limit is not None:
                hi = min(hi, self.limit)
            if hi <= lo:
                continue
            for a, b in reversed(_subtract([(lo, hi)], self.reserved)):
                cand = (b - size) & ~(align - 1)
                if cand >= a and cand > 0:
                    if size:
                        self.reserve(cand, size, kern, nid)
                    return cand
        return 0

    def kern_size(self, limit=None, ranges=None) -> int:
        """``memblock_reserved_kern_size``: bytes of kernel reservations below
        ``limit`` (inclusive), or, for one node, those with a node id inside
        ``ranges`` (that node's RAM; mm/memblock.c:1842-1844 matches the
        region's nid)."""
        total = 0
        for s, e in (self.reserved_kern if ranges is None else self.reserved_kern_nid):
            if limit is not None:
                e = min(e, limit + 1)
            if ranges is not None:
                total += sum(max(0, min(e, b) - max(s, a)) for a, b in ranges)
            elif e > s:
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
        self.preserved = PreservedBlocks()            # phys -> order, reserved from the map, not yet restored
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

    def reserve_preserved_runs(self, order: int, runs: list[tuple[int, int]]) -> None:
        """Many blocks of one order at once, as coalesced runs (the map walk
        runs before the page allocator has any free page)."""
        self.preserved.add_runs(order, runs)
        self.preserved_set.update(runs)
        if len(self.free_set):
            for s, e in runs:
                self.free_set.remove(s, e)

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
    mem: SparseMemory = None  # type: ignore[assignment]  # made in __post_init__

    def __post_init__(self):
        if self.mem is None:
            self.mem = SparseMemory([(s, e) for s, e, _ in self.ram], name="machine RAM")

    @property
    def nodes(self) -> list[int]:
        return sorted({n for _, _, n in self.ram})

    def total(self) -> int:
        return sum(e - s for s, e, _ in self.ram)
