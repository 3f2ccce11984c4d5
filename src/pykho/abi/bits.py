"""Bit scanning of little-endian ``unsigned long`` bitmaps and u64 tables.

numpy (optional, ``pip install 'pykho[all]'``) makes scans vectorised; the
pure-Python fallback gives the same results.  Arrays returned are numpy
``uint64``/``int64`` arrays with numpy, lists without.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import KhoDecodeError
from .mem import Buffer

# numpy is optional: HAVE_NUMPY says whether it imported, and every use of
# ``np`` is behind it (a bool, so type checkers check both paths)
try:
    import numpy as np
except ImportError:  # pragma: no cover - tests/abi/test_abi_roundtrip.py runs the decoders without numpy
    HAVE_NUMPY = False
else:
    HAVE_NUMPY = True

if TYPE_CHECKING:
    from typing import TypeAlias

    from numpy.typing import NDArray

    #: addresses (or other u64 values), one per set bit: numpy with numpy, a list without
    U64s: TypeAlias = NDArray[np.uint64] | list[int]
    #: bit indices in ascending order: numpy with numpy, a list without
    BitIndices: TypeAlias = NDArray[np.int64] | list[int]
    #: int64 values (phys of runs), numpy only
    I64s: TypeAlias = NDArray[np.int64]

__all__ = ["HAVE_NUMPY", "MASK64", "PAGE_SHIFT", "BlockSets", "MapSummary", "array", "batch_counts",
           "chunk_batch_phys", "count", "is_full", "leaf_counts", "length", "nonzero_u64", "offsets", "phys_of",
           "radix_batch_phys", "radix_batch_runs", "set_bits", "tolist"]

MASK64 = (1 << 64) - 1
if HAVE_NUMPY:
    _ONES = np.uint64(MASK64)


def nonzero_u64(page: Buffer) -> list[tuple[int, int]]:
    """(index, value) of every non-zero little-endian u64 of ``page``."""
    if HAVE_NUMPY:
        a = np.frombuffer(page, dtype="<u8", count=len(page) // 8)
        idx = np.flatnonzero(a)
        return list(zip(idx.tolist(), a[idx].tolist()))
    out: list[tuple[int, int]] = []
    mv = memoryview(page).cast("Q") if len(page) % 8 == 0 else None
    if mv is not None:
        for i, v in enumerate(mv):
            if v:
                out.append((i, v))
    return out


def set_bits(bitmap: Buffer) -> BitIndices:
    """Indices of set bits in ascending order (LE bit order: byte i>>3, bit i&7)."""
    if HAVE_NUMPY:
        return _set_bits_np(bitmap)
    v = int.from_bytes(bitmap, "little")
    out: list[int] = []
    while v:
        low = v & -v
        out.append(low.bit_length() - 1)
        v ^= low
    return out


def _set_bits_np(bitmap: Buffer) -> NDArray[np.int64]:
    a = np.frombuffer(bitmap, dtype=np.uint8)
    if len(a) % 8 == 0 and len(a):
        return _set_bits_words(a)
    nz = np.flatnonzero(a)
    if len(nz) == 0:
        return np.empty(0, dtype=np.int64)
    bitsarr = np.unpackbits(a[nz], bitorder="little").reshape(-1, 8)
    rows, cols = np.nonzero(bitsarr)
    return (nz[rows].astype(np.int64) << 3) | cols


def _set_bits_words(a: NDArray[np.uint8]) -> NDArray[np.int64]:
    """:func:`set_bits` of a whole number of u64 words, by density: a full
    bitmap is an ``arange``, a sparse one unpacks only its non-zero words
    (in Python when there are few), a dense one is unpacked whole."""
    w = a.view("<u8")
    nzw = np.flatnonzero(w)
    k = len(nzw)
    if k == 0:
        return np.empty(0, dtype=np.int64)
    if k == len(w) and bool((w == _ONES).all()):
        return np.arange(len(a) * 8, dtype=np.int64)
    if k <= 8:
        out: list[int] = []
        for i, v in zip(nzw.tolist(), w[nzw].tolist()):
            base = i << 6
            while v:
                low = v & -v
                out.append(base | (low.bit_length() - 1))
                v ^= low
        return np.array(out, dtype=np.int64)
    if k * 8 < len(w):
        rows, cols = np.nonzero(np.unpackbits(w[nzw].view(np.uint8), bitorder="little").reshape(k, 64))
        return (nzw[rows] << 6) | cols
    return np.flatnonzero(np.unpackbits(a, bitorder="little").view(bool))


def count(bitmap: Buffer) -> int:
    if HAVE_NUMPY:
        return int(np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8)).sum())
    return int.from_bytes(bitmap, "little").bit_count()


def _u64(bit_idx: BitIndices) -> NDArray[np.uint64]:
    if isinstance(bit_idx, np.ndarray) and bit_idx.dtype == np.int64:
        return bit_idx.view(np.uint64)       # indices are never negative
    return np.asarray(bit_idx, dtype=np.uint64)


def phys_of(bit_idx: BitIndices, key: int, shift: int) -> U64s:
    """``((key | bit) << shift) mod 2**64`` for every bit index."""
    if HAVE_NUMPY:
        r = _u64(bit_idx) | np.uint64(key & MASK64)
        np.left_shift(r, np.uint64(shift), out=r)
        return r
    return [((key | b) << shift) & MASK64 for b in bit_idx]


def offsets(bit_idx: BitIndices, base: int, shift: int) -> U64s:
    """``base + (bit << shift)`` (mod 2**64) for every bit index."""
    if HAVE_NUMPY:
        r = np.left_shift(_u64(bit_idx), np.uint64(shift))
        return np.add(r, np.uint64(base & MASK64), out=r)
    return [(base + (b << shift)) & MASK64 for b in bit_idx]


def tolist(arr: U64s | BitIndices) -> list[int]:
    """The values of an array of this module as a list of ints."""
    if isinstance(arr, list):
        return list(arr)
    out: list[int] = arr.tolist()
    return out


def array(values: Sequence[int]) -> U64s:
    if HAVE_NUMPY:
        return np.asarray(values, dtype=np.uint64)
    return list(values)


def length(arr: U64s | BitIndices) -> int:
    return len(arr)


# ---------------------------------------------------------------------------
# Batches: runs of same-order bitmaps scanned with one numpy pass.

def _joined(pages: Sequence[Buffer]) -> Buffer:
    return pages[0] if len(pages) == 1 else b"".join(pages)


def is_full(bitmap: Buffer) -> bool:
    """Every bit set (a bytes compare, no scan)."""
    n = len(bitmap)
    full = _FULL.get(n)
    if full is None:
        full = _FULL[n] = b"\xff" * n
    return bitmap == full


_FULL: dict[int, bytes] = {}


def _batch_idx(pages: Sequence[Buffer], full: bool, row_bits: int) -> NDArray[np.int64]:
    """numpy only: the set bits of ``pages`` joined."""
    if full:
        return np.arange(len(pages) * row_bits, dtype=np.int64)
    return _set_bits_np(_joined(pages))


def radix_batch_phys(pages: Sequence[Buffer], keys: Sequence[int], shift: int,
                     full: bool = False) -> NDArray[np.uint64]:
    """Phys of every set bit of radix leaves ``pages`` (key prefixes ``keys``,
    one order, ``shift = 12 + order``), leaf after leaf: what
    :func:`phys_of` gives leaf by leaf, as one array.  ``full``: every
    page has every bit set (no scan needed).  numpy only."""
    k0 = keys[0]
    consecutive = keys[-1] - k0 == (len(keys) - 1) << 15
    if full and consecutive:
        # one arithmetic progression: base, base + 2**shift, ... (no scan at all)
        base = (k0 << shift) & MASK64
        last = base + (((len(keys) << 15) - 1) << shift)
        if last <= MASK64:
            return np.arange(base, last + 1, 1 << shift, dtype=np.uint64)
    idx = _batch_idx(pages, full, 1 << 15)
    if not len(idx):
        return idx.view(np.uint64)
    if consecutive:
        u = idx.view(np.uint64)
        u += np.uint64(k0)
    else:
        deltas = np.array([k - (r << 15) for r, k in enumerate(keys)], dtype=np.uint64)
        u = deltas[idx >> 15]
        u += idx.view(np.uint64)
    return np.left_shift(u, np.uint64(shift), out=u)


def _bit_positions(index: NDArray[np.int64], words: NDArray[Any]) -> NDArray[np.int64]:
    """Ascending positions ``64 * index + bit`` of the set bits of
    ``words`` (``index``: their ascending word indices); only the non-zero
    bytes are unpacked (a word of edges mostly holds one or two bits)."""
    b = np.ascontiguousarray(words).view(np.uint8)
    nzb = np.flatnonzero(b)
    at = np.flatnonzero(np.unpackbits(b[nzb], bitorder="little"))
    byte = nzb[at >> 3]
    out: NDArray[np.int64] = index[byte >> 3]
    out <<= 6
    byte &= 7
    byte <<= 3
    out += byte
    at &= 7
    out += at
    return out


def radix_batch_runs(pages: Sequence[Buffer], keys: Sequence[int], shift: int
                     ) -> tuple[NDArray[np.int64], NDArray[np.int64]] | None:
    """The blocks of radix leaves ``pages`` (ascending key prefixes ``keys``,
    one order, ``shift = 12 + order``) as maximal runs of memory: (starts,
    ends) int64 phys arrays, ascending, disjoint and not touching, straight
    from the bit edges (no array of every block).  The same memory as
    :func:`radix_batch_phys` gives block by block.  None when the blocks
    do not come ascending or a run reaches 2**63 (keys that wrap once
    shifted, orders beyond any RAM): callers take the block path then.
    numpy only."""
    n = len(pages)
    flat = np.frombuffer(_joined(pages), dtype="<u8")
    per_row = len(flat) // n
    width = per_row * 64
    # only the non-zero words can hold a run's first or last bit: a run
    # starts at a set bit whose lower neighbour (in the same leaf) is clear
    # and ends at one whose upper neighbour is clear, the neighbour bit
    # carried across words
    nz = np.flatnonzero(flat)
    if not len(nz):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    w = flat[nz]
    col = nz % per_row if per_row & (per_row - 1) else nz & (per_row - 1)
    prev = np.where(col > 0, flat[np.maximum(nz - 1, 0)], np.uint64(0))
    nxt = np.where(col < per_row - 1, flat[np.minimum(nz + 1, len(flat) - 1)], np.uint64(0))
    one = np.uint64(1)
    top = np.uint64(63)
    first_at = _bit_positions(nz, w & ~((w << one) | (prev >> top)))
    last_at = _bit_positions(nz, w & ~((w >> one) | (nxt << top)))
    del prev, nxt, col
    keys_a = np.asarray(keys, dtype=np.uint64)
    if width & (width - 1):
        row_of = first_at // width
        first = (first_at - row_of * width).view(np.uint64)
        last = (last_at - row_of * width).view(np.uint64)
    else:
        # a run's last bit is in the leaf of its first: one row for both
        row_of = first_at >> (width.bit_length() - 1)
        first = (first_at & (width - 1)).view(np.uint64)
        last = (last_at & (width - 1)).view(np.uint64)
    key = keys_a[row_of]
    first |= key
    last |= key
    del key, row_of
    sh = np.uint64(shift)
    starts = np.left_shift(first, sh).view(np.int64)
    with np.errstate(over="ignore"):
        ends = np.left_shift(last, sh).view(np.int64) + (1 << shift)
    if not bool((ends > starts).all()):
        return None             # a run that reaches 2^63 or wraps: the block path says what it is
    if len(starts) > 1:
        if not bool(np.all(starts[1:] >= ends[:-1])):
            return None
        keep = starts[1:] != ends[:-1]          # a run that goes on in the next leaf
        if not keep.all():
            starts = starts[np.concatenate(([True], keep))]
            ends = ends[np.concatenate((keep, [True]))]
    return starts, ends


def chunk_batch_phys(bitmaps: Sequence[Buffer], starts: Sequence[int], nbits_log2: int, shift: int,
                     full: bool = False) -> NDArray[np.uint64]:
    """``start + (bit << shift)`` (mod 2**64) of every set bit of same-sized
    bitmaps ``bitmaps`` (``2**nbits_log2`` bits each) with ``starts``, bitmap
    after bitmap: what :func:`offsets` gives one by one, as one array.  numpy only."""
    step = (1 << nbits_log2) << shift
    s0 = starts[0]
    consecutive = all(s == s0 + r * step for r, s in enumerate(starts))
    if full and consecutive:
        last = s0 + (((len(starts) << nbits_log2) - 1) << shift)
        if last <= MASK64:
            return np.arange(s0, last + 1, 1 << shift, dtype=np.uint64)
    idx = _batch_idx(bitmaps, full, 1 << nbits_log2)
    if not len(idx):
        return idx.view(np.uint64)
    if consecutive:
        u = idx.view(np.uint64)
        np.left_shift(u, np.uint64(shift), out=u)
        u += np.uint64(s0 & MASK64)
        return u
    deltas = np.array([(s - r * step) & MASK64 for r, s in enumerate(starts)], dtype=np.uint64)
    spread: NDArray[np.uint64] = deltas[idx >> nbits_log2]
    spread += np.left_shift(idx.view(np.uint64), np.uint64(shift))
    return spread


def batch_counts(pages: Sequence[Buffer]) -> list[tuple[int, int | None, int | None]]:
    """Per bitmap of ``pages`` (equal sizes, whole u64 words): (set bits,
    first set bit, one past the last set bit), the last two None when empty."""
    out: list[tuple[int, int | None, int | None]] = []
    if not HAVE_NUMPY or len(pages[0]) % 8:
        for pg in pages:
            v = int.from_bytes(pg, "little")
            out.append((v.bit_count(), (v & -v).bit_length() - 1, v.bit_length()) if v else (0, None, None))
        return out
    a = np.frombuffer(_joined(pages), dtype="<u8").reshape(len(pages), -1)
    cnt = _row_counts(a)
    nz = a != 0
    rows = np.arange(len(pages))
    first = nz.argmax(axis=1)
    last = a.shape[1] - 1 - nz[:, ::-1].argmax(axis=1)
    for n, f, fw, la, lw in zip(cnt.tolist(), first.tolist(), a[rows, first].tolist(), last.tolist(),
                                a[rows, last].tolist()):
        if n:
            out.append((n, (f << 6) + (fw & -fw).bit_length() - 1, (la << 6) + lw.bit_length()))
        else:
            out.append((0, None, None))
    return out


def leaf_counts(pages: Sequence[Buffer]) -> tuple[list[int], bytes]:
    """Per radix leaf of ``pages`` (4096 bytes each): its set bits, and all
    leaves' word occupancy joined: 64 bytes a leaf, bit ``i`` set when u64
    word ``i`` is non-zero (what the overlap check of larger orders reads
    instead of the leaf).  numpy only."""
    a = np.frombuffer(_joined(pages), dtype="<u8").reshape(len(pages), 512)
    occupied: bytes = np.packbits(a != 0, axis=1, bitorder="little").tobytes()
    return _row_counts(a).tolist(), occupied


def _row_counts(a: NDArray[np.uint64]) -> NDArray[np.int64]:
    """The set bits of each row of a 2-D u64 array.  numpy only."""
    if hasattr(np, "bitwise_count"):
        cnt: NDArray[np.int64] = np.bitwise_count(a).sum(axis=1, dtype=np.int64)
    else:  # pragma: no cover - numpy < 2.0
        cnt = np.unpackbits(a.view(np.uint8), axis=1).sum(axis=1, dtype=np.int64)
    return cnt


# ---------------------------------------------------------------------------
# Counting walks: a summary of a memory map without per-block objects.

PAGE_SHIFT = 12
#: bits of a radix leaf (a 4 KiB page)
_LEAF_BITS = 32768

#: one bitmap of a BlockSets: ``[start, end, order, first, bits or None,
#: where, bitmap bytes or None, lo, occupancy or None]`` (ints but ``bits``,
#: an int made from ``bitmap`` when first needed, ``bitmap``, and a radix
#: leaf's 64 bytes of word occupancy, see :func:`leaf_counts`).  A list, not
#: a class: a 1 TiB map has 8192 of them and they are built in the
#: summarize loop.
_Rec = list[Any]


class MapSummary:
    """What a memory map preserves, with its overlap check.

    ``blocks``/``bytes``/``by_order`` count every set bit the kernel's walk
    would visit.  ``duplicates`` counts pairs of identical ``(phys, order)``
    blocks met twice, ``overlaps`` pairs of different blocks sharing memory
    (a smaller block inside a larger one); ``problems`` is the walker's
    list, the overlap findings included.
    """

    __slots__ = ("blocks", "by_order", "bytes", "duplicates", "overlaps", "problems", "unchecked")

    def __init__(self) -> None:
        self.blocks = 0
        self.bytes = 0
        self.by_order: dict[int, int] = {}
        self.duplicates = 0
        self.overlaps = 0
        self.problems: list[KhoDecodeError] = []
        self.unchecked = 0        # blocks left out of the overlap check (unaligned)

    def count(self, order: int, n: int) -> None:
        if n:
            self.blocks += n
            self.bytes += n << (order + PAGE_SHIFT)
            self.by_order[order] = self.by_order.get(order, 0) + n

    def as_dict(self) -> dict[str, int | dict[str, int] | list[dict[str, str]]]:
        return {"blocks": self.blocks, "bytes": self.bytes,
                "by_order": {str(k): v for k, v in sorted(self.by_order.items())},
                "duplicates": self.duplicates, "overlaps": self.overlaps,
                "problems": [{"code": p.code, "message": str(p)} for p in self.problems]}

    def __repr__(self) -> str:
        return (f"MapSummary(blocks={self.blocks}, bytes={self.bytes}, by_order={dict(sorted(self.by_order.items()))}, "
                f"duplicates={self.duplicates}, overlaps={self.overlaps}, problems={len(self.problems)})")


class BlockSets:
    """Overlap and duplicate check over bitmaps of naturally aligned blocks.

    :meth:`add` takes one bitmap (a Python int): bit ``i`` is the block
    ``(first + i) << (order + 12)`` of ``order``.  :meth:`check` sorts the
    bitmaps by the memory they span and compares only pairs whose spans
    intersect; two aligned blocks share memory only when one contains the
    other, so a pair is checked by spreading the larger blocks' bits over the
    smaller blocks' and ANDing, a handful of big-integer operations.  Work
    and memory grow with the number of bitmaps, not of blocks.
    """

    MAX_REPORTS = 64

    def __init__(self) -> None:
        self.recs: list[_Rec] = []
        self._reported = 0
        self._summary = MapSummary()
        self._report: Callable[[KhoDecodeError], None] = _drop

    def add(self, order: int, first: int, v: int, where: int) -> None:
        if not v:
            return
        lo = (v & -v).bit_length() - 1
        if lo:
            v >>= lo
            first += lo
        sh = order + PAGE_SHIFT
        self.recs.append([first << sh, (first + v.bit_length()) << sh, order, first, v, where, None, 0, None])

    def add_bitmap(self, order: int, first: int, bitmap: Buffer, lo: int, hi: int, where: int) -> None:
        """A bitmap as bytes whose set bits are ``lo .. hi-1`` (see
        :func:`batch_counts`); made an int only if another bitmap's span meets it."""
        sh = order + PAGE_SHIFT
        self.recs.append([(first + lo) << sh, (first + hi) << sh, order, first + lo, None, where, bitmap, lo, None])

    def add_leaf(self, order: int, first: int, leaf: Buffer, occupied: Buffer, where: int) -> None:
        """A radix leaf (4096 bytes, bit 0 the block ``first``, a multiple
        of 32768) that has a set bit, with its 64 bytes of word occupancy
        (:func:`leaf_counts`); its span is the whole leaf."""
        sh = order + PAGE_SHIFT
        self.recs.append([first << sh, (first + _LEAF_BITS) << sh, order, first, None, where, leaf, 0, occupied])

    @staticmethod
    def _bits(r: _Rec) -> int:
        v: int | None = r[4]
        if v is None:
            lo = r[7]
            v = r[4] = int.from_bytes(r[6][lo >> 3:], "little") >> (lo & 7)
        return v

    def check(self, summary: MapSummary, report: Callable[[KhoDecodeError], None]) -> None:
        recs = sorted(self.recs, key=_start)
        self._reported = 0
        self._summary, self._report = summary, report
        cands = _leaf_pairs(recs) if HAVE_NUMPY else None
        if cands is not None:
            # whole radix leaves: each pair of orders paired by arithmetic and
            # tested at once; only pairs that do share a block are left
            share = [True] * len(cands)
        else:
            active: list[_Rec] = []
            cands = []
            for r in recs:
                if active:
                    s = r[0]
                    active = [a for a in active if a[1] > s]
                    for a in active:
                        cands.append((a, r))
                active.append(r)
            # pairs whose spans meet; those that share no block are dropped by a
            # vectorised pass over their bitmaps, the rest checked one by one
            share = _may_share(cands) if HAVE_NUMPY else [True] * len(cands)
        for (a, b), maybe in zip(cands, share):
            if maybe:
                self._pair(a, b)
            for x in (a, b):
                if x[6] is not None:
                    x[4] = None                 # drop the int made from its bytes
        extra = self._reported - self.MAX_REPORTS
        if extra > 0:
            report(KhoDecodeError("preserved memory map", None,
                                  f"{extra} more overlapping bitmap pairs not listed", code="map-overlap"))

    def _pair(self, a: _Rec, b: _Rec) -> None:
        if a[2] < b[2]:
            a, b = b, a
        hi, lo = a, b                                  # hi: the larger (or equal) order
        s = max(a[0], b[0])
        e = min(a[1], b[1])
        hsh, lsh = hi[2] + PAGE_SHIFT, lo[2] + PAGE_SHIFT
        hb0 = s >> hsh
        nh = ((e - 1) >> hsh) - hb0 + 1
        hs = (self._bits(hi) >> (hb0 - hi[3])) & ((1 << nh) - 1)
        if not hs:
            return
        lb0 = s >> lsh
        nl = ((e - 1) >> lsh) - lb0 + 1
        ls = self._bits(lo)
        if lb0 != lo[3]:
            ls >>= lb0 - lo[3]
        if ls.bit_length() > nl:
            ls &= (1 << nl) - 1
        if not ls:
            return
        d = hi[2] - lo[2]
        common = ls & (hs if d == 0 else _spread(hs, d, lb0 - (hb0 << d), nl))
        if not common:
            return
        n = common.bit_count()
        first = (lb0 + (common & -common).bit_length() - 1) << lsh
        if d == 0:
            self._summary.duplicates += n
            err = KhoDecodeError("preserved memory map", first,
                                 f"{n} order-{lo[2]} block(s) preserved twice (bitmaps at 0x{lo[5]:x} and "
                                 f"0x{hi[5]:x})", code="map-duplicate")
        else:
            self._summary.overlaps += n
            err = KhoDecodeError("preserved memory map", first,
                                 f"{n} order-{lo[2]} block(s) (bitmap at 0x{lo[5]:x}) lie inside preserved "
                                 f"order-{hi[2]} blocks (bitmap at 0x{hi[5]:x})", code="map-overlap")
        self._reported += 1
        if self._reported <= self.MAX_REPORTS:
            self._report(err)


