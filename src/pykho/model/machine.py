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
from typing import Any

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


_BIG = 4096
#: values numpy int64 arrays can hold with room for comparisons (set bounds above it stay in lists)
_I64 = (1 << 63) - 1


_trim: Any = None


def release_freed_heap() -> None:
    """Give the C library's freed heap back to the system (glibc's
    ``malloc_trim``; nothing where there is none).  Arrays of a megabyte or
    so come from the heap, and freeing them (a walk's per-leaf runs, joined
    once the walk ends) leaves the memory in the process, under the big sets
    built next: at host scale a few hundred MiB of RSS."""
    global _trim
    if _trim is None:
        try:
            import ctypes
            _trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _trim = False
    if _trim:
        _trim(0)


def span_total(starts: Any, ends: Any) -> int:
    """Bytes in disjoint runs (int64 arrays): two sums, no array of
    lengths; each may wrap past 2^63, their difference (the total, below
    2^63) comes out right modulo 2^64."""
    import numpy as np
    with np.errstate(over="ignore"):
        return int(ends.sum(dtype=np.uint64) - starts.sum(dtype=np.uint64))


def _clamp(x: int) -> int:
    return x if -_I64 <= x <= _I64 else (_I64 if x > 0 else -_I64)


def merge_arrays(s: Any, e: Any, presorted: bool = False) -> tuple[Any, Any]:
    """Sorted, disjoint, non-touching (start, end) arrays from any runs
    (unsorted, overlapping, touching, empty ones dropped): ``merge_runs``
    vectorised.  ``presorted``: sorted by start, non-empty, and the caller's
    own (``e`` is overwritten; returned as they are when nothing joins).
    Temporaries are masks of a byte a run besides one array at a time."""
    import numpy as np
    s = np.asarray(s, dtype=np.int64)
    e = np.asarray(e, dtype=np.int64)
    own = presorted
    if not presorted:
        keep = e > s
        if not keep.all():
            s, e, own = s[keep], e[keep], True
        del keep
    n = len(s)
    if n == 0:
        return s, e
    if not presorted and n > 1 and not bool((s[1:] >= s[:-1]).all()):
        order = np.argsort(s, kind="stable")
        s = s[order]
        e = e[order]
        own = True
        del order
    cm = np.maximum.accumulate(e, out=e if own else None)
    del e
    join = s[1:] <= cm[:-1]
    if not join.any():
        return (s if own else s.copy()), cm          # nothing to join (cm == e here)
    keep = np.empty(n, dtype=bool)
    keep[0] = True
    np.logical_not(join, out=keep[1:])
    del join
    if not own:
        s = s[keep]
        keep[:-1] = keep[1:]
        keep[-1] = True                              # the last run of each group
        return s, cm[keep]
    s = _compact(s, keep)
    keep[:-1] = keep[1:]
    keep[-1] = True
    return s, _compact(cm, keep)


def _compact(a: Any, keep: Any, step: int = 1 << 20) -> Any:
    """``a[keep]`` written over the front of ``a`` itself, a chunk at a time
    (no second array the size of ``a``); a view of that front."""
    w = 0
    for c in range(0, len(a), step):
        got = a[c:c + step][keep[c:c + step]]
        a[w:w + len(got)] = got
        w += len(got)
    return a[:w]


def _unique(a: Any) -> Any:
    """Sorted distinct values of an int64 array (``np.unique`` without the
    import of ``numpy.ma`` it costs on first use)."""
    import numpy as np
    if len(a) < 2:
        return a
    a = np.sort(a)
    return a[np.concatenate(([True], a[1:] != a[:-1]))]


