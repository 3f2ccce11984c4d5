"""The incoming kernel's memory set-up: ``kho_memory_init`` (the map walk and
its reservations, kept as coalesced runs), the cold boot's scratch
reservation, ``memblock_free_all``, and restoring preserved pages.

:class:`MemoryInit` is a mixin of :class:`~pykho.model.kernel.Kernel`.
"""

from __future__ import annotations

from typing import Any

from .. import profiles as P
from ..abi import bits, structs
from ..profiles import MapFormat, ScratchArea
from .incoming import (
    SECTION_SIZE_BITS,
    STRUCT_PAGE_SIZE,
    X86_64_VMEMMAP,
    KernelOops,
    WalkBudgetExceeded,
    first_pfn_without_memmap,
    is_kdump_kernel,
    kho_memory_init_early,
    kho_memory_walk,
    memmap_present,
)
from .machine import (
    ARCH_LOW_ADDRESS_LIMIT,
    PAGE_SIZE,
    IntervalSet,
    RunBatch,
    block_run_arrays,
    block_runs,
    merge_runs,
    release_freed_heap,
    span_total,
    union_sorted,
)
from .state import KernelState

__all__ = ["MemoryInit", "roundup"]

MiB = 1 << 20


def roundup(v: int, a: int) -> int:
    return (v + a - 1) // a * a


def _unique_sections(physs: Any) -> Any:
    """The 128 MiB sections the blocks (ascending) start in, each once."""
    if hasattr(physs, "dtype"):
        import numpy as np
        secs = physs.astype(np.uint64, copy=False) >> np.uint64(SECTION_SIZE_BITS)
        if secs[0] == secs[-1]:
            return secs[:1]
        return secs[np.concatenate(([True], secs[1:] != secs[:-1]))]
    return sorted({p >> SECTION_SIZE_BITS for p in physs})


