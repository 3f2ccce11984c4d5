"""One modelled kernel's life: boot (cold or from a handover), its KHO state,
its clients, the preservation API, kexec.

A :class:`Kernel` boots on a :class:`~pykho.model.machine.Machine`.  The
incoming path follows the real kernel's order (``kho_populate`` in
setup_arch, early params, ``kho_memory_init``, ``memblock_free_all``, then
the initcalls: clients' early code, ``kho_init``, clients' restore and
publish).  The rules of each step live in :mod:`pykho.model.incoming`; the
clients are plugins (:mod:`pykho.clients`) that the kernel runs at their
points of the boot.  Faults the real kernel would suffer (double frees,
preserved pages handed out, reads of memory nobody preserved) are recorded as
violations, not raised; an oops or a panic ends the boot.
"""

from __future__ import annotations

import random
from typing import Any

from .. import clients as _clients
from .. import profiles as P
from ..abi import chunks as _chunks
from ..abi import fdt as _fdt
from ..abi import radix, structs
from ..abi import root as _root
from ..clients import Client, KernelPanic
from ..errors import MemoryFault
from ..profiles import FdtBuiltAt, Finalize, MapFormat
from .cmdline import kstrtobool, memparse, param_values, parse_kho_scratch
from .incoming import (
    ARCH_LAYOUTS,
    SECTION_SIZE_BITS,
    X86_64_PAGE_OFFSET,
    BusAbort,
    BusMemory,
    KernelOops,
    PopulateResult,
    kho_populate,
    retrieve_subtree,
)
from .kexec import Kexec, Segment
from .machine import (
    MEMBLOCK_KHO_SCRATCH,
    PAGE_SIZE,
    IntervalSet,
    Machine,
    Memblock,
    MemblockPanic,
    PageAllocator,
    Violation,
    merge_runs,
)
from .memory_init import MemoryInit, roundup
from .outgoing import OutgoingKHO, Preserved

__all__ = ["Kernel", "KernelPanic", "Segment", "Preserved", "kstrtobool", "memparse", "parse_kho_scratch",
           "roundup"]

MiB = 1 << 20


