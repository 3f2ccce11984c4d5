"""``kho validate``: what the bytes are, and what the target kernel does with them.

A report is three things, and only three:

* the decoders' structural problems: what the bytes are and where they stop
  (an FDT that fails libfdt's checks, a map the decoder could not follow, a
  sub-blob its client's codec rejects, an unusual scratch array);
* the verdict: the target kernel's model booted on the capture
  (:func:`pykho.model.verdict.predict`), with its lines, reservations, client
  results, oops or panic;
* the findings derived from that run's consequences (the handover refused,
  a client that fails, a double free, memory read that nobody preserved).

No kernel rule is written here: severity comes from :mod:`pykho.findings`,
errors only from the model's run.
"""

from __future__ import annotations

from typing import Any

from .. import clients as _clients
from .. import profiles as P
from ..abi import fdt as _fdt
from ..errors import KhoDecodeError
from ..findings import ERROR, INFO, WARNING, Finding, severity_of
from ..handover import Handover, detect_generation, map_walker, summarize_walk
from ..model.verdict import predict
from ..profiles import PAGE_SIZE

__all__ = ["validate", "render", "exit_code", "go_no_go", "prometheus_text", "GO", "NO_GO", "CANNOT_TELL"]


def _hex(v: Any) -> str:
    return f"0x{v:x}" if isinstance(v, int) else str(v)


