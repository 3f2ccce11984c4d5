"""The preserved-memory radix tree of ``kho-v2`` .. ``kho-v4``.

Layout (4 KiB pages): ``preserved-memory-map`` holds the physical address of
the root node.  Levels 5..1 are ``struct kho_radix_node`` tables of 512
little-endian u64 physical addresses (0 = empty); a level-1 entry points to a
``struct kho_radix_leaf``, a 32768-bit little-endian bitmap.

A block ``(phys, order)`` is the key ``(1 << (52 - order)) | (phys >> (12 +
order))``; level ``L`` indexes with bits ``15 + 9*(L-1)`` .. ``+8`` of the key
and the leaf with its low 15 bits.  Decoding a key gives ``order = 53 -
bitlen(key)`` and ``phys = key << (12 + order)`` (mod 2**64).

The incoming kernel walks the tree depth first, table entries in ascending
index, leaf bits in ascending order (``kho_radix_walk_tree``); this module's
walker yields blocks in that same order.  Tree pages are not themselves
preserved: they survive because the new kernel allocates from scratch only
until the walk is done.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from ..errors import EINVAL, ENOMEM, KhoDecodeError, MemoryFault
from . import bits
from .mem import Buffer, PageBytesFn, PhysMemory, WritableMemory, page_buffer_of, page_bytes_of, read_u64, write_u64

__all__ = ["KHO_BITMAP_SIZE_LOG2", "KHO_ORDER_0_LOG2", "KHO_TABLE_SIZE_LOG2", "KHO_TREE_MAX_DEPTH", "LEAF_BITS",
           "MASK64", "PAGE_SHIFT", "PAGE_SIZE", "TABLE_ENTRIES", "RadixNodeInfo", "RadixTree", "RadixWalk",
           "bitmap_index", "decode_key", "encode", "encode_key", "encode_runs", "level_shift", "table_index", "walk"]

PAGE_SHIFT = 12
PAGE_SIZE = 4096
KHO_ORDER_0_LOG2 = 64 - PAGE_SHIFT          # 52
KHO_TABLE_SIZE_LOG2 = 9                      # 512 entries per node
KHO_BITMAP_SIZE_LOG2 = PAGE_SHIFT + 3        # 15: 32768 bits per leaf
KHO_TREE_MAX_DEPTH = 6                       # levels 5..0
TABLE_ENTRIES = 1 << KHO_TABLE_SIZE_LOG2
LEAF_BITS = 1 << KHO_BITMAP_SIZE_LOG2
MASK64 = (1 << 64) - 1


def encode_key(phys: int, order: int) -> int:
    """``kho_radix_encode_key``."""
    return (1 << (KHO_ORDER_0_LOG2 - order)) | (phys >> (PAGE_SHIFT + order))


def decode_key(key: int) -> tuple[int, int]:
    """``kho_radix_decode_key``: (phys, order).  ``order`` is out of range
    (negative or > 52) for keys the kernel would misdecode."""
    order = KHO_ORDER_0_LOG2 + 1 - key.bit_length()
    if order < 0 or order > KHO_ORDER_0_LOG2:
        return 0, order
    return (key << (PAGE_SHIFT + order)) & MASK64, order


def table_index(key: int, level: int) -> int:
    return (key >> ((level - 1) * KHO_TABLE_SIZE_LOG2 + KHO_BITMAP_SIZE_LOG2)) & (TABLE_ENTRIES - 1)


def bitmap_index(key: int) -> int:
    return key & (LEAF_BITS - 1)


def level_shift(level: int) -> int:
    return (level - 1) * KHO_TABLE_SIZE_LOG2 + KHO_BITMAP_SIZE_LOG2


class RadixTree:
    """The old kernel's ``kho_radix_tree`` written into physical memory.

    ``alloc_page`` returns the physical address of a zeroed page or None
    (allocation failure, as ``get_zeroed_page`` returning NULL);
    ``free_page`` gives one back.  :meth:`add` and :meth:`delete` follow
    ``kho_radix_add_page`` / ``kho_radix_del_page``: missing nodes are
    allocated top-down, a failed allocation frees the new branch and clears
    its anchor slot (-ENOMEM); deleting clears the bit and never frees nodes.
    """

    def __init__(self, mem: WritableMemory, alloc_page: Callable[[], int | None],
                 free_page: Callable[[int], None] | None = None, root: int | None = None) -> None:
        self.mem = mem
        self.alloc_page = alloc_page
        self.free_page: Callable[[int], None] = free_page or _no_free
        self.root = root if root is not None else alloc_page()
        self.nodes: list[int] = [] if self.root is None else [self.root]
        # the source's stored pages, read and edited in place when it has them
        self._page_buffer = page_buffer_of(mem)

    def _entry(self, node: int, idx: int) -> int:
        buf = self._page_buffer
        if buf is not None:
            pg = buf(node >> PAGE_SHIFT)
            if pg is not None:                     # a stored page: no copy
                v: int = struct.unpack_from("<Q", pg, (node & (PAGE_SIZE - 1)) + 8 * idx)[0]
                return v
        return read_u64(self.mem, node + 8 * idx)

    def _or_bit(self, node: int, bit: int, set_: bool) -> None:
        byte = node + (bit >> 3)
        mask = 1 << (bit & 7)
        buf = self._page_buffer
        pg = buf(byte >> PAGE_SHIFT) if buf is not None else None
        if pg is not None:
            off = byte & (PAGE_SIZE - 1)
            pg[off] = (pg[off] | mask) if set_ else (pg[off] & ~mask & 0xFF)
            return
        old = self.mem.read(byte, 1)[0]
        self.mem.write(byte, bytes([(old | mask) if set_ else (old & ~mask & 0xFF)]))

    def add(self, phys: int, order: int) -> int:
        if not self.root:
            return -EINVAL
        key = encode_key(phys, order)
        node = self.root
        new_nodes: list[int] = []
        anchor: tuple[int, int] | None = None
        for level in range(KHO_TREE_MAX_DEPTH - 1, 0, -1):
            idx = table_index(key, level)
            child = self._entry(node, idx)
            if child:
                node = child
                continue
            new = self.alloc_page()
            if not new:
                for p in new_nodes:
                    self.free_page(p)
                    self.nodes.remove(p)
                if anchor is not None:
                    write_u64(self.mem, anchor[0] + 8 * anchor[1], 0)
                return -ENOMEM
            write_u64(self.mem, node + 8 * idx, new)
            if anchor is None:
                anchor = (node, idx)
            new_nodes.append(new)
            self.nodes.append(new)
            node = new
        self._or_bit(node, bitmap_index(key), True)
        return 0

    def delete(self, phys: int, order: int) -> bool:
        """Clear the block's bit; False (the kernel WARNs) when its path is missing."""
        if not self.root:
            return False
        key = encode_key(phys, order)
        node = self.root
        for level in range(KHO_TREE_MAX_DEPTH - 1, 0, -1):
            child = self._entry(node, table_index(key, level))
            if not child:
                return False
            node = child
        self._or_bit(node, bitmap_index(key), False)
        return True


