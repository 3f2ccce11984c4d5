"""What a given kernel will do with a captured handover.

:func:`predict` boots the target generation's modelled kernel on the
capture (copy-on-write: the source is never written) with the command line
the real next kernel would have, and reports what it printed, reserved,
restored and broke.  The consequences that matter to a user (the handover
refused, a client that fails, a double free, an oops) are findings whose
severity comes from :mod:`pykho.findings`: this is where ``kho validate``'s
errors come from, and no report repeats a kernel rule.
"""

from __future__ import annotations

from typing import Any

from .. import clients as _clients
from .. import profiles as P
from ..abi import structs
from ..errors import KhoDecodeError
from ..findings import Finding, severity_of
from ..handover import Handover
from ..memory import CowMemory, LayeredMemory, NotCaptured, SparseMemory, StrictCowMemory
from ..profiles import PAGE_SIZE
from .incoming import ARCH_LAYOUTS, retrieve_subtree
from .kernel import Kernel
from .kexec import Segment
from .machine import Machine

__all__ = ["predict"]

GiB = 1 << 30
#: where the verdict puts the root FDT / scratch array when only files are given
_FDT_PLACEHOLDER = 0x1000
_SCRATCH_PLACEHOLDER = 0x2000000000
#: region visits of the map walk's memblock calls from which the verdict warns (about 10 s at 1 ns a visit)
SLOW_WALK_VISITS = 10 ** 10
#: kexec_file_load's slot for the scratch array: the top 64 KiB of the first area
_ARRAY_SLOT = 0x10000


def _finding(code: str, message: str, where: str = "") -> dict[str, Any]:
    return Finding(severity_of(code), code, message, where).as_dict()


def duration(seconds: float) -> str:
    """``seconds`` in the largest unit that leaves at least 2 of it."""
    for unit, n in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * n:
            return f"{seconds / n:.0f} {unit}"
    return f"{seconds:.0f} seconds" if seconds >= 1 else "under a second"