def validate(ho: Handover, target: P.Profile | None = None, iomem: list[tuple[int, int]] | None = None,
             want_blocks: bool = False, cmdline: str = "kho=on", want_reserved: bool = False,
             arch: str = "x86", boot_data: bytes | None = None, numa: bool = False) -> dict[str, Any]:
    """Findings over the handover ``ho`` and the verdict of the ``target``
    kernel's model booted on it.  ``want_reserved`` adds ``verdict.reserved``:
    every ``(phys, order)`` the model's kernel memblock-reserved from the map,
    in its order (what ``memblock=debug`` prints for
    ``kho_preserved_memory_reserve``)."""
    F: list[Finding] = []

    def add(code: str, msg: str, where: Any = "") -> None:
        F.append(Finding(severity_of(code), code, msg, where if isinstance(where, str) else _hex(where)))

    for q in ho.quirks:
        add(q.code, q.message, ho.source)
    for what, msg in ho.disagreements:
        add("sources-disagree", msg, what)

    # ---- the root FDT: what libfdt says of the bytes
    blob = ho.root_blob or b""
    where_fdt = _hex(ho.root_phys) if ho.root_phys is not None else ho.root_blob_origin
    rc = _fdt.kernel_check_header(blob)
    full = _fdt.check_full(blob) if rc == 0 else rc
    root = None
    cut = any(q.code == "debugfs-fdt-truncated" for q in ho.quirks) and ho.mem is None
    if rc:
        add("fdt-header", f"root FDT header invalid: libfdt {rc} ({_fdt.fdt_strerror(rc)})", where_fdt)
    elif full and not cut:
        add("fdt-structure", f"root FDT does not pass fdt_check_full: libfdt {full} ({_fdt.fdt_strerror(full)})",
            where_fdt)
    elif not full:
        try:
            root = ho.root
        except KhoDecodeError as e:      # libfdt takes names pykho cannot decode (not UTF-8)
            add("fdt-structure", f"root FDT does not decode: {e}", where_fdt)

    detected, evidence = (detect_generation(ho) if root is not None else (None, "root FDT unreadable"))
    tgt = target or detected or P.E
    out: dict[str, Any] = {"source": ho.source, "generation": detected.name if detected else None,
                           "generation_evidence": evidence,
                           "scratch": [{"addr": a.addr, "size": a.size} for a in ho.scratch]}

    # ---- the scratch array: what it holds
    scratch = ho.scratch
    if ho.scratch_len is not None and ho.scratch_len % 16:
        add("scratch-length", f"scratch array length {ho.scratch_len} is not a multiple of 16: the kernel "
            f"uses {ho.scratch_len // 16} entries and ignores {ho.scratch_len % 16} bytes", _hex(ho.scratch_phys))
    for i, a in enumerate(scratch):
        if a.size == 0:
            add("scratch-empty", f"scratch area {i} has size 0 (normal for the global area when all RAM "
                "is below 4 GiB)", _hex(a.addr))
        elif a.addr % PAGE_SIZE or a.size % PAGE_SIZE:
            add("scratch-unaligned", f"scratch area {i} 0x{a.addr:x}+0x{a.size:x} is not page aligned", a.addr)
        if iomem and a.size and not any(s <= a.addr and a.end <= e for s, e in iomem):
            add("scratch-outside-ram", f"scratch area {i} 0x{a.addr:x}+0x{a.size:x} is not in System RAM", a.addr)
    for i, a in enumerate(scratch):
        for j, b in enumerate(scratch[i + 1:], i + 1):
            if a.size and b.size and a.addr < b.end and b.addr < a.end:
                add("scratch-overlap", f"scratch areas {i} and {j} overlap", max(a.addr, b.addr))

    # ---- the map and the sub-blobs: what the decoders find
    blocks = None
    summary = None
    if root is not None and ho.mem is not None and root.mem_map:
        wk = map_walker(tgt, ho.mem, root.mem_map)
        summary, meta, blocks = summarize_walk(wk, want_blocks=want_blocks)
        out["metadata"] = meta
        for prob in wk.problems:
            add(prob.code, str(prob), prob.where if isinstance(prob.where, int) else str(prob.where))
    if root is not None:
        for st in root.subtrees:
            dec = _clients.decode_subblob(st.name, ho.blob_of(st.name), ho.mem, st.phys, tgt)
            if "error" in dec and dec.get("code") != "blob-missing":
                add("subblob-" + dec.get("code", "decode"), f"sub-blob {st.name!r}: {dec['error']}",
                    st.phys if st.phys else "")
    if root is not None and ho.mem is None and not any(q.code == "live-in-consumed" for q in ho.quirks):
        add("no-memory", "no --mem given: the preserved memory map and the sub-blobs were not checked")

    # ---- the verdict: the target kernel's model run on the same bytes
    if rc == 0 and full and cut:
        out["verdict"] = {"target": tgt.name, "target_kernels": tgt.kernels, "populate": "unknown", "log": [],
                          "outcome": "the root FDT file is cut short (debugfs quirk) and could not be completed: "
                                     "give --mem with memory captured at the jump"}
    else:
        out["verdict"] = predict(ho, tgt, cmdline, iomem, want_reserved, arch, boot_data, numa)
        for c in out["verdict"].pop("consequences", []):
            F.append(Finding(c["severity"], c["code"], c["message"], c["where"]))
    if summary is not None:
        out["summary"] = summary
    if want_blocks:
        out["preserved"] = blocks or []
    out["findings"] = [f.as_dict() for f in F]
    return out


_ORDER = {ERROR: 0, WARNING: 1, INFO: 2}


def render(rep: dict[str, Any]) -> str:
    L = [f"KHO handover from {rep['source']}: generation {rep['generation']} ({rep['generation_evidence']})"]
    if "summary" in rep:
        s = rep["summary"]
        L.append(f"  preserved map: {s['blocks']} blocks, {s['bytes']} bytes, by order " +
                 ", ".join(f"{o}: {n}" for o, n in s["by_order"].items()))
    for f in sorted(rep["findings"], key=lambda f: _ORDER[f["severity"]]):
        L.append(f"  {f['severity']:7} {f['code']:28} {f['message']}" + (f"  [{f['where']}]" if f["where"] else ""))
    v = rep["verdict"]
    L.append(f"verdict for {v['target']} ({v['target_kernels']}): kho_populate {v['populate']}; {v.get('outcome', '')}")
    for line in v["log"]:
        L.append(f"  | {line}")
    for name, st in v.get("clients", {}).items():
        L.append(f"  client {name}: {st}")
    return "\n".join(L)


