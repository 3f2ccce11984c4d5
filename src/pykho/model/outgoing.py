"""The outgoing half of KHO in a modelled kernel: the preservation API, the
root FDT's sub-nodes, and finalize/abort where a generation has them.

:class:`OutgoingKHO` is a mixin of :class:`~pykho.model.kernel.Kernel`;
everything it writes goes into the machine's memory through the ABI
encoders, exactly as the real kernel lays it out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import profiles as P
from ..abi import chunks as _chunks
from ..abi import root as _root
from ..abi import structs
from ..profiles import FdtBuiltAt, Finalize
from .machine import PAGE_SHIFT, PAGE_SIZE, IntervalSet
from .state import KernelState

__all__ = ["OutgoingKHO", "Preserved"]


@dataclass
class Preserved:
    """The model's own record of what the old kernel preserved (the truth the
    decoded map is checked against)."""

    blocks: dict[tuple[int, int], str] = field(default_factory=dict)   # (phys, order) -> owner

    def add(self, phys: int, order: int, owner: str) -> None:
        self.blocks[(phys, order)] = owner

    def remove(self, phys: int, order: int) -> None:
        self.blocks.pop((phys, order), None)


class OutgoingKHO(KernelState):
    """``kho_preserve_*``, ``kho_add_subtree``, finalize and abort."""

    # ------------------------------------------------------- page helpers
    def _scratch_set(self) -> IntervalSet:
        key = tuple(self.scratch)
        if self._scratch_key != key:
            self._scratch_key = key
            self._scratch_iv = IntervalSet((a.addr, a.end) for a in self.scratch if a.size)
        return self._scratch_iv

    def _alloc(self, size: int, align: int = PAGE_SIZE) -> int:
        """Unmovable kernel memory: never from scratch (CMA).  When the only
        free memory left is scratch, the OOM killer finds no process to kill
        and panics (7.2.13 given a scratch array that covers all RAM)."""
        scratch = self._scratch_set()
        p = self.pages.alloc(size, high_first=False, avoid=scratch, align=align)
        if p:
            self.m.mem.zero(p, size)
        elif self.is_kho_boot() and self.step == "initcalls" and \
                self.pages.free_set.total() - sum(b - a for s, e in scratch
                                                  for a, b in self.pages.free_set.overlaps(s, e)) < size:
            self.panic("System is deadlocked on memory")
        return p

    def _kmalloc(self, size: int) -> int:
        """Small objects packed in pages (kmalloc-512 bitmaps of 6.16/6.17)."""
        if size >= PAGE_SIZE:
            return self._alloc(size)
        slab = self._slab
        if slab is None or slab[1] + size > PAGE_SIZE:
            slab = [self._alloc(PAGE_SIZE), 0]
            self._slab = slab
        p = slab[0] + slab[1]
        slab[1] += (size + 7) & ~7
        return p

    def _alloc_page(self) -> int | None:
        return self._alloc(PAGE_SIZE) or None

    def _free_page(self, p: int) -> None:
        self.pages.free(p, p + PAGE_SIZE, "free_page")

    def alloc_pages(self, order: int) -> int:
        return self._alloc(PAGE_SIZE << order, PAGE_SIZE << order)

    # ------------------------------------------------------ preservation
    def _track(self, phys: int, order: int, owner: str, add: bool = True) -> int:
        if add and self.kho_debug and self.p.debug_scratch_overlap_check and \
                self._scratch_set().overlaps(phys, phys + (PAGE_SIZE << order)):
            return -P.EINVAL          # KEXEC_HANDOVER_DEBUG: no preserving scratch
        if self.radix_tree is not None:
            rc = self.radix_tree.add(phys, order) if add else (0 if self.radix_tree.delete(phys, order) else -P.EINVAL)
        elif self.tracker is not None:
            if add:
                self.tracker.add(phys, order)
                rc = 0
            else:
                rc = 0 if self.tracker.remove(phys, order) else -P.EINVAL
        else:
            return -P.EOPNOTSUPP
        if rc == 0:
            if add:
                self.preserved.add(phys, order, owner)
            else:
                self.preserved.remove(phys, order)
        return rc

    def preserve_folio(self, phys: int, order: int, owner: str = "folio") -> int:
        if not self.kho_enable:
            return -P.EOPNOTSUPP
        if not phys:
            return -P.EINVAL
        if self.p.finalize is Finalize.NOTIFIER and self.finalized:
            return -P.EBUSY
        return self._track(phys, order, owner)

    def unpreserve_folio(self, phys: int, order: int) -> int:
        if not self.p.unpreserve:
            return -P.EOPNOTSUPP
        return self._track(phys, order, "", add=False)

    def preserve_pages(self, phys: int, nr: int, owner: str = "pages") -> int:
        """``kho_preserve_pages``: the range split by alignment only (no
        MAX_PAGE_ORDER cap, as 7.2's ``__kho_preserve_pages_order``)."""
        pfn, end = phys >> PAGE_SHIFT, (phys >> PAGE_SHIFT) + nr
        done: list[tuple[int, int]] = []
        while pfn < end:
            order = min((pfn & -pfn).bit_length() - 1 if pfn else 63, (end - pfn).bit_length() - 1)
            rc = self.preserve_folio(pfn << PAGE_SHIFT, order, owner)
            if rc:
                for b in done:
                    self._track(*b, "", add=False)
                return rc
            done.append((pfn << PAGE_SHIFT, order))
            pfn += 1 << order
        return 0

    def unpreserve_pages(self, phys: int, nr: int) -> int:
        """``kho_unpreserve_pages``: the blocks ``preserve_pages`` made, cleared."""
        pfn, end = phys >> PAGE_SHIFT, (phys >> PAGE_SHIFT) + nr
        while pfn < end:
            order = min((pfn & -pfn).bit_length() - 1 if pfn else 63, (end - pfn).bit_length() - 1)
            self._track(pfn << PAGE_SHIFT, order, "", add=False)
            pfn += 1 << order
        return 0

    def alloc_preserve(self, size: int, owner: str) -> int:
        order = max(0, (size - 1).bit_length() - PAGE_SHIFT) if size > PAGE_SIZE else 0
        phys = self.alloc_pages(order)
        if not phys:
            return 0
        if self.preserve_folio(phys, order, owner):
            return 0
        return phys

    def preserve_vmalloc(self, data_pages: list[int], owner: str) -> structs.KhoVmalloc | None:
        """``kho_preserve_vmalloc``; None when a chunk page cannot be allocated."""
        for p in data_pages:
            self.preserve_folio(p, 0, owner)

        def page() -> int:
            p = self._alloc_page()
            if not p:
                raise MemoryError("vmalloc chunk")
            return p
        try:
            desc, chunk_pages = structs.encode_vmalloc_chunks(self.m.mem, page, data_pages, 0)
        except MemoryError:
            return None
        for c in chunk_pages:
            self.preserve_folio(c, 0, owner + " vmalloc chunk")
        return desc

    # ------------------------------------------------------------ sub-trees
    def _sync_fdt(self) -> None:
        if self.out_fdt is not None and self.out_fdt_phys:
            self.m.mem.write(self.out_fdt_phys, bytes(self.out_fdt.buf))

    def add_subtree(self, name: str, phys: int, size: int) -> int:
        if self.p.fdt_built_at is FdtBuiltAt.FINALIZE:
            self.notifier_subtrees = [(n, q) for n, q in self.notifier_subtrees if n != name] + [(name, phys)]
            self.subtrees[name] = (phys, size)
            return 0
        assert self.out_fdt is not None
        rc = self.out_fdt.add_subtree(name, phys, size)
        if rc == 0:
            self.subtrees[name] = (phys, size)
        self._sync_fdt()
        return rc

    def remove_subtree(self, phys: int) -> bool:
        if self.out_fdt is None:
            return False
        ok = self.out_fdt.remove_subtree(phys)
        if ok:
            self.subtrees = {n: v for n, v in self.subtrees.items() if v[0] != phys}
        self._sync_fdt()
        return ok

    # ------------------------------------------------------ finalize / abort
    def finalize(self) -> int:
        p = self.p
        if not self.kho_enable or p.finalize is None:
            return -P.EOPNOTSUPP
        if p.finalize is Finalize.NOTIFIER:
            if self.finalized:
                return -P.EEXIST
            self.set_step("finalize")
            fdt_phys = self.out_fdt_phys
            self.preserve_folio(fdt_phys, 0, "root FDT")
            for c in self.clients:          # the finalize notifier chain
                c.finalize()
            assert self.tracker is not None
            try:
                first, self.chunk_pages = _chunks.encode(self.tracker, self.m.mem, self._kmalloc)
                blob, err = _root.build_root_at_finalize(p, first, self.notifier_subtrees)
            except MemoryError:
                blob, err = b"", -P.ENOMEM
            if err:
                self.printk(f"KHO: Failed to convert KHO state tree: {err}")
                self.abort()
                return err
            self.m.mem.write(fdt_phys, blob)
            self.out_fdt_phys = fdt_phys
            self.finalized = True
            return 0
        # 6.19-7.0: (re)serialise the chunk list and swap the map value in place
        self.set_step("finalize")
        assert self.tracker is not None
        try:
            first, chunk_pages = _chunks.encode(self.tracker, self.m.mem, self._kmalloc)
        except MemoryError:
            return -P.ENOMEM             # kho_finalize fails, the old map stays
        self.chunk_pages = chunk_pages
        assert self.out_fdt is not None
        self.out_fdt.set_mem_map(first)
        self._sync_fdt()
        self.finalized = True
        return 0

    def abort(self) -> int:
        if not self.p.abort:
            return -P.EOPNOTSUPP
        if not self.finalized:
            return -P.ENOENT
        # kho_abort frees the whole tracker and the chunk list: every
        # preservation is lost.  The FDT page keeps what finalize wrote, and
        # kho_fill_kimage (6.16) still hands it over.
        self.set_step("abort")
        self.tracker = _chunks.ChunkTracker(self.p.preserve_bits)
        self.preserved = Preserved()
        for c in self.chunk_pages:
            self.pages.free(c, c + PAGE_SIZE, "kho_abort: free chunk")
        self.chunk_pages = []
        self.notifier_subtrees = []
        self.subtrees = {}
        self.finalized = False
        return 0