def union_sorted(a_s: Any, a_e: Any, b_s: Any, b_e: Any, own: str = "") -> tuple[Any, Any]:
    """The union of two sets of sorted, disjoint, non-touching runs (int64
    arrays, left as they are unless ``own`` names one, "a" or "b", as the
    caller's to reuse): the smaller inserted into the larger, no sort.  A
    few runs go into an owned larger set's arrays in place when they have
    room at their end."""
    import numpy as np
    if len(a_s) < len(b_s):
        a_s, a_e, b_s, b_e = b_s, b_e, a_s, a_e
        own = {"a": "b", "b": "a"}.get(own, "")
    if not len(b_s):
        return (a_s, a_e) if own == "a" else (a_s.copy(), a_e.copy())
    if own == "a" and len(b_s) <= 256:
        at = a_s.searchsorted(b_s)
        got_s = _inserted(a_s, at, b_s)
        got_e = _inserted(a_e, at, b_e) if got_s is not None else None
        if got_s is not None and got_e is not None:
            return merge_arrays(got_s, got_e, presorted=True)
    # where b's runs go in the result: after the a runs that start before
    # them, and after the b runs before them
    at = a_s.searchsorted(b_s)
    at += np.arange(len(b_s), dtype=at.dtype)
    n = len(a_s) + len(b_s)
    from_a = np.ones(n, dtype=bool)
    from_a[at] = False
    # room at the end: a later split of one interval moves the tail in place
    spare = max(1024, n >> 6)
    s = np.empty(n + spare, dtype=np.int64)[:n]
    e = np.empty(n + spare, dtype=np.int64)[:n]
    s[at] = b_s
    e[at] = b_e
    s[from_a] = a_s
    e[from_a] = a_e
    del at, from_a
    return merge_arrays(s, e, presorted=True)


def _room(a: Any, m: int) -> tuple[Any, int] | None:
    """(buffer, offset) when the 1-D int64 array ``a`` is a writable,
    contiguous view at ``offset`` into ``buffer`` with room for ``m``
    values from there; else None."""
    import numpy as np
    buf = a.base if isinstance(a.base, np.ndarray) else None
    if buf is None or buf.dtype != a.dtype or buf.ndim != 1 or not buf.flags.c_contiguous \
            or not a.flags.c_contiguous or not a.flags.writeable:
        return None
    delta = a.ctypes.data - buf.ctypes.data
    if delta < 0 or delta % 8 or delta // 8 + m > len(buf):
        return None
    return buf, delta // 8


def _spliced(a: Any, i: int, j: int, new: list[int]) -> Any:
    """``a[:i] + new + a[j:]`` for a 1-D int64 array, in place when ``a``
    is a contiguous view into a buffer with room after it (a view of that
    buffer then), else in a new buffer with room to spare (1/64th)."""
    import ctypes

    import numpy as np
    n = len(a)
    m = n - (j - i) + len(new)
    room = _room(a, m)
    if room is None:
        out = np.empty(m + max(1024, m >> 6), dtype=np.int64)
        out[:i] = a[:i]
        out[i + len(new):m] = a[j:]
        out[i:i + len(new)] = new
        return out[:m]
    buf, off = room
    if n - j:
        base = buf.ctypes.data + 8 * off
        ctypes.memmove(base + 8 * (i + len(new)), base + 8 * j, 8 * (n - j))
    view = buf[off:off + m]
    view[i:i + len(new)] = new
    return view


def _inserted(a: Any, at: Any, b: Any) -> Any:
    """``a`` with the few values ``b`` inserted before the indices ``at``
    (ascending), in place when ``a`` has room after it (each value of ``a``
    moved once, from the back); None when it has not."""
    import ctypes
    n, k = len(a), len(b)
    room = _room(a, n + k)
    if room is None:
        return None
    buf, off = room
    base = buf.ctypes.data + 8 * off
    pos = [int(x) for x in at]
    vals = [int(x) for x in b]
    end = n
    for q in range(k - 1, -1, -1):
        start = pos[q]
        if end > start:       # a[start:end] moves up by q + 1
            ctypes.memmove(base + 8 * (start + q + 1), base + 8 * start, 8 * (end - start))
        buf[off + start + q] = vals[q]
        end = start
    return buf[off:off + n + k]