def _no_free(phys: int) -> None:
    """The default ``free_page``: pages handed back are not reused."""


def encode(blocks: Iterable[tuple[int, int]], mem: WritableMemory, alloc_page: Callable[[], int | None]) -> RadixTree:
    """Write a radix tree preserving every ``(phys, order)`` of ``blocks``."""
    tree = RadixTree(mem, alloc_page)
    for phys, order in blocks:
        err = tree.add(phys, order)
        if err:
            raise MemoryError(f"radix node allocation failed ({err})")
    return tree


def encode_runs(runs: Iterable[tuple[int, int, int]], mem: WritableMemory, alloc_page: Callable[[], int | None],
                tree: RadixTree | None = None) -> RadixTree:
    """Bulk :func:`encode`: ``runs`` are ``(phys, count, order)``, ``count``
    consecutive blocks of ``order`` from ``phys`` on.

    Writes the same bytes, with nodes allocated in the same order, as
    :meth:`RadixTree.add` called for every block of every run in turn, but
    sets a leaf's bits with one write (a leaf of 32768 preserved pages is
    one 4 KiB store), so a terabyte of order-0 pages is 8192 leaf writes
    instead of 268 million calls.  Adds to ``tree`` when given.  A failed
    node allocation frees the new branch and clears its anchor like
    :meth:`RadixTree.add`, then raises MemoryError; the bits written before
    it are those of the leaves already completed (not a prefix of the runs).
    """
    tree = tree if tree is not None else RadixTree(mem, alloc_page)
    root = tree.root
    if not root:
        raise MemoryError("radix root allocation failed")
    leaves: dict[int, int] = {}             # leaf key prefix -> bits, in first-touch order
    for phys, count, order in runs:
        if count <= 0:
            continue
        if not 0 <= order <= KHO_ORDER_0_LOG2:
            raise ValueError(f"order {order} out of range")
        key = encode_key(phys, order)
        end = key + count
        if end > 2 << (KHO_ORDER_0_LOG2 - order):
            raise ValueError(f"run of {count} order-{order} blocks from 0x{phys:x} passes 2**64")
        while key < end:
            pre = key & ~(LEAF_BITS - 1)
            lo = key - pre
            hi = min(end - pre, LEAF_BITS)
            leaves[pre] = leaves.get(pre, 0) | (((1 << (hi - lo)) - 1) << lo)
            key = pre + hi
    known: dict[tuple[int, int], int] = {}   # (level, key >> level shift) -> node
    full = (1 << LEAF_BITS) - 1
    for pre, v in leaves.items():
        node = root
        new_nodes: list[int] = []
        anchor: tuple[int, int] | None = None
        for level in range(KHO_TREE_MAX_DEPTH - 1, 0, -1):
            ck = (level, pre >> level_shift(level))
            child = known.get(ck)
            if child is None:
                idx = table_index(pre, level)
                child = tree._entry(node, idx)
                if not child:
                    new = alloc_page()
                    if not new:
                        for p in new_nodes:
                            tree.free_page(p)
                            tree.nodes.remove(p)
                        if anchor is not None:
                            write_u64(mem, anchor[0] + 8 * anchor[1], 0)
                        raise MemoryError(f"radix node allocation failed (-{ENOMEM})")
                    child = new
                    write_u64(mem, node + 8 * idx, child)
                    if anchor is None:
                        anchor = (node, idx)
                    new_nodes.append(child)
                    tree.nodes.append(child)
                known[ck] = child
            node = child
        if v != full:
            v |= int.from_bytes(mem.read(node, PAGE_SIZE), "little")
        mem.write(node, v.to_bytes(PAGE_SIZE, "little"))
    return tree