class MemoryInit(KernelState):
    """``kho_memory_init``, scratch reservation, ``memblock_free_all``, restore."""

    def kho_memory_init_early(self) -> None:
        """7.3's ``mm_core_init_early``, right after setup_arch and before the
        boot parameters (``__setup``: reserve_mem=) are parsed (init/main.c
        of 7.3.4: 1009-1010 then 1026): the early walk of the incoming tree.
        Runs once; nothing on a profile without the early walk."""
        if getattr(self, "_early_walk_done", False):
            return
        self._early_walk_done = True
        if self.kho_in_scratch_phys and self.p.early_tree_walk and self.kho_in_fdt is not None:
            # 7.3: kho_memory_init_early walks the tree (and extends scratch)
            # before anything of it is reserved; a fault here reserves nothing
            try:
                early = kho_memory_init_early(self.p, self.m.mem, self.kho_in_fdt, self.memblock,
                                              max(e for _, e, _ in self.m.ram))
            except WalkBudgetExceeded as e:
                self.violation("walk-amplified", self.kho_in_scratch_phys, self.kho_in_scratch_phys + 1,
                               f"the early map walk does not end in reasonable time: {e}")
                self._early_walk_aborted = True
                return
            self.printk(*early.lines)
            self.scratch_extension = early.extension

    def kho_memory_init(self) -> None:
        self.kho_memory_init_early()
        if getattr(self, "_early_walk_aborted", False):
            return
        if self.p.kdump_gate and is_kdump_kernel(self.cmdline):
            # 7.3: a kdump kernel does no KHO memory work at all, kho= or not
            self.kho_enable = False
            self.printk(self.p.msg_kdump_disabled)
            return
        if self.kho_in_scratch_phys:
            assert self.populate is not None and self.kho_in_fdt is not None
            self.scratch = list(self.populate.scratch)
            self.scratch_phys = self.kho_in_scratch_phys
            # A..C: kho_release_scratch; D+: memmap init makes the same
            # pageblocks MIGRATE_CMA; either way they go to the buddy
            # allocator in memblock_free_all
            self._memmap = memmap_present([(s_, e_) for s_, e_, _ in self.m.ram])
            self._leaf_runs = {}
            self._regions_before = self.memblock.reserved_regions()
            try:
                walk = kho_memory_walk(self.p, self.m.mem, self.kho_in_fdt, on_leaf=self._reserve_leaf,
                                       want_blocks=False, faithful=True, on_full_leaf=self._reserve_full_leaf,
                                       on_leaves=self._reserve_leaves)
            except WalkBudgetExceeded as e:
                self._commit_reserved()
                self.violation("walk-amplified", self.kho_in_scratch_phys, self.kho_in_scratch_phys + 1,
                               f"the map walk does not end in reasonable time: {e} (nodes reached more than once)")
                return
            except KernelOops:
                self._commit_reserved()
                raise
            self._commit_reserved()
            if self.p.map_format is MapFormat.CHUNKS:
                # the model walks kho-v1 lists with the decoder, which stops
                # where the kernel would follow a bad pointer or loop
                for prob in walk.problems:
                    if prob.code in ("chunk-pointer-outside", "chunk-cycle", "chunk-too-many"):
                        w = prob.where if isinstance(prob.where, int) else 0
                        self.violation("map-walk-failed", w, w + 1,
                                       f"the kernel's kho-v1 walk follows what the decoder refused: {prob}")
                        break
            self.printk(*walk.lines)
            for prob in walk.problems:
                self.printk(f"(model) map walk problem: {prob}")
            if not walk.keep_fdt:
                self.kho_in_fdt = None
                self.kho_in_fdt_phys = 0
            self._check_scratch_overlap(walk.meta_pages)
            self._check_scratch_pageblocks()
        else:
            self.kho_reserve_scratch()

    def _reserve_leaf(self, order: int, physs: Any) -> None:
        """``kho_preserved_memory_reserve`` for every block of one leaf: the
        struct pages of each block are initialised (CONFIG_DEFERRED_STRUCT_PAGE_INIT,
        as in the vmtest kernel and distribution kernels) and the head's
        ``private`` written: a pfn without memmap faults, after the blocks
        before it were reserved.  Blocks are kept as coalesced runs."""
        bad_i, bad_at = self._first_without_memmap(order, physs)
        if bad_i is not None:
            assert bad_at is not None
            # a pfn below every node's RAM is below its first deferred pfn:
            # early_page_initialised() calls it initialised, so init_deferred_page
            # skips it, memblock_reserve logs the block and the fault comes with
            # the write of page->private (7.2.13-arm64, RAM at 1 GiB: a block at
            # 0x13400000 reserved, then the fault in its struct page)
            below = bad_at[1] < min((r[0] for r in self.m.ram), default=0)
            physs = physs[:bad_i + 1] if below else physs[:bad_i]
        if self.reserved_log is not None:
            self.reserved_log.extend((p, order) for p in bits.tolist(physs))
        batch = self._leaf_runs.get(order)
        if batch is None:
            batch = self._leaf_runs[order] = RunBatch()
        if hasattr(physs, "dtype"):
            batch.add_arrays(*block_run_arrays(order, physs))
        else:
            batch.extend(block_runs(order, physs))
        if bad_i is not None:
            assert bad_at is not None
            head = bad_at[0]
            v = (X86_64_VMEMMAP + (bad_at[1] >> 12) * STRUCT_PAGE_SIZE) & ((1 << 64) - 1)   # wraps, as the CPU does
            raise KernelOops("kho_preserved_memory_reserve", "write", bad_at[1],
                             f"struct page (block 0x{head:x} order {order})", (v, v + STRUCT_PAGE_SIZE))

    def _reserve_leaves(self, order: int, keys: list[int], pages: list[Any]) -> bool:
        """:meth:`_reserve_leaf` for consecutive leaves of one order at once,
        as runs straight from their bitmaps, when every pfn they hold has its
        struct page (the common case).  False, with nothing reserved, when
        one has not (the leaf-by-leaf path then finds the block that faults)
        or when the blocks are to be listed one by one."""
        if self.reserved_log is not None or not bits.HAVE_NUMPY:
            return False
        runs = bits.radix_batch_runs(pages, keys, PAGE_SIZE.bit_length() - 1 + order)
        if runs is None:
            return False
        starts, ends = runs
        if not len(starts):
            return True
        spans = getattr(self._memmap, "spans", None)
        if spans is None:
            return False
        import numpy as np
        sec_lo = np.asarray([a for a, _ in spans], dtype=np.int64)
        sec_hi = np.asarray([b for _, b in spans], dtype=np.int64)
        first = starts >> SECTION_SIZE_BITS
        last = (ends - 1) >> SECTION_SIZE_BITS
        i = np.searchsorted(sec_lo, first, side="right") - 1
        if bool((i < 0).any()) or not bool((last < sec_hi[np.maximum(i, 0)]).all()):
            return False
        batch = self._leaf_runs.get(order)
        if batch is None:
            batch = self._leaf_runs[order] = RunBatch()
        batch.add_arrays(starts, ends)
        return True

    def _reserve_full_leaf(self, order: int, first: int, count: int) -> None:
        """A leaf with every bit set: ``count`` consecutive blocks from
        ``first``, reserved as one run (the same checks, no per-block work)."""
        size = PAGE_SIZE << order
        end = first + count * size
        sec = first >> SECTION_SIZE_BITS
        while sec << SECTION_SIZE_BITS < end:
            at = max(first, sec << SECTION_SIZE_BITS)
            if not self._memmap(at):
                n = min((at - first) // size, count)       # the blocks wholly before the bad pfn
                if n:
                    self._reserve_full_leaf(order, first, n)
                head = first + n * size
                v = (X86_64_VMEMMAP + (at >> 12) * STRUCT_PAGE_SIZE) & ((1 << 64) - 1)
                raise KernelOops("kho_preserved_memory_reserve", "write", at,
                                 f"struct page (block 0x{head:x} order {order})", (v, v + STRUCT_PAGE_SIZE))
            sec += 1
        if self.reserved_log is not None:
            self.reserved_log.extend((p, order) for p in range(first, end, size))
        batch = self._leaf_runs.get(order)
        if batch is None:
            batch = self._leaf_runs[order] = RunBatch()
        batch.append((first, end))

    def _first_without_memmap(self, order: int, physs: Any) -> tuple[int | None, tuple[int, int] | None]:
        """(index of the first block with a pfn that has no struct page,
        (block, that pfn's address)); (None, None) when every pfn has one.
        A block of order <= 15 lies inside one 128 MiB section."""
        if order <= SECTION_SIZE_BITS - 12 and bits.length(physs):
            secs = bits.tolist(_unique_sections(physs))
            bad = [sec for sec in secs if not self._memmap(sec << SECTION_SIZE_BITS)]
            if not bad:
                return None, None
            first_bad = min(bad)
            for i, p in enumerate(bits.tolist(physs)):
                if p >> SECTION_SIZE_BITS == first_bad:
                    return i, (p, p)
        for i, p in enumerate(bits.tolist(physs)):
            at = first_pfn_without_memmap(p, order, self._memmap)
            if at is not None:
                return i, (p, at)
        return None, None

    def _commit_reserved(self) -> None:
        """memblock_reserve and page state for everything the walk reserved."""
        # whether memblock.reserved will hold every preserved block after
        # this (it does when it did before: the same runs go into both)
        holds = not self.pages.preserved_adds or self._reserved_holds_preserved()
        many = []
        listed: list[tuple[int, int]] = []
        blocks = 0
        for order, batch in getattr(self, "_leaf_runs", {}).items():
            runs = batch.merged()
            shift = PAGE_SIZE.bit_length() - 1 + order
            if isinstance(runs, list):
                blocks += sum((e - s) >> shift for s, e in runs)
                listed.extend(runs)
                self.memblock.reserved.update(runs)
                self.pages.reserve_preserved_runs(order, runs)
            else:
                blocks += span_total(*runs) >> shift
                self.pages.reserve_preserved_arrays(order, *runs)
                many.append(runs)
        few = merge_runs(sorted(listed))        # the small orders' runs (lists), touching ones joined
        regions = len(few)
        if many:
            # memblock_reserve of them all: one union of the orders' sorted runs
            union = many.pop(0)
            fresh = bool(many)          # a union of several orders is this function's own
            while many:
                union = union_sorted(*union, *many.pop(0))
            u_s, u_e = union
            regions = len(u_s)
            if few:
                # with the big orders' runs they touch: one region each group
                near: set[int] = set()
                for a, b in few:
                    i = int(u_e.searchsorted(a, "left"))
                    while i < len(u_s) and int(u_s[i]) <= b:
                        near.add(i)
                        i += 1
                group = merge_runs(sorted(few + [(int(u_s[i]), int(u_e[i])) for i in near]))
                regions += len(group) - len(near)
            self.memblock.reserved.update_arrays(u_s, u_e, merged=True, own=fresh)
        self._leaf_runs = {}
        if regions >= 1 << 20:
            release_freed_heap()        # the walk's per-leaf arrays, before memblock_free_all's gaps
        if blocks:
            freed = self._grow_reserved_array(regions, blocks)
            holds = holds and not any(self.pages.preserved_set.overlaps(s, e) for s, e in freed)
        self._held_at = self._held_token() if holds else None

    #: INIT_MEMBLOCK_RESERVED_REGIONS (mm/memblock.c:36-37), the static array memblock.reserved starts in
    RESERVED_INIT_REGIONS = 128
    #: sizeof(struct memblock_region): base, size, flags and (NUMA) nid, 8-byte aligned (include/linux/memblock.h:73-80)
    REGION_SIZE = 24

    def _grow_reserved_array(self, runs: int, blocks: int) -> list[tuple[int, int]]:
        """What the walk's block-by-block reservations do to memblock.reserved
        (every generation calls ``memblock_reserve`` then
        ``memblock_reserved_mark_noinit`` for each block it walks; KERNEL-FACTS
        §13).  Blocks that touch merge into one NOINIT region, so the walk
        adds one region per run of preserved memory (``runs``).  When the
        array is full, ``memblock_double_array`` moves it into twice the room,
        found top-down in scratch (``kho_scratch_only`` holds until
        memblock_free_all) and reserved as a kernel reservation; the old
        array is freed unless it is the static one.  memblock=debug prints
        each move.  When no room is found the reservation fails, and
        kho_preserved_memory_reserve ignores that: the blocks walked after it
        are not reserved.  Each call scans the array from its first region
        (memblock_add_range twice once the array is more than half full,
        memblock_isolate_range once): ``walk_memblock`` records the sizes
        and that cost.  Returns the ranges freed."""
        before = getattr(self, "_regions_before", 0)
        cap = self.RESERVED_INIT_REGIONS
        while before + 2 > cap:
            cap *= 2                    # grown before the walk (not printed here)
        # memblock_isolate_range wants room for two more regions than the
        # array holds at the block's mark_noinit: after its memblock_reserve,
        # plus one while a block that extends a run has not merged yet
        need = before + runs + (3 if blocks > runs else 2)
        array: tuple[int, int] | None = None       # the array's own memory, once out of the static one
        freed: list[tuple[int, int]] = []
        failed = None
        while need > cap:
            new = cap * 2
            size = roundup(new * self.REGION_SIZE, PAGE_SIZE)
            addr = self.memblock.alloc(size, kern=True)
            if not addr:
                failed = new
                self.printk(f"memblock: Failed to double reserved array from {cap} to {new} entries !")
                break
            if self.params.get("memblock") == "debug":
                self.printk(f"memblock: reserved is doubled to {new} at "
                            f"[{addr:#018x}-{addr + new * self.REGION_SIZE - 1:#018x}]")
            if array is None:
                need += 1               # the array's own region, from now on
            else:
                self.memblock.free(*array)
                freed.append((array[0], array[0] + array[1]))
            array = (addr, size)
            cap = new
        self.walk_memblock = {
            "blocks": blocks, "regions_before": before, "regions_after": before + runs,
            "array_entries": cap, "array_bytes": cap * self.REGION_SIZE,
            "array_phys": array[0] if array else None,
            # memblock_add_range's scans (two) and memblock_isolate_range's (one), over
            # about as many regions as the array holds halfway through the walk
            "region_visits": 3 * blocks * (before + runs // 2),
            "failed_to": failed}
        if failed is not None:
            self.violation("walk-reserve-failed", 0, 0,
                           f"memblock could not move its reserved array ({cap} regions) into {failed} in scratch: "
                           "every later block of the walk that starts a new region is not memblock-reserved "
                           "(kho_preserved_memory_reserve ignores the error), so memblock_free_all hands it to the "
                           "page allocator while it is still preserved")
        return freed

    def _reserved_holds_preserved(self) -> bool:
        """memblock.reserved holds every block the walk reserved: true from
        the commit on until memblock_free takes a range out of it (none of
        the gaps memblock_free_all frees can then meet a preserved block)."""
        return getattr(self, "_held_at", None) == self._held_token()

    def _held_token(self) -> tuple[int, int, int, int]:
        return id(self.pages), self.pages.preserved_adds, id(self.memblock), self.memblock.reserved_cuts

    def _check_scratch_overlap(self, meta_pages: list[tuple[int, str]]) -> None:
        """The next kernel boots out of scratch: its image and early
        allocations may overwrite whatever the map says lies there, before
        (map pages) or after (preserved blocks) the walk read it."""
        sc = IntervalSet((a.addr, a.end) for a in self.scratch if a.size)
        for a_s, a_e in sc:
            for s, e in self.pages.preserved_set.overlaps(a_s, a_e):
                phys, order = self.pages.preserved.block_at(s) or (s, 0)
                self.violation("preserved-overlaps-scratch", s, e,
                               f"preserved block 0x{phys:x} order {order} lies in scratch: early "
                               "allocations of this kernel may already have overwritten it")
        for phys, what in meta_pages:
            if sc.overlaps(phys, phys + PAGE_SIZE):
                self.violation("map-page-in-scratch", phys, phys + PAGE_SIZE,
                               f"{what} at 0x{phys:x} lies in scratch: this kernel may overwrite it before it "
                               "walks the map, and then reserves whatever it finds there")
                break

    #: x86-64 / arm64 (4 KiB pages) pageblock: MIGRATE_CMA is set per pageblock
    PAGEBLOCK = 2 * MiB

    def _check_scratch_pageblocks(self) -> None:
        """An inherited area whose edge is not on a pageblock boundary: the
        pageblock holding that edge is not MIGRATE_CMA, so this kernel's
        unmovable allocations can come from inside scratch, and preserving
        them fails with KEXEC_HANDOVER_DEBUG (which of them varies: 7.2.13
        lost LUO's state in one run, LUO's state and the memblock FDT in
        another) or hands the next kernel data inside its scratch."""
        for a in self.scratch:
            if a.size and (a.addr % self.PAGEBLOCK or a.end % self.PAGEBLOCK):
                self.violation("scratch-pageblock-partial", a.addr, a.end,
                               f"scratch area 0x{a.addr:x}+0x{a.size:x} is not pageblock aligned: unmovable "
                               "allocations of this kernel may land inside it")
                break

    def kho_reserve_scratch(self) -> None:
        if not self.kho_enable:
            return
        p = self.p
        align = p.scratch_align
        cfg = self.scratch_cfg
        nodes = self.m.nodes if self.numa else [0]
        per: dict[int, int] = {}
        if cfg[0] == "scale":
            scale = cfg[1]
            low = self.memblock.kern_size(limit=ARCH_LOW_ADDRESS_LIMIT) * scale // 100
            glob = self.memblock.kern_size() * scale // 100 - low
            low, glob = roundup(low, align), roundup(max(glob, 0), align)
        else:
            _, low, glob, pn = cfg
            if ScratchArea.LOWMEM in p.scratch_round_explicit:
                low = roundup(low, align)
            if ScratchArea.GLOBAL in p.scratch_round_explicit:
                glob = roundup(glob, align)
            per = {n: roundup(pn, align) for n in nodes}
        areas: list[structs.KhoScratch] = []
        arr = self.memblock.alloc(16 * (len(nodes) + 2), PAGE_SIZE)

        def fail(which: str) -> None:
            if p.per_area_scratch_fail_msgs and which:
                self.printk(f"KHO: Failed to reserve {which}")
            for a in areas:
                self.memblock.free(a.addr, a.size)
            self.printk(*p.msg_scratch_fail)
            self.kho_enable = False

        if not arr:
            return fail("scratch array")
        a = self.memblock.alloc(low, align, 0, ARCH_LOW_ADDRESS_LIMIT)
        if not a:
            return fail("lowmem scratch buffer")
        areas.append(structs.KhoScratch(a, low))
        a = self.memblock.alloc(glob, align)
        if not a:
            return fail("global scratch buffer")
        areas.append(structs.KhoScratch(a, glob))
        for n in nodes:
            if cfg[0] == "scale":
                # scratch_size_node: that node's kernel reservations now; with
                # NUMA=n the array and the areas just allocated included (7.2.13
                # on one node: per-node = 3 x lowmem, not 1 x), with NUMA=y only
                # those made before NUMA init
                node_ram = [(s_, e_) for s_, e_, nid in self.m.ram if nid == n or not self.numa]
                per[n] = roundup(self.memblock.kern_size(ranges=node_ram) * cfg[1] // 100, align)
            a = self.memblock.alloc(per[n], align, nid=n)
            if not a:
                return fail(f"nid {n} scratch buffer")
            areas.append(structs.KhoScratch(a, per[n]))
        self.scratch = areas
        self.scratch_phys = arr
        self.m.mem.write(arr, structs.encode_scratch(areas))

    def memblock_free_all(self) -> None:
        self.memblock.scratch_only = False
        for rs, re_, _ in self.m.ram:
            if len(self.memblock.reserved) >= 64 and self.memblock.reserved._fits() and 0 <= rs <= re_ <= 1 << 62:
                # many separate reservations: the gaps as arrays, freed in one pass
                free = self.pages.free_set
                room = 0 if free.big else len(free)     # the free set's own intervals go in front, no copy
                bs, be, off = self.memblock.reserved.complement_buffers(rs, re_, room)
                gs, ge = bs[off:], be[off:]
                gs += PAGE_SIZE - 1
                gs &= ~(PAGE_SIZE - 1)
                ge &= ~(PAGE_SIZE - 1)
                keep = ge > gs
                whole = off == room and bool(keep.all())     # the pieces still the buffers' tails
                if not keep.all():
                    gs, ge = gs[keep], ge[keep]
                del keep
                self.pages.free_many(gs, ge, "memblock_free_all", room=(bs, be) if whole else None,
                                     outside_preserved=self._reserved_holds_preserved())
                continue
            for s, e in self.memblock.reserved.complement(rs, re_):
                s, e = (s + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1), e & ~(PAGE_SIZE - 1)
                if e > s:
                    self.pages.free(s, e, "memblock_free_all")

    def restore_folio(self, phys: int) -> int | None:
        """``kho_restore_folio``: the order, or None (WARN) when the page was
        not stamped by this kernel's walk."""
        order = self.pages.restore(phys)
        if order is None:
            return None
        if self.p.restore_checks_order and order > P.MAX_PAGE_ORDER:
            return None
        return order

    def restore_pages(self, phys: int, nr: int) -> int:
        """``kho_restore_pages``: every block the map reserved inside
        ``[phys, phys + nr pages)``, restored; the number of pages restored
        (short of ``nr`` where a part was not a preserved block)."""
        end = phys + nr * PAGE_SIZE
        done = 0
        at = phys
        while at < end:
            got = self.pages.preserved.block_at(at)
            if got is None or got[0] != at:
                nxt = self.pages.preserved.next_block(at, end)
                if nxt is None:
                    break
                at = nxt
                continue
            order = self.restore_folio(at)
            if order is None:
                break
            done += 1 << order
            at += PAGE_SIZE << order
        return done
