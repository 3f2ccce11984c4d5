"""The ``kho-v1`` preserved memory map: a list of ``khoser_mem_chunk`` pages.

``struct khoser_mem_chunk`` is one 4 KiB page: a 16-byte header ``{u64 next;
u32 order; u32 num_elms}`` then ``bitmaps[255]`` of ``{u64 phys_start; u64
bitmap}``.  Every element of a chunk has the chunk's order; bit ``i`` of the
bitmap at ``bitmap`` preserves the block at ``phys_start + (i << (order +
12))``.  The bitmap size is PRESERVE_BITS bits: 4096 (512 bytes) in 6.16-6.17
(generation A0), 32768 (one page) from 6.18 on - and ``kho-v1`` was not bumped
when it changed, so a decoder must be told (or guess) which.

The old kernel serialises orders in ascending order, a new chunk for each
order, bitmaps in ascending index, another chunk of the same order after 255
elements.  The new kernel walks chunk by chunk, element by element, bit by
bit, and checks nothing: not ``num_elms <= 255``, not the order, not cycles.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from ..errors import KhoDecodeError, MemoryFault
from . import bits
from .mem import Buffer, PageBytesFn, PhysMemory, WritableMemory, page_bytes_of, write_u64

__all__ = ["CHUNK_HDR", "ELEMENT", "KHOSER_BITMAP_SIZE", "PAGE_SHIFT", "PAGE_SIZE", "ChunkInfo", "ChunkTracker",
           "ChunkWalk", "bitmaps_from_runs", "element_index", "encode", "encode_bitmaps", "guess_preserve_bits",
           "walk"]

PAGE_SHIFT = 12
PAGE_SIZE = 4096
KHOSER_BITMAP_SIZE = (PAGE_SIZE - 16) // 16   # 255
CHUNK_HDR = struct.Struct("<QII")
ELEMENT = struct.Struct("<QQ")


def element_index(pfn: int, order: int, preserve_bits: int) -> tuple[int, int]:
    """(bitmap index, bit) tracking block ``pfn`` of ``order``."""
    n = pfn >> order
    return n // preserve_bits, n % preserve_bits


@dataclass
class ChunkTracker:
    """The old kernel's tracker: order -> bitmap index -> set bits.

    Bitmaps, once created, stay (unpreserve clears bits, it frees nothing),
    so an order whose bits were all cleared still gets a chunk with empty
    bitmaps, as in the kernel.
    """

    preserve_bits: int
    orders: dict[int, dict[int, set[int]]] = field(default_factory=dict)

    def add(self, phys: int, order: int) -> None:
        idx, bit = element_index(phys >> PAGE_SHIFT, order, self.preserve_bits)
        self.orders.setdefault(order, {}).setdefault(idx, set()).add(bit)

    def remove(self, phys: int, order: int) -> bool:
        idx, bit = element_index(phys >> PAGE_SHIFT, order, self.preserve_bits)
        s = self.orders.get(order, {}).get(idx)
        if s is None or bit not in s:
            return False
        s.discard(bit)
        return True

    def blocks(self) -> Iterator[tuple[int, int]]:
        for order in sorted(self.orders):
            for idx in sorted(self.orders[order]):
                base = (idx * self.preserve_bits) << (order + PAGE_SHIFT)
                for bit in sorted(self.orders[order][idx]):
                    yield base + (bit << (order + PAGE_SHIFT)), order


def encode(tracker: ChunkTracker, mem: WritableMemory, alloc: Callable[[int], int | None],
           bitmap_phys: dict[tuple[int, int], int] | None = None) -> tuple[int, list[int]]:
    """Serialise ``tracker`` as a chunk list; returns (first chunk phys, chunk pages).

    ``alloc(size)`` returns zeroed memory (the chunk pages, and the bitmaps
    unless ``bitmap_phys`` already places them).  Returns (0, []) when the
    tracker has no order at all, as ``kho_mem_serialize`` does.
    """
    orders = {o: {idx: sum(1 << b for b in bits_) for idx, bits_ in d.items()} for o, d in tracker.orders.items()}
    return encode_bitmaps(orders, tracker.preserve_bits, mem, alloc, bitmap_phys)


def bitmaps_from_runs(runs: Iterable[tuple[int, int, int]], preserve_bits: int) -> dict[int, dict[int, int]]:
    """order -> bitmap index -> bitmap (an int) of ``runs`` of ``(phys, count,
    order)``: what a :class:`ChunkTracker` holds after adding every block,
    without a Python object per block."""
    orders: dict[int, dict[int, int]] = {}
    for phys, count, order in runs:
        if count <= 0:
            continue
        n = (phys >> PAGE_SHIFT) >> order
        end = n + count
        d = orders.setdefault(order, {})
        while n < end:
            idx, bit = divmod(n, preserve_bits)
            hi = min(end - idx * preserve_bits, preserve_bits)
            d[idx] = d.get(idx, 0) | (((1 << (hi - bit)) - 1) << bit)
            n = idx * preserve_bits + hi
    return orders


def encode_bitmaps(orders: dict[int, dict[int, int]], preserve_bits: int, mem: WritableMemory,
                   alloc: Callable[[int], int | None],
                   bitmap_phys: dict[tuple[int, int], int] | None = None) -> tuple[int, list[int]]:
    """:func:`encode` of bitmaps given as ints (``bitmaps_from_runs``): the
    same bytes, allocations in the same order, one write per bitmap."""
    bitmap_bytes = preserve_bits // 8
    bitmap_phys = {} if bitmap_phys is None else bitmap_phys
    first = 0
    chunks: list[int] = []
    cur: int | None = None
    nelm = 0
    for order in sorted(orders):
        for n, idx in enumerate(sorted(orders[order])):
            if cur is None or n == 0 or nelm == KHOSER_BITMAP_SIZE:
                new = alloc(PAGE_SIZE)
                if not new:
                    raise MemoryError("chunk allocation failed")
                mem.write(new + 8, struct.pack("<II", order, 0))
                if cur is not None:
                    write_u64(mem, cur, new)
                else:
                    first = new
                chunks.append(new)
                cur, nelm = new, 0
            bm = bitmap_phys.get((order, idx))
            if bm is None:
                bm = alloc(bitmap_bytes)
                if not bm:
                    raise MemoryError("bitmap allocation failed")
                bitmap_phys[(order, idx)] = bm
            mem.write(bm, orders[order][idx].to_bytes(bitmap_bytes, "little"))
            phys_start = (idx * preserve_bits) << (order + PAGE_SHIFT)
            mem.write(cur + 16 + 16 * nelm, ELEMENT.pack(phys_start, bm))
            nelm += 1
            mem.write(cur + 12, struct.pack("<I", nelm))
    return first, chunks


@dataclass
class ChunkInfo:
    phys: int
    order: int
    num_elms: int
    next: int


@dataclass
class ChunkWalk:
    """A walk of the chunk list at ``first`` with bitmaps of ``preserve_bits``.

    :meth:`leaves` yields ``(order, phys_array)`` per bitmap, :meth:`blocks`
    ``(phys, order)`` in the kernel's order.  Problems are collected in
    ``problems`` (or raised with ``strict``): ``num_elms`` over 255 (the
    kernel would read past the chunk; we read the first 255 only), a chunk
    reached twice (the kernel would loop forever), pointers outside memory.
    """

    mem: PhysMemory
    first: int
    preserve_bits: int = 32768
    strict: bool = False
    chunks: list[ChunkInfo] = field(default_factory=list)
    bitmaps: list[int] = field(default_factory=list)
    problems: list[KhoDecodeError] = field(default_factory=list)
    max_chunks: int = 1 << 22

    def _problem(self, err: KhoDecodeError) -> None:
        if self.strict:
            raise err
        self.problems.append(err)

    def _read(self, phys: int, size: int, structure: str, fast: PageBytesFn | None) -> Buffer:
        if size == PAGE_SIZE and fast is not None and not phys & (PAGE_SIZE - 1):
            page = fast(phys >> PAGE_SHIFT)    # the source's stored page: no copy
            if page is not None:
                return page
        return self.mem.read(phys, size, structure)

    def leaves(self) -> Iterator[tuple[int, bits.U64s]]:
        for order, phys_start, shift, bitmap, _ in self._bitmaps():
            sb = bits.set_bits(bitmap)
            if len(sb):
                yield order, bits.offsets(sb, phys_start, shift)

    def _bitmaps(self) -> Iterator[tuple[int, int, int, Buffer, int]]:
        """(order, phys_start, shift, bitmap bytes, bitmap phys) of every element
        with a page order, in walk order."""
        fast = page_bytes_of(self.mem)
        self.chunks.clear()
        self.bitmaps.clear()
        self.problems.clear()
        seen: set[int] = set()
        seen_bitmaps: set[int] = set()
        at = self.first
        nbytes = self.preserve_bits // 8
        while at:
            if at in seen:
                self._problem(KhoDecodeError("khoser_mem_chunk", at,
                                             "reached a second time: the list has a cycle (the kernel would loop)",
                                             code="chunk-cycle"))
                return
            if len(seen) >= self.max_chunks:
                self._problem(KhoDecodeError("khoser_mem_chunk list", self.first,
                                             f"more than {self.max_chunks} chunks; walk stopped",
                                             code="chunk-too-many"))
                return
            seen.add(at)
            try:
                page = self._read(at, PAGE_SIZE, "khoser_mem_chunk", fast)
            except MemoryFault as e:
                self._problem(KhoDecodeError("khoser_mem_chunk", at, f"page is not in {e.source}",
                                             code="chunk-pointer-outside"))
                return
            nxt, order, num = CHUNK_HDR.unpack_from(page)
            self.chunks.append(ChunkInfo(at, order, num, nxt))
            if num > KHOSER_BITMAP_SIZE:
                self._problem(KhoDecodeError("khoser_mem_chunk", at,
                                             f"num_elms {num} > {KHOSER_BITMAP_SIZE}; the kernel reads past the chunk",
                                             code="chunk-num-elms"))
                num = KHOSER_BITMAP_SIZE
            shift = order + PAGE_SHIFT
            for i in range(num):
                phys_start, bm = ELEMENT.unpack_from(page, 16 + 16 * i)
                try:
                    bitmap = self._read(bm, nbytes, "kho-v1 bitmap", fast)
                except MemoryFault as e:
                    self._problem(KhoDecodeError("kho-v1 bitmap", bm,
                                                 f"element {i} of chunk 0x{at:x}: {nbytes} bytes not in {e.source}",
                                                 code="chunk-pointer-outside"))
                    continue
                if bm in seen_bitmaps:
                    # never in a real map (each bitmap belongs to one element);
                    # walking it again would let a few pages describe
                    # millions of blocks
                    self._problem(KhoDecodeError("kho-v1 bitmap", bm,
                                                 f"element {i} of chunk 0x{at:x} reuses a bitmap already walked",
                                                 code="chunk-shared-bitmap"))
                    continue
                seen_bitmaps.add(bm)
                self.bitmaps.append(bm)
                if shift >= 64:
                    if bits.count(bitmap):
                        self._problem(KhoDecodeError("khoser_mem_chunk", at, f"order {order} is not a page order",
                                                     code="chunk-bad-order"))
                    continue
                yield order, phys_start, shift, bitmap, bm
            at = nxt

    def blocks(self) -> Iterator[tuple[int, int]]:
        for order, physs in self.leaves():
            for p in bits.tolist(physs):
                yield p, order

    def _bitmap_batches(self, limit: list[int], split_full: bool = False
                        ) -> Iterator[tuple[int, bool, list[int], list[Buffer], list[int]]]:
        """Elements in walk order, consecutive ones of one order grouped:
        ``(order, full, phys_starts, bitmaps, bitmap phys)``, at most
        ``limit[0]`` a group; with ``split_full`` full bitmaps are grouped
        apart, at most ``limit[1]`` a group, and flagged."""
        group = (0, False)          # (order, full) of the bitmaps in ``starts``
        starts: list[int] = []
        maps: list[Buffer] = []
        where: list[int] = []
        for order, phys_start, _shift, bitmap, bm in self._bitmaps():
            g = (order, split_full and bits.is_full(bitmap))
            if starts and (g != group or len(starts) >= limit[g[1]]):
                yield group[0], group[1], starts, maps, where
                starts, maps, where = [], [], []
            group = g
            starts.append(phys_start)
            maps.append(bitmap)
            where.append(bm)
        if starts:
            yield group[0], group[1], starts, maps, where

    def batches(self, max_blocks: int = 1 << 16) -> Iterator[tuple[int, bits.U64s]]:
        """:meth:`leaves` with consecutive bitmaps of one order joined: the
        same ``(order, phys array)`` content in the same order, one numpy
        pass per batch (none to scan a full bitmap), batches aiming at
        ``max_blocks`` blocks as :meth:`RadixWalk.batches` does."""
        nb = self.preserve_bits
        if not bits.HAVE_NUMPY or nb <= 0 or nb & (nb - 1) or nb % 64:
            yield from self.leaves()
            return
        limit = [16, max(1, max_blocks // nb)]
        cap = max(64, 2 * limit[1])
        for order, full, starts, maps, _ in self._bitmap_batches(limit, split_full=True):
            physs = bits.chunk_batch_phys(maps, starts, nb.bit_length() - 1, order + PAGE_SHIFT, full)
            if not full:
                limit[0] = max(1, min(cap, max_blocks * len(maps) // (len(physs) + 1)))
            if len(physs):
                yield order, physs

    def summarize(self) -> bits.MapSummary:
        """Count what the walk visits, and check that no two blocks share memory.

        The same walk as :meth:`leaves` (same ``chunks``, ``bitmaps`` and
        ``problems``), bitmaps counted by popcount, overlapping or duplicate
        blocks (two elements for one bitmap index, elements of different
        orders covering the same memory) looked for with
        :class:`bits.BlockSets` and added to ``problems``.  An element whose
        ``phys_start`` is not a multiple of its block size is a problem
        (``chunk-unaligned-start``) and left out of the overlap check.
        """
        out = bits.MapSummary()
        sets = bits.BlockSets()
        for order, _, starts, maps, where in self._bitmap_batches([64, 64]):
            shift = order + PAGE_SHIFT
            total = 0
            for phys_start, bitmap, bm, (n, lo, hi) in zip(starts, maps, where, bits.batch_counts(maps)):
                if lo is None or hi is None:        # n == 0
                    continue
                total += n
                if phys_start & ((1 << shift) - 1):
                    out.unchecked += n
                    self._problem(KhoDecodeError(
                        "kho-v1 bitmap", bm, f"phys_start 0x{phys_start:x} is not a multiple of the order-{order} "
                        f"block size; its {n} blocks are not checked for overlaps", code="chunk-unaligned-start"))
                    continue
                sets.add_bitmap(order, phys_start >> shift, bitmap, lo, hi, bm)
            out.count(order, total)
        sets.check(out, self._problem)
        out.problems = self.problems
        return out


def walk(mem: PhysMemory, first: int, preserve_bits: int = 32768, strict: bool = True) -> list[tuple[int, int]]:
    return list(ChunkWalk(mem, first, preserve_bits, strict=strict).blocks())


def guess_preserve_bits(mem: PhysMemory, first: int) -> tuple[int, str]:
    """Tell 512-byte (6.16/6.17) from 4 KiB (6.18+) bitmaps, with the evidence.

    Proof of 512-byte bitmaps (kmalloc-512 objects): a bitmap address that is
    not page aligned, two bitmaps closer than 4 KiB, or a ``phys_start`` that
    is a multiple of a 512-byte bitmap's coverage (16 MiB << order) but not
    of a 4 KiB bitmap's (128 MiB << order).  Without any, 4 KiB is the
    reading (6.18+ bitmaps are whole pages and starts are multiples of the
    larger coverage).
    """
    w = ChunkWalk(mem, first, 4096 * 8)
    for _ in w._bitmaps():          # the chunk list only: no set bits needed
        pass
    evidence: list[str] = []
    addrs: list[int] = []
    for c in w.chunks:
        try:
            page = mem.read(c.phys, PAGE_SIZE)
        except MemoryFault:
            continue
        for i in range(min(c.num_elms, KHOSER_BITMAP_SIZE)):
            ps, bm = ELEMENT.unpack_from(page, 16 + 16 * i)
            addrs.append(bm)
            if c.order + PAGE_SHIFT >= 64:      # not a page order: no coverage to compare
                continue
            big = (4096 * 8) << (c.order + PAGE_SHIFT)
            small = (512 * 8) << (c.order + PAGE_SHIFT)
            if big < 1 << 64 and ps % big and not ps % small:
                evidence.append(f"phys_start 0x{ps:x} (order {c.order}) is a multiple of 0x{small:x} "
                                f"but not of 0x{big:x}")
            if bm % PAGE_SIZE:
                evidence.append(f"bitmap at 0x{bm:x} is not page aligned")
    addrs.sort()
    for a, b in itertools.pairwise(addrs):
        if 0 < b - a < PAGE_SIZE:
            evidence.append(f"bitmaps at 0x{a:x} and 0x{b:x} are {b - a} bytes apart")
            break
    if evidence:
        return 512 * 8, "512-byte bitmaps (6.16/6.17): " + "; ".join(evidence[:3])
    if not addrs:
        return 4096 * 8, "no bitmaps to tell the size by; assuming 4 KiB (6.18+)"
    return 4096 * 8, (f"4 KiB bitmaps (6.18+): all {len(addrs)} bitmaps page aligned and every "
                      "phys_start a multiple of a 4 KiB bitmap's coverage")