@dataclass
class RadixNodeInfo:
    phys: int
    level: int           # 5..1 for tables, 0 for leaves
    key: int             # key prefix this node covers


@dataclass
class RadixWalk:
    """A walk of the tree found at ``root`` in ``mem``.

    Iterate :meth:`blocks` for ``(phys, order)`` in the kernel's walk order,
    or :meth:`leaves` for ``(order, phys_array)`` per leaf (numpy arrays when
    numpy is installed, lists otherwise).  Problems met on the way (pointers
    outside the memory given, nodes reached twice, keys that do not decode)
    are collected in ``problems``; with ``strict`` the first one is raised.
    Nothing read from the input sizes an allocation; a shared node is walked
    once, so a hostile tree cannot make the walk exponential.
    """

    mem: PhysMemory
    root: int
    strict: bool = False
    max_order: int | None = None
    nodes: list[RadixNodeInfo] = field(default_factory=list)
    problems: list[KhoDecodeError] = field(default_factory=list)
    max_nodes: int = 1 << 24

    def _problem(self, err: KhoDecodeError) -> None:
        if self.strict:
            raise err
        self.problems.append(err)

    def _read_node(self, phys: int, level: int, parent: int | None, idx: int | None,
                   fast: PageBytesFn | None) -> Buffer | None:
        if fast is not None and not phys & (PAGE_SIZE - 1):
            page = fast(phys >> PAGE_SHIFT)    # the source's stored page: no copy
            if page is not None:
                return page
        try:
            return self.mem.read(phys, PAGE_SIZE, "radix node")
        except MemoryFault as e:
            where = "root node" if parent is None else f"level {level} node (entry {idx} of 0x{parent:x})"
            self._problem(KhoDecodeError(f"radix {where}", phys,
                                         f"page is not in {e.source}", code="radix-pointer-outside"))
            return None

    def leaves(self) -> Iterator[tuple[int, bits.U64s]]:
        for phys, page, prefix in self._leaf_pages():
            yield from self._leaf(phys, page, prefix)

    def _leaf_pages(self) -> Iterator[tuple[int, Buffer, int]]:
        """(phys, page bytes, key prefix) of every leaf, in walk order."""
        self.nodes.clear()
        self.problems.clear()
        seen: set[int] = set()
        if not self.root:
            return
        fast = page_bytes_of(self.mem)
        # (phys, level, key prefix, parent, idx)
        stack: list[tuple[int, int, int, int | None, int | None]] = []
        stack.append((self.root, KHO_TREE_MAX_DEPTH - 1, 0, None, None))
        while stack:
            phys, level, prefix, parent, pidx = stack.pop()
            if phys in seen:
                self._problem(KhoDecodeError(
                    f"radix level {level} node", phys,
                    f"reached a second time (entry {pidx} of 0x{parent:x}); the kernel would walk it again",
                    code="radix-shared-node"))
                continue
            if len(seen) >= self.max_nodes:
                self._problem(KhoDecodeError("radix tree", self.root,
                                             f"more than {self.max_nodes} nodes; walk stopped",
                                             code="radix-too-many-nodes"))
                return
            seen.add(phys)
            if phys & (PAGE_SIZE - 1):
                # the kernel's nodes are whole pages; an unaligned pointer
                # would let overlapping "nodes" re-read the same bytes, so it
                # is reported and not followed
                self._problem(KhoDecodeError(f"radix level {level} node", phys,
                                             "pointer is not page aligned (not followed)",
                                             code="radix-unaligned-node"))
                continue
            page = self._read_node(phys, level, parent, pidx, fast)
            if page is None:
                continue
            self.nodes.append(RadixNodeInfo(phys, level, prefix))
            if level == 0:
                yield phys, page, prefix
                continue
            shift = level_shift(level)
            children = bits.nonzero_u64(page)
            # push in reverse so the stack pops ascending indices first
            for idx, child in reversed(children):
                stack.append((child, level - 1, prefix | (idx << shift), phys, idx))

    def _leaf(self, phys: int, page: Buffer, key: int) -> Iterator[tuple[int, bits.U64s]]:
        set_bits = bits.set_bits(page)
        if len(set_bits) == 0:
            return
        # every bit of one leaf shares the key's high part, hence the order,
        # unless the order bit falls inside the leaf's 15 bits (order > 37)
        top = key | (LEAF_BITS - 1)
        order = KHO_ORDER_0_LOG2 + 1 - top.bit_length()
        if order < 0:
            self._problem(KhoDecodeError("radix leaf", phys,
                                         f"key prefix 0x{key:x} has bits above bit 52: no valid order "
                                         f"({len(set_bits)} set bits ignored)", code="radix-bad-key"))
            return
        if KHO_ORDER_0_LOG2 - order < KHO_BITMAP_SIZE_LOG2:
            for b in bits.tolist(set_bits):
                p, o = decode_key(key | b)
                if (key | b) == 0 or o < 0 or o > KHO_ORDER_0_LOG2:
                    self._problem(KhoDecodeError("radix leaf", phys, f"bit {b} decodes to no valid order",
                                                 code="radix-bad-key"))
                    continue
                yield o, bits.array([p])
            return
        shift = PAGE_SHIFT + order
        yield order, bits.phys_of(set_bits, key, shift)

    def blocks(self) -> Iterator[tuple[int, int]]:
        for order, physs in self.leaves():
            for p in bits.tolist(physs):
                yield p, order

    def _leaf_batches(self, limit: list[int], split_full: bool = False
                      ) -> Iterator[tuple[int | None, bool, list[int], list[Buffer], list[int]]]:
        """Leaves in walk order, consecutive ones of one order grouped:
        ``(order, full, keys, pages, phys)``, at most ``limit[0]`` leaves a
        group; with ``split_full`` full leaves (every bit set) are grouped
        apart, at most ``limit[1]`` a group, and flagged.  ``limit`` is read
        at every leaf (a consumer may tune it).  A leaf whose bits do not
        share one order comes alone with order None."""
        group = (0, False)          # (order, full) of the leaves in ``keys``
        keys: list[int] = []
        pages: list[Buffer] = []
        where: list[int] = []
        for phys, page, key in self._leaf_pages():
            order = KHO_ORDER_0_LOG2 + 1 - (key | (LEAF_BITS - 1)).bit_length()
            if order < 0 or KHO_ORDER_0_LOG2 - order < KHO_BITMAP_SIZE_LOG2:
                if keys:
                    yield group[0], group[1], keys, pages, where
                    keys, pages, where = [], [], []
                yield None, False, [key], [page], [phys]
                continue
            g = (order, split_full and bits.is_full(page))
            if keys and (g != group or len(keys) >= limit[g[1]]):
                yield group[0], group[1], keys, pages, where
                keys, pages, where = [], [], []
            group = g
            keys.append(key)
            pages.append(page)
            where.append(phys)
        if keys:
            yield group[0], group[1], keys, pages, where

    def batches(self, max_blocks: int = 1 << 16) -> Iterator[tuple[int, bits.U64s]]:
        """:meth:`leaves` with consecutive leaves of one order joined: the
        same ``(order, phys array)`` content in the same order, one numpy
        pass per batch (none to scan a full leaf).  Batches aim at
        ``max_blocks`` blocks (small arrays stay in cache): full leaves
        ``max_blocks / 32768`` at a time, others as many as the blocks per
        leaf seen last allow (1 to 64)."""
        if not bits.HAVE_NUMPY:
            yield from self.leaves()
            return
        limit = [16, max(1, max_blocks >> KHO_BITMAP_SIZE_LOG2)]
        for order, full, keys, pages, where in self._leaf_batches(limit, split_full=True):
            if order is None:
                yield from self._leaf(where[0], pages[0], keys[0])
                continue
            physs = bits.radix_batch_phys(pages, keys, PAGE_SHIFT + order, full)
            if not full:
                limit[0] = max(1, min(64, max_blocks * len(pages) // (len(physs) + 1)))
            if len(physs):
                yield order, physs

    def runs(self, group: int = 256) -> Iterator[tuple[int, int, bits.I64s, bits.I64s]]:
        """The preserved memory as runs, leaf group by leaf group: ``(order,
        blocks, starts, ends)`` with int64 arrays of phys (ascending in a
        group), from the bitmaps' bit edges; the same memory and problems as
        :meth:`leaves`.  A leaf that takes the block path (a key with no
        single order, blocks that wrap) comes as one run per block.  numpy only."""
        import numpy as np
        for order, _, keys, pages, where in self._leaf_batches([group, group]):
            got = None if order is None else bits.radix_batch_runs(pages, keys, PAGE_SHIFT + order)
            if got is None:
                for phys, page, key in zip(where, pages, keys):
                    for o, physs in self._leaf(phys, page, key):
                        a = np.asarray(physs, dtype=np.uint64).view(np.int64)
                        if len(a):
                            yield o, len(a), a, a + (1 << (PAGE_SHIFT + o))
                continue
            starts, ends = got
            if len(starts) and order is not None:
                yield order, int(((ends - starts) >> (PAGE_SHIFT + order)).sum()), starts, ends

    def summarize(self) -> bits.MapSummary:
        """Count what the walk visits, and check that no two blocks share memory.

        The same walk as :meth:`leaves` (same ``nodes``, same ``problems``),
        but leaves are counted by popcount instead of being turned into
        addresses, and overlapping or duplicate blocks are looked for with
        :class:`bits.BlockSets` (found ones are added to ``problems``, raised
        with ``strict``).  Nothing per block is built.
        """
        out = bits.MapSummary()
        sets = bits.BlockSets()
        for order, _, keys, pages, where in self._leaf_batches([64, 64]):
            if order is None:
                # no order, or one per bit: the per-bit path says what is wrong
                for o, physs in self._leaf(where[0], pages[0], keys[0]):
                    for p in bits.tolist(physs):
                        out.count(o, 1)
                        sets.add(o, p >> (PAGE_SHIFT + o), 1, where[0])
                continue
            total = 0
            mask = (1 << (KHO_ORDER_0_LOG2 - order)) - 1
            if bits.HAVE_NUMPY:            # radix nodes are whole pages (_read_node)
                counts, occupied = bits.leaf_counts(pages)
                for i, (key, page, phys, n) in enumerate(zip(keys, pages, where, counts)):
                    if n:
                        total += n
                        sets.add_leaf(order, key & mask, page, occupied[i << 6:(i + 1) << 6], phys)
            else:
                for key, page, phys, (n, lo, hi) in zip(keys, pages, where, bits.batch_counts(pages)):
                    if lo is not None and hi is not None:       # n > 0
                        total += n
                        sets.add_bitmap(order, key & mask, page, lo, hi, phys)
            out.count(order, total)
        sets.check(out, self._problem)
        out.problems = self.problems
        return out


def walk(mem: PhysMemory, root: int, strict: bool = True) -> list[tuple[int, int]]:
    """Every preserved ``(phys, order)`` in walk order; raises on the first problem."""
    return list(RadixWalk(mem, root, strict=strict).blocks())