class IntervalSet:
    """Disjoint, non-touching half-open intervals, merged on insert.

    Small sets keep Python lists; a bulk operation (``update_arrays``,
    ``subtract_arrays``) leaving ``_BIG`` intervals or more keeps numpy int64
    arrays instead, so that a map with millions of separate runs costs 16
    bytes a run and vectorised passes, never a Python object per run.  Both
    forms answer every method alike."""

    def __init__(self, items=()):
        self.starts: Any = []
        self.ends: Any = []
        for s, e in items:
            self.add(s, e)

    # ------------------------------------------------------------ storage
    @property
    def big(self) -> bool:
        return not isinstance(self.starts, list)

    def _set(self, s: Any, e: Any) -> None:
        """Store merged arrays: lists below ``_BIG`` intervals."""
        if len(s) < _BIG:
            self.starts, self.ends = s.tolist(), e.tolist()
        else:
            self.starts, self.ends = s, e

    def _arrays(self) -> tuple[Any, Any]:
        import numpy as np
        if self.big:
            return self.starts, self.ends
        return np.array(self.starts, dtype=np.int64), np.array(self.ends, dtype=np.int64)

    def _fits(self) -> bool:
        """Whether every bound fits the arrays (it does unless the set holds
        addresses near 2^63, which only corrupted input gives)."""
        return self.big or not self.ends or (self.ends[-1] <= _I64 and self.starts[0] >= -_I64)

    def _to_lists(self) -> None:
        if self.big:
            self.starts, self.ends = self.starts.tolist(), self.ends.tolist()

    def _bl(self, seq: Any, x: int) -> int:
        if isinstance(seq, list):
            return bisect.bisect_left(seq, x)
        return int(seq.searchsorted(_clamp(x), "left"))

    def _br(self, seq: Any, x: int) -> int:
        if isinstance(seq, list):
            return bisect.bisect_right(seq, x)
        return int(seq.searchsorted(_clamp(x), "right"))

    def _splice(self, i: int, j: int, ns: list[int], ne: list[int]) -> None:
        """Replace intervals [i, j) by ``ns``/``ne``."""
        if not self.big:
            self.starts[i:j] = ns
            self.ends[i:j] = ne
            return
        if any(not -_I64 <= v <= _I64 for v in ns + ne):
            self._to_lists()
            self._splice(i, j, ns, ne)
            return
        if j - i == len(ns):                      # same count: in place (the arrays are this set's own)
            self.starts[i:j] = ns
            self.ends[i:j] = ne
            return
        # another count: the tail moves in place, inside arrays with room
        # at their end (a split of one interval of a 14 M-interval set is a
        # memmove, not a copy of the set)
        self.starts = _spliced(self.starts, i, j, ns)
        self.ends = _spliced(self.ends, i, j, ne)

    def at(self, i: int) -> tuple[int, int]:
        return int(self.starts[i]), int(self.ends[i])

    def find(self, x: int) -> int:
        """Index of the interval holding ``x``, or -1."""
        i = self._br(self.starts, x) - 1
        return i if i >= 0 and x < self.ends[i] else -1

    # ------------------------------------------------------------ queries
    def __iter__(self):
        if self.big:
            return iter(zip(self.starts.tolist(), self.ends.tolist()))
        return iter(zip(self.starts, self.ends))

    def __len__(self):
        return len(self.starts)

    def total(self) -> int:
        if self.big:
            return span_total(self.starts, self.ends)
        return sum(e - s for s, e in self)

    def _span(self, s: int, e: int) -> tuple[int, int]:
        """Indices [i, j) of the intervals meeting [s, e)."""
        return self._br(self.ends, s), self._bl(self.starts, e)

    def overlaps(self, s: int, e: int) -> list[tuple[int, int]]:
        """The parts of [s, e) already in the set."""
        i, j = self._span(s, e)
        if i >= j:
            return []
        if self.big:
            return [(max(s, a), min(e, b)) for a, b in zip(self.starts[i:j].tolist(), self.ends[i:j].tolist())]
        return [(max(s, self.starts[k]), min(e, self.ends[k])) for k in range(i, j)]

    def contains(self, s: int, e: int) -> bool:
        i = self._br(self.starts, s) - 1
        return i >= 0 and self.ends[i] >= e

    def overlapping(self, starts: Any, ends: Any) -> Any:
        """Indices of the intervals of sorted, disjoint arrays ``starts``/
        ``ends`` that meet the set (vectorised ``overlaps(s, e) != []``)."""
        import numpy as np
        if not len(self) or not len(starts):
            return np.zeros(0, dtype=np.int64)
        ss, se = self._arrays()
        if 8 * len(ss) < len(starts):
            # few intervals here: the queries each of them meets
            lo = ends.searchsorted(ss, "right")
            cnt = starts.searchsorted(se, "left") - lo
            np.maximum(cnt, 0, out=cnt)
            total = int(cnt.sum())
            if not total:
                return np.zeros(0, dtype=np.int64)
            return _unique(np.repeat(lo - (np.cumsum(cnt) - cnt), cnt) + np.arange(total))
        out = []
        step = 1 << 20                     # a million queries at a time: bounded temporaries
        for c in range(0, len(starts), step):
            i = se.searchsorted(starts[c:c + step], "right")
            hit = i < len(ss)
            hit[hit] = ss[i[hit]] < ends[c:c + step][hit]
            out.append(np.flatnonzero(hit) + c)
        return np.concatenate(out)

    def gaps_desc(self, lo: int, hi: int):
        """The parts of [lo, hi) not in the set, highest first, lazily."""
        i, j = self._span(lo, hi)
        top = hi
        for k in range(j - 1, i - 1, -1):
            a, b = max(lo, int(self.starts[k])), min(hi, int(self.ends[k]))
            if b < top:
                yield b, top
            top = min(top, a)
        if top > lo:
            yield lo, top

    def fitting(self, size: int, reverse: bool = False, chunk: int = 4096):
        """Every interval at least ``size`` long, in order (or reversed),
        lazily: a big set is filtered a chunk of intervals at a time."""
        n = len(self)
        if not self.big:
            idx = range(n - 1, -1, -1) if reverse else range(n)
            for k in idx:
                s, e = self.starts[k], self.ends[k]
                if e - s >= size:
                    yield s, e
            return
        import numpy as np
        bounds = range(n, 0, -chunk) if reverse else range(0, n, chunk)
        for b in bounds:
            lo, hi = (max(b - chunk, 0), b) if reverse else (b, min(b + chunk, n))
            s, e = self.starts[lo:hi], self.ends[lo:hi]
            ok = np.flatnonzero(e - s >= size)
            if reverse:
                ok = ok[::-1]
            for k in ok.tolist():
                yield int(s[k]), int(e[k])

    def complement(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The parts of [lo, hi) not in the set."""
        if self.big:
            gs, ge = self.complement_arrays(lo, hi)
            return list(zip(gs.tolist(), ge.tolist()))
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

    def complement_arrays(self, lo: int, hi: int) -> tuple[Any, Any]:
        """``complement`` as two int64 arrays (``lo``/``hi`` within int64)."""
        import numpy as np
        if not self.big:
            c = self.complement(lo, hi)
            return np.array([a for a, _ in c], dtype=np.int64), np.array([b for _, b in c], dtype=np.int64)
        i, j = self._span(lo, hi)
        gs = np.concatenate((np.array([lo], dtype=np.int64), self.ends[i:j]))
        np.maximum(gs, lo, out=gs)
        ge = np.concatenate((self.starts[i:j], np.array([hi], dtype=np.int64)))
        np.minimum(ge, hi, out=ge)
        keep = gs < ge
        if keep.all():
            return gs, ge
        return gs[keep], ge[keep]

    def complement_buffers(self, lo: int, hi: int, room: int) -> tuple[Any, Any, int]:
        """``complement_arrays`` of a big set written after ``room`` free
        slots: (starts, ends, offset), the pieces at [offset:]; offset is 0
        (no room) when empty pieces had to be dropped."""
        import numpy as np
        i, j = self._span(lo, hi)
        n = j - i + 1
        # room at the end too: the free set these become grows in place
        # when an allocation splits one of its intervals (see _spliced)
        spare = max(1024, (room + n) >> 6)
        bs = np.empty(room + n + spare, dtype=np.int64)[:room + n]
        be = np.empty(room + n + spare, dtype=np.int64)[:room + n]
        gs, ge = bs[room:], be[room:]
        gs[0] = lo
        gs[1:] = self.ends[i:j]
        np.maximum(gs, lo, out=gs)
        ge[:-1] = self.starts[i:j]
        ge[-1] = hi
        np.minimum(ge, hi, out=ge)
        keep = gs < ge
        if keep.all():
            return bs, be, room
        if len(keep) > 2 and keep[1:-1].all():
            # only the pieces at lo and at hi can be empty: cut them off the views
            a, b = (0 if keep[0] else 1), (len(bs) if keep[-1] else len(bs) - 1)
            if a == 0:
                return bs[:b], be[:b], room
            return bs[1:b], be[1:b], room     # the free slots in front now end where the empty piece was
        return gs[keep], ge[keep], 0

    # ------------------------------------------------------------ changes
    def add(self, s: int, e: int):
        if e <= s:
            return
        i, j = self._bl(self.ends, s), self._br(self.starts, e)
        if i < j:
            s = min(s, int(self.starts[i]))
            e = max(e, int(self.ends[j - 1]))
        self._splice(i, j, [s], [e])

    def remove(self, s: int, e: int):
        if e <= s:
            return
        i, j = self._span(s, e)
        if i >= j:
            return
        ns, ne = [], []
        a, b = int(self.starts[i]), int(self.ends[j - 1])
        if a < s:
            ns.append(a)
            ne.append(s)
        if b > e:
            ns.append(e)
            ne.append(b)
        self._splice(i, j, ns, ne)

    def copy(self) -> IntervalSet:
        c = IntervalSet()
        if self.big:
            c.starts, c.ends = self.starts.copy(), self.ends.copy()
        else:
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
        if self.big or len(runs) >= _BIG:
            lo, hi = min(s for s, _ in runs), max(e for _, e in runs)
            if -_I64 <= lo and hi <= _I64 and self._fits():
                self.update_arrays([s for s, _ in runs], [e for _, e in runs])
                return
            self._to_lists()
        merged = merge_runs(sorted(list(zip(self.starts, self.ends)) + [r for r in runs if r[1] > r[0]]))
        self.starts = [a for a, _ in merged]
        self.ends = [b for _, b in merged]

    def update_arrays(self, starts: Any, ends: Any, merged: bool = False, own: bool = False) -> None:
        """``update`` from arrays of starts and ends (int64 or uint64 below
        2^63, any order; touching and overlapping ones joined).  ``merged``:
        the arrays are sorted, disjoint and non-touching already; ``own``:
        the set may keep them (the caller drops them)."""
        import numpy as np
        if not len(starts):
            return
        if not self._fits():
            self.update(list(zip(np.asarray(starts).tolist(), np.asarray(ends).tolist())))
            return
        s = np.asarray(starts).astype(np.int64, copy=False)
        e = np.asarray(ends).astype(np.int64, copy=False)
        if not len(self):
            if merged:
                self._set(s if own else s.copy(), e if own else e.copy())
            else:
                self._set(*merge_arrays(s, e))
            return
        ss, se = self._arrays()
        if merged:
            # two sorted sets: the smaller inserted into the larger, no sort
            # (in place into the caller's arrays when they are given and have room)
            self._set(*union_sorted(ss, se, s, e, own="b" if own else ""))
            return
        s, e = np.concatenate((ss, s)), np.concatenate((se, e))
        self._set(*merge_arrays(s, e))

    def subtract_arrays(self, starts: Any, ends: Any) -> None:
        """``remove`` of every interval of sorted, disjoint arrays (one pass)."""
        import numpy as np
        if not len(self) or not len(starts):
            return
        if not self.big and len(starts) < 8:
            for s, e in zip(np.asarray(starts).tolist(), np.asarray(ends).tolist()):
                self.remove(s, e)
            return
        if not self._fits():
            for s, e in zip(np.asarray(starts).tolist(), np.asarray(ends).tolist()):
                self.remove(s, e)
            return
        ss, se = self._arrays()
        bs = np.asarray(starts).astype(np.int64, copy=False)
        be = np.asarray(ends).astype(np.int64, copy=False)
        # every boundary of either set, and the pieces between them that lie
        # in this set and not in the other one
        pts = _unique(np.concatenate((ss, se, bs, be)))
        mid_lo, mid_hi = pts[:-1], pts[1:]
        ia = ss.searchsorted(mid_lo, "right") - 1
        in_a = (ia >= 0) & (mid_lo < se[np.maximum(ia, 0)])
        ib = bs.searchsorted(mid_lo, "right") - 1
        in_b = (ib >= 0) & (mid_lo < be[np.maximum(ib, 0)])
        keep = in_a & ~in_b
        self._set(*merge_arrays(mid_lo[keep], mid_hi[keep]))


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


def block_run_arrays(order: int, physs: Any) -> tuple[Any, Any]:
    """``block_runs`` of a numpy array of blocks, as (starts, ends) int64
    arrays: no Python object per run."""
    import numpy as np
    size = PAGE_SIZE << order
    a = np.asarray(physs).astype(np.int64, copy=False)
    if len(a) == 0:
        return a[:0], a[:0]
    if int(a[-1]) - int(a[0]) == (len(a) - 1) * size:
        return a[:1].copy(), a[-1:] + size
    brk = np.flatnonzero(a[1:] != a[:-1] + size)
    first = np.concatenate(([0], brk + 1))
    last = np.concatenate((brk, [len(a) - 1]))
    return a[first], a[last] + size


class RunBatch:
    """Runs of one order gathered leaf by leaf (tuples or numpy arrays, in
    the walk's order), joined where one touches the one before it as they
    come; merged once at the end, by a sort only when they did not come
    ascending."""

    def __init__(self) -> None:
        self.tuples: list[tuple[int, int]] = []       # not yet in ``arrays``
        self.arrays: list[tuple[Any, Any]] = []
        self.ascending = True
        self.last_end: int | None = None
        self.gathered = 0

    def _joins(self, s: int) -> bool:
        """Whether a run starting at ``s`` extends the last one (else it is
        noted whether the runs still come ascending)."""
        if self.last_end is None:
            return False
        if self.ascending and s == self.last_end:
            return True
        if s < self.last_end:
            self.ascending = False
        return False

    def extend(self, runs: list[tuple[int, int]]) -> None:
        for r in runs:
            self.append(r)

    def append(self, run: tuple[int, int]) -> None:
        s, e = run
        if self._joins(s):
            if self.tuples:
                self.tuples[-1] = (self.tuples[-1][0], e)
            else:
                self.arrays[-1][1][-1] = e
        else:
            self.tuples.append((s, e))
        if self.ascending:
            self.last_end = e

    def _flush(self) -> None:
        if self.tuples:
            import numpy as np
            self.arrays.append((np.array([s for s, _ in self.tuples], dtype=np.int64),
                                np.array([e for _, e in self.tuples], dtype=np.int64)))
            self.tuples = []

    #: leaves' arrays joined into one every so many (few, large arrays: no heap of small ones left behind)
    GATHER = 256

    def add_arrays(self, starts: Any, ends: Any) -> None:
        """Runs of one leaf: ascending, disjoint, non-touching, this batch's own."""
        if not len(starts):
            return
        self._flush()
        if len(self.arrays) - self.gathered >= self.GATHER:
            import numpy as np
            part = self.arrays[self.gathered:]
            del self.arrays[self.gathered:]
            self.arrays.append((np.concatenate([a for a, _ in part]), np.concatenate([b for _, b in part])))
            self.gathered = len(self.arrays)
        if self._joins(int(starts[0])):
            self.arrays[-1][1][-1] = ends[0]
            starts, ends = starts[1:], ends[1:]
        if len(starts):
            self.arrays.append((starts, ends))
        if self.ascending:
            self.last_end = int(self.arrays[-1][1][-1])

    def merged(self) -> Any:
        """A list of merged runs, or (starts, ends) arrays when there are
        many (numpy was imported for them anyway)."""
        if not self.arrays:
            return merge_runs(sorted(self.tuples))
        import numpy as np
        self._flush()
        if len(self.arrays) == 1:
            s, e = self.arrays[0]
        else:
            s = np.concatenate([a for a, _ in self.arrays])
            e = np.concatenate([b for _, b in self.arrays])
        self.arrays = []
        if not self.ascending:
            s, e = merge_arrays(s, e)
        if len(s) < _BIG:
            return list(zip(s.tolist(), e.tolist()))
        return s, e


class PreservedBlocks:
    """The blocks a kernel reserved from the map and not yet restored, kept
    as runs of equal-order blocks per order (an :class:`IntervalSet` each):
    memory O(runs), not O(blocks) (a fully preserved 1 TiB is one run).
    Behaves like a ``phys -> order`` mapping for lookups; iterating yields
    every block (small maps only)."""

    def __init__(self) -> None:
        #: order -> runs of blocks of that order (in the order orders were first added)
        self._sets: dict[int, IntervalSet] = {}
        self.removed: set[int] = set()
        self._count = 0

    def _recount(self) -> None:
        self._count = sum(iv.total() // (PAGE_SIZE << o) for o, iv in self._sets.items()) - len(self.removed)

    def add_runs(self, order: int, runs: list[tuple[int, int]]) -> None:
        if not runs:
            return
        self._sets.setdefault(order, IntervalSet()).update(runs)
        self._recount()

    def add_run_arrays(self, order: int, starts: Any, ends: Any) -> None:
        if not len(starts):
            return
        self._sets.setdefault(order, IntervalSet()).update_arrays(starts, ends, merged=True, own=True)
        self._recount()

    def __setitem__(self, phys: int, order: int) -> None:
        self.removed.discard(phys)
        self.add_runs(order, [(phys, phys + (PAGE_SIZE << order))])

    def get(self, phys: int, default: int | None = None) -> int | None:
        if phys in self.removed:
            return default
        for order, iv in self._sets.items():
            i = iv.find(phys)
            if i >= 0 and (phys - int(iv.starts[i])) % (PAGE_SIZE << order) == 0:
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
        for order, iv in sorted(self._sets.items()):
            size = PAGE_SIZE << order
            for s, e in iv:
                for p in range(s, e, size):
                    if p not in self.removed:
                        yield p, order

    def __iter__(self):
        return (p for p, _ in self.items())

    def block_at(self, addr: int) -> tuple[int, int] | None:
        """(phys, order) of the reserved block holding ``addr``."""
        for order, iv in self._sets.items():
            i = iv.find(addr)
            if i >= 0:
                s = int(iv.starts[i])
                size = PAGE_SIZE << order
                return s + (addr - s) // size * size, order
        return None

    def next_block(self, addr: int, end: int) -> int | None:
        """The first reserved block start in ``[addr, end)``, if any."""
        best = None
        for order, iv in self._sets.items():
            size = PAGE_SIZE << order
            i = max(iv._br(iv.starts, addr) - 1, 0)
            while i < len(iv):
                s, e = iv.at(i)
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
        return merge_runs(sorted(r for iv in self._sets.values() for r in iv))


class PreservedSpans:
    """The byte ranges reserved from the map and not restored: the union of
    :class:`PreservedBlocks`' runs of every order, less what was removed
    since (restored blocks), answered from those runs and never a copy of
    them.  Its changes mirror the blocks': ``add``/``update`` after the
    blocks were added, ``remove`` on restore."""

    def __init__(self, blocks: PreservedBlocks) -> None:
        self.blocks = blocks
        #: removed since, less what was added again
        self.cut = IntervalSet()

    def overlaps(self, s: int, e: int) -> list[tuple[int, int]]:
        pieces: list[tuple[int, int]] = []
        sets = 0
        for iv in self.blocks._sets.values():
            got = iv.overlaps(s, e)
            if got:
                pieces.extend(got)
                sets += 1
        if sets > 1:
            pieces = merge_runs(sorted(pieces))
        if pieces and len(self.cut):
            pieces = _subtract(pieces, self.cut)
        return pieces

    def overlapping(self, starts: Any, ends: Any) -> Any:
        """Indices of sorted ranges that may meet the set (every one that
        does; with restored ranges, also ones only they cover)."""
        import numpy as np
        hit = np.zeros(0, dtype=np.int64)
        for iv in self.blocks._sets.values():
            hit = _unique(np.concatenate((hit, iv.overlapping(starts, ends))))
        return hit

    def add(self, s: int, e: int) -> None:
        self.cut.remove(s, e)

    def update(self, runs: list[tuple[int, int]]) -> None:
        if len(self.cut):
            for s, e in runs:
                self.cut.remove(s, e)

    def update_arrays(self, starts: Any, ends: Any) -> None:
        if len(self.cut):
            self.cut.subtract_arrays(starts, ends)

    def remove(self, s: int, e: int) -> None:
        self.cut.add(s, e)

    def __iter__(self):
        every = merge_runs(sorted(r for iv in self.blocks._sets.values() for r in iv))
        return iter(_subtract(every, self.cut) if len(self.cut) else every)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def total(self) -> int:
        return sum(e - s for s, e in self)


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
        #: ranges taken out of ``reserved`` so far (a reservation made and
        #: kept since can be known to still hold: see MemoryInit)
        self.reserved_cuts = 0
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

    def reserved_regions(self) -> int:
        """``memblock.reserved.cnt`` as the kernel would have it: the
        reserved intervals, split where a kernel reservation (RSRV_KERN)
        begins or ends, since regions of different flags never merge
        (mm/memblock.c:548-551).  Node ids are not looked at."""
        if len(self.reserved) > _BIG or len(self.reserved_kern) > _BIG:
            return len(self.reserved) + len(self.reserved_kern)      # an upper bound, at host scale
        n = 0
        for s, e in self.reserved:
            kern = self.reserved_kern.overlaps(s, e)
            if not kern:
                n += 1
                continue
            gaps = len(kern) + 1 - (kern[0][0] == s) - (kern[-1][1] == e)
            n += len(kern) + gaps
        return n

    def free(self, base, size):
        self.reserved_cuts += 1
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
            for a, b in self.reserved.gaps_desc(lo, hi):
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
        self.preserved_set = PreservedSpans(self.preserved)
        self.restored: set[int] = set()
        self.restored_set = IntervalSet()
        self.violations = violations
        self.kernel = kernel_name
        self.step = ""
        self.faults = FaultSite()
        #: times blocks were added to ``preserved``
        self.preserved_adds = 0

    def _v(self, kind, s, e, detail):
        self.violations.append(Violation(kind, s, e, detail, self.kernel, self.step))

    def free(self, s: int, e: int, why: str):
        dup = self.free_set.overlaps(s, e)
        for a, b in dup:
            self._v("double-free", a, b, f"{why}: pages already free in the buddy allocator")
        for a, b in self.preserved_set.overlaps(s, e):
            self._v("preserved-freed-before-restore", a, b, f"{why}: preserved pages freed before restore")
        self.free_set.add(s, e)

    def free_many(self, starts: Any, ends: Any, why: str, room: tuple[Any, Any] | None = None,
                  outside_preserved: bool = False) -> None:
        """``free`` of every range of sorted, disjoint arrays, in order: the
        same violations, found by one vectorised pass, and one merge.
        ``room``: arrays whose tails are ``starts`` and ``ends``, with a slot
        in front for each interval of a small free set (the free set then
        becomes them, no copy of the ranges).  ``outside_preserved``: the
        caller knows no range meets a preserved block (gaps of a reservation
        that holds them all), so they are not searched for."""
        import numpy as np
        if len(starts) < 8 or not bool((starts[1:] >= ends[:-1]).all()):
            for s, e in zip(np.asarray(starts).tolist(), np.asarray(ends).tolist()):
                self.free(s, e, why)
            return
        hit = self.free_set.overlapping(starts, ends)
        if not outside_preserved:
            hit = _unique(np.concatenate((hit, self.preserved_set.overlapping(starts, ends))))
        for k in hit.tolist():
            s, e = int(starts[k]), int(ends[k])
            for a, b in self.free_set.overlaps(s, e):
                self._v("double-free", a, b, f"{why}: pages already free in the buddy allocator")
            for a, b in self.preserved_set.overlaps(s, e):
                self._v("preserved-freed-before-restore", a, b, f"{why}: preserved pages freed before restore")
        strict = bool((starts[1:] > ends[:-1]).all())
        fs = self.free_set
        if room is not None and strict and not fs.big and fs._fits() and len(room[0]) - len(starts) == len(fs) \
                and (not len(fs) or fs.ends[-1] < int(starts[0])):
            k = len(fs)
            room[0][:k] = fs.starts
            room[1][:k] = fs.ends
            fs._set(room[0], room[1])
            return
        fs.update_arrays(starts, ends, merged=strict)

    def alloc(self, size: int, high_first: bool = False, within: IntervalSet | None = None,
              avoid: IntervalSet | None = None, align: int = PAGE_SIZE) -> int:
        if self.faults.fail():
            return 0
        # an interval shorter than ``size`` cannot hold it, whatever ``within`` and ``avoid`` leave
        for s, e in self.free_set.fitting(size, reverse=high_first):
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
        self.preserved_adds += 1
        self.preserved[phys] = order
        self.preserved_set.add(phys, phys + (PAGE_SIZE << order))
        self.free_set.remove(phys, phys + (PAGE_SIZE << order))

    def reserve_preserved_runs(self, order: int, runs: list[tuple[int, int]]) -> None:
        """Many blocks of one order at once, as coalesced runs (the map walk
        runs before the page allocator has any free page)."""
        self.preserved_adds += 1
        self.preserved.add_runs(order, runs)
        self.preserved_set.update(runs)
        if len(self.free_set):
            for s, e in runs:
                self.free_set.remove(s, e)

    def reserve_preserved_arrays(self, order: int, starts: Any, ends: Any) -> None:
        """``reserve_preserved_runs`` from merged (starts, ends) arrays."""
        self.preserved_adds += 1
        self.preserved.add_run_arrays(order, starts, ends)
        self.preserved_set.update_arrays(starts, ends)
        if len(self.free_set):
            self.free_set.subtract_arrays(starts, ends)

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


def _subtract(ranges, iv: IntervalSet | PreservedSpans):
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