def _readable(mem: Any, phys: int, size: int) -> bool:
    try:
        return bool(mem.contains(phys, size))
    except KhoDecodeError:
        return False


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _page_span(phys: int, size: int) -> tuple[int, int]:
    return phys & ~(PAGE_SIZE - 1), (phys + max(size, 1) + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def predict(ho: Handover, tgt: P.Profile, cmdline: str = "kho=on", iomem: list[tuple[int, int]] | None = None,
            want_reserved: bool = False, arch: str = "x86", boot_data: bytes | None = None,
            numa: bool = False) -> dict[str, Any]:
    """The target kernel's verdict on ``ho`` (see the module docstring).

    ``numa``: the target kernel is built with CONFIG_NUMA (nodes from ACPI
    SRAT or one dummy node; what its memblock ranges must belong to).

    ``arch``: the target's architecture (``x86``, ``arm64``).  ``boot_data``:
    on arm64, the device tree kexec_file_load wrote for the next kernel; the
    handover is then what its ``/chosen`` names (:meth:`Kernel.find_handover`'s
    rule), and a ``/chosen`` the kernel ignores means no handover at all.

    With memory, the model boots on the capture.  Without (a debugfs copy or
    an FDT file alone), it boots on the root FDT and the scratch array
    placed where the handover says they are, and stops where it would need
    memory nobody gave: the verdict then says what it could predict."""
    blob = ho.root_blob or b""
    fdt_phys = ho.root_phys
    scratch_phys, scratch_len = ho.scratch_phys, ho.scratch_len
    strict = ho.mem is None or fdt_phys is None
    mem: Any = ho.mem
    # no source gives the scratch array: one empty entry stands for it, and
    # the model does not judge whether the early boot fits in scratch
    unknown_scratch = not ho.scratch and (scratch_phys is None or scratch_len is None)
    if strict:
        fdt_phys = fdt_phys if fdt_phys is not None else _FDT_PLACEHOLDER
        fdt_size = max(PAGE_SIZE, len(blob))
        arr = structs.encode_scratch(ho.scratch) or bytes(16)
        if scratch_phys is None or scratch_len is None:
            scratch_phys, scratch_len = _SCRATCH_PLACEHOLDER, len(arr)
        known = sorted({_page_span(fdt_phys, fdt_size), _page_span(scratch_phys, scratch_len)})
        base = SparseMemory(known, name="the handover files")
        base.write(fdt_phys, blob.ljust(fdt_size, b"\0"))
        base.write(scratch_phys, arr.ljust(scratch_len, b"\0")[:scratch_len])
        mem = base
    elif scratch_phys is None or scratch_len is None or not _readable(mem, scratch_phys, scratch_len) or \
            not any(mem.read(scratch_phys, scratch_len)):
        # the array as the kernel will see it after relocation (kexec copies
        # the segment during the jump): from debugfs
        arr = structs.encode_scratch(ho.scratch) or bytes(16)
        top = SparseMemory([(0, 1 << 52)])
        if scratch_phys is None:
            # no kexec segment staged yet (a live kernel before kexec_file_load):
            # the array goes where the load will put it, the 64 KiB slot at the
            # top of the first area (RAM the next kernel reads; the placeholder
            # is outside RAM, where the model's kernel would read zeros)
            scratch_phys = next((a.end - _ARRAY_SLOT for a in ho.scratch if a.size >= _ARRAY_SLOT),
                                _SCRATCH_PLACEHOLDER)
        scratch_len = len(arr) if scratch_len is None else scratch_len
        top.write(scratch_phys, arr.ljust(scratch_len, b"\0")[:scratch_len])
        mem = LayeredMemory(mem, top, scratch_phys, scratch_len)
    assert fdt_phys is not None and scratch_phys is not None and scratch_len is not None
    # kho_data.fdt_size as the kernel receives it, when the caller knows it
    fdt_len = getattr(ho, "fdt_size", None)
    return _boot(ho, tgt, mem, fdt_phys, PAGE_SIZE if fdt_len is None else fdt_len, scratch_phys, scratch_len,
                 iomem, cmdline, want_reserved, strict, unknown_scratch, arch, boot_data, numa)


def _head(tgt: P.Profile) -> dict[str, Any]:
    return {"target": tgt.name, "target_kernels": tgt.kernels}


def _rejected(v: dict[str, Any], failed_step: str | None) -> None:
    last = v["log"][-2] if len(v["log"]) >= 2 else (v["log"][0] if v["log"] else "")
    v["outcome"] = "cold boot: nothing preserved is restored"
    v["consequences"].append(_finding(
        "handover-rejected", f"kho_populate refuses the handover at {failed_step or 'an early check'}"
        + (f" ('{last}')" if last else "") + ": the kernel boots cold and everything preserved is lost"))


def _boot(ho: Handover, tgt: P.Profile, mem: Any, fdt_phys: int, fdt_len: int, scratch_phys: int, scratch_len: int,
          iomem: list[tuple[int, int]] | None, cmdline: str, want_reserved: bool, strict: bool,
          unknown_scratch: bool = False, arch: str = "x86", boot_data: bytes | None = None,
          numa: bool = False) -> dict[str, Any]:
    """Boot the model's kernel of generation ``tgt`` on the captured memory.
    Clients whose data is not in the memory given are not run, and the
    verdict says so."""
    given: Any = ho.mem
    ends = [e for _, e in (given.ranges() if given is not None else [])] + [a.end for a in ho.scratch]
    top = max(ends + [GiB])
    ram = iomem or [(0x100000, min(((top + GiB - 1) // GiB) * GiB, 1 << 52))]
    if strict:      # the placed FDT and array are memory the kernel can map
        ram = _merge(ram + list(mem.ranges()))
    # what the kernel can read through phys_to_virt: RAM, and on x86-64 the
    # whole first MiB (page 0 included), mapped whatever e820 says of it
    readable = ram if strict else _merge(ram + [(0, 0x100000)])
    cow = (StrictCowMemory if strict else CowMemory)(mem, [(s, e) for s, e in readable])
    machine = Machine(ram=[(s, e, 0) for s, e in ram], mem=cow)
    try:
        decoded = ho.root
    except KhoDecodeError:
        decoded = None               # the kernel will judge these bytes itself
    skip: set[str] = set()
    notes: dict[str, str] = {}
    for st in (decoded.subtrees if decoded is not None else []):
        plugin = _clients.by_node(st.name)
        if not plugin.model_name:
            continue
        dec = _clients.decode_subblob(st.name, ho.blob_of(st.name), ho.mem, st.phys, tgt)
        why = (plugin.predictable(dec, ho.mem) if ho.mem is not None else "no memory given") \
            if "error" not in dec else None
        if why:
            notes[st.name] = f"not predicted: {why}"
            skip.add(plugin.model_name)
    names = tuple(n for n in _clients.DEFAULT_MODEL_CLIENTS if n not in skip)
    k = Kernel(machine, tgt, cmdline, name="target kernel", clients=names, arch=arch, numa=numa)
    # whether the early boot fits in scratch is judged only on known RAM
    # (the memmap follows it): not on the guess made from a dump's extent
    k.scratch_unknown = unknown_scratch or not iomem
    if want_reserved:
        k.reserved_log = []
    # the next kernel's image: top-down in the first area (array order) with
    # room for it below the array's 64 KiB slot, as kexec_file_load puts it
    image = None
    for a in ho.scratch:
        at = (a.end - 0x10000 - Kernel.KERNEL_IMAGE_SIZE) & ~(2 * (1 << 20) - 1)
        if a.size and at >= a.addr:
            image = Segment("kernel", at, Kernel.KERNEL_IMAGE_SIZE)
            break
    missing = None
    kd: structs.KhoData | None = structs.KhoData(fdt_phys, fdt_len, scratch_phys, scratch_len)
    if boot_data is not None:
        kd = k.handover_from_boot_data(boot_data)
        if ARCH_LAYOUTS[arch].ram_from_boot_dt:
            try:
                k.boot_memory = structs.decode_dt_memory(boot_data)
            except KhoDecodeError:
                k.boot_memory = None
    try:
        k.boot(kd, image)
    except NotCaptured as e:
        missing = e.phys
    log = [line for line in k.log if not line.startswith("(model)")]
    if k.populate is None:
        # the boot data names no handover the kernel takes: kho_populate never runs
        v0: dict[str, Any] = _head(tgt) | {
            "populate": "not-called", "log": log, "model_violations": [x.as_dict() for x in k.violations],
            "consequences": [], "outcome": "no handover found in the boot data: the kernel boots cold"}
        if want_reserved:
            v0["reserved"] = [list(b) for b in k.reserved_log or []]
        if k.oops is not None:
            v0["oops"] = k.oops.as_dict()
        v0["consequences"].append(_finding(
            "handover-rejected", "the next kernel finds no usable handover in its boot data: it boots cold and "
            "everything preserved is lost"))
        v0["clients"] = {}
        dbg0 = k.debugfs() if not (k.oops or k.panicked) else {}
        v0["debugfs"] = {d: sorted(dbg0[d].get("sub_fdts", {})) for d in ("in", "out") if d in dbg0}
        return v0
    v: dict[str, Any] = _head(tgt) | {
        "populate": "accepted" if k.populate.accepted else "rejected", "log": log,
        "model_violations": [x.as_dict() for x in k.violations], "consequences": []}
    if want_reserved:
        v["reserved"] = [list(b) for b in k.reserved_log or []]
    mb = getattr(k, "walk_memblock", None)
    if mb:              # what the walk's block-by-block memblock_reserve calls did to memblock.reserved
        v["memblock"] = dict(mb)
        if mb["region_visits"] >= SLOW_WALK_VISITS:
            v["consequences"].append(_finding(
                "walk-memblock-scans",
                f"the map walk memblock-reserves its {mb['blocks']:,} blocks one by one, and each call scans "
                f"memblock.reserved from its first region: about {mb['region_visits']:.2g} region visits "
                f"({mb['regions_after']:,} regions by the end: {mb['array_entries']:,} entries, "
                f"{mb['array_bytes'] >> 10:,} KiB of scratch); at 1 ns a visit that is "
                f"{duration(mb['region_visits'] / 1e9)} of boot"))
    ext = getattr(k, "scratch_extension", None)
    if ext:             # 7.3: memory kho_memory_init_early made scratch besides the handed-over areas
        v["scratch_extension"] = [[s, e] for s, e in ext]
    if missing is not None:
        v["populate"] = "accepted" if k.populate.accepted else "rejected"
        v["outcome"] = (f"populate accepts; predicting the rest of the boot needs memory at 0x{missing:x}"
                        + (" (the root FDT's address is not known)" if ho.root_phys is None and ho.mem is not None
                           else "") + ": give --mem with memory captured at the jump")
        v["incomplete"] = True
    elif k.oops is not None:
        v["outcome"] = (f"the kernel oopses in {k.oops.function} and panics: "
                        f"{k.oops.access} of {k.oops.what} at 0x{k.oops.phys:x}, not mapped")
        v["oops"] = k.oops.as_dict()
    elif k.panicked:
        v["outcome"] = "the kernel panics during boot"
    elif not k.populate.accepted:
        _rejected(v, k.populate.failed_step)
    elif not k.is_kho_boot():
        v["outcome"] = "the kernel adopted the old scratch, then forgot the handover"
        v["consequences"].append(_finding(
            "handover-forgotten", "kho_populate accepted the handover, then kho_memory_init dropped it"
            + (f" ('{k.log[-1]}')" if k.log and k.log[-1].startswith("KHO: failed") else "")
            + ": no client can retrieve its data and kho_init takes the cold-boot path over the adopted scratch"))
    elif k.violations:
        v["outcome"] = f"KHO boot with {len(k.violations)} memory-state violations"
    else:
        v["outcome"] = (f"KHO boot: {len(k.pages.preserved) + len(k.pages.restored)} preserved blocks reserved, "
                        f"{len(k.pages.restored)} restored by the clients run")
    for x in k.violations:
        v["consequences"].append(_finding(
            "model-" + x.kind, f"the {tgt.name} kernel would hit {x.kind} during {x.step}: {x.detail}",
            f"0x{x.start:x}-0x{x.end:x}"))
    clients_v: dict[str, str] = {}
    by_node = {c.node: c for c in k.clients}
    for s_ in (decoded.subtrees if decoded is not None else []):
        inst = by_node.get(s_.name)
        if inst is not None and inst.status is not None:
            clients_v[s_.name] = inst.status
            if inst.restored is False:
                v["consequences"].append(_finding(
                    "client-restore-failed", f"client {s_.name!r}: restore fails in the {tgt.name} kernel"
                    + (f": {inst.detail}" if inst.detail else ""), f"0x{s_.phys:x}" if s_.phys else ""))
            continue
        err, _, _, _ = retrieve_subtree(tgt, k.populate.fdt_blob if k.populate.accepted else None, s_.name)
        clients_v[s_.name] = "retrievable" if err == 0 else f"kho_retrieve_subtree fails: {err}"
        if err and k.populate.accepted and k.is_kho_boot():
            v["consequences"].append(_finding(
                "client-retrieve-failed", f"client {s_.name!r}: kho_retrieve_subtree fails with {err}: the client "
                "cannot find its data", f"0x{s_.phys:x}" if s_.phys else ""))
    for name, why in notes.items():
        clients_v[name] = why
        v["consequences"].append(_finding("client-not-predicted", f"client {name!r}: {why}"))
    v["clients"] = clients_v
    # the files the kernel's /sys/kernel/debug/kho will hold (names only)
    dbg = k.debugfs() if not (k.oops or k.panicked) else {}
    v["debugfs"] = {d: sorted(dbg[d].get("sub_fdts", {})) for d in ("in", "out") if d in dbg}
    return v
