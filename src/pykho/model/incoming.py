"""The incoming kernel's KHO code paths as functions over memory.

``kho_populate``, the memory-map walk of ``kho_memory_init``,
``kho_retrieve_subtree`` and the kexec-metadata reader, each following the
generation profile's rules and printing its exact lines.  They only read
memory, so :mod:`pykho.validate` runs the very same code on a dump to predict
what a real kernel will do: there is no second copy of the rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import profiles as P
from ..abi import bits, structs
from ..abi import fdt as _fdt
from ..abi.mem import page_bytes_of
from ..errors import KhoDecodeError
from ..handover import map_walker as walker

PAGE_SIZE = 4096

errname = P.errname


@dataclass
class PopulateResult:
    accepted: bool
    err: int = 0
    lines: list[str] = field(default_factory=list)
    fdt_blob: bytes | None = None
    mem_map: int = 0
    scratch: list[structs.KhoScratch] = field(default_factory=list)
    failed_step: str | None = None


#: ``early_memremap`` maps at most NR_FIX_BTMAPS pages (64 on x86-64 and on
#: arm64 with 4 KiB pages: 256 KiB), counted from the page holding ``phys``
EARLY_MEMREMAP_MAX_PAGES = 64


def early_memremap_span(phys: int, length: int) -> int | None:
    """How many bytes from ``phys`` ``early_memremap(phys, length)`` makes
    readable (the mapping is whole pages), or None when it fails: length 0,
    an end that wraps past 2^64, or more than 64 pages.  It never checks
    that the address is RAM (mm/early_ioremap.c ``__early_ioremap``)."""
    if not length or phys + length - 1 >= 1 << 64:
        return None
    first = phys & ~(PAGE_SIZE - 1)
    end = (phys + length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    if (end - first) // PAGE_SIZE > EARLY_MEMREMAP_MAX_PAGES:
        return None
    return end - phys


class BusMemory:
    """Physical memory as the CPU reads it: RAM from ``mem``; a range that
    no RAM backs reads as zeros (what QEMU returns: 7.2.13 given an FDT
    address outside RAM prints ``is invalid: -9``, a scratch array there is
    read as empty entries; real hardware returns all-ones, with the same
    outcome)."""

    def __init__(self, mem, ram, aborts: bool = False):
        self.mem = mem
        self.ram = [(s, e) for s, e, *_ in ram]
        #: an unbacked read raises :class:`BusAbort` instead (QEMU's arm64 virt)
        self.aborts = aborts

    def read(self, phys: int, length: int, what: str = "") -> bytes:
        if length and not any(s < phys + length and phys < e for s, e in self.ram):
            if self.aborts:
                raise BusAbort(phys, what)
            return bytes(length)
        return self.mem.read(phys, length, what)


class BusAbort(Exception):
    """A read of a physical address nothing backs, on a machine whose bus
    answers it with an external abort (QEMU's arm64 ``virt``: 7.2.13-arm64
    given a /chosen linux,kho-fdt above RAM dies in setup_arch, before any
    console, in panic_bad_stack)."""

    def __init__(self, phys: int, what: str):
        self.phys, self.what = phys, what
        super().__init__(f"external abort reading {what or 'memory'} at 0x{phys:x}: nothing backs it")

    def __getattr__(self, name):
        return getattr(self.mem, name)


def _read_fdt(mem, phys: int, length: int) -> bytes | None:
    try:
        return mem.read(phys, length, "handover FDT")
    except KhoDecodeError:
        return None


def kho_populate(profile: P.Profile, mem, fdt_phys: int, fdt_len: int, scratch_phys: int, scratch_len: int,
                 mark_scratch=None) -> PopulateResult:
    """Run ``kho_populate`` of ``profile`` on what is in ``mem``.

    ``mark_scratch(addr, size)`` is called for every scratch entry (the
    model's memblock); it returns 0 or a negative errno.  Nothing is called
    unless every earlier check passed, as in the kernel.
    """
    res = PopulateResult(False)
    fdt = b""
    err = 0
    for step in profile.populate_steps:
        if step == P.STEP_MAP_FDT:
            span = early_memremap_span(fdt_phys, fdt_len)
            # the header is read from the mapping; libfdt then trusts totalsize
            got = _read_fdt(mem, fdt_phys, min(span, PAGE_SIZE)) if span else None
            if got is None:
                res.lines.append(profile.msg_map_fdt.format(fdt=fdt_phys))
                err = -P.EFAULT
                break
            fdt = got
        elif step == P.STEP_HEADER:
            rc = _fdt.kernel_check_header(fdt)
            if rc:
                res.lines.append(profile.msg_header_invalid.format(fdt=fdt_phys, err=rc))
                err = -P.EINVAL
                break
            # libfdt reads up to totalsize from here on; the kernel maps one
            # page and trusts the header, we read what memory holds
            ts = _fdt.totalsize(fdt)
            if ts > len(fdt):
                more = _read_fdt(mem, fdt_phys, min(ts, _fdt.FDT_READ_CAP))
                fdt = more if more is not None else fdt + bytes(ts - len(fdt))
            fdt = fdt[:ts]
        elif step == P.STEP_COMPATIBLE:
            rc = _fdt.node_check_compatible(fdt, 0, profile.compatible)
            if rc:
                res.lines.append(profile.msg_incompatible.format(fdt=fdt_phys, compat=profile.compatible, err=rc))
                err = -P.EINVAL
                break
        elif step == P.STEP_MEM_MAP:
            v, ln = _fdt.getprop(fdt, 0, "preserved-memory-map")
            if v is None or ln != 8:
                if profile.msg_map_prop_bad:
                    res.lines.append(profile.msg_map_prop_bad)
                err = -P.ENOENT
                break
            res.mem_map = _fdt.u64(v)
            if not res.mem_map:
                if profile.msg_map_zero:
                    res.lines.append(profile.msg_map_zero)
                err = -P.ENOENT
                break
        elif step == P.STEP_MAP_SCRATCH:
            try:
                data = mem.read(scratch_phys, scratch_len, "kho_scratch array") \
                    if early_memremap_span(scratch_phys, scratch_len) else None
            except KhoDecodeError:
                data = None
            if data is None:
                res.lines.append(profile.msg_map_scratch.format(phys=scratch_phys, len=scratch_len))
                err = -P.EFAULT
                break
            res.scratch, _ = structs.decode_scratch(data)
        elif step == P.STEP_MARK_SCRATCH:
            for a in res.scratch:
                rc = mark_scratch(a.addr, a.size) if mark_scratch else 0
                if rc:
                    res.lines.append(profile.msg_mark_scratch.format(addr=a.addr, size=a.size, err=rc,
                                                                     errname=errname(rc)))
                    err = rc
                    break
            if err:
                break
    if err:
        res.err = err
        res.failed_step = step
        res.lines.append(profile.disable_line(err))
        return res
    if not res.mem_map:              # generations whose populate does not look at it
        v, ln = _fdt.getprop(fdt, 0, "preserved-memory-map")
        res.mem_map = _fdt.u64(v) if v is not None and ln == 8 else 0
    res.accepted = True
    res.fdt_blob = fdt
    res.lines.append(profile.msg_found)
    return res


@dataclass
class MemoryInitResult:
    """What ``kho_memory_init`` did with the map."""

    walked: bool
    keep_fdt: bool                 # False: kho_in.fdt_phys = 0 (handover forgotten)
    lines: list[str] = field(default_factory=list)
    blocks: list[tuple[int, int]] = field(default_factory=list)
    problems: list = field(default_factory=list)
    #: the map's own pages, in walk order: (phys, what)
    meta_pages: list[tuple[int, str]] = field(default_factory=list)


#: x86-64, 4-level paging, no memory-layout randomisation (the vmtest kernel):
#: where the direct map and the struct page array (vmemmap) start
X86_64_PAGE_OFFSET = 0xFFFF888000000000
X86_64_VMEMMAP = 0xFFFFEA0000000000
STRUCT_PAGE_SIZE = 64


@dataclass(frozen=True)
class ArchLayout:
    """Where an architecture's kernel maps RAM (the direct / linear map) and
    its struct pages (vmemmap), and how it words a kernel page fault.

    ``phys_offset_align``: the linear map starts at the lowest RAM address
    rounded down to this (arm64 ``memstart_addr``, arch/arm64/mm/init.c:217,
    1 GiB with 4 KiB pages), or at physical 0 when it is 0 (x86-64)."""
    name: str
    page_offset: int
    vmemmap: int
    phys_offset_align: int
    #: the fault line of a read through the linear map ({v:016x}: the address)
    fault_line: str
    #: the panic line that follows a fatal oops
    oops_panic: str
    #: a non-canonical address raises #GP with its own line (x86-64)
    gp_noncanonical: bool
    #: a fault before the trap handlers (setup_arch) prints the early exception line (x86-64)
    early_exception: bool
    #: a read of an unbacked physical address aborts (QEMU arm64 virt) instead of reading zeros
    unbacked_read_aborts: bool = False
    #: RAM is what the boot DT's memory nodes claim (arm64), not the firmware's map
    ram_from_boot_dt: bool = False
    #: with NUMA=y, a memblock.memory range no node covers (an inherited
    #: scratch area outside RAM) faults in free_area_init with this line
    #: (x86-64, seen on 7.2.13 and 7.3.4); "" where not seen
    unnoded_memory_fault: str = ""
    #: without NUMA information the one dummy node spans [0, end of RAM) (x86 dummy_numa_init)
    dummy_node_spans_holes: bool = False

    def phys_offset(self, ram_start: int) -> int:
        a = self.phys_offset_align
        return (ram_start // a) * a if a else 0

    def linear(self, phys: int, ram_start: int = 0) -> int:
        """``phys_to_virt``: x86 adds PAGE_OFFSET; arm64 ORs it over the
        offset from PHYS_OFFSET (arch/arm64/include/asm/memory.h:358)."""
        return ((phys - self.phys_offset(ram_start)) | self.page_offset) & ((1 << 64) - 1) \
            if self.phys_offset_align else (self.page_offset + phys) & ((1 << 64) - 1)

    def struct_page(self, phys: int, ram_start: int = 0) -> int:
        """The struct page of the pfn holding ``phys`` (arm64: ``vmemmap`` is
        VMEMMAP_START less memstart_addr's pfn, arch/arm64/include/asm/pgtable.h:31)."""
        pfn = (phys - self.phys_offset(ram_start)) >> 12
        return (self.vmemmap + pfn * STRUCT_PAGE_SIZE) & ((1 << 64) - 1)


#: the vmtest kernels' layouts: x86-64 with 4-level paging and arm64 with
#: 4 KiB pages and 48-bit VA (vmtest/kernel-arm64.config), no KASLR
ARCH_LAYOUTS = {
    "x86": ArchLayout("x86", X86_64_PAGE_OFFSET, X86_64_VMEMMAP, 0,
                      "BUG: unable to handle page fault for address: {v:016x}",
                      "Kernel panic - not syncing: Fatal exception", True, True,
                      unnoded_memory_fault="BUG: kernel NULL pointer dereference, address: 0000000000000098",
                      dummy_node_spans_holes=True),
    # PAGE_OFFSET -(1 << 48); VMEMMAP_START = -1 GiB - VMEMMAP_SIZE (memory.h:33-51)
    "arm64": ArchLayout("arm64", 0xFFFF000000000000, 0xFFFFFDFFC0000000, 1 << 30,
                        "Unable to handle kernel paging request at virtual address {v:016x}",
                        "Kernel panic - not syncing: Oops: Fatal exception", False, False, True, True),
}

#: SPARSEMEM section size on x86-64 and arm64 (4 KiB pages): the memmap
#: exists for a pfn only when its 128 MiB section holds some RAM
SECTION_SIZE_BITS = 27
#: nodes a kernel-faithful walk visits before the model gives up on it
FAITHFUL_WALK_BUDGET = 1 << 20


class KernelOops(Exception):
    """The kernel would take a page fault here.  During ``kho_memory_init``
    (before the console, idle task) that oops ends in
    ``Kernel panic - not syncing: Fatal exception``.

    ``phys`` is what the faulting access touched: a map node read through the
    direct map, or the struct page of a pfn that has no memmap (``phys`` is
    then the pfn's physical address and ``vaddr_range`` the struct page)."""

    def __init__(self, function: str, access: str, phys: int, what: str, vaddr_range: tuple[int, int]):
        self.function, self.access, self.phys, self.what = function, access, phys, what
        self.vaddr_range = vaddr_range
        super().__init__(f"{function}: {access} of {what} at 0x{phys:x} faults "
                         f"(0x{vaddr_range[0]:x}..0x{vaddr_range[1] - 1:x} is not mapped)")

    def as_dict(self) -> dict:
        return {"function": self.function, "access": self.access, "phys": f"0x{self.phys:x}",
                "what": self.what, "address_range": [f"{self.vaddr_range[0]:016x}",
                                                     f"{self.vaddr_range[1] - 1:016x}"]}


class WalkBudgetExceeded(Exception):
    pass


def memmap_present(ram: list[tuple[int, int]]):
    """``pfn_valid`` for SPARSEMEM: a function phys -> bool, true when the
    128 MiB section of ``phys`` holds RAM (its struct pages exist)."""
    import bisect
    # section intervals, not a set of sections: RAM ranges come from the
    # input (a scratch area far up stretches the verdict's RAM)
    spans = sorted((s >> SECTION_SIZE_BITS, ((e - 1) >> SECTION_SIZE_BITS) + 1) for s, e in ram if e > s)
    starts = [a for a, _ in spans]

    def present(phys: int) -> bool:
        sec = phys >> SECTION_SIZE_BITS
        i = bisect.bisect_right(starts, sec) - 1
        return i >= 0 and sec < spans[i][1]
    present.spans = merge_section_spans(spans)      # type: ignore[attr-defined]
    return present


def merge_section_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted section spans with the overlapping and touching ones joined."""
    out: list[tuple[int, int]] = []
    for a, b in spans:
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def first_pfn_without_memmap(phys: int, order: int, present) -> int | None:
    """With CONFIG_DEFERRED_STRUCT_PAGE_INIT, ``kho_get_preserved_page``
    initialises the struct page of every pfn of the block (those beyond the
    early-initialised ones, which RAM-less sections always are); the first
    pfn whose section has no memmap faults.  None when all exist."""
    end = phys + (PAGE_SIZE << order)
    sec = phys >> SECTION_SIZE_BITS
    last = (end - 1) >> SECTION_SIZE_BITS
    if last - sec > 1 << 16:            # a block of absurd order: look at its first sections
        last = sec + (1 << 16)
    while sec <= last:
        at = max(phys, sec << SECTION_SIZE_BITS)
        if not present(at):
            return at
        sec += 1
    return None


def kernel_radix_walk(mem, root: int, on_leaf, budget: int = FAITHFUL_WALK_BUDGET, on_node=None,
                      on_full_leaf=None, on_leaves=None):
    """``kho_radix_walk_tree`` as the kernel runs it, for the model's own
    boot (decoders use :class:`~pykho.abi.radix.RadixWalk`, which reports
    and skips what is hostile).  The kernel follows every non-zero entry
    through ``phys_to_virt`` with no check: a node reached twice is walked
    twice, a pointer into an upper level makes its table read as a lower
    level or as a leaf bitmap, an unaligned pointer reads across pages, and
    a pointer outside the direct map faults (:class:`KernelOops`, raised
    here; the blocks reported before it were reserved).  ``on_leaf(order,
    physs)`` is called per leaf in the kernel's order, with the leaf's
    blocks in ascending order (a numpy array when numpy is installed);
    ``on_full_leaf(order, first, count)``, when given, takes a leaf whose
    every bit is set instead (no array of its 32768 blocks is built).
    ``on_leaves(order, keys, pages)``, when given, takes consecutive leaves
    of one order at once (up to :data:`LEAF_GROUP`), still in the kernel's
    order; it returns False to have them passed leaf by leaf instead (it
    must then have reserved nothing of them).  More than ``budget`` node
    visits raise :class:`WalkBudgetExceeded` (the kernel would walk for a
    very long time)."""
    from ..abi import radix as R
    from ..errors import MemoryFault

    decoder = R.RadixWalk(mem, root)
    visits = 0
    fast = page_bytes_of(mem)
    # leaves not yet handed over: (order, keys, pages, phys), one order
    group: tuple[int, list[int], list[Any], list[int]] | None = None

    def flush() -> None:
        nonlocal group
        if group is None:
            return
        order, keys, pages, where = group
        group = None
        if on_leaves is not None and on_leaves(order, keys, pages):
            return
        for phys, page, key in zip(where, pages, keys):
            for o, physs in decoder._leaf(phys, page, key):
                on_leaf(o, physs)

    def read(phys: int) -> Any:
        if fast is not None and not phys & (PAGE_SIZE - 1):
            page = fast(phys >> R.PAGE_SHIFT)       # the source's stored page, no copy
            if page is not None:
                return page
        try:
            return mem.read(phys, PAGE_SIZE, "radix node")
        except MemoryFault:
            flush()             # the leaves before this node were reserved
            v = (X86_64_PAGE_OFFSET + phys) & ((1 << 64) - 1)
            raise KernelOops("__kho_radix_walk_tree", "read", phys, "radix node", (v, v + 8)) from None

    stack = [(root, R.KHO_TREE_MAX_DEPTH - 1, 0)]
    while stack:
        phys, level, prefix = stack.pop()
        visits += 1
        if visits > budget:
            flush()
            raise WalkBudgetExceeded(f"more than {budget} radix node visits")
        page = read(phys)
        if on_node is not None:
            on_node(phys, level)
        if level == 0:
            order = R.KHO_ORDER_0_LOG2 + 1 - (prefix | (R.LEAF_BITS - 1)).bit_length()
            whole = 0 <= order and R.KHO_ORDER_0_LOG2 - order >= R.KHO_BITMAP_SIZE_LOG2
            if on_full_leaf is not None and prefix and whole and bits.is_full(page):
                first, o = R.decode_key(prefix)
                if o == order:
                    flush()
                    on_full_leaf(order, first, R.LEAF_BITS)
                    continue
            if on_leaves is not None and whole:
                if group is not None and (group[0] != order or len(group[1]) >= LEAF_GROUP):
                    flush()
                if group is None:
                    group = (order, [], [], [])
                group[1].append(prefix)
                group[2].append(page)
                group[3].append(phys)
                continue
            flush()
            for order, physs in decoder._leaf(phys, page, prefix):
                on_leaf(order, physs)
            continue
        shift = R.level_shift(level)
        for idx, child in reversed(bits.nonzero_u64(page)):
            stack.append((child, level - 1, prefix | (idx << shift)))
    flush()
    return decoder.problems


#: leaves :func:`kernel_radix_walk` hands to ``on_leaves`` at most at once (1 MiB of bitmaps)
LEAF_GROUP = 256


def kho_memory_walk(profile: P.Profile, mem, fdt_blob: bytes, preserve_bits: int | None = None,
                    want_blocks: bool = True, on_leaf=None, faithful: bool = False,
                    on_full_leaf=None, on_leaves=None) -> MemoryInitResult:
    """The map walk of an accepted handover (``kho_mem_deserialize`` /
    ``kho_mem_retrieve``): every block the kernel memblock-reserves, in its
    order.  ``on_leaf(order, physs)`` is called per leaf (or kho-v1 bitmap)
    when given; ``want_blocks`` also lists every block (small maps only).

    * A0, A1: a missing or bad property prints the walker's message and
      walks nothing; a zero map walks nothing; the handover is kept.
    * B-prefix: the same, but either case makes the kernel forget the
      handover (``fdt_phys = 0``) after the old scratch was already adopted:
      the seed bug's path.
    * B and later: populate already refused those; a C+ walker that still
      fails forgets the handover too.
    """
    v, ln = _fdt.getprop(fdt_blob, 0, "preserved-memory-map")
    res = MemoryInitResult(walked=False, keep_fdt=True)
    if v is None or ln != 8:
        res.lines.append(profile.msg_walker_prop_bad)
        res.keep_fdt = profile.memory_init_zero_map is P.ZeroMapAction.WALK_NOTHING
        return res
    mm = _fdt.u64(v)
    if not mm:
        res.keep_fdt = profile.memory_init_zero_map is P.ZeroMapAction.WALK_NOTHING
        return res
    def cb(order, physs):
        if on_leaf:
            on_leaf(order, physs)
        if want_blocks:
            res.blocks.extend((p, order) for p in bits.tolist(physs))
    if faithful and profile.map_format is P.MapFormat.RADIX:
        res.walked = True
        res.problems = kernel_radix_walk(mem, mm, cb, on_node=lambda p, lv: res.meta_pages.append(
            (p, f"radix level {lv} node")), on_full_leaf=None if want_blocks else on_full_leaf,
            on_leaves=None if want_blocks else on_leaves)
        return res
    w = walker(profile, mem, mm, preserve_bits=preserve_bits)
    res.walked = True
    for order, physs in w.leaves():
        cb(order, physs)
    res.problems = list(w.problems)
    res.meta_pages = [(n.phys, f"radix level {n.level} node") for n in getattr(w, "nodes", [])]
    res.meta_pages += [(c.phys, "khoser_mem_chunk") for c in getattr(w, "chunks", [])]
    res.meta_pages += [(b, "kho-v1 bitmap") for b in getattr(w, "bitmaps", [])]
    return res


def retrieve_subtree(profile: P.Profile, fdt_blob: bytes | None, name: str) -> tuple[int, int, int | None, list[str]]:
    """``kho_retrieve_subtree``: (err, phys, size, lines)."""
    if fdt_blob is None:
        return -P.ENOENT, 0, None, []
    try:
        off = _fdt.subnode_offset(fdt_blob, 0, name)
    except (TypeError, ValueError):      # a decoded name libfdt's C API cannot take (an embedded NUL)
        return -P.ENOENT, 0, None, []
    if off < 0:
        return -P.ENOENT, 0, None, []
    v, ln = _fdt.getprop(fdt_blob, off, profile.subtree_prop)
    if v is None or ln != 8:
        return -P.EINVAL, 0, None, []
    phys = _fdt.u64(v)
    size = None
    if profile.size_prop:
        s, ln = _fdt.getprop(fdt_blob, off, profile.size_prop)
        if s is None or ln != 8:
            return -P.EINVAL, phys, None, [f"KHO: broken KHO subnode '{name}': missing or invalid blob-size property"]
        size = _fdt.u64(s)
    return 0, phys, size, []


# ------------------------------------------------------------------ 7.3 (F)

def is_kdump_kernel(cmdline: str) -> bool:
    """``is_kdump_kernel()`` with CONFIG_CRASH_DUMP: true once the
    ``elfcorehdr=`` early parameter ran (KERNEL-FACTS §12 F-2).  Its handler
    stores memparse's result before it checks that anything parsed, so any
    ``elfcorehdr=VALUE`` word, even an empty or bad value, sets the address;
    a bare ``elfcorehdr`` (no ``=``) gets no argument and sets nothing."""
    return any(w.startswith("elfcorehdr=") for w in cmdline.split())


@dataclass
class EarlyInitResult:
    """What ``kho_memory_init_early`` (7.3) did: the 1 GiB (the profile's
    extension block) blocks the incoming tree keeps busy, the ranges it
    marked scratch, its lines."""

    busy: list[int] = field(default_factory=list)        # block numbers, ascending
    extension: list[tuple[int, int]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    insertions: int = 0


#: busy-block insertions the early walk may do before the model gives up
#: (a block of order o > 18 costs 2^(o-18) insertions in the kernel)
EARLY_WALK_INSERT_BUDGET = 1 << 22


def kho_memory_init_early(profile: P.Profile, mem, fdt_blob: bytes, memblock, dram_end: int,
                          budget: int = FAITHFUL_WALK_BUDGET) -> EarlyInitResult:
    """7.3's ``kho_memory_init_early`` on an accepted handover, before any
    reservation from the map (KERNEL-FACTS §12 F-4, F-5).

    It walks the incoming tree as the kernel does (:func:`kernel_radix_walk`):
    every node and leaf page read through the direct map, so a node pointer
    outside it raises :class:`KernelOops` here, with nothing of the map
    memblock-reserved yet.  The walk touches no struct page.  Each leaf
    block and each node page makes its extension block busy; every other
    block below ``dram_end`` is marked scratch in ``memblock``
    (``memblock.mark_kho_scratch``), the gaps between busy blocks in
    ascending order.  More than ``budget`` node visits or
    :data:`EARLY_WALK_INSERT_BUDGET` insertions raise :class:`WalkBudgetExceeded`."""
    res = EarlyInitResult()
    v, ln = _fdt.getprop(fdt_blob, 0, "preserved-memory-map")
    mm = _fdt.u64(v) if v is not None and ln == 8 else 0
    if not mm:                          # populate refused this already; kept for variants
        res.lines.append(profile.msg_walker_prop_bad)
        return res
    shift = profile.scratch_extension_block.bit_length() - 1
    busy: set[int] = set()

    def add(first: int, last: int) -> None:
        res.insertions += last - first + 1
        if res.insertions > EARLY_WALK_INSERT_BUDGET:
            raise WalkBudgetExceeded(f"more than {EARLY_WALK_INSERT_BUDGET} busy-block insertions in the "
                                     "early walk (blocks of very large order)")
        busy.update(range(first, last + 1))

    def leaf(order: int, physs) -> None:
        size = PAGE_SIZE << order
        for p in bits.tolist(physs):
            add(p >> shift, (p + size - 1) >> shift)

    def node(phys: int, level: int) -> None:
        add(phys >> shift, phys >> shift)

    kernel_radix_walk(mem, mm, leaf, budget=budget, on_node=node)
    res.busy = sorted(busy)
    if not shift:
        return res
    blk = 1 << shift
    prev_end = 0
    for b in res.busy:
        start = b << shift
        if start > prev_end:
            res.extension.append((prev_end, start))
        prev_end = start + blk
    if prev_end < dram_end:
        res.extension.append((prev_end, dram_end))
    for s, e in res.extension:
        rc = memblock.mark_kho_scratch(s, e - s)
        if rc:
            res.lines.append(profile.msg_extend_fail.format(errname=errname(rc)))
            break
    return res