#: candidate pairs :func:`_may_share` looks at together (each costs 2 x 32 KiB of unpacked bits)
_PAIR_CHUNK = 256


def _window_ok(lo0: int, off: int, d: int, width: int) -> bool:
    """Whether a leaf of smaller blocks whose bit 0 is block ``lo0`` maps
    onto bits ``off .. off+width`` of the other bitmap as whole larger
    blocks (its bits aligned to them) read from whole words or one word
    (radix leaves always do; kho-v1 bitmaps at odd starts may not)."""
    if not 0 <= off <= 32768 - width:
        return False
    if d <= 15 and lo0 % (1 << d):
        return False
    if d > 15 and (lo0 >> d) != ((lo0 + 32767) >> d):
        return False
    return off % 64 == 0 if width >= 64 else (off & 63) + width <= 64


def _may_share(cands: list[tuple[_Rec, _Rec]]) -> list[bool]:
    """Per candidate pair of :class:`BlockSets` records: False when their
    blocks surely share no memory (both whole radix leaves, checked at the
    larger order's granularity, exactly), True when they might (then
    ``_pair`` decides and reports).  numpy only."""
    out = [True] * len(cands)
    groups: dict[int, list[tuple[int, _Rec, _Rec]]] = {}
    for k, (a, b) in enumerate(cands):
        if a[6] is None or b[6] is None or len(a[6]) != 4096 or len(b[6]) != 4096:
            continue
        hi, lo = (a, b) if a[2] >= b[2] else (b, a)
        groups.setdefault(hi[2] - lo[2], []).append((k, hi, lo))
    for d, items in groups.items():
        for c0 in range(0, len(items), _PAIR_CHUNK):
            part = items[c0:c0 + _PAIR_CHUNK]
            n = len(part)
            lo_w = np.frombuffer(b"".join([bytes(x[2][6]) for x in part]), dtype="<u8").reshape(n, 512)
            hi_w = np.frombuffer(b"".join([bytes(x[1][6]) for x in part]), dtype="<u8").reshape(n, 512)
            # the larger-order block holding each leaf's bit 0, as a bit of the other leaf
            off = [((x[2][3] - x[2][7]) >> d) - (x[1][3] - x[1][7]) for x in part]
            if d == 0:
                hit = (lo_w & hi_w).any(axis=1)
                for i, (k, _, _) in enumerate(part):
                    out[k] = off[i] != 0 or bool(hit[i])
                continue
            width = 32768 >> d if d <= 15 else 1        # larger blocks one leaf of smaller ones spans
            if d >= 6:
                lo_any = (lo_w.reshape(n, -1, min(512, 1 << (d - 6))) != 0).any(axis=2)
            else:
                lo_any = np.unpackbits(lo_w.view(np.uint8), bitorder="little").reshape(n, width, 1 << d).any(axis=2)
            inside = np.array([_window_ok(x[2][3] - x[2][7], o, d, width) for x, o in zip(part, off)])
            oc = np.array([x if ok else 0 for x, ok in zip(off, inside)], dtype=np.int64)
            rows = np.arange(n)
            if width >= 64:
                # whole words of the other leaf (the offset is a multiple of the width)
                win = hi_w[rows[:, None], (oc >> 6)[:, None] + np.arange(width >> 6)]
                mine = np.packbits(lo_any, axis=1, bitorder="little").view("<u8")
                hit = (win & mine).any(axis=1)
            else:
                word = hi_w[rows, oc >> 6] >> (oc & 63).astype(np.uint64)
                mine = (lo_any.astype(np.uint64) << np.arange(width, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)
                hit = (word & mine) != 0
            for i, (k, _, _) in enumerate(part):
                if inside[i]:
                    out[k] = bool(hit[i])
    return out


#: radix leaves :func:`_leaf_pairs` tests together (each costs 2 x 4 KiB, 32 KiB for small d)
_LEAF_CHUNK = 1024


def _leaf_pairs(recs: list[_Rec]) -> list[tuple[_Rec, _Rec]] | None:
    """The pairs of :class:`BlockSets` records sorted by start (``recs``)
    that share a block, in the order the span sweep of ``check`` meets
    them, when every record is a whole radix leaf (4096 bytes, its bit 0 at
    a multiple of 32768 blocks of its order) and no two leaves of one order
    have the same place; None otherwise (the sweep then pairs them).

    Such leaves need no sweep: a leaf of order ``lo`` lies inside exactly
    one leaf's span of a larger order ``hi`` (``d = hi - lo``), the one
    holding block ``base >> d``, and covers ``32768 >> d`` of its bits (one
    when ``d > 15``).  For every pair of orders the leaves of ``lo`` are
    matched to that leaf by a sorted search, their bits ORed down to
    ``hi``'s blocks and ANDed with the window of ``hi``'s bits they fall
    in, a chunk of leaves at a time.  Leaves of one order never share
    memory (different places).  numpy only."""
    by_order: dict[int, list[int]] = {}
    for k, r in enumerate(recs):
        page = r[6]
        if page is None or len(page) != 4096 or (r[3] - r[7]) % _LEAF_BITS or r[3] >> 62:
            return None                 # (places beyond int64: the sweep handles them)
        by_order.setdefault(r[2], []).append(k)
    base = {o: np.array([(recs[k][3] - recs[k][7]) // _LEAF_BITS for k in ks], dtype=np.int64)
            for o, ks in by_order.items()}
    for b in base.values():
        srt_b = np.sort(b)
        if bool((srt_b[1:] == srt_b[:-1]).any()):      # (not np.unique: it imports numpy.ma)
            return None
    hits: list[tuple[int, int]] = []
    hi_pages: dict[int, Any] = {}           # order -> its leaves' words, (leaves, 512), in by_order's order
    hi_set: dict[int, Any] = {}             # order -> the set bits of those words, as one bitmap
    orders = sorted(by_order)
    for i, lo in enumerate(orders):
        lo_k = np.array(by_order[lo], dtype=np.int64)
        for hi in orders[i + 1:]:
            d = hi - lo
            hi_k = np.array(by_order[hi], dtype=np.int64)
            hb = base[hi]
            srt = np.argsort(hb, kind="stable")
            hb_sorted = hb[srt]
            hi_all = hi_pages.get(hi)
            if hi_all is None:
                hi_all = hi_pages[hi] = np.frombuffer(b"".join([recs[k][6] for k in by_order[hi]]),
                                                      dtype="<u8").reshape(-1, 512)
            # the larger block holding each small leaf's bit 0, and its leaf
            blk = (base[lo] << 15) >> d
            want = blk >> 15
            pos = np.minimum(np.searchsorted(hb_sorted, want), len(hb_sorted) - 1)
            found = np.flatnonzero(hb_sorted[pos] == want)
            if not len(found):
                continue
            width = _LEAF_BITS >> d if d <= 15 else 1
            if d <= 6:
                # few larger blocks (small orders in a map of pages): each
                # one's 2**d smaller blocks lie in one word of a small leaf
                hi_bits = hi_set.get(hi)
                if hi_bits is None:
                    hi_bits = hi_set[hi] = _set_bits_words(hi_all.view(np.uint8).reshape(-1))
                if len(hi_bits) <= 16 * len(found):
                    hits.extend(_few_large_blocks(recs, lo_k, base[lo], hi_k, hb, hi_bits, d))
                    continue
            for c0 in range(0, len(found), _LEAF_CHUNK):
                sel = found[c0:c0 + _LEAF_CHUNK]
                mine_k = lo_k[sel]
                hrow = srt[pos[sel]]
                other_k = hi_k[hrow]
                n = len(sel)
                off = blk[sel] & (_LEAF_BITS - 1)           # bit of the window in the larger leaf
                if d > 15:
                    # a small leaf inside one larger block: it has a set bit (it was added)
                    hit = (hi_all[hrow, off >> 6] >> (off & 63).astype(np.uint64)) & np.uint64(1) != 0
                else:
                    occ = [recs[k][8] for k in mine_k.tolist()]
                    if d >= 6 and None not in occ:
                        # the words' occupancy is enough: groups of 2**(d-6) words
                        cov = np.unpackbits(np.frombuffer(b"".join(occ), dtype=np.uint8),
                                            bitorder="little").reshape(n, width, -1).any(axis=2)
                    else:
                        lo_w = np.frombuffer(b"".join([recs[k][6] for k in mine_k.tolist()]),
                                             dtype="<u8").reshape(n, 512)
                        if d >= 6:
                            cov = (lo_w.reshape(n, width, -1) != 0).any(axis=2)
                        else:
                            cov = np.unpackbits(lo_w.view(np.uint8), bitorder="little").reshape(
                                n, width, 1 << d).any(axis=2)
                    if width >= 64:
                        win = hi_all[hrow[:, None], (off >> 6)[:, None] + np.arange(width >> 6)]
                        hit = (win & np.packbits(cov, axis=1, bitorder="little").view("<u8")).any(axis=1)
                    else:
                        word = hi_all[hrow, off >> 6] >> (off & 63).astype(np.uint64)
                        mine = (cov.astype(np.uint64) << np.arange(width, dtype=np.uint64)).sum(
                            axis=1, dtype=np.uint64)
                        hit = (word & mine) != 0
                for j in np.flatnonzero(hit).tolist():
                    ka, kb = int(mine_k[j]), int(other_k[j])
                    hits.append((max(ka, kb), min(ka, kb)))
    hits.sort()
    return [(recs[a], recs[b]) for b, a in hits]      # (earlier, later), as the sweep pairs them


def _few_large_blocks(recs: list[_Rec], lo_k: Any, lo_base: Any, hi_k: Any, hi_base: Any, hi_bits: Any,
                      d: int) -> list[tuple[int, int]]:
    """:func:`_leaf_pairs` for one pair of orders ``d <= 6`` apart, from the
    larger order's set bits (``hi_bits``: bit positions in its leaves'
    words joined, ``hi_base`` their places): every larger block's ``2**d``
    smaller blocks are bits ``off .. off + 2**d`` of one word of the small
    leaf holding them, when there is one.  The (later, earlier) record
    indices of each pair that shares a block, once."""
    row = hi_bits >> 15
    first = ((hi_base[row] << 15) + (hi_bits & (_LEAF_BITS - 1))) << d    # first smaller block
    leaf = first >> 15
    srt = np.argsort(lo_base, kind="stable")
    lb = lo_base[srt]
    at = np.minimum(np.searchsorted(lb, leaf), len(lb) - 1)
    ok = np.flatnonzero(lb[at] == leaf)
    mask = (1 << (1 << d)) - 1
    out: set[tuple[int, int]] = set()
    for lk, hk, off in zip(lo_k[srt[at[ok]]].tolist(), hi_k[row[ok]].tolist(),
                           (first[ok] & (_LEAF_BITS - 1)).tolist()):
        page = recs[lk][6]
        word = int.from_bytes(page[(off >> 6) << 3:((off >> 6) + 1) << 3], "little")
        if (word >> (off & 63)) & mask:
            out.add((max(lk, hk), min(lk, hk)))
    return sorted(out)


def _start(r: _Rec) -> int:
    start: int = r[0]
    return start


def _drop(err: KhoDecodeError) -> None:
    """The report callable of a BlockSets not checked yet."""


def _spread(v: int, d: int, off: int, n: int) -> int:
    """Bits ``off .. off+n`` of ``v`` with every bit repeated ``2**d`` times."""
    if 3 <= d <= 12:
        # whole bytes per bit: one table lookup per byte of v
        table = _SPREAD.get(d)
        if table is None:
            f = 1 << (d - 3)
            table = _SPREAD[d] = [b"".join((b"\xff" if x >> i & 1 else b"\x00") * f for i in range(8))
                                  for x in range(256)]
        full = int.from_bytes(b"".join([table[x] for x in v.to_bytes((v.bit_length() + 7) >> 3, "little")]),
                              "little")
        return (full >> off) & ((1 << n) - 1)
    if HAVE_NUMPY and v.bit_count() > 32:
        nb = v.bit_length()
        b = np.unpackbits(np.frombuffer(v.to_bytes((nb + 7) >> 3, "little"), dtype=np.uint8), bitorder="little")
        rep = np.repeat(b[:nb], 1 << d)[off:off + n]
        return int.from_bytes(np.packbits(rep, bitorder="little").tobytes(), "little")
    m = 0
    while v:
        low = v & -v
        k = low.bit_length() - 1
        v ^= low
        a = max((k << d) - off, 0)
        z = min(((k + 1) << d) - off, n)
        if z > a:
            m |= ((1 << (z - a)) - 1) << a
    return m


_SPREAD: dict[int, list[bytes]] = {}