class Kernel(MemoryInit, OutgoingKHO, Kexec):
    """One kernel's life on the machine."""

    KERNEL_IMAGE_SIZE = 32 * MiB

    def __init__(self, machine: Machine, profile: P.Profile | str, cmdline: str = "kho=on",
                 release: str | None = None, name: str = "kernel", violations: list[Violation] | None = None,
                 seed: int = 1, kern_reserved: int = 52 * MiB, test_kho_max_mem: int = 1 * MiB,
                 faults: dict[str, Any] | None = None,
                 clients: tuple[str, ...] = _clients.DEFAULT_MODEL_CLIENTS,
                 arch: str = "x86", kho_debug: bool = True, numa: bool = False,
                 image_size: int | None = None, early_kern: tuple[tuple[int, int], ...] = ()):
        self.m = machine
        self.p = P.get_profile(profile)
        self.cmdline = cmdline
        self.params: dict[str, str] = {}
        for a in cmdline.split():
            k_, _, v_ = a.partition("=")
            self.params[k_] = v_
        self.release = release or self.p.default_release
        self.name = name
        self.arch = arch
        #: CONFIG_KEXEC_HANDOVER_DEBUG (on in the vmtest kernel)
        self.kho_debug = kho_debug
        #: CONFIG_NUMA: the machine's nodes are the kernel's (N_MEMORY); without
        #: it every memblock region is nid 0 (include/linux/memblock.h:378-381)
        self.numa = numa
        self.scratch_added: list[tuple[int, int]] = []     # kho_populate's memblock_add of each area
        #: a cold boot's image reservation (default KERNEL_IMAGE_SIZE at 16 MiB)
        #: and the other kernel reservations made before NUMA init, (base,
        #: size) each (initrd, log buffer, early page tables: known from a
        #: real boot's memblock=debug log, else none)
        self.image_size = image_size or self.KERNEL_IMAGE_SIZE
        self.early_kern = tuple(early_kern)
        self.violations: list[Violation] = violations if violations is not None else []
        self.oops: KernelOops | None = None          # the oops that ended the boot, if any
        self.panicked = False
        self.reserved_log: list[tuple[int, int]] | None = None   # a list: every block reserved from the map
        self._memmap = lambda phys: True
        self.log: list[str] = []
        self._rng = random.Random(seed)
        self.kern_reserved = kern_reserved
        self.test_kho_max_mem = test_kho_max_mem
        self._memblock = Memblock()
        self.pages = PageAllocator(name, self.violations)
        self.step = "boot"
        # KHO state
        self.kho_enable = False
        self.scratch: list[structs.KhoScratch] = []
        self.scratch_phys = 0
        self.scratch_cfg: tuple[Any, ...] = ("scale", 200)
        self.kho_in_fdt: bytes | None = None         # incoming FDT while is_kho_boot()
        self.kho_in_fdt_phys = 0
        self.kho_in_scratch_phys = 0
        self.populate: PopulateResult | None = None
        #: the RAM the boot device tree claims (arm64: its memory nodes), when known
        self.boot_memory: list[tuple[int, int]] | None = None
        #: the scratch array the handover names, or the machine's RAM, is not
        #: known (the verdict without iomem): whether the early boot fits in
        #: scratch is not judged
        self.scratch_unknown = False
        self.out_fdt: _root.RootFdtPage | None = None
        self.out_fdt_phys = 0
        self.debugfs_fdt_size = 0
        self.radix_tree: radix.RadixTree | None = None
        self.tracker: _chunks.ChunkTracker | None = None
        self.chunk_pages: list[int] = []
        self.finalized = False
        self.subtrees: dict[str, tuple[int, int]] = {}
        self.notifier_subtrees: list[tuple[str, int]] = []
        self.preserved = Preserved()
        self.image: dict[str, Any] | None = None
        self.map_checked = False
        self.old: Kernel | None = None
        self._slab: list[int] | None = None
        self._scratch_key: tuple[structs.KhoScratch, ...] | None = None
        self._scratch_iv = IntervalSet()
        self._reported_unpreserved: set[str] = set()
        # the clients built into this kernel, in the registry's order
        self.clients: list[Client] = []
        for cls in _clients.REGISTRY:
            if cls.model_name in clients:
                c = cls(self)
                if c.enabled():
                    self.clients.append(c)
        # fault injection: how many of the next allocations fail at each site
        faults = faults or {}
        self._memblock.faults.arm(int(faults.get("memblock", 0)), int(faults.get("memblock_after", 0)))
        self.pages.faults.arm(int(faults.get("page", 0)), int(faults.get("page_after", 0)))

    # ------------------------------------------------- KernelAPI for clients
    @property
    def mem(self) -> Any:
        return self.m.mem

    @property
    def rng(self) -> random.Random:
        return self._rng

    @property
    def memblock(self) -> Memblock:
        return self._memblock

    def printk(self, *lines: str) -> None:
        self.log.extend(lines)

    def params_all(self, name: str) -> list[str]:
        return param_values(self.cmdline, name)

    def violation(self, kind: str, start: int, end: int, detail: str) -> None:
        self.violations.append(Violation(kind, start, end, detail, self.name, self.step))

    def panic(self, message: str) -> None:
        """``panic()``: the line, a violation, and the boot stops."""
        self.printk(f"Kernel panic - not syncing: {message}")
        self.violation("panic", 0, 0, f"panic: {message}")
        raise KernelPanic(message)

    def retrieve_subtree(self, name: str) -> tuple[int, int, int | None]:
        """``kho_retrieve_subtree`` on the incoming FDT: (err, phys, size);
        the lines it prints go to the log."""
        fdt = self.kho_in_fdt
        if fdt is not None:
            # the root FDT is read through phys_to_virt at every call; only
            # the preserved map keeps its page once memblock_free_all ran
            self.check_preserved(self.kho_in_fdt_phys, PAGE_SIZE, "the incoming root FDT")
            if self._reused(self.kho_in_fdt_phys, len(fdt)):
                fdt = bytes(len(fdt))
        err, phys, size, lines = retrieve_subtree(self.p, fdt, name)
        self.printk(*lines)
        return err, phys, size

    def _lost(self, phys: int, size: int) -> list[tuple[int, int]]:
        """The parts of [phys, phys+size) this kernel may already have reused:
        in scratch before the map walk, outside the map afterwards."""
        if not self.is_kho_boot() or not size:
            return []
        if self.step in ("setup_arch", "e820", "early params"):
            return self._scratch_set().overlaps(phys, phys + size)
        return self.pages.unpreserved_parts(phys, phys + size)

    def _reused(self, phys: int, size: int) -> list[tuple[int, int]]:
        """The parts of [phys, phys+size) the page allocator had back before
        this read: outside the map, once memblock_free_all ran."""
        if not self.is_kho_boot() or not size or self.step in ("setup_arch", "e820", "early params",
                                                                 "kho_memory_init"):
            return []
        return self.pages.unpreserved_parts(phys, phys + size)

    def check_preserved(self, phys: int, size: int, what: str) -> bool:
        """Whether handed-over data a client uses is still protected.  Before
        the map walk memblock allocates only from scratch, so memory outside
        it is as the old kernel left it; afterwards only what the map reserved
        is.  A violation (once per structure) when it is not."""
        lost = self._lost(phys, size)
        if lost and what not in self._reported_unpreserved:
            self._reported_unpreserved.add(what)
            s, e = lost[0]
            self.violation("client-data-not-preserved", s, e,
                           f"{what} at 0x{phys:x}+0x{size:x} is used after boot but 0x{s:x}-0x{e:x} is not in "
                           "the preserved map: this kernel may already have reused it")
        return not lost

    def read_preserved(self, phys: int, size: int, what: str) -> bytes:
        """A client reads its handed-over data through ``phys_to_virt``
        (:meth:`check_preserved`); an address outside the direct map faults.
        A page outside the map, read after memblock_free_all gave it to the
        page allocator, reads as reused (zeros here): 7.2.13 with the root
        FDT page or the kho_test FDT page cleared from the map found them
        overwritten by the initcalls that read them."""
        self.check_preserved(phys, size, what)
        try:
            data = self.m.mem.read(phys, size, what)
        except MemoryFault:
            v = (X86_64_PAGE_OFFSET + phys) & ((1 << 64) - 1)
            raise KernelOops(what, "read", phys, what, (v, v + max(size, 1))) from None
        reused = self._reused(phys, size)
        if reused:
            buf = bytearray(data)
            for s, e in reused:
                buf[s - phys:e - phys] = bytes(e - s)
            data = bytes(buf)
        return data

    def client(self, model_name: str) -> Client | None:
        """This kernel's instance of a client plugin, if built in."""
        for c in self.clients:
            if c.model_name == model_name:
                return c
        return None

    # views the scenarios, compat and the verdict read
    @property
    def restored_ok(self) -> dict[str, bool]:
        return {c.node: bool(c.restored) for c in self.clients if c.restored is not None}

    @property
    def kexec_count_in(self) -> int:
        c = self.client("kexec-metadata")
        return getattr(c, "kexec_count_in", 0) if c else 0

    @property
    def luo_incoming(self) -> list[Any]:
        c = self.client("luo")
        return list(getattr(c, "incoming", [])) if c else []

    def luo_preserve_memfd(self, session: str, token: int, content: bytes) -> int:
        c = self.client("luo")
        return c.preserve_memfd(session, token, content) if c else -P.EOPNOTSUPP  # type: ignore[attr-defined]

    def spawn(self, profile: Any, cmdline: str, release: str | None, name: str, **kw: Any) -> Kernel:
        return Kernel(self.m, profile, cmdline, release, name, self.violations, seed=self.rng.randrange(1 << 30),
                      kern_reserved=self.kern_reserved, test_kho_max_mem=self.test_kho_max_mem, arch=self.arch,
                      **{"numa": self.numa, **kw})

    # ------------------------------------------------------------------ log
    def set_step(self, step: str) -> None:
        self.step = step
        self.pages.step = step

    # ------------------------------------------------------------------ boot
    def boot(self, kho_data: structs.KhoData | None = None, image: Segment | None = None) -> Kernel:
        """Boot: populate (if handed over), early params, memblock, KHO memory
        init, memblock_free_all, initcalls (clients' early code, kho_init,
        clients' restore and publish)."""
        self.set_step("setup_arch")
        # the kernel image: inside scratch after a KHO kexec, at 16 MiB on a cold boot
        if image is not None:
            self.memblock.reserve(image.addr, image.size, kern=True)
        else:
            self.memblock.reserve(16 * MiB, self.image_size, kern=True)
        if kho_data is not None:
            # x86 setup_arch hands the data to kho_populate from parse_setup_data,
            # before e820__memblock_setup adds RAM and allows the region array to
            # grow: memblock.memory holds only what kho_populate adds itself
            self.memblock.can_resize = False
            try:
                bus = BusMemory(self.m.mem, self.m.ram, ARCH_LAYOUTS[self.arch].unbacked_read_aborts)
                self.populate = kho_populate(self.p, bus, kho_data.fdt_addr,
                                             kho_data.fdt_size, kho_data.scratch_addr, kho_data.scratch_size,
                                             self._add_scratch)
            except BusAbort as e:
                # setup_arch, before the console and the exception stacks: the
                # abort ends the boot silently
                self.populate = PopulateResult(False, failed_step="map the FDT")
                try:
                    self.panic(f"(model) {e}")
                except KernelPanic:
                    self.panicked = True
                    return self
            except MemblockPanic as e:
                # before the console exists: nothing reaches it, and panic= is
                # not parsed yet, so the machine halts
                self.populate = PopulateResult(False, failed_step="mark scratch")
                try:
                    self.panic(str(e))
                except KernelPanic:
                    self.panicked = True
                    return self
            self.printk(*self.populate.lines)
            if self.populate.accepted:
                self.memblock.reserve(kho_data.scratch_addr, kho_data.scratch_size)
                self.memblock.scratch_only = True
                self.kho_in_fdt = self.populate.fdt_blob
                self.kho_in_fdt_phys = kho_data.fdt_addr
                self.kho_in_scratch_phys = kho_data.scratch_addr
        lay = ARCH_LAYOUTS[self.arch]
        if lay.ram_from_boot_dt and lay.unbacked_read_aborts and self.boot_memory is not None:
            # memblock.memory is what the DT claims; memblock allocates top-down
            # from its highest end (below the linear map's reach): claimed RAM
            # that nothing backs makes the first early allocation (paging_init's
            # page tables, in setup_arch) abort before any console
            backed = IntervalSet((s_, e_) for s_, e_, _ in self.m.ram)
            claimed = [(b, min(b + n, 1 << 47)) for b, n in self.boot_memory if b < 1 << 47]
            top = max((e_ for _, e_ in claimed), default=None)
            if top is None or not backed.overlaps(top - PAGE_SIZE, top):
                try:
                    self.panic("(model) the device tree claims RAM nothing backs: an early memblock "
                               f"allocation below 0x{top or 0:x} aborts")
                except KernelPanic:
                    self.panicked = True
                    return self
        # e820__memblock_setup: resizing allowed, but a new region array must
        # come from memblock below 1 MiB, which holds no scratch yet: in
        # scratch-only mode it cannot grow, and the RAM that needed it is left
        # out (7.2.13 with 125 extra scratch areas then faults in early boot)
        self.set_step("e820")
        self.memblock.can_resize = True
        self.memblock.grow_fails = self.memblock.scratch_only
        missing = [(s, e) for s, e, nid in self.m.ram if self.memblock.add(s, e - s, nid if self.numa else 0)]
        # x86 then marks the memory below 1 MiB as scratch for the real-mode
        # trampoline; when that marking cannot grow the array either, nothing
        # below 1 MiB is scratch and do_init_real_mode panics (7.2.13 with 62
        # extra scratch areas)
        self.no_trampoline = bool(self.memblock.scratch_only and self.arch == "x86"
                                  and self.memblock.mark_kho_scratch(0, MiB))
        self.memblock.grow_fails = False
        if missing:
            self.violation("memblock-ram-missing", missing[0][0], missing[0][1],
                           "memblock could not grow its region array to add this RAM")
            try:
                self.panic("(model) RAM left out of memblock.memory: an early access to it faults")
            except KernelPanic:
                self.panicked = True
                return self
        # memblock allocates only from mapped RAM (a scratch area outside
        # RAM becomes a memblock.memory region, never an early allocation)
        self.memblock.limit = max((e for _, e, _ in self.m.ram), default=None)
        # early params
        self.set_step("early params")
        self.kho_enable = bool(kstrtobool(self.params.get("kho", "")) or False)
        if "kho_scratch" in self.params:
            cfg, lines = parse_kho_scratch(self.p, self.params["kho_scratch"])
            self.printk(*lines)
            if cfg is None:
                self.printk("Malformed early option 'kho_scratch'")
            else:
                self.scratch_cfg = cfg
        # initmem_init (x86 setup_arch, after the early params): NUMA init
        # tags the kernel reservations made so far with their node; the
        # later ones have none and count for no node's scratch
        for base, size in self.early_kern:
            self.memblock.reserve(base, size, kern=True)
        if self.numa:
            self.memblock.kern_nid_known = False
        # early kernel allocations that count for the scratch scale
        lump = self.kern_reserved - self.image_size - sum(n for _, n in self.early_kern)
        if not self.memblock.scratch_only:
            # the memmap is part of the early reservations the scratch scales
            # with, whatever the RAM size (16 GiB of it on a 1 TiB host)
            lump = max(0, lump - self._memmap_per_node())
        if self.memblock.scratch_only and not self.scratch_unknown:
            try:
                self._early_allocs_from_scratch(lump)
            except KernelPanic:
                self.panicked = True
                return self
        else:
            self.memblock.alloc(lump, PAGE_SIZE, kern=True)
        if self._unnoded_scratch():
            return self
        if self.p.early_tree_walk:
            self.set_step("mm_core_init_early")
            try:
                self.kho_memory_init_early()
            except KernelOops as e:
                self._oops(e)
                return self
            # start_kernel's parse_args next: what reads the handover there
            # (reserve_mem=) still sees memory that only scratch allocations touched
            self.set_step("early params")
        try:
            for c in self.clients:
                c.early_param()      # parse_args: reserve_mem= reads its FDT from the handover
        except KernelOops as e:
            self._oops(e)
            return self
        self.set_step("kho_memory_init")
        try:
            self.kho_memory_init()
        except KernelOops as e:
            self._oops(e)
            return self
        self.set_step("memblock_free_all")
        self.memblock_free_all()
        self.set_step("initcalls")
        try:
            if getattr(self, "no_trampoline", False):
                self.panic("Real mode trampoline was not allocated")   # early_initcall do_init_real_mode
            for c in self.clients:
                c.early_initcall()
            self.kho_init()
            for c in self.clients:
                c.initcall()
            for c in self.clients:
                c.late_initcall()
            for c in self.clients:
                c.after_late()
        except KernelPanic:
            self.panicked = True
            return self
        except KernelOops as e:
            self._oops(e)
            return self
        self.set_step("running")
        return self

    def _add_scratch(self, addr: int, size: int) -> int:
        """kho_populate's ``memblock_add`` then ``memblock_mark_kho_scratch``
        of one incoming area (may raise :class:`MemblockPanic`)."""
        self.scratch_added.append((addr, addr + size))
        self.memblock.add(addr, size)
        return self.memblock.mark_kho_scratch(addr, size)

    def _unnoded_scratch(self) -> bool:
        """free_area_init (mm_core_init_early) on a NUMA=y kernel: every
        memblock.memory range must belong to a node.  NUMA init gives nodes to
        RAM (ACPI SRAT ranges; without SRAT x86's one dummy node spans 0 to the
        end of RAM); an inherited scratch area that kho_populate added where no
        node reaches keeps none, and the node data looked up for it does not
        exist: a NULL dereference, fatal this early (7.2.13 and 7.3.4 with a
        scratch area moved to 128 GiB or the scratch array read 8 bytes off;
        docs/KERNEL-FACTS.md §5).  True when the boot ends here."""
        lay = ARCH_LAYOUTS[self.arch]
        if not (self.numa and lay.unnoded_memory_fault and self.memblock.scratch_only and self.scratch_added):
            return False
        ram = [(s_, e_) for s_, e_, _ in self.m.ram if e_ > s_]
        if lay.dummy_node_spans_holes and len({nid for _, _, nid in self.m.ram}) <= 1:
            ram = [(0, max((e_ for _, e_ in ram), default=0))]
        nodes = IntervalSet(ram)
        outside = [(a, b) for a, b in self.scratch_added
                   if b > a and sum(e_ - s_ for s_, e_ in nodes.overlaps(a, b)) < b - a]
        if not outside:
            return False
        self.set_step("mm_core_init_early")
        a, b = outside[0]
        self.violation("oops", a, b, "scratch area outside every NUMA node: free_area_init finds no node data")
        self.printk(lay.unnoded_memory_fault, lay.oops_panic)
        self.panicked = True
        return True

    def _memmap_per_node(self) -> int:
        """sparse_init: the struct pages (2 MiB per 128 MiB section with RAM),
        a kernel reservation the scratch sizes count.  With NUMA=y each
        node's are allocated on that node, so they count for its scratch (the
        rest of the early allocations ask for no node); with NUMA=n all of
        memory is one node.  The bytes allocated."""
        done = 0
        for n in (self.m.nodes if self.numa else [None]):
            spans = merge_runs(sorted((s >> SECTION_SIZE_BITS, ((e - 1) >> SECTION_SIZE_BITS) + 1)
                                      for s, e, nid in self.m.ram if e > s and (n is None or nid == n)))
            for a, b in spans:      # one allocation per span (RAM can reach 2^52)
                size = min((b - a) * 2 * MiB, 1 << 40)
                if self.memblock.alloc(size, 2 * MiB, nid=n):
                    done += size
        return done

    def _early_allocs_from_scratch(self, lump: int) -> None:
        """A KHO boot's early allocations come from scratch alone (scratch-only
        mode).  The memmap (2 MiB per 128 MiB section with RAM) must succeed:
        7.2.13 given 8 MiB of scratch dereferences NULL in the sparse init and
        panics, given none it panics at the first early allocation that must
        succeed.  The model panics when the scratch that RAM backs is smaller
        than the memmap; the rest (``lump``: page tables, log buffer, ...) is
        survived when it fails.  What ``log_buf_len=`` adds (18 MiB for 4M)
        is not counted: scratch between about 16 and 40 MiB per GiB of RAM is
        a grey zone."""
        # sections with RAM, counted over merged section spans (RAM from the
        # input can reach 2^52: never one entry per section)
        spans = merge_runs(sorted((s >> SECTION_SIZE_BITS, ((e - 1) >> SECTION_SIZE_BITS) + 1)
                                  for s, e, _ in self.m.ram if e > s))
        ram = IntervalSet((s, e) for s, e, _ in self.m.ram)
        have = sum(e - s for r in self.memblock.memory if r.flags & MEMBLOCK_KHO_SCRATCH
                   for s, e in ram.overlaps(r.base, r.end))
        need = sum(b - a for a, b in spans) * 2 * MiB
        if have < need:
            self.violation("scratch-exhausted", 0, need,
                           f"{have >> 10} KiB of scratch for a memmap of {need >> 10} KiB: an early allocation "
                           "that must succeed fails")
            self.panic("(model) an early allocation fails: scratch is too small for this kernel's boot")
        self.memblock.alloc(lump, PAGE_SIZE, kern=True)

    def _oops(self, e: KernelOops) -> None:
        """An oops this early (idle task or init, before userspace) is fatal.
        The exact fault line is known for x86-64 reads (the direct-map
        address); a struct page write faults at a field offset the compiler
        chose, and arm64 words its fault otherwise."""
        self.oops = e
        lay = ARCH_LAYOUTS[self.arch]
        # the address the faulting access used, in this arch's layout: a read
        # through the linear map, a write to the struct page of the pfn
        ram_start = min((r[0] for r in self.m.ram), default=0)
        n = e.vaddr_range[1] - e.vaddr_range[0]
        v0 = lay.linear(e.phys, ram_start) if e.access == "read" else lay.struct_page(e.phys, ram_start)
        e.vaddr_range = (v0, v0 + n)
        exact = e.access == "read"
        v = e.vaddr_range[0]
        noncanonical = lay.gp_noncanonical and (v >> 47) not in (0, (1 << 17) - 1)
        if self.step in ("setup_arch", "e820", "early params") and lay.early_exception:
            # before trap_init only the early exception handler runs: it
            # prints its vector and halts, with no oops and no panic line
            # (7.2.13: reserve_mem= reading a random memblock FDT pointer)
            self.printk(f"PANIC: early exception 0x{0x0d if noncanonical else 0x0e:02x}")
            self.violation("early-exception", e.phys, e.phys + 1, str(e))
            self.panicked = True
            return
        if exact and noncanonical:
            # a non-canonical address raises #GP, not a page fault (seen on 7.2.13:
            # a radix entry read from FDT bytes, a blob pointer of random bytes)
            line = f"Oops: general protection fault, probably for non-canonical address 0x{v:x}"
        else:
            line = lay.fault_line.format(v=v) if exact else f"(model) {e}"
        self.printk(line, lay.oops_panic)
        self.violation("oops", e.phys, e.phys + 1, str(e))
        self.panicked = True

    # --------------------------------------------------------- memory init
    def is_kho_boot(self) -> bool:
        return self.kho_in_fdt is not None

    def debugfs_usable(self) -> bool:
        """Whether ``debugfs_create_dir`` works: not with ``debugfs=off`` or
        its deprecated alias ``debugfs=no-mount`` (the last ``debugfs=``
        wins; another value keeps the config's default, allowed here)."""
        return self.params.get("debugfs", "on") not in ("off", "no-mount")

    def kho_init(self) -> None:
        """``kho_init``: radix root / tracker, the root FDT page, debugfs,
        clients' kho_init work (kexec-metadata), then the incoming debugfs
        (KHO boot) or CMA scratch (cold boot).

        Any failure takes the kernel's error path: the FDT page is
        unpreserved, the root freed, every scratch area handed to
        ``free_reserved_area`` and KHO disabled.  On a KHO boot those scratch
        pages are already in the buddy allocator (released at memmap init /
        memblock_free_all), so that path frees them a second time.
        """
        if not self.kho_enable:
            return
        err = self._kho_init()
        if err:
            self.set_step("kho_init error path")
            if self.out_fdt_phys and (self.out_fdt_phys, 0) in self.preserved.blocks:
                self._track(self.out_fdt_phys, 0, "", add=False)
            for a in self.scratch:
                if a.size:
                    self.pages.free(a.addr, a.end, "kho_init error path: free_reserved_area on scratch")
            self.kho_enable = False
            self.out_fdt = None
            self.radix_tree = None
            self.tracker = None
            self.set_step("initcalls")

    def _kho_init(self) -> int:
        p = self.p
        if p.map_format is MapFormat.RADIX:
            self.radix_tree = radix.RadixTree(self.m.mem, self._alloc_page, self._free_page)
            if not self.radix_tree.root:
                return -P.ENOMEM
        else:
            self.tracker = _chunks.ChunkTracker(p.preserve_bits)
        if p.fdt_built_at is FdtBuiltAt.FINALIZE:
            # 6.16-6.18: kho_init allocates the page; finalize writes and preserves it
            self.out_fdt_phys = self.alloc_pages(0)
            if not self.out_fdt_phys:
                return -P.ENOMEM
        else:
            phys = self.alloc_preserve(PAGE_SIZE, "root FDT")
            if not phys:
                return -P.ENOMEM
            self.out_fdt_phys = phys
            # kho_debugfs_init: -ENOENT when debugfs refuses the directory
            if p.debugfs_required and not self.debugfs_usable():
                return -P.ENOENT
            mm = (self.radix_tree.root or 0) if self.radix_tree else 0
            self.out_fdt = _root.build_root_at_boot(p, mm)
            self._sync_fdt()
        for c in self.clients:
            err = c.kho_init()
            if err:
                return err
        if self.is_kho_boot():
            self._kho_in_debugfs_init()
            return 0
        # cold boot (or a handover the kernel forgot): scratch becomes CMA,
        # its pages go to the buddy allocator
        for a in self.scratch:
            if a.size:
                self.pages.free(a.addr, a.end, "kho_init: init_cma_reserved_pageblock on scratch")
        # debugfs out/fdt is created now, with the size the FDT has now
        self.debugfs_fdt_size = self.out_fdt.totalsize() if self.out_fdt is not None else 0
        return 0

    def _in_fdt_now(self) -> bytes | None:
        """The incoming root FDT as the kernel reads it now (through
        phys_to_virt: reused once the page allocator had it back)."""
        fdt = self.kho_in_fdt
        if fdt is not None and self._reused(self.kho_in_fdt_phys, len(fdt)):
            return bytes(len(fdt))
        return fdt

    def _in_subnodes(self) -> list[tuple[str, bytes | None, int, bytes | None, int]]:
        """(name, preserved-data, its length, blob-size, its length) of every
        incoming sub-node, read as kho_in_debugfs_init reads them: libfdt
        offsets, the first property of a name, any bytes in a name."""
        fdt = self._in_fdt_now()
        if not self.p.debugfs_in_subfdts or fdt is None or _fdt.kernel_check_header(fdt):
            return []
        pg = _fdt.FdtPage(fdt, size=len(fdt))
        out = []
        for off, name in pg.subnodes(0):
            v, ln = pg.getprop(off, self.p.subtree_prop)
            sz, szl = pg.getprop(off, self.p.size_prop) if self.p.size_prop else (None, -1)
            out.append((name, v, ln, sz, szl))
        return out

    def _kho_in_debugfs_init(self) -> None:
        """``kho_in_debugfs_init``: every incoming sub-node becomes an
        ``in/sub_fdts`` file; bad ones are skipped with a warning."""
        for name, v, ln, sz, szl in self._in_subnodes():
            if v is None:
                continue
            if ln != 8:
                self.printk(f"KHO: node {name} prop {self.p.subtree_prop} has invalid length: {ln}")
                continue
            if sz is None or szl != 8:
                self.printk(f"KHO: node {name} missing or invalid {self.p.size_prop} property")

    # -------------------------------------------------------------- restore
    def decoded_map(self) -> list[tuple[int, int]]:
        """The outgoing map as the next kernel would walk it."""
        if self.radix_tree is not None:
            return radix.walk(self.m.mem, self.radix_tree.root or 0, strict=False)
        if self.out_fdt is not None:
            first = self.out_fdt.mem_map() or 0
        else:
            try:
                first = _root.decode_root(_root.read_root_from_memory(self.m.mem, self.out_fdt_phys)).mem_map or 0
            except Exception:
                first = 0
        return _chunks.walk(self.m.mem, first, self.p.preserve_bits, strict=False) if first else []

    def debugfs(self) -> dict[str, Any]:
        """The files of ``/sys/kernel/debug/kho`` with the kernel's names and formats."""
        out: dict[str, Any] = {}
        if not self.kho_enable:
            return out
        o: dict[str, Any] = {}
        if self.p.finalize in (Finalize.NOTIFIER, Finalize.SERIALIZE):
            o["finalize"] = f"{int(self.finalized)}\n"
        if self.out_fdt is not None and not self.is_kho_boot():
            # the blob keeps the size it had at kho_init (7.2 quirk)
            o["fdt"] = bytes(self.out_fdt.buf[:self.debugfs_fdt_size or self.out_fdt.totalsize()])
        o["scratch_phys"] = structs.format_debugfs_scratch(a.addr for a in self.scratch)
        o["scratch_len"] = structs.format_debugfs_scratch(a.size for a in self.scratch)
        o["sub_fdts"] = {n: self.m.mem.read(ph, sz) for n, (ph, sz) in self.subtrees.items() if sz}
        out["out"] = o
        if self.kho_in_fdt is not None:
            out["in"] = {"fdt": self.kho_in_fdt, "sub_fdts": self._in_sub_fdts()}
        return out

    def _in_sub_fdts(self) -> dict[str, bytes]:
        """``in/sub_fdts``: one file per incoming sub-node with an 8-byte
        preserved-data and blob-size (what kho_in_debugfs_init keeps)."""
        out: dict[str, bytes] = {}
        for name, v, ln, sz, szl in self._in_subnodes():
            if v is None or ln != 8 or sz is None or szl != 8:
                continue
            try:
                out[name] = self.m.mem.read(_fdt.u64(v), min(_fdt.u64(sz), 1 << 20))
            except Exception:
                out[name] = b""
        return out
