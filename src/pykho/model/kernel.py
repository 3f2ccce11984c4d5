"""Both kernels' KHO lifecycle, per generation profile.

A :class:`Kernel` boots on a :class:`~pykho.model.machine.Machine` (cold or
from a handover), offers the preservation API, finalize/abort where its
generation has them, ``kexec_file_load`` and the jump.  Every byte it hands
over is written with the ABI layer into the machine's memory, and the next
kernel reads it back with :mod:`pykho.model.incoming` using only its own
generation's rules.  Faults the real kernel would suffer (double frees,
preserved pages handed out) are recorded as violations, not raised.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

from .. import profiles as P
from ..abi import chunks as _chunks
from ..abi import clients, radix, root as _root, structs
from ..abi import fdt as _fdt
from .incoming import (KernelOops, WalkBudgetExceeded, first_pfn_without_memmap, kexec_metadata_in, kho_memory_walk,
                       kho_populate, memmap_present, retrieve_subtree, X86_64_VMEMMAP, STRUCT_PAGE_SIZE)
from .machine import (_subtract, ARCH_LOW_ADDRESS_LIMIT, Machine, Memblock, PageAllocator, IntervalSet, Violation,
                      PAGE_SIZE, PAGE_SHIFT)

MiB = 1 << 20


class KernelPanic(Exception):
    """The modelled kernel called panic(); its boot stops."""


def _errname(err: int) -> str:
    from .incoming import errname
    return errname(err)


def kstrtobool(s: str) -> bool | None:
    if not s:
        return None
    c = s[0].lower()
    if c in "yt1":
        return True
    if c in "nf0":
        return False
    if s.lower().startswith("on"):
        return True
    if s.lower().startswith("of"):
        return False
    return None


def memparse(s: str) -> tuple[int, str]:
    """``memparse``: a number (base 0: 0x hex, 0 octal) with an optional K/M/G/T/P/E suffix."""
    i = 0
    base = 10
    if s[:2].lower() == "0x" and len(s) > 2 and s[2] in "0123456789abcdefABCDEF":
        base, i = 16, 2
    elif s[:1] == "0":
        base = 8
    digits = "0123456789abcdef"[:base]
    j = i
    while j < len(s) and s[j].lower() in digits:
        j += 1
    if j == i and not (base == 8 and i == 0 and s[:1] == "0"):
        return 0, s
    val = int(s[i:j], base) if j > i else 0
    rest = s[j:]
    if rest[:1].upper() in "KMGTPE" and rest:
        val <<= 10 * ("KMGTPE".index(rest[0].upper()) + 1)
        rest = rest[1:]
    return val, rest


def parse_kho_scratch(profile: P.Profile, arg: str):
    """``kho_parse_scratch_size``: ('scale', N) or ('sizes', L, G, P) or None
    for -EINVAL, plus the line it prints."""
    if not arg:
        return None, []
    if arg.endswith("%"):
        if len(arg) > 11 or not arg[:-1].isdigit():
            return None, []
        n = int(arg[:-1])
        if n > 0xFFFFFFFF:
            return None, []
        return ("scale", n), [f"KHO: scratch scale is {n}%"]
    sizes, rest = [], arg
    for i in range(3):
        if i:
            if not rest.startswith(","):
                return None, []
            rest = rest[1:]
        v, r = memparse(rest)
        if r == rest:
            return None, []
        sizes.append(v)
        rest = r
    if profile.scratch_grammar == "a0":
        if not all(sizes):
            return None, []
    else:
        if not sum(sizes) or rest:
            return None, []
    line = (f"KHO: scratch areas: lowmem: {sizes[0] >> 20}MiB global: {sizes[1] >> 20}MiB "
            f"pernode: {sizes[2] >> 20}MiB")
    return ("sizes", *sizes), [line]


def roundup(v, a):
    return (v + a - 1) // a * a


@dataclass
class Preserved:
    """The model's own record of what the old kernel preserved (the truth the
    decoded map is checked against)."""

    blocks: dict[tuple[int, int], str] = field(default_factory=dict)   # (phys, order) -> owner

    def add(self, phys, order, owner):
        self.blocks[(phys, order)] = owner

    def remove(self, phys, order):
        self.blocks.pop((phys, order), None)


@dataclass
class Segment:
    name: str
    addr: int
    size: int


class Kernel:
    """One kernel's life on the machine."""

    KERNEL_IMAGE_SIZE = 32 * MiB

    def __init__(self, machine: Machine, profile: P.Profile | str, cmdline: str = "kho=on",
                 release: str | None = None, name: str = "kernel", violations: list | None = None,
                 seed: int = 1, kern_reserved: int = 52 * MiB, test_kho_max_mem: int = 1 * MiB,
                 faults: dict | None = None, clients: tuple[str, ...] = ("test_kho", "memblock", "luo"),
                 arch: str = "x86"):
        self.m = machine
        self.p = P.get_profile(profile)
        self.cmdline = cmdline
        self.release = release or {"A0": "6.17.0", "A1": "6.18.0", "B-prefix": "6.19.0-rc4",
                                   "B": "7.0.0", "C": "7.1.0-rc1", "D": "7.1.0", "E": "7.2.13"}[self.p.name]
        self.name = name
        self.violations = violations if violations is not None else []
        self.oops = None                 # KernelOops that ended the boot, if any
        self.reserved_log: list | None = None   # a list: record every block reserved from the map, in order
        self._memmap = lambda phys: True
        self.log: list[str] = []
        self.rng = random.Random(seed)
        self.kern_reserved = kern_reserved
        self.test_kho_max_mem = test_kho_max_mem
        self.memblock = Memblock()
        self.pages = PageAllocator(name, self.violations)
        # KHO state
        self.kho_enable = False
        self.scratch: list[structs.KhoScratch] = []
        self.scratch_phys = 0
        self.kho_in_fdt: bytes | None = None         # incoming FDT while is_kho_boot()
        self.kho_in_fdt_phys = 0
        self.kho_in_scratch_phys = 0
        self.populate = None
        self.kexec_count_in = 0
        self.out_fdt: _root.RootFdtPage | None = None
        self.out_fdt_phys = 0
        self.radix_tree: radix.RadixTree | None = None
        self.tracker: _chunks.ChunkTracker | None = None
        self.chunk_pages: list[int] = []
        self.finalized = False
        self.subtrees: dict[str, tuple[int, int]] = {}
        self.notifier_subtrees: list[tuple[str, int]] = []
        self.preserved = Preserved()
        self.image = None
        self.reserve_mem: list[clients.ReserveMem] = []
        self.test_kho_state = None
        self.step = "boot"
        self.early_lines: list[str] = []
        self.restored_ok: dict[str, bool] = {}
        self.clients = clients
        self.arch = arch
        self.luo_enabled = False
        self.luo_ser_phys = 0
        self.luo_num_in = 0
        self.luo_sessions: list[dict] = []          # outgoing: name, files [(token, memfd phys)]
        self.luo_incoming: list = []                # decoded incoming sessions
        # fault injection: how many of the next allocations fail at each site
        faults = faults or {}
        self.memblock.faults.arm(int(faults.get("memblock", 0)), int(faults.get("memblock_after", 0)))
        self.pages.faults.arm(int(faults.get("page", 0)), int(faults.get("page_after", 0)))

    # ------------------------------------------------------------------ log
    def _log(self, *lines):
        self.log.extend(lines)

    def _violation(self, kind, s, e, detail):
        self.violations.append(Violation(kind, s, e, detail, self.name, self.step))

    def set_step(self, step):
        self.step = step
        self.pages.step = step

    # ------------------------------------------------------------------ boot
    def boot(self, kho_data: structs.KhoData | None = None, image: Segment | None = None):
        """Boot: populate (if handed over), early params, memblock, KHO memory
        init, memblock_free_all, initcalls (LUO early, kho_init, clients)."""
        self.set_step("setup_arch")
        params = dict(a.split("=", 1) if "=" in a else (a, "") for a in self.cmdline.split())
        for s, e, nid in self.m.ram:
            self.memblock.add(s, e - s, nid)
        # the kernel image: inside scratch after a KHO kexec, at 16 MiB on a cold boot
        if image is not None:
            self.memblock.reserve(image.addr, image.size, kern=True)
        else:
            self.memblock.reserve(16 * MiB, self.KERNEL_IMAGE_SIZE, kern=True)
        if kho_data is not None:
            self.populate = kho_populate(self.p, self.m.mem, kho_data.fdt_addr, kho_data.fdt_size,
                                         kho_data.scratch_addr, kho_data.scratch_size,
                                         self.memblock.mark_kho_scratch)
            self._log(*self.populate.lines)
            if self.populate.accepted:
                self.memblock.reserve(kho_data.scratch_addr, kho_data.scratch_size)
                self.memblock.scratch_only = True
                self.kho_in_fdt = self.populate.fdt_blob
                self.kho_in_fdt_phys = kho_data.fdt_addr
                self.kho_in_scratch_phys = kho_data.scratch_addr
                self.scratch_cnt = len(self.populate.scratch)
        # early params
        self.set_step("early params")
        self.kho_enable = bool(kstrtobool(params.get("kho", "")) or False)
        self.luo_enabled = bool(kstrtobool(params.get("liveupdate", "")) or False) and self.p.kho_blocks
        self.scratch_cfg = ("scale", 200)
        if "kho_scratch" in params:
            cfg, lines = parse_kho_scratch(self.p, params["kho_scratch"])
            self._log(*lines)
            if cfg is None:
                self._log("Malformed early option 'kho_scratch'")
            else:
                self.scratch_cfg = cfg
        # early kernel allocations that count for the scratch scale
        self.memblock.alloc(self.kern_reserved - self.KERNEL_IMAGE_SIZE, PAGE_SIZE, kern=True)
        for spec in [v for k, v in (a.split("=", 1) for a in self.cmdline.split() if "=" in a) if k == "reserve_mem"]:
            self._reserve_mem(spec)
        self.set_step("kho_memory_init")
        try:
            self.kho_memory_init()
        except KernelOops as e:
            # an oops this early (idle task, before the console) is fatal.
            # The exact fault line is known for x86-64 reads (the node's
            # direct-map address); a struct page write faults at a field
            # offset the compiler chose, and arm64 words its fault otherwise
            self.oops = e
            exact = e.access == "read" and self.arch != "arm64"
            self._log(f"BUG: unable to handle page fault for address: {e.vaddr_range[0]:016x}"
                      if exact else f"(model) {e}",
                      "Kernel panic - not syncing: Fatal exception")
            self._violation("oops", e.phys, e.phys + 1, str(e))
            self.panicked = True
            return self
        self.set_step("memblock_free_all")
        self.memblock_free_all()
        self.set_step("initcalls")
        try:
            self.luo_early_startup()
        except KernelPanic:
            self.panicked = True
            return self
        self.kho_init()
        self.test_kho_init()
        self.luo_state_setup()
        self.reserve_mem_init()
        self.set_step("running")
        return self

    def _reserve_mem(self, spec: str):
        try:
            size_s, align_s, name = spec.split(":", 2)
            size, _ = memparse(size_s)
            align, _ = memparse(align_s)
        except ValueError:
            return
        # reserve_mem_kho_revive: only while the incoming handover is kept
        if self.kho_in_fdt is not None:
            err, phys, bsize, lines = retrieve_subtree(self.p, self.kho_in_fdt, clients.MEMBLOCK_KHO_FDT)
            if not err:
                try:
                    regions = clients.decode_memblock(self.m.mem.read(phys, bsize or PAGE_SIZE))
                except Exception:
                    regions = []
                for r in regions:
                    if r.name == name:
                        if r.start % max(align, 1):
                            self._log(f"KHO reserve-mem '{name}' has wrong alignment (0x{r.start:x}, 0x{align:x})")
                            break
                        if r.size != size:
                            self._log(f"KHO reserve-mem '{name}' has wrong size (0x{r.size:x} != 0x{size:x})")
                            break
                        self.memblock.reserve(r.start, r.size)
                        self.reserve_mem.append(r)
                        self._log(f"Revived memory reservation '{name}' from KHO")
                        return
        addr = self.memblock.alloc(size, max(align, PAGE_SIZE))
        if addr:
            self.reserve_mem.append(clients.ReserveMem(name, addr, size))

    # --------------------------------------------------------- memory init
    def kho_memory_init(self):
        if self.kho_in_scratch_phys:
            self.scratch = list(self.populate.scratch)
            self.scratch_phys = self.kho_in_scratch_phys
            # A..C: kho_release_scratch; D+: memmap init makes the same
            # pageblocks MIGRATE_CMA; either way they go to the buddy
            # allocator in memblock_free_all
            self._memmap = memmap_present([(s_, e_) for s_, e_, _ in self.m.ram])
            try:
                walk = kho_memory_walk(self.p, self.m.mem, self.kho_in_fdt, on_block=self._reserve_preserved,
                                       want_blocks=False, faithful=True)
            except WalkBudgetExceeded as e:
                self._violation("walk-amplified", self.kho_in_scratch_phys, self.kho_in_scratch_phys + 1,
                                f"the map walk does not end in reasonable time: {e} (nodes reached more than once)")
                return
            self._log(*walk.lines)
            for prob in walk.problems:
                self._log(f"(model) map walk problem: {prob}")
            if not walk.keep_fdt:
                self.kho_in_fdt = None
                self.kho_in_fdt_phys = 0
            self._check_scratch_overlap()
        else:
            self.kho_reserve_scratch()

    def _reserve_preserved(self, phys, order):
        """``kho_preserved_memory_reserve``: the struct pages of the block are
        initialised (CONFIG_DEFERRED_STRUCT_PAGE_INIT, as in the vmtest kernel
        and distribution kernels) and the head's ``private`` written: a pfn
        without memmap faults."""
        bad = first_pfn_without_memmap(phys, order, self._memmap)
        if bad is not None:
            v = X86_64_VMEMMAP + (bad >> 12) * STRUCT_PAGE_SIZE
            raise KernelOops("kho_preserved_memory_reserve", "write", bad,
                             f"struct page (block 0x{phys:x} order {order})", (v, v + STRUCT_PAGE_SIZE))
        if self.reserved_log is not None:
            self.reserved_log.append((phys, order))
        size = PAGE_SIZE << order
        self.memblock.reserve(phys, size)
        self.pages.reserve_preserved(phys, order)

    def _check_scratch_overlap(self):
        sc = IntervalSet((a.addr, a.end) for a in self.scratch)
        for phys, order in self.pages.preserved.items():
            for s, e in sc.overlaps(phys, phys + (PAGE_SIZE << order)):
                self._violation("preserved-overlaps-scratch", s, e,
                                f"preserved block 0x{phys:x} order {order} lies in scratch: early "
                                "allocations of this kernel may already have overwritten it")

    def kho_reserve_scratch(self):
        if not self.kho_enable:
            return
        p = self.p
        align = p.scratch_align
        cfg = self.scratch_cfg
        nodes = self.m.nodes
        if cfg[0] == "scale":
            scale = cfg[1]
            low = self.memblock.kern_size(limit=ARCH_LOW_ADDRESS_LIMIT) * scale // 100
            glob = self.memblock.kern_size() * scale // 100 - low
            per = {n: self.memblock.kern_size() * scale // 100 for n in nodes}
            low, glob = roundup(low, align), roundup(max(glob, 0), align)
        else:
            _, low, glob, pn = cfg
            if "lowmem" in p.scratch_round_explicit:
                low = roundup(low, align)
            if "global" in p.scratch_round_explicit:
                glob = roundup(glob, align)
            per = {n: pn for n in nodes}
        per = {n: roundup(v, align) for n, v in per.items()}
        areas = []
        arr = self.memblock.alloc(16 * (len(nodes) + 2), PAGE_SIZE)

        def fail(which):
            if p.per_area_scratch_fail_msgs and which:
                self._log(f"KHO: Failed to reserve {which}")
            for a in areas:
                self.memblock.free(a.addr, a.size)
            self._log(*p.msg_scratch_fail)
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
            a = self.memblock.alloc(per[n], align, nid=n)
            if not a:
                return fail(f"nid {n} scratch buffer")
            areas.append(structs.KhoScratch(a, per[n]))
        self.scratch = areas
        self.scratch_phys = arr
        self.m.mem.write(arr, structs.encode_scratch(areas))

    def memblock_free_all(self):
        self.memblock.scratch_only = False
        free = IntervalSet((s, e) for s, e, _ in self.m.ram)
        for s, e in self.memblock.reserved:
            free.remove(s, e)
        for s, e in free:
            s, e = (s + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1), e & ~(PAGE_SIZE - 1)
            if e > s:
                self.pages.free(s, e, "memblock_free_all")

    # ------------------------------------------------------------ kho_init
    def is_kho_boot(self) -> bool:
        return self.kho_in_fdt is not None

    def kho_init(self):
        """``kho_init``: radix root / tracker, the root FDT page, kexec-metadata,
        then the incoming debugfs (KHO boot) or CMA scratch (cold boot).

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
        if p.map_format == "radix":
            self.radix_tree = radix.RadixTree(self.m.mem, self._alloc_page, self._free_page)
            if not self.radix_tree.root:
                return -P.ENOMEM
        else:
            self.tracker = _chunks.ChunkTracker(p.preserve_bits)
        if p.fdt_built_at == "finalize":
            # A: kho_init allocates the page; finalize writes and preserves it
            self.out_fdt_phys = self.alloc_pages(0)
            if not self.out_fdt_phys:
                return -P.ENOMEM
        if p.fdt_built_at == "boot":
            phys = self.alloc_preserve(PAGE_SIZE, "root FDT")
            if not phys:
                return -P.ENOMEM
            mm = self.radix_tree.root if self.radix_tree else 0
            self.out_fdt = _root.build_root_at_boot(p, mm)
            self.out_fdt_phys = phys
            self._sync_fdt()
        if p.kexec_metadata:
            if self.is_kho_boot():
                md, lines = kexec_metadata_in(p, self.m.mem, self.kho_in_fdt)
                self._log(*lines)
                self.kexec_count_in = md.kexec_count if md else 0
            meta = structs.KexecMetadata(1, self.release, self.kexec_count_in + 1).pack()
            mphys = self.alloc_preserve(len(meta), "kexec-metadata")
            err = -P.ENOMEM if not mphys else 0
            if not err:
                self.m.mem.write(mphys, meta)
                err = self.add_subtree(structs.KHO_METADATA_NODE_NAME, mphys, len(meta))
            if err:
                self._log(f"KHO: failed to initialize kexec-metadata subtree: {err}")
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

    def _kho_in_debugfs_init(self):
        """``kho_in_debugfs_init`` (D+): every incoming sub-node becomes an
        ``in/sub_fdts`` file; bad ones are skipped with a warning."""
        if not self.p.size_prop:
            return
        fdt = self.kho_in_fdt
        try:
            tree = _fdt.parse(fdt, "incoming FDT")
        except Exception:
            return
        for child in tree.children:
            v = child.props.get(self.p.subtree_prop)
            if v is None:
                continue
            if len(v) != 8:
                self._log(f"KHO: node {child.name} prop {self.p.subtree_prop} has invalid length: {len(v)}")
                continue
            sz = child.props.get(self.p.size_prop)
            if sz is None or len(sz) != 8:
                self._log(f"KHO: node {child.name} missing or invalid {self.p.size_prop} property")

    # -------------------------------------------------------- page helpers
    def _scratch_set(self) -> IntervalSet:
        key = tuple(self.scratch)
        if getattr(self, "_scratch_key", None) != key:
            self._scratch_key = key
            self._scratch_iv = IntervalSet((a.addr, a.end) for a in self.scratch if a.size)
        return self._scratch_iv

    def _alloc(self, size: int, align: int = PAGE_SIZE) -> int:
        """Unmovable kernel memory: never from scratch (CMA)."""
        p = self.pages.alloc(size, high_first=False, avoid=self._scratch_set(), align=align)
        if p:
            self.m.mem.zero(p, size)
        return p

    def _kmalloc(self, size: int) -> int:
        """Small objects packed in pages (kmalloc-512 bitmaps of 6.16/6.17)."""
        if size >= PAGE_SIZE:
            return self._alloc(size)
        slab = getattr(self, "_slab", None)
        if slab is None or slab[1] + size > PAGE_SIZE:
            slab = [self._alloc(PAGE_SIZE), 0]
            self._slab = slab
        p = slab[0] + slab[1]
        slab[1] += (size + 7) & ~7
        return p

    def _alloc_page(self):
        return self._alloc(PAGE_SIZE) or None

    def _free_page(self, p):
        self.pages.free(p, p + PAGE_SIZE, "free_page")

    # ------------------------------------------------------ preservation API
    def _track(self, phys, order, owner, add=True) -> int:
        if add:
            for s, e in self._scratch_set().overlaps(phys, phys + (PAGE_SIZE << order)):
                if self.p.khop_magic:     # KEXEC_HANDOVER_DEBUG overlap check (6.18+)
                    return -P.EINVAL
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
        if self.p.finalize == "notifier" and self.finalized:
            return -P.EBUSY
        return self._track(phys, order, owner)

    def unpreserve_folio(self, phys: int, order: int) -> int:
        if not self.p.unpreserve:
            return -P.EOPNOTSUPP
        return self._track(phys, order, "", add=False)

    def preserve_pages(self, phys: int, nr: int, owner: str = "pages") -> int:
        pfn, end = phys >> PAGE_SHIFT, (phys >> PAGE_SHIFT) + nr
        done = []
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

    def alloc_pages(self, order: int) -> int:
        return self._alloc(PAGE_SIZE << order, PAGE_SIZE << order)

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

        def page():
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
    def _sync_fdt(self):
        if self.out_fdt is not None and self.out_fdt_phys:
            self.m.mem.write(self.out_fdt_phys, bytes(self.out_fdt.buf))

    def add_subtree(self, name: str, phys: int, size: int) -> int:
        if self.p.fdt_built_at == "finalize":
            self.notifier_subtrees = [(n, q) for n, q in self.notifier_subtrees if n != name] + [(name, phys)]
            self.subtrees[name] = (phys, size)
            return 0
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
        if not self.kho_enable:
            return -P.EOPNOTSUPP
        if p.finalize is None:
            return -P.EOPNOTSUPP
        if p.finalize == "notifier":
            if self.finalized:
                return -P.EEXIST
            self.set_step("finalize")
            fdt_phys = self.out_fdt_phys
            self.preserve_folio(fdt_phys, 0, "root FDT")
            self._notifiers_finalize()
            try:
                first, self.chunk_pages = _chunks.encode(self.tracker, self.m.mem, self._kmalloc)
                blob, err = _root.build_root_at_finalize(p, first, self.notifier_subtrees)
            except MemoryError:
                blob, err = b"", -P.ENOMEM
            if err:
                self._log(f"KHO: Failed to convert KHO state tree: {err}")
                self.abort()
                return err
            self.m.mem.write(fdt_phys, blob)
            self.out_fdt_phys = fdt_phys
            self.finalized = True
            return 0
        # B: (re)serialise the chunk list and swap the map value in place
        self.set_step("finalize")
        try:
            first, chunk_pages = _chunks.encode(self.tracker, self.m.mem, self._kmalloc)
        except MemoryError:
            return -P.ENOMEM             # kho_finalize fails, the old map stays
        self.chunk_pages = chunk_pages
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

    def _notifiers_finalize(self):
        """A: clients preserve their data from the finalize notifier."""
        if self.test_kho_state is not None and self.test_kho_state.get("pending"):
            self._test_kho_publish()
        self._memblock_publish()

    # ------------------------------------------------------------- clients
    def test_kho_init(self):
        if not self.kho_enable or "test_kho" not in self.clients:
            return
        err, phys, size, lines = retrieve_subtree(self.p, self.kho_in_fdt, clients.KHO_TEST_FDT)
        self._log(*lines)
        if err == 0:
            ok = self._test_kho_restore(phys)
            self._log("test_kho: KHO restore succeeded" if ok else "test_kho: KHO restore failed")
            self.restored_ok["kho_test"] = ok
            return
        if err != -P.ENOENT:
            self._log(f"test_kho: failed to retrieve kho_test FDT: {err}")
            return
        self._test_kho_save()

    def _test_kho_save(self):
        nr_max_order = P.MAX_PAGE_ORDER
        folios, total, csum = [], 0, 0
        while True:
            order = self.rng.randrange(nr_max_order + 1)
            size = PAGE_SIZE << order
            if total + size > self.test_kho_max_mem:
                break
            phys = self.alloc_pages(order)
            if not phys:
                break
            data = self.rng.randbytes(min(size, 256)) * (size // min(size, 256))
            self.m.mem.write(phys, data)
            csum = clients.csum_partial(data, csum)
            folios.append((phys, order))
            total += size
        self.test_kho_state = {"folios": folios, "csum": csum, "pending": True}
        if self.p.fdt_built_at == "boot":
            self._test_kho_publish()

    def _test_kho_publish(self):
        st = self.test_kho_state
        st["pending"] = False
        folios = st["folios"]
        for phys, order in folios:
            self.preserve_folio(phys, order, "test_kho folio")
        nr = len(folios)
        fdt_order = max(0, (nr * 8 + PAGE_SIZE - 1).bit_length() - PAGE_SHIFT)
        fdt_phys = self.alloc_pages(fdt_order)
        if not fdt_phys:
            return
        self.preserve_folio(fdt_phys, fdt_order, "test_kho FDT")
        if self.p.test_kho_vmalloc:
            info = b"".join((p | o).to_bytes(8, "little") for p, o in folios)
            pages = []
            for i in range(0, max(len(info), 1), PAGE_SIZE):
                pg = self.alloc_pages(0)
                if not pg:
                    return
                self.m.mem.write(pg, info[i:i + PAGE_SIZE])
                pages.append(pg)
            desc = self.preserve_vmalloc(pages, "test_kho folios_info")
            if desc is None:
                return
            blob, err = clients.encode_kho_test(nr, st["csum"], desc, size=nr * 8 + PAGE_SIZE)
        else:
            blob, err = clients.encode_kho_test(nr, st["csum"], None, [p | o for p, o in folios],
                                                size=nr * 8 + PAGE_SIZE)
        self.m.mem.write(fdt_phys, blob)
        self.add_subtree(clients.KHO_TEST_FDT, fdt_phys, len(blob))

    def restore_folio(self, phys: int) -> int | None:
        """``kho_restore_folio``: the order, or None (WARN) when the page was
        not stamped by this kernel's walk."""
        order = self.pages.restore(phys)
        if order is None:
            return None
        if self.p.restore_checks_order and order > P.MAX_PAGE_ORDER:
            return None
        return order

    def _test_kho_restore(self, phys: int) -> bool:
        if self.restore_folio(phys) is None:
            return False
        try:
            head = self.m.mem.read(phys, 40)
            blob = self.m.mem.read(phys, max(40, _fdt.totalsize(head)))
            t = clients.decode_kho_test(blob, phys, inline=not self.p.test_kho_vmalloc)
            if t.folios_info is not None:
                blocks, chunk_pages = structs.decode_vmalloc(self.m.mem, t.folios_info, phys)
                for p in blocks + chunk_pages:
                    if self.restore_folio(p) is None:
                        return False
                raw = b"".join(self.m.mem.read(p, PAGE_SIZE) for p in blocks)
                vals = [int.from_bytes(raw[8 * i:8 * i + 8], "little") for i in range(t.nr_folios)]
            else:
                vals = t.folios_inline
            csum = 0
            for v in vals:
                p, o = v & ~0xFFF, v & 0xFFF
                if self.restore_folio(p) != o:
                    return False
                csum = clients.csum_partial(self.m.mem.read(p, PAGE_SIZE << o), csum)
            return csum == t.csum
        except Exception:
            return False

    # ----------------------------------------------------------------- LUO
    def luo_early_startup(self):
        """``liveupdate_early_init`` (7.2, luo-v5): read the incoming luo_ser,
        restore the session block chain, free the luo_ser page."""
        if not self.p.kho_blocks or "luo" not in self.clients:
            return
        if not self.kho_enable:
            if self.luo_enabled:
                self._log("luo: Disabling liveupdate because KHO is disabled")
            self.luo_enabled = False
            return
        err, phys, size, lines = retrieve_subtree(self.p, self.kho_in_fdt, clients.LUO_KHO_ENTRY_NAME)
        self._log(*lines)
        if err:
            if err != -P.ENOENT:
                self._log(f"luo: failed to retrieve LUO state 'LUO' from KHO: {_errname(err)}")
                self._luo_fail(err)
            return
        if size < clients.LUO_SER.size:
            self._log(f"luo: LUO state is too small ({size} < {clients.LUO_SER.size})")
            return self._luo_fail(-P.EINVAL)
        raw = self.m.mem.read(phys, clients.LUO_SER.size)
        if raw[:8].split(b"\0")[0] != clients.LUO_ABI_COMPATIBLE.encode() or raw[6:8] != b"\0\0":
            self._log(f"luo: LUO state is incompatible with '{clients.LUO_ABI_COMPATIBLE}'")
            return self._luo_fail(-P.EINVAL)
        luo = clients.decode_luo(raw)
        self.luo_num_in = luo.liveupdate_num
        self._log(f"luo: Retrieved live update data, liveupdate number: {luo.liveupdate_num}")
        try:
            full = clients.decode_luo(raw, phys, self.m.mem)
            self.luo_incoming = full.sessions
            for p_ in structs.decode_blocks(self.m.mem, luo.sessions_pa, clients.LUO_SESSION_SER.size)[1]:
                self.restore_folio(p_)
        except Exception as e:
            msg = getattr(e, "message", str(e))
            self._log(f"luo: {msg.split(' (')[0]}")
            self.restore_folio(phys)
            return self._luo_fail(-P.EINVAL)
        self.restore_folio(phys)                     # kho_restore_free(luo_ser)

    def _luo_fail(self, err):
        """``luo_restore_fail`` is ``panic()``: the boot ends here."""
        self.luo_enabled = False
        self._log("Kernel panic - not syncing: The incoming tree failed to initialize properly "
                  f"[{_errname(err)}], disabling live update")
        self._violation("panic", 0, 0, "luo_restore_fail() panics the kernel")
        raise KernelPanic()

    def luo_state_setup(self):
        if not self.luo_enabled or not self.kho_enable or "luo" not in self.clients:
            return
        phys = self.alloc_preserve(clients.LUO_SER.size, "luo_ser")
        flb = self.alloc_preserve(PAGE_SIZE, "luo flb header")
        if not phys or not flb:
            self._log("luo: failed to allocate/preserve LUO state memory")
            return
        self.m.mem.write(flb, struct.pack("<QQ", 1, 0))
        self.m.mem.write(phys, clients.encode_luo_ser(self.luo_num_in + 1, 0, flb))
        self.luo_ser_phys = phys
        self.add_subtree(clients.LUO_KHO_ENTRY_NAME, phys, clients.LUO_SER.size)

    def luo_preserve_memfd(self, session: str, token: int, content: bytes) -> int:
        """A session with one memfd (memfd-v2): the folio, its folio array in
        vmalloc memory, the memfd_luo_ser, all preserved."""
        if not self.luo_ser_phys:
            return -P.EOPNOTSUPP
        folio = self.alloc_pages(0)
        if not folio:
            return -P.ENOMEM
        self.m.mem.write(folio, content[:PAGE_SIZE])
        self.preserve_folio(folio, 0, f"memfd {session}")
        arr = self.alloc_pages(0)
        self.m.mem.write(arr, struct.pack("<QQ", (folio >> PAGE_SHIFT) | (3 << 52), 0))
        desc = self.preserve_vmalloc([arr], f"memfd {session} folios")
        ser = self.alloc_preserve(clients.MEMFD_LUO_SER.size, f"memfd {session}")
        if desc is None or not ser:
            return -P.ENOMEM
        self.m.mem.write(ser, clients.MEMFD_LUO_SER.pack(0, len(content), 1, 0, 1, desc.pack()))
        self.luo_sessions.append({"name": session, "files": [(token, ser)]})
        return 0

    def liveupdate_reboot(self):
        """``liveupdate_reboot`` from kernel_kexec: serialise sessions into
        KHO block chains and point luo_ser at them."""
        if not self.luo_enabled or not self.luo_ser_phys or not self.luo_sessions:
            return
        page = lambda: self.alloc_preserve(PAGE_SIZE, "luo block")  # noqa: E731
        sess = []
        for s_ in self.luo_sessions:
            files = [clients.LUO_FILE_SER.pack(b"memfd-v2", ser, tok) for tok, ser in s_["files"]]
            head, _ = structs.encode_blocks(self.m.mem, page, files, clients.LUO_FILE_SER.size)
            sess.append(clients.LUO_SESSION_SER.pack(s_["name"].encode(), head, len(files)))
        head, _ = structs.encode_blocks(self.m.mem, page, sess, clients.LUO_SESSION_SER.size)
        self.m.mem.write_u64(self.luo_ser_phys + 16, head)

    def reserve_mem_init(self):
        if self.kho_enable and self.reserve_mem and self.p.fdt_built_at == "boot":
            self._memblock_publish()

    def _memblock_publish(self):
        if not self.reserve_mem or clients.MEMBLOCK_KHO_FDT in self.subtrees:
            return
        fdt_phys = self.alloc_pages(0)
        self.preserve_folio(fdt_phys, 0, "memblock FDT")
        for r in self.reserve_mem:
            self.preserve_pages(r.start, r.size >> PAGE_SHIFT, f"reserve_mem {r.name}")
        blob, err = clients.encode_memblock(self.reserve_mem)
        if err:
            self._log(f"failed to prepare memblock FDT for KHO: {err}")
            return
        self.m.mem.write(fdt_phys, blob)
        self.add_subtree(clients.MEMBLOCK_KHO_FDT, fdt_phys, len(blob))

    # ---------------------------------------------------------------- kexec
    def kexec_file_load(self) -> int:
        """Place the segments (all inside scratch, as kho_locate_mem_hole
        makes them) and the handover record; 0 or an errno."""
        self.set_step("kexec_file_load")
        p = self.p
        handover = self.kho_enable and (p.fill_kimage_gate == "enable" or self.finalized)
        segs: list[Segment] = []
        pool = sorted([a for a in self.scratch if a.size], key=lambda a: a.addr)
        used = IntervalSet()

        def place(name, size, align, top_down):
            for a in (reversed(pool) if top_down else pool):
                lo, hi = a.addr, a.end
                cands = _free_in(lo, hi, used)
                for s, e in (reversed(cands) if top_down else cands):
                    x = ((e - size) & ~(align - 1)) if top_down else ((s + align - 1) & ~(align - 1))
                    if s <= x and x + size <= e:
                        used.add(x, x + size)
                        segs.append(Segment(name, x, size))
                        return x
            return 0

        if not self.kho_enable or not pool:
            self.image = None
            return 0 if not self.kho_enable else -99     # -EADDRNOTAVAIL
        scratch_seg = 0
        if handover:
            scratch_seg = place("kho scratch array", 16 * len(self.scratch), 0x10000, True)
        kernel = place("kernel", self.KERNEL_IMAGE_SIZE, 2 * MiB, False)
        boot = place("boot params", PAGE_SIZE, PAGE_SIZE, True)
        if not kernel or not boot or (handover and not scratch_seg):
            return -99
        kd = None
        if handover:
            fdt_phys = self.out_fdt_phys
            kd = structs.KhoData(fdt_phys, PAGE_SIZE, scratch_seg, 16 * len(self.scratch))
        # the boot data the next kernel parses: x86 boot_params' setup_data
        # (setup_kho always writes the record, links it only with a handover),
        # or an arm64 device tree whose /chosen carries linux,kho-fdt/-scratch
        if self.arch == "arm64":
            boot_bytes = structs.encode_chosen(kd.fdt_addr, kd.scratch_addr, kd.scratch_size) if kd else \
                _fdt.build([("#address-cells", b"\0\0\0\2"), ("#size-cells", b"\0\0\0\2")], [("chosen", [])])[0]
        else:
            boot_bytes = structs.encode_setup_data(kd) if kd else b""
        self.image = {"segments": segs, "kho_data": kd, "boot": boot, "boot_bytes": boot_bytes}
        return 0

    def kexec(self, next_profile, cmdline: str | None = None, release: str | None = None, name: str = "kernel",
              **kw) -> "Kernel":
        """The jump: copy segments, then the next kernel boots from them."""
        self.set_step("kexec")
        self.liveupdate_reboot()
        if self.image is None:
            raise RuntimeError("kexec without a loaded image")
        kd = self.image["kho_data"]
        segs = self.image["segments"]
        # what the new kernel finds: scratch is garbage except the segments
        seg_set = IntervalSet((s.addr, s.addr + s.size) for s in segs)
        for a in self.scratch:
            for s, e in _free_in(a.addr, a.end, seg_set):
                self.m.mem.scramble(s, e - s)
        if kd is not None:
            self.m.mem.write(kd.scratch_addr, structs.encode_scratch(self.scratch))
        boot = self.image["boot"]
        self.m.mem.write(boot, self.image["boot_bytes"].ljust(PAGE_SIZE, b"\0"))
        image = next(s for s in segs if s.name == "kernel")
        nk = Kernel(self.m, next_profile, cmdline if cmdline is not None else self.cmdline, release, name,
                    self.violations, seed=self.rng.randrange(1 << 30), kern_reserved=self.kern_reserved,
                    test_kho_max_mem=self.test_kho_max_mem, arch=self.arch, **kw)
        nk.old = self
        return nk.boot(nk.find_handover(boot), image)

    def find_handover(self, boot: int) -> structs.KhoData | None:
        """What the new kernel's arch code hands to kho_populate, read from
        the boot data bytes: x86 ``parse_setup_data`` -> ``add_kho``, arm64
        ``early_init_dt_check_kho`` (silently nothing when malformed)."""
        if self.arch == "arm64":
            try:
                head = self.m.mem.read(boot, 40)
                got = structs.decode_chosen(self.m.mem.read(boot, _fdt.totalsize(head)))
            except Exception:
                return None
            return structs.KhoData(*got) if got else None
        try:
            nxt, typ, kd = structs.decode_setup_data(self.m.mem, boot)
        except Exception:
            return None
        return kd if typ == structs.SETUP_KEXEC_KHO else None

    # ------------------------------------------------------------ invariants
    def decoded_map(self) -> list[tuple[int, int]]:
        """The outgoing map as the next kernel would walk it."""
        if self.radix_tree is not None:
            return radix.walk(self.m.mem, self.radix_tree.root, strict=False)
        if self.out_fdt is not None:
            first = self.out_fdt.mem_map() or 0
        else:
            try:
                first = _root.decode_root(_root.read_root_from_memory(self.m.mem, self.out_fdt_phys)).mem_map or 0
            except Exception:
                first = 0
        return _chunks.walk(self.m.mem, first, self.p.preserve_bits, strict=False) if first else []

    def debugfs(self) -> dict:
        """The files of ``/sys/kernel/debug/kho`` with the kernel's names and formats."""
        out = {}
        if not self.kho_enable:
            return out
        o = {}
        if self.p.finalize == "notifier" or self.p.finalize == "serialize":
            o["finalize"] = f"{int(self.finalized)}\n"
        if self.out_fdt is not None and not self.is_kho_boot():
            # the blob keeps the size it had at kho_init (7.2 quirk)
            o["fdt"] = bytes(self.out_fdt.buf[:getattr(self, "debugfs_fdt_size", 0) or self.out_fdt.totalsize()])
        o["scratch_phys"] = structs.format_debugfs_scratch(a.addr for a in self.scratch)
        o["scratch_len"] = structs.format_debugfs_scratch(a.size for a in self.scratch)
        o["sub_fdts"] = {n: self.m.mem.read(ph, sz) for n, (ph, sz) in self.subtrees.items() if sz}
        out["out"] = o
        if self.kho_in_fdt is not None:
            out["in"] = {"fdt": self.kho_in_fdt}
        return out


def _free_in(lo, hi, used: IntervalSet):
    """The parts of [lo, hi) not in ``used``."""
    return _subtract([(lo, hi)], used)