def render_rich(rep: dict[str, Any]) -> bool:
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
    for f in sorted(rep["findings"], key=lambda f: _ORDER[f["severity"]]):
        t.add_row(f"[{colour[f['severity']]}]{f['severity']}[/]", f["code"], f["message"], f["where"])
    c.print(t)
    v = rep["verdict"]
    ok = v["populate"] == "accepted"
    c.print(f"[bold]verdict[/] for {v['target']} ({v['target_kernels']}): kho_populate "
            f"[{'green' if ok else 'red'}]{v['populate']}[/]; {v.get('outcome', '')}")
    for line in v["log"]:
        c.print(f"  | {line}", markup=False)
    return True


def exit_code(rep: dict[str, Any]) -> int:
    """0 no error and accepted; 1 an error or a refused handover; 2 cannot tell."""
    if rep["verdict"]["populate"] == "unknown":
        return 2
    bad = any(f["severity"] == ERROR for f in rep["findings"]) or rep["verdict"]["populate"] != "accepted"
    return 1 if bad else 0


# ---------------------------------------------------------------- go / no-go

GO, NO_GO, CANNOT_TELL = 0, 1, 2


def go_no_go(rep: dict[str, Any]) -> tuple[int, list[str]]:
    """The live-update decision from a validate report: (0 go / 1 no-go /
    2 cannot tell, the reasons, one line each in the target kernel's terms)."""
    v = rep["verdict"]
    errors = [f for f in rep["findings"] if f["severity"] == ERROR]
    if errors or v["populate"] == "rejected":
        reasons = [f"{f['code']}: {f['message']}" for f in errors]
        return NO_GO, reasons or [f"kho_populate refuses the handover: {v.get('outcome', '')}"]
    if v["populate"] == "unknown" or v.get("incomplete"):
        return CANNOT_TELL, [v.get("outcome", "the input does not tell what the next kernel will do")]
    return GO, [v.get("outcome", "")]


def _prom_label(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus_text(rep: dict[str, Any], version: str, decision: int | None = None) -> str:
    """The report as node_exporter textfile-collector metrics."""
    lines: list[str] = []

    def metric(name: str, help_: str, samples: list[tuple[dict[str, Any], float]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} gauge")
        for labels, value in samples:
            lab = ",".join(f'{k}="{_prom_label(x)}"' for k, x in labels.items())
            lines.append(f"{name}{{{lab}}} {value}" if lab else f"{name} {value}")

    s = rep.get("summary") or {"blocks": 0, "bytes": 0, "by_order": {}}
    metric("kho_preserved_bytes", "Bytes the preserved memory map describes.", [({}, s["bytes"])])
    metric("kho_preserved_blocks", "Preserved blocks in the map, by order.",
           [({"order": o}, n) for o, n in s["by_order"].items()] or [({"order": "0"}, 0)])
    metric("kho_map_metadata_bytes", "Bytes of the map's own pages (radix nodes, chunks, bitmaps).",
           [({}, (rep.get("metadata") or {}).get("bytes", 0))])
    names = ["lowmem", "global"]
    metric("kho_scratch_bytes", "Size of each scratch area the next kernel boots from.",
           [({"area": names[i] if i < 2 else f"node{i - 2}"}, a["size"]) for i, a in enumerate(rep.get("scratch", []))]
           or [({"area": "none"}, 0)])
    v = rep["verdict"]
    metric("kho_findings", "Findings of kho validate, by severity.",
           [({"severity": sev}, sum(1 for f in rep["findings"] if f["severity"] == sev))
            for sev in (ERROR, WARNING, INFO)])
    label = {GO: "go", NO_GO: "no-go", CANNOT_TELL: "cannot-tell"}
    d = go_no_go(rep)[0] if decision is None else decision
    metric("kho_verdict", "1 for the live-update decision pykho reached for the target kernel.",
           [({"target": v["target"], "decision": label[k]}, 1 if k == d else 0) for k in (GO, NO_GO, CANNOT_TELL)])
    metric("kho_pykho_info", "The pykho that wrote these metrics.", [({"version": version}, 1)])
    return "\n".join(lines) + "\n"
