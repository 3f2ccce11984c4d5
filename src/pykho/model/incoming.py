"""The incoming kernel's KHO code paths as functions over memory.

``kho_populate``, the memory-map walk of ``kho_memory_init``,
``kho_retrieve_subtree`` and the kexec-metadata reader, each following the
generation profile's rules and printing its exact lines.  They only read
memory, so :mod:`pykho.validate` runs the very same code on a dump to predict
what a real kernel will do: there is no second copy of the rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import profiles as P
from ..abi import fdt as _fdt
from ..abi import structs
from ..errors import KhoDecodeError
from ..inspect import walker

#: ``%pe`` prints "-EINVAL" only with CONFIG_SYMBOLIC_ERRNAME; the oracle's and
#: vmtest's tinyconfig kernels lack it and print "-22" (seen on 7.2.13)
SYMBOLIC_ERRNAME = False

ERRNAMES = {P.ENOENT: "-ENOENT", P.EFAULT: "-EFAULT", P.EINVAL: "-EINVAL", P.ENOMEM: "-ENOMEM",
            P.EEXIST: "-EEXIST", P.EBUSY: "-EBUSY"}


def errname(err: int) -> str:
    """How ``%pe`` prints a negative errno."""
    return ERRNAMES.get(-err, str(err)) if SYMBOLIC_ERRNAME else str(err)


@dataclass
class PopulateResult:
    accepted: bool
    err: int = 0
    lines: list[str] = field(default_factory=list)
    fdt_blob: bytes | None = None
    mem_map: int = 0
    scratch: list[structs.KhoScratch] = field(default_factory=list)
    failed_step: str | None = None


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
    fdt = None
    err = 0
    for step in profile.populate_steps:
        if step == P.STEP_MAP_FDT:
            fdt = _read_fdt(mem, fdt_phys, fdt_len)
            if fdt is None:
                res.lines.append(profile.msg_map_fdt.format(fdt=fdt_phys))
                err = -P.EFAULT
                break
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
                data = mem.read(scratch_phys, scratch_len, "kho_scratch array") if scratch_len < 1 << 24 else None
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
    if profile.map_format == "chunks" and P.STEP_MEM_MAP not in profile.populate_steps:
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


def kho_memory_walk(profile: P.Profile, mem, fdt_blob: bytes, preserve_bits: int | None = None,
                    want_blocks: bool = True, on_block=None) -> MemoryInitResult:
    """The map walk of an accepted handover (``kho_mem_deserialize`` /
    ``kho_mem_retrieve``): every block the kernel memblock-reserves, in its
    order.  ``on_block(phys, order)`` is called per block when given.

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
        res.keep_fdt = profile.memory_init_zero_map == "walk-nothing"
        return res
    mm = _fdt.u64(v)
    if not mm:
        res.keep_fdt = profile.memory_init_zero_map == "walk-nothing"
        return res
    w = walker(profile, mem, mm, preserve_bits=preserve_bits)
    res.walked = True
    for order, physs in w.leaves():
        for p in (physs.tolist() if hasattr(physs, "tolist") else physs):
            if on_block:
                on_block(p, order)
            if want_blocks:
                res.blocks.append((p, order))
    res.problems = list(w.problems)
    return res


def retrieve_subtree(profile: P.Profile, fdt_blob: bytes | None, name: str) -> tuple[int, int | None, int, list[str]]:
    """``kho_retrieve_subtree``: (err, phys, size, lines)."""
    if fdt_blob is None:
        return -P.ENOENT, 0, None, []
    off = _fdt.subnode_offset(fdt_blob, 0, name)
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


def kexec_metadata_in(profile: P.Profile, mem, fdt_blob: bytes) -> tuple[structs.KexecMetadata | None, list[str]]:
    """``kho_in_kexec_metadata``: the metadata and the lines printed."""
    err, phys, size, lines = retrieve_subtree(profile, fdt_blob, structs.KHO_METADATA_NODE_NAME)
    if err:
        return None, lines
    try:
        md = structs.decode_kexec_metadata(mem.read(phys, min(size, 4096)) if size else b"", phys)
    except KhoDecodeError as e:
        if e.code.startswith("metadata"):
            return None, lines + ["KHO: " + e.message]
        return None, lines + [f"KHO: kexec-metadata at 0x{phys:x} unreadable ({e.message})"]
    return md, lines + [f"KHO: exec from: {md.previous_release} (count {md.kexec_count})"]
