"""``kho validate``: findings over a handover, and the target kernel's verdict.

A finding is an *error* only when the target kernel would fail, lose or
corrupt something; what kernels produce in normal operation (the truncated
debugfs ``out/fdt`` of 7.2, a zero-sized global scratch area) is *info*.
The verdict is computed by running the model's incoming-kernel code
(:mod:`pykho.model.incoming`) on the same bytes - the rules exist once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from . import profiles as P
from .abi import clients, structs
from .abi import fdt as _fdt
from .errors import KhoDecodeError, UsageError
from .handover import Handover, load
from .inspect import decode_subblob, detect_generation, summarize_walk, walker
from .memory import SparseMemory
from .model.incoming import kexec_metadata_in, kho_memory_walk, kho_populate, retrieve_subtree

PAGE_SIZE = 4096
ERROR, WARNING, INFO = "error", "warning", "info"


@dataclass
class Finding:
    severity: str
    code: str
    message: str
    where: str = ""

    def as_dict(self):
        return {"severity": self.severity, "code": self.code, "message": self.message, "where": self.where}


def parse_iomem(text: str) -> list[tuple[int, int]]:
    """System RAM ranges of a ``/proc/iomem`` copy (top level only)."""
    out = []
    for line in text.splitlines():
        if line.startswith(" ") or ":" not in line:
            continue
        rng, _, name = line.partition(":")
        if name.strip() != "System RAM":
            continue
        try:
            a, b = (int(x, 16) for x in rng.strip().split("-"))
        except ValueError:
            continue
        out.append((a, b + 1))
    return out


def _hex(v):
    return f"0x{v:x}" if isinstance(v, int) else str(v)


class _Overlay(SparseMemory):
    """Memory for the verdict when no dump is given: the root FDT and the
    scratch array placed where the handover says they are, nothing else."""


def validate(ho: Handover, target: P.Profile | None = None, iomem: list[tuple[int, int]] | None = None,
             want_blocks: bool = False, cmdline: str = "kho=on", want_reserved: bool = False) -> dict:
    """Findings over the handover ``ho`` and the verdict of the ``target``
    kernel's model booted on it.  ``want_reserved`` adds ``verdict.reserved``:
    every ``(phys, order)`` the model's kernel memblock-reserved from the map,
    in its order (what ``memblock=debug`` prints for
    ``kho_preserved_memory_reserve``)."""
    F: list[Finding] = []

    def add(sev, code, msg, where=""):
        F.append(Finding(sev, code, msg, where if isinstance(where, str) else _hex(where)))

    for q in ho.quirks:
        add(INFO, q.code, q.message, ho.source)

    # ---- root FDT structure
    blob = ho.root_blob or b""
    where_fdt = _hex(ho.root_phys) if ho.root_phys is not None else ho.root_blob_origin
    rc = _fdt.kernel_check_header(blob)
    full = _fdt.check_full(blob) if rc == 0 else rc
    root = None
    if rc:
        add(ERROR, "fdt-header", f"root FDT header invalid: libfdt {rc} ({_fdt.fdt_strerror(rc)})", where_fdt)
    elif full:
        sev = INFO if any(q.code == "debugfs-fdt-truncated" for q in ho.quirks) and ho.mem is None else ERROR
        add(sev, "fdt-structure", f"root FDT does not pass fdt_check_full: libfdt {full} ({_fdt.fdt_strerror(full)})",
            where_fdt)
    else:
        root = ho.root

    detected, evidence = (detect_generation(ho) if root is not None else (None, "root FDT unreadable"))
    tgt = target or detected or P.E
    out = {"source": ho.source, "generation": detected.name if detected else None,
           "generation_evidence": evidence}

    if root is not None:
        if root.compatible_raw is None:
            add(ERROR, "compatible-missing", "root node has no compatible property", where_fdt)
        elif root.compatible != tgt.compatible:
            add(ERROR, "compatible-mismatch",
                f"compatible {root.compatible!r}, the target ({tgt.name}, {tgt.kernels}) accepts only "
                f"{tgt.compatible!r}", where_fdt)
        if root.mem_map_len == -1:
            add(ERROR, "map-missing", "no preserved-memory-map property", where_fdt)
        elif root.mem_map_len != 8:
            add(ERROR, "map-length", f"preserved-memory-map is {root.mem_map_len} bytes, expected 8", where_fdt)
        elif root.mem_map == 0:
            sev = ERROR if P.STEP_MEM_MAP not in tgt.populate_steps or tgt.finalize is None else WARNING
            add(sev, "map-zero",
                ("preserved-memory-map is 0: the old kernel never finalized" if detected and detected.finalize
                 else "preserved-memory-map is 0 (a kho-v2+ kernel always writes its radix root here)")
                + (" - this kernel accepts it, adopts the old scratch, then frees it twice (the seed bug)"
                   if tgt.memory_init_zero_map == "clear-fdt" and P.STEP_MEM_MAP not in tgt.populate_steps else
                   " - kho_populate refuses it and the kernel cold-boots; everything preserved is lost"),
                where_fdt)
        for st in root.subtrees:
            w = f"{where_fdt} /{st.name}"
            if st.prop is None:
                add(ERROR, "subtree-no-address", f"sub-node {st.name!r} has no {tgt.subtree_prop!r} property", w)
            elif st.prop != tgt.subtree_prop:
                add(ERROR, "subtree-property", f"sub-node {st.name!r} uses {st.prop!r}, the target reads "
                    f"{tgt.subtree_prop!r}", w)
            elif st.phys is None:
                add(ERROR, "subtree-address-length", f"sub-node {st.name!r}: {st.prop} is not 8 bytes", w)
            if tgt.size_prop and st.size is None:
                add(ERROR, "subtree-no-blob-size",
                    f"sub-node {st.name!r} has no 8-byte blob-size: kho_retrieve_subtree fails with -EINVAL "
                    "('broken KHO subnode')", w)

    # ---- scratch
    scratch = ho.scratch
    if ho.scratch_len is not None and ho.scratch_len % 16:
        add(WARNING, "scratch-length", f"scratch array length {ho.scratch_len} is not a multiple of 16: the kernel "
            f"uses {ho.scratch_len // 16} entries and ignores {ho.scratch_len % 16} bytes", _hex(ho.scratch_phys))
    for i, a in enumerate(scratch):
        if a.size == 0:
            add(INFO, "scratch-empty", f"scratch area {i} has size 0 (normal for the global area when all RAM "
                "is below 4 GiB)", _hex(a.addr))
        elif a.addr % PAGE_SIZE or a.size % PAGE_SIZE:
            add(ERROR, "scratch-unaligned", f"scratch area {i} 0x{a.addr:x}+0x{a.size:x} is not page aligned",
                _hex(a.addr))
        if iomem and a.size and not any(s <= a.addr and a.end <= e for s, e in iomem):
            add(ERROR, "scratch-outside-ram", f"scratch area {i} 0x{a.addr:x}+0x{a.size:x} is not in System RAM",
                _hex(a.addr))
    for i, a in enumerate(scratch):
        for j, b in enumerate(scratch[i + 1:], i + 1):
            if a.size and b.size and a.addr < b.end and b.addr < a.end:
                add(ERROR, "scratch-overlap", f"scratch areas {i} and {j} overlap", _hex(max(a.addr, b.addr)))

    # ---- map walk
    blocks = []
    summary = None
    if root is not None and ho.mem is not None and root.mem_map:
        wk = walker(tgt, ho.mem, root.mem_map)
        summary, meta, blocks = summarize_walk(wk, want_blocks=True)
        out["metadata"] = meta
        for prob in wk.problems:
            sev = ERROR
            add(sev, prob.code, str(prob), _hex(prob.where) if isinstance(prob.where, int) else str(prob.where))
        _check_blocks(blocks, scratch, iomem, tgt, add)
        _check_map_pages(wk, scratch, add)
        # sub-blobs covered by the map
        cover = sorted((p, p + (PAGE_SIZE << o)) for p, o in blocks)
        import bisect
        starts = [s for s, _ in cover]

        def covered(phys, size):
            i = bisect.bisect_right(starts, phys) - 1
            return i >= 0 and cover[i][0] <= phys and phys + max(size, 1) <= cover[i][1]
        for st in root.subtrees:
            if st.phys and not covered(st.phys, st.size or 1):
                add(ERROR, "subtree-not-preserved",
                    f"sub-blob {st.name!r} at 0x{st.phys:x} is not in the preserved map: the next kernel may "
                    "overwrite it before its client reads it", _hex(st.phys))
            dec = decode_subblob(st.name, ho.blob_of(st.name), ho.mem, st.phys)
            if "error" in dec:
                add(ERROR, "subblob-" + dec.get("code", "decode"), f"sub-blob {st.name!r}: {dec['error']}",
                    _hex(st.phys) if st.phys else "")
            elif dec.get("kind") == "test_kho":
                miss = [f for f in dec.get("folios", []) if not covered(f[0], PAGE_SIZE << f[1])]
                if miss:
                    add(ERROR, "test-kho-folio-not-preserved", f"{len(miss)} test_kho folios are not in the map",
                        _hex(miss[0][0]))
                vm = dec.get("folios_info")
                if vm:
                    try:
                        data, chunk_pages = structs.decode_vmalloc(ho.mem, structs.KhoVmalloc(**vm), st.phys)
                        lost = [p for p in data + chunk_pages if not covered(p, PAGE_SIZE)]
                        if lost:
                            add(ERROR, "vmalloc-not-preserved",
                                f"{len(lost)} pages of test_kho's folios_info vmalloc area (data or chunk pages) "
                                "are not in the map: kho_restore_vmalloc fails", _hex(lost[0]))
                    except KhoDecodeError as e:
                        add(ERROR, e.code, f"test_kho folios_info: {e}", _hex(e.where) if isinstance(e.where, int)
                            else "")
    elif root is not None and ho.mem is None:
        add(INFO, "no-memory", "no --mem given: the preserved memory map and the sub-blobs were not checked")

    # ---- verdict: run the target kernel's model on the same bytes
    truncated = rc == 0 and full and ho.mem is None and \
        any(q.code == "debugfs-fdt-truncated" for q in ho.quirks)
    if truncated:
        out["verdict"] = {"target": tgt.name, "target_kernels": tgt.kernels, "populate": "unknown", "log": [],
                          "outcome": "the root FDT file is cut short (debugfs quirk) and could not be completed: "
                                     "give --mem with memory captured at the jump"}
    else:
        out["verdict"] = _verdict(ho, tgt, blob, cmdline, iomem, want_reserved)
        for mv in out["verdict"].get("model_violations", []):
            add(ERROR, "model-" + mv["kind"], f"the {tgt.name} kernel would hit {mv['kind']} during {mv['step']}: "
                f"{mv['detail']}", f"0x{mv['start']:x}-0x{mv['end']:x}")
    if summary is not None:
        out["summary"] = summary
    if want_blocks:
        out["preserved"] = blocks
    out["findings"] = [f.as_dict() for f in F]
    return out


def _check_blocks(blocks, scratch, iomem, tgt, add):
    import bisect
    seen = {}
    ivs = sorted((p, p + (PAGE_SIZE << o), o) for p, o in blocks)
    for (a, b, o), (c, d, o2) in zip(ivs, ivs[1:]):
        if c < b:
            code = "duplicate-block" if (a, o) == (c, o2) else "overlapping-blocks"
            add(ERROR, code, f"blocks 0x{a:x} order {o} and 0x{c:x} order {o2} overlap: memblock reserves the "
                "range twice and restore hands out the same pages twice", _hex(c))
            break
    bad_order = [(p, o) for p, o in blocks if o > P.MAX_PAGE_ORDER]
    if bad_order:
        add(ERROR, "order-too-large", f"{len(bad_order)} blocks have order above MAX_PAGE_ORDER "
            f"({P.MAX_PAGE_ORDER}), first 0x{bad_order[0][0]:x} order {bad_order[0][1]}", _hex(bad_order[0][0]))
    mis = [(p, o) for p, o in blocks if p % (PAGE_SIZE << o)]
    if mis:
        add(ERROR, "misaligned-block", f"{len(mis)} blocks are not aligned to their order, first 0x{mis[0][0]:x} "
            f"order {mis[0][1]}", _hex(mis[0][0]))
    for i, a in enumerate(scratch):
        if not a.size:
            continue
        j = bisect.bisect_left(ivs, (a.addr, 0, 0))
        for s, e, o in ivs[max(0, j - 1):]:
            if s >= a.end:
                break
            if e > a.addr:
                add(ERROR, "preserved-in-scratch", f"preserved block 0x{s:x} order {o} lies in scratch area {i} "
                    f"(0x{a.addr:x}+0x{a.size:x}): the next kernel allocates from scratch before it walks the "
                    "map and may overwrite it", _hex(s))
                break
    if iomem:
        starts = [s for s, _ in iomem]
        out = []
        for s, e, o in ivs:
            k = bisect.bisect_right(starts, s) - 1
            if k < 0 or e > iomem[k][1]:
                out.append((s, o))
        if out:
            add(ERROR, "block-outside-ram", f"{len(out)} preserved blocks are outside System RAM, first "
                f"0x{out[0][0]:x} order {out[0][1]}", _hex(out[0][0]))


def _check_map_pages(wk, scratch, add):
    """The map's own pages (radix nodes; kho-v1 chunks and bitmaps) must lie
    outside scratch: the next kernel boots out of scratch, so its image and
    early allocations may overwrite them before ``kho_memory_init`` reads
    the map.  A kernel never allocates them there (scratch is CMA / movable
    memory in the old kernel); the walk then reads whatever is left."""
    pages = [(n.phys, f"radix level {n.level} node") for n in getattr(wk, "nodes", [])]
    pages += [(c.phys, "khoser_mem_chunk") for c in getattr(wk, "chunks", [])]
    pages += [(b, "kho-v1 bitmap") for b in getattr(wk, "bitmaps", [])]
    for phys, what in pages:
        for i, a in enumerate(scratch):
            if a.size and a.addr <= phys < a.end:
                add(ERROR, "map-page-in-scratch", f"{what} at 0x{phys:x} lies in scratch area {i} "
                    f"(0x{a.addr:x}+0x{a.size:x}): the next kernel may overwrite it before it walks the map, "
                    "and then reserves whatever it finds there", _hex(phys))
                return


def _verdict(ho: Handover, tgt: P.Profile, blob: bytes, cmdline: str = "kho=on", iomem=None,
             want_reserved: bool = False) -> dict:
    fdt_phys = ho.root_phys
    mem = ho.mem
    scratch_phys = ho.scratch_phys
    scratch_len = ho.scratch_len
    if mem is None or fdt_phys is None:
        # place what we have where the handover says it is
        mem = _Overlay([(0, 1 << 52)])
        fdt_phys = fdt_phys if fdt_phys is not None else 0x1000
        mem.write(fdt_phys, blob.ljust(PAGE_SIZE, b"\0")[:max(PAGE_SIZE, len(blob))])
    if scratch_phys is None or scratch_len is None or not _readable(mem, scratch_phys, scratch_len) or \
            not any(mem.read(scratch_phys, scratch_len)):
        # the array as the kernel will see it after relocation: from debugfs
        arr = structs.encode_scratch(ho.scratch)
        overlay = _Overlay([(0, 1 << 52)])
        scratch_phys = scratch_phys if scratch_phys is not None else 0x2000000000
        scratch_len = len(arr) if scratch_len is None else scratch_len
        overlay.write(scratch_phys, arr.ljust(scratch_len, b"\0")[:scratch_len])
        mem = _Layered(mem, overlay, scratch_phys, scratch_len)
    if ho.mem is not None and ho.root_phys is not None:
        return _model_verdict(ho, tgt, mem, fdt_phys, scratch_phys, scratch_len, iomem, cmdline, want_reserved)
    pop = kho_populate(tgt, mem, fdt_phys, PAGE_SIZE, scratch_phys, scratch_len)
    log = list(pop.lines)
    v = {"target": tgt.name, "target_kernels": tgt.kernels, "populate": "accepted" if pop.accepted else "rejected",
         "log": log}
    if not pop.accepted:
        v["outcome"] = "cold boot: nothing preserved is restored"
        return v
    if ho.mem is None:
        v["outcome"] = "populate accepts; give --mem to predict the memory walk and the clients"
        return v
    walk = kho_memory_walk(tgt, mem, pop.fdt_blob, want_blocks=False)
    log.extend(walk.lines)
    if not walk.keep_fdt:
        v["outcome"] = ("the kernel adopts the old scratch, then forgets the handover: kho_init frees the scratch "
                        "areas a second time (double free)")
        v["clients"] = {}
        return v
    clients_v = {}
    if tgt.kexec_metadata:
        md, lines = kexec_metadata_in(tgt, mem, pop.fdt_blob)
        log.extend(lines)
        clients_v["kexec-metadata"] = "read" if md else "not read"
    for name in [s.name for s in ho.root.subtrees if s.name != structs.KHO_METADATA_NODE_NAME]:
        err, phys, size, lines = retrieve_subtree(tgt, pop.fdt_blob, name)
        log.extend(lines)
        clients_v[name] = "retrievable" if err == 0 else f"kho_retrieve_subtree fails: {err}"
    v["clients"] = clients_v
    v["outcome"] = "KHO boot: preserved memory is reserved and clients can restore"
    return v


def _model_verdict(ho, tgt, mem, fdt_phys, scratch_phys, scratch_len, iomem=None, cmdline="kho=on",
                   want_reserved=False) -> dict:
    """Boot the model's incoming kernel of generation ``tgt`` on the captured
    memory (copy-on-write: the source is never written) and report what it
    printed and broke.  Clients whose data is not in the memory given are
    not run, and the verdict says so."""
    from .memory import CowMemory
    from .model.kernel import Kernel, Segment
    from .model.machine import Machine
    GiB = 1 << 30
    ends = [e for _, e in ho.mem.ranges()] + [a.end for a in ho.scratch]
    top = max(ends + [GiB])
    ram = iomem or [(0x100000, min(((top + GiB - 1) // GiB) * GiB, 1 << 52))]
    cow = CowMemory(mem, [(s, e) for s, e in ram])
    machine = Machine(ram=[(s, e, 0) for s, e in ram], mem=cow)
    clients_run, notes = [], {}
    try:
        decoded = ho.root
    except KhoDecodeError:
        decoded = None               # the kernel will judge these bytes itself
    st = decoded.subtree("kho_test") if decoded is not None else None
    if st is not None:
        dec = decode_subblob("kho_test", ho.blob_of("kho_test"), ho.mem, st.phys)
        folios = dec.get("folios") or []
        if folios and all(ho.mem.contains(p, PAGE_SIZE << o) for p, o in folios):
            clients_run.append("test_kho")
        else:
            notes["kho_test"] = "not predicted: test_kho's folio data is not in the memory given"
    k = Kernel(machine, tgt, cmdline, name="target kernel", clients=tuple(clients_run) + ("memblock", "luo"))
    if want_reserved:
        k.reserved_log = []
    image = None
    for a in ho.scratch:
        if a.size >= 2 * Kernel.KERNEL_IMAGE_SIZE:
            image = Segment("kernel", a.addr, Kernel.KERNEL_IMAGE_SIZE)
            break
    k.boot(structs.KhoData(fdt_phys, PAGE_SIZE, scratch_phys, scratch_len), image)
    log = [line for line in k.log if not line.startswith("(model)")]
    v = {"target": tgt.name, "target_kernels": tgt.kernels,
         "populate": "accepted" if k.populate.accepted else "rejected", "log": log,
         "model_violations": [x.as_dict() for x in k.violations]}
    if want_reserved:
        v["reserved"] = [list(b) for b in k.reserved_log]
    if k.oops is not None:
        v["outcome"] = (f"the kernel oopses in {k.oops.function} during kho_memory_init and panics: "
                        f"{k.oops.access} of {k.oops.what} at 0x{k.oops.phys:x}, not mapped")
        v["oops"] = k.oops.as_dict()
    elif getattr(k, "panicked", False):
        v["outcome"] = "the kernel panics during boot"
    elif not k.populate.accepted:
        v["outcome"] = "cold boot: nothing preserved is restored"
    elif not k.is_kho_boot():
        v["outcome"] = "the kernel adopted the old scratch, then forgot the handover"
    elif k.violations:
        v["outcome"] = f"KHO boot with {len(k.violations)} memory-state violations"
    else:
        v["outcome"] = (f"KHO boot: {len(k.pages.preserved) + len(k.pages.restored)} preserved blocks reserved, "
                        f"{len(k.pages.restored)} restored by the clients run")
    clients_v = {}
    for s_ in (decoded.subtrees if decoded is not None else []):
        if s_.name == structs.KHO_METADATA_NODE_NAME and tgt.kexec_metadata:
            clients_v[s_.name] = "read" if any(l.startswith("KHO: exec from:") for l in log) else "not read"
            continue
        err, _, _, _ = retrieve_subtree(tgt, k.populate.fdt_blob if k.populate.accepted else None, s_.name)
        clients_v[s_.name] = "retrievable" if err == 0 else f"kho_retrieve_subtree fails: {err}"
        if s_.name in k.restored_ok:
            clients_v[s_.name] = "restore succeeded" if k.restored_ok[s_.name] else "restore failed"
    clients_v.update(notes)
    v["clients"] = clients_v
    return v


def _readable(mem, phys, size) -> bool:
    try:
        return mem.contains(phys, size)
    except Exception:
        return False


class _Layered(SparseMemory):
    """``base`` memory with one range served from ``top`` instead."""

    def __init__(self, base, top, start, size):
        self.base, self.top, self.s, self.e = base, top, start, start + size
        self.name = getattr(base, "name", "memory")

    def ranges(self):
        return self.base.ranges() if self.base.ranges() else [(self.s, self.e)]

    def contains(self, phys, size=1):
        if self.s <= phys and phys + size <= self.e:
            return True
        return self.base.contains(phys, size)

    def read(self, phys, size, structure="memory"):
        if self.s <= phys and phys + size <= self.e:
            return self.top.read(phys, size, structure)
        return self.base.read(phys, size, structure)


def render_rich(rep: dict) -> bool:
    """Findings as a rich table on a terminal; False when rich is absent."""
    import sys
    if not sys.stdout.isatty():
        return False
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        return False
    c = Console()
    c.print(f"[bold]KHO handover[/] {rep['source']}: generation {rep['generation']} ({rep['generation_evidence']})")
    if "summary" in rep:
        s = rep["summary"]
        c.print(f"preserved map: {s['blocks']} blocks, {s['bytes']} bytes")
    t = Table("severity", "code", "message", "where")
    colour = {ERROR: "red", WARNING: "yellow", INFO: "dim"}
    for f in sorted(rep["findings"], key=lambda f: {ERROR: 0, WARNING: 1, INFO: 2}[f["severity"]]):
        t.add_row(f"[{colour[f['severity']]}]{f['severity']}[/]", f["code"], f["message"], f["where"])
    c.print(t)
    v = rep["verdict"]
    ok = v["populate"] == "accepted"
    c.print(f"[bold]verdict[/] for {v['target']} ({v['target_kernels']}): kho_populate "
            f"[{'green' if ok else 'red'}]{v['populate']}[/]; {v.get('outcome', '')}")
    for line in v["log"]:
        c.print(f"  | {line}", markup=False)
    return True


def render(rep: dict) -> str:
    L = [f"KHO handover from {rep['source']}: generation {rep['generation']} ({rep['generation_evidence']})"]
    if "summary" in rep:
        s = rep["summary"]
        L.append(f"  preserved map: {s['blocks']} blocks, {s['bytes']} bytes, by order " +
                 ", ".join(f"{o}: {n}" for o, n in s["by_order"].items()))
    order = {ERROR: 0, WARNING: 1, INFO: 2}
    for f in sorted(rep["findings"], key=lambda f: order[f["severity"]]):
        L.append(f"  {f['severity']:7} {f['code']:28} {f['message']}" + (f"  [{f['where']}]" if f["where"] else ""))
    v = rep["verdict"]
    L.append(f"verdict for {v['target']} ({v['target_kernels']}): kho_populate {v['populate']}; {v.get('outcome', '')}")
    for line in v["log"]:
        L.append(f"  | {line}")
    for name, st in v.get("clients", {}).items():
        L.append(f"  client {name}: {st}")
    return "\n".join(L)


def exit_code(rep: dict) -> int:
    if rep["verdict"]["populate"] == "unknown":
        return 2
    bad = any(f["severity"] == ERROR for f in rep["findings"]) or rep["verdict"]["populate"] != "accepted"
    return 1 if bad else 0


def validate_path(args) -> int:
    from .memory import open_source
    mem = open_source(args.mem) if args.mem else None
    ho = load(args.path, mem, args.fdt_phys)
    tgt = P.get_profile(args.target) if args.target else (P.get_profile(args.profile) if args.profile else None)
    iomem = None
    if args.iomem:
        try:
            with open(args.iomem) as f:
                iomem = parse_iomem(f.read())
        except OSError as e:
            raise UsageError(f"{args.iomem}: cannot read: {e.strerror}") from None
    rep = validate(ho, tgt, iomem, want_blocks=args.blocks, cmdline=getattr(args, "cmdline", "kho=on"))
    if args.json:
        print(json.dumps(rep, indent=2 if args.pretty else None))
    else:
        if getattr(args, "builtin", False):
            print("(no PATH given: the bundled handover of a real Linux 7.2.13 kernel: test_kho, reserve_mem, LUO memfd sessions)")
        if not render_rich(rep):
            print(render(rep))
    return exit_code(rep)
