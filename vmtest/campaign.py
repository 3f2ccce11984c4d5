"""Differential runs: the real next kernel against pykho's prediction, case by case.

One *case* is a chain of two boots.  Boot 1 runs to ``machine_kexec``; a
hook changes the handover (bytes written at the jump, ``kho_data`` fields and
scratch-array bytes written at boot 2's entry) and asks pykho what boot 2
will do with exactly those bytes and with the command line boot 2 really
gets (:func:`predict`: ``kho validate``'s verdict, the 7.2 model booted on
the captured RAM, copy-on-write).  Boot 2 is the real kernel.
:func:`observe` reads what it did; :func:`compare` puts the two side by side:

* the KHO and client lines printed before user space (``KHO:``, ``test_kho:``,
  ``luo:``, reserve_mem's lines, panics), in order;
* the blocks memblock-reserved from the preserved map (``memblock=debug``
  prints one ``kho_preserved_memory_reserve`` line per block), in order;
* the fate of the boot: it ran to user space, panicked, oopsed, or corrupted
  memory (``page: refcount:-1`` / ``Bad page state`` dumps).

``python -m vmtest campaign --seed S --cases N --jobs J`` runs random cases
(:func:`random_case`: structured mutations of the real handover and random
boot-2 options from a small safe set); every case is recorded with
:func:`vmtest.records.record` (source ``random``).  pykho is imported only
by the functions that need it, so the rest of the package keeps to the
standard library.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import random
import re
import shutil
import struct
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from . import records
from .build import find_build
from .inject import Write
from .runner import Options, run_chain
from .serial import MEMBLOCK_KHO

__all__ = ["RELEVANT", "Case", "NONDETERMINISM", "boot_lines", "compare", "observe", "predict", "random_case",
           "run_case", "run_campaign", "relevant_lines"]

PAGE = 4096

#: the lines compared: those the model prints (KHO core, its clients, panics)
GP_FAULT = "Oops: general protection fault, probably for non-canonical address "
EARLY_EXCEPTION = "PANIC: early exception"
OOPS_LINES = ("BUG: unable to handle page fault", GP_FAULT)
RELEVANT = ("KHO:", "KHO reserve-mem", "test_kho:", "luo:", "Kernel panic", *OOPS_LINES, EARLY_EXCEPTION,
            "Revived memory reservation", "reserve_mem:", "failed to retrieve FDT 'memblock'", "FDT 'memblock'",
            "Node '", "failed to prepare memblock FDT", "Malformed early option 'kho_scratch'", "vmalloc-test:",
            "memblock: reserved is doubled", "memblock: Failed to double reserved")
#: signs that the kernel corrupted its page allocator's state (a double free)
CORRUPTION = ("page: refcount:-1", "BUG: Bad page state", "kernel BUG at mm/", "list_add corruption",
              "list_del corruption")
#: the model's violations whose real consequence is that corruption
CORRUPTING = ("double-free", "preserved-freed-before-restore")
#: where user space starts: lines after it come from the guest's own actions
USERSPACE = "Run /init as init process"

#: disagreements known to be kernel nondeterminism (see docs/REAL-KERNEL.md):
#: {name: (what, predicate over (real, predicted))}
NONDETERMINISM: dict[str, str] = {
    "unpreserved-page-reuse-timing": "a page outside the map is reused by the page allocator at a point of the "
                                     "boot that varies from run to run (docs/REAL-KERNEL.md)",
    "partial-pageblock-scratch": "which unmovable allocations land in the non-CMA pageblock at the edge of an "
                                 "unaligned scratch area varies from run to run (docs/REAL-KERNEL.md)",
}


# ------------------------------------------------------------------ the real side

def boot_lines(stage_dir: Path) -> list[str]:
    """A boot's kernel messages, timestamps cut: its dmesg, or its console
    when it never reached user space."""
    stage_dir = Path(stage_dir)
    src = stage_dir / "dmesg.txt"
    if not src.exists():
        src = stage_dir / "console-boot.log"
    if not src.exists():
        return []
    # split on newlines only: str.splitlines also breaks at \x1c-\x1e, which a
    # mutated release string printed by the kernel may hold
    return [re.sub(r"^\[\s*\d+\.\d+\]\s?", "", x.rstrip("\r"))
            for x in src.read_text(errors="replace").split("\n") if x]


def relevant_lines(lines: list[str]) -> list[str]:
    """The compared lines, up to user space."""
    out = []
    for x in lines:
        if x.startswith(USERSPACE):
            break
        if x.startswith(RELEVANT):
            out.append(x.rstrip())
    return out


def reserved_from_map(lines: list[str]) -> list[list[int]]:
    """[phys, order] of the kho_preserved_memory_reserve memblock lines, in order."""
    out = []
    for x in lines:
        r = MEMBLOCK_KHO.search(x)
        if r:
            a, b = int(r.group(1), 16), int(r.group(2), 16)
            out.append([a, ((b - a + 1) // PAGE).bit_length() - 1])
    return out


def observe(capture: Path, summary: dict, stage: int = 2) -> dict[str, Any]:
    """What boot ``stage`` of a finished chain did."""
    sd = Path(capture) / f"stage{stage}"
    lines = boot_lines(sd)
    rel = relevant_lines(lines)
    bug = [x.split(": ")[-1].split()[0] if x.startswith("BUG") else x[len(GP_FAULT):].split(":")[0]
           for x in rel if x.startswith(OOPS_LINES)]
    corrupt = sum(1 for x in lines if x.startswith(CORRUPTION))
    completed = bool(summary.get("stages", {}).get(str(stage), {}).get("end"))
    # the kernel's part ends where user space starts (the guest's /init may
    # then hang reading a debugfs blob whose blob-size was mutated)
    userspace = any(x.startswith(USERSPACE) for x in lines)
    early = [x for x in rel if x.startswith(EARLY_EXCEPTION)]
    if early:
        fate = "early-exception"     # the early handler halts the machine: no panic line
        rel = [x if not x.startswith(EARLY_EXCEPTION) else x[:len(EARLY_EXCEPTION) + 5] for x in rel]
    elif any(x.startswith("Kernel panic") for x in rel):
        fate = "panic"
    elif corrupt:
        fate = "corruption"
    elif completed or userspace:
        fate = "ok"
    else:
        fate = "died"          # no panic line, no user space (a hang, a silent death)
    cmd = sd / "cmdline.txt"
    return {"lines": rel, "reserved": reserved_from_map(lines), "oops": bug[0] if bug else None,
            "fate": fate, "corruption_lines": corrupt, "completed": completed, "userspace": userspace,
            "exit": summary.get("exit"),
            "found": "KHO: found kexec handover data." in rel,
            "cmdline": cmd.read_text().strip() if cmd.exists() else None,
            "luo_check": (sd / "luo_check.txt").read_text() if (sd / "luo_check.txt").exists() else None}


# ------------------------------------------------------------------ pykho's side

def predict(ctx, jump: list[tuple[int, bytes]] = (), cmdline: str = "kho=on",
            kho_data: tuple[int, int, int, int] | None = None, scratch: bytes | None = None,
            model: bool = False, target: Any = None, numa: bool = False) -> dict[str, Any]:
    """pykho's verdict for the bytes boot 2 will find.

    ``jump``: (phys, bytes) written at machine_kexec.  ``kho_data``: the
    (fdt_addr, fdt_size, scratch_addr, scratch_size) boot 2 receives, when
    changed at its entry; ``scratch``: the scratch array bytes at their
    destination (after the kexec relocation), when changed.  ``cmdline``:
    boot 2's own command line.  ``model=True`` keeps the raw report.
    ``target``: the profile of boot 2's kernel (default 7.2's, E)."""
    from pykho import profiles as P
    from pykho.handover import load
    from pykho.memory import CowMemory, RawImage
    from pykho.memory.iomem import parse_iomem
    from pykho.reports.validate import validate

    sd = ctx.locate["setup_data"][-1]
    kd = kho_data or (sd["fdt_addr"], sd["fdt_size"], sd["scratch_addr"], sd["scratch_size"])
    with RawImage(str(ctx.ram_file)) as raw:     # 1 GiB mapped: unmapped on return
        cow = CowMemory(raw, raw.ranges())
        # the kexec relocation leaves the array at its destination
        copies = ctx.locate["scratch"]["copies"]
        arr = scratch if scratch is not None else (ctx.read(copies[0], sd["scratch_size"]) if copies else None)
        if arr is not None:
            cow.write(sd["scratch_addr"], arr)
        for phys, data in jump:
            cow.write(phys, data)
        out = str(ctx.stage_dir / "debugfs" / "kho" / "out")
        try:
            ho = load(out, cow, kd[0])
        except Exception:   # noqa: BLE001 - an address with no FDT: the kernel judges the bytes
            ho = load(out, cow, sd["fdt_addr"])
            ho.root_phys = kd[0]
            ho.root_blob = cow.read(kd[0], 64) if cow.contains(kd[0], 64) else b""
        ho.scratch_phys, ho.scratch_len = kd[2], kd[3]
        ho.fdt_size = kd[1]                 # read by the verdict (the kernel maps this length)
        # the machine's System RAM, as boot 1 listed it (boot 2 has the same e820)
        iomem_txt = ctx.stage_dir / "iomem.txt"
        iomem = parse_iomem(iomem_txt.read_text()) if iomem_txt.exists() else None
        rep = validate(ho, P.get_profile(target or P.E), iomem=iomem or None, want_reserved=True,
                       cmdline=cmdline, numa=numa)
    v = rep["verdict"]
    viol = [x["kind"] for x in v.get("model_violations", [])]
    if any(x["kind"] == "panic" and x["step"] == "setup_arch" for x in v.get("model_violations", [])):
        fate = "silent-panic"        # before the console and before panic= is parsed: the machine halts
    elif "early-exception" in viol:
        fate = "early-exception"
    elif any(x.startswith("Kernel panic") for x in v["log"]):
        fate = "panic"
    elif any(k in CORRUPTING for k in viol):
        fate = "corruption"
    else:
        fate = "ok"
    res = {"lines": [x for x in v["log"] if x.startswith(RELEVANT)], "reserved": v.get("reserved"),
           "oops": v.get("oops"), "fate": fate, "populate": v["populate"], "outcome": v.get("outcome"),
           "violations": sorted(set(viol)), "cmdline": cmdline, "debugfs": v.get("debugfs", {}),
           "findings": sorted({f["code"] for f in rep["findings"] if f["severity"] == "error"}),
           "target": v.get("target"), "scratch_extension": v.get("scratch_extension", [])}
    if model:
        res["report"] = rep
    return res


# ------------------------------------------------------------------ side by side

def _digest(blocks: list | None) -> str | None:
    if blocks is None:
        return None
    return hashlib.sha256(json.dumps(blocks).encode()).hexdigest()[:16]


ARRAY_MOVED = "memblock: reserved is doubled to "


def _unplaced(line: str) -> str:
    """A line without the address memblock_double_array found for the
    reserved array (the model does not place every early allocation the
    real boot makes in scratch, so where the array lands is not compared;
    its size is)."""
    return line.split(" at [")[0] if line.startswith(ARRAY_MOVED) else line


def compare(real: dict[str, Any], pred: dict[str, Any]) -> tuple[bool, list[str]]:
    """(agree, the differences).  Lines: equal lists, the page-fault line
    compared by range (the model knows it exactly only for x86-64 reads of a
    node).  Reservations: equal when the real kernel accepted the handover
    and the model listed them.  Fate: the same; a predicted corruption is
    met by any corruption, however the boot then ends (its last lines vary
    from run to run), so its lines are compared up to the corruption."""
    diffs = []
    rl = [_unplaced(x) for x in real["lines"] if not x.startswith(OOPS_LINES)]
    pl = [_unplaced(x) for x in pred["lines"] if not x.startswith(OOPS_LINES)]
    if pred["fate"] == "corruption":
        # the corrupted kernel dies somewhere after the double free: what the
        # model prints past it is only compared as far as the real boot got
        rl = [x for x in rl if not x.startswith("Kernel panic")]
        pl = [x for x in pl if not x.startswith("Kernel panic")]
        if pl[:len(rl)] == rl:
            pl = rl
    if pred["fate"] == "silent-panic":
        pl = []                   # nothing reaches the console
    if pred["fate"] == "early-exception" and not any(x.startswith(EARLY_EXCEPTION) for x in rl):
        pl = [x for x in pl if not x.startswith(EARLY_EXCEPTION)]   # printed only with earlyprintk
    # a panic whose message the model does not know ("(model) ...") stands for any panic line
    pl = [next((r for r in rl if r.startswith("Kernel panic")), x) if x.startswith("Kernel panic") and "(model)" in x
          else x for x in pl]
    if rl != pl:
        diffs.append(f"lines: real {rl} != predicted {pl}")
    vague = any(x.startswith("Kernel panic") and "(model)" in x for x in pred["lines"])
    if pred["fate"] in ("corruption", "early-exception") or vague:
        pass                      # how a corrupted kernel dies varies; a "(model)" panic names no fault
    elif pred["oops"]:
        lo, hi = (int(x, 16) for x in pred["oops"]["address_range"])
        if real["oops"] is None or not lo <= int(real["oops"], 16) <= hi:
            diffs.append(f"oops: real {real['oops']} outside predicted {pred['oops']['address_range']}")
    elif real["oops"]:
        diffs.append(f"oops: real page fault at {real['oops']}, none predicted")
    if real["found"] and pred["reserved"] is not None and real["reserved"] != pred["reserved"]:
        diffs.append(f"reserved: real {len(real['reserved'])} blocks ({_digest(real['reserved'])}) != predicted "
                     f"{len(pred['reserved'])} ({_digest(pred['reserved'])})")
    rf, pf = real["fate"], pred["fate"]
    if pf == "corruption":
        # the first victim of the corrupted allocator may print bad-page dumps
        # or fault at once (7.2.13 NUMA=y, debugfs=off: 331-3265 dumps in most
        # runs, a fault at 0x1340 and Fatal exception with none in others)
        ok = rf in ("corruption", "died") or (rf == "panic" and bool(real["corruption_lines"] or real["oops"]))
    elif pf == "silent-panic":
        ok = rf == "died"
    elif pf == "early-exception":
        ok = rf in ("early-exception", "died")
    else:
        ok = rf == pf
    if not ok:
        diffs.append(f"fate: real {rf} != predicted {pf}")
    if real.get("cmdline") and real["cmdline"].split() != pred["cmdline"].split():
        diffs.append("cmdline: the model was not given boot 2's own command line")
    return not diffs, diffs


def summarise(obs: dict[str, Any]) -> dict[str, Any]:
    """A record's compact form of a real or predicted side."""
    out = {k: obs.get(k) for k in ("lines", "fate", "oops")}
    if obs.get("reserved") is not None:
        out["reserved"] = {"blocks": len(obs["reserved"]), "sha": _digest(obs["reserved"])}
    for k in ("findings", "violations", "corruption_lines", "exit"):
        if k in obs:
            out[k] = obs[k]
    return out


# ------------------------------------------------------------------ building changes

KHO_DATA_FIELDS = ("fdt_addr", "fdt_size", "scratch_addr", "scratch_size")


def setup_data(ctx) -> dict:
    """The SETUP_KEXEC_KHO record boot 2 receives (its struct kho_data values)."""
    return ctx.locate["setup_data"][-1]


def kho_data_change(ctx, **fields: int) -> Change:
    """Boot 2's kho_data with some fields replaced (written at its entry)."""
    sd = setup_data(ctx)
    vals = [sd[k] for k in KHO_DATA_FIELDS]
    at = []
    for k, v in fields.items():
        i = KHO_DATA_FIELDS.index(k)
        vals[i] = v
        at.append((8 * i, struct.pack("<Q", v)))
    return Change(kho_data=tuple(vals), kho_data_at=at)


def scratch_array(ctx) -> bytes:
    """The scratch array as boot 1 staged it (bytes)."""
    return ctx.read(ctx.locate["scratch"]["copies"][0], setup_data(ctx)["scratch_size"])


def scratch_entries(ctx) -> list[tuple[int, int]]:
    raw = scratch_array(ctx)
    return [struct.unpack_from("<QQ", raw, i) for i in range(0, len(raw) - 15, 16)]


def scratch_change(ctx, entries: list[tuple[int, int]] | bytes, size: int | None = None) -> Change:
    """A new scratch array at its destination (entry); kho_data.scratch_size
    follows its length unless ``size`` is given."""
    new = entries if isinstance(entries, bytes) else b"".join(struct.pack("<QQ", a, n) for a, n in entries)
    size = len(new) if size is None else size
    ch = kho_data_change(ctx, scratch_size=size) if size != setup_data(ctx)["scratch_size"] else Change()
    ch.scratch, ch.scratch_at = new, [(0, new)]
    return ch


def tree_edit(ctx, add=(), delete=()) -> list[tuple[int, bytes]]:
    """(phys, page) writes that add and delete (phys, order) blocks in the
    real radix tree with pykho's encoder; new nodes come from the reserve_mem
    region (kept by the map, read by nobody)."""
    from pykho import clients
    from pykho.abi import radix
    from pykho.memory import CowMemory, RawImage
    with RawImage(str(ctx.ram_file)) as raw:
        cow = CowMemory(raw, raw.ranges())
        mb = [x for x in ctx.locate["subnodes"] if x["name"] == "memblock"][0]
        region = clients.decode_memblock(cow.read(mb["preserved_data"], mb["blob_size"]))[0]
        free = list(range(region.start, region.start + region.size, PAGE))
        used = []

        def alloc():
            p = free.pop()
            cow.write(p, bytes(PAGE))
            used.append(p)
            return p
        tree = radix.RadixTree(cow, alloc, root=ctx.locate["radix"]["root"])
        for phys, order in add:
            assert tree.add(phys, order) == 0
        for phys, order in delete:
            assert tree.delete(phys, order), (hex(phys), order)
        pages = set(used) | {p for p, _ in ctx.locate["radix"]["nodes"]}
        return [(p, cow.read(p, PAGE)) for p in sorted(pages) if cow.read(p, PAGE) != raw.read(p, PAGE)]


def subnode(ctx, name: str) -> dict:
    return [x for x in ctx.locate["subnodes"] if x["name"] == name][0]


def root_edit(ctx, fn) -> list[tuple[int, bytes]]:
    """The root FDT page re-encoded after ``fn(RootFdtPage)`` (libfdt)."""
    from pykho import profiles as P
    from pykho.abi import root
    phys = ctx.locate["fdt"]["phys"]
    p = root.RootFdtPage(P.E, bytearray(ctx.read(phys, PAGE)))
    assert p.open_into() == 0
    fn(p)
    assert p.pack() == 0
    return [(phys, bytes(p.buf))]


# ------------------------------------------------------------------ one case

@dataclasses.dataclass
class Case:
    """A differential case: what to change (a function of the stop context
    returning :class:`Change`) and boot 2's own command line words."""
    name: str
    what: str
    change: Any                         # ctx -> Change
    boot2: str = ""                     # boot 2's extra words ("" = the same line as boot 1)
    boot1: str = ""                     # boot 1's extra words
    reserve_mem: str | None = "4M:4K:vmtest_rmem"   # the reserve_mem= of every boot
    luo: bool = False
    earlyprintk: bool = False
    stall_timeout: float = 60.0
    retries: int = 1                    # a hung chain is booted again (0 where boot 2 is expected to die)
    keep: bool = False                  # keep the capture's ram/ (a check reads locate-stage1.json)
    source: str = "crafted"
    seed: int | None = None
    memory: str = "1G"                  # the guest's RAM (4G: RAM above the PCI hole too)
    numa_nodes: int = 1                 # its NUMA nodes
    desc: dict = dataclasses.field(default_factory=dict)      # what a random case changed (filled at the stop)


@dataclasses.dataclass
class Change:
    jump: list = dataclasses.field(default_factory=list)       # [(phys, bytes)] at machine_kexec
    kho_data: tuple | None = None                               # boot 2's kho_data, when changed
    scratch: bytes | None = None                                # the scratch array at its destination
    scratch_at: list = dataclasses.field(default_factory=list)  # [(offset, bytes)] into the array (entry)
    kho_data_at: list = dataclasses.field(default_factory=list)  # [(offset, bytes)] into kho_data (entry)
    note: str = ""
    info: dict = dataclasses.field(default_factory=dict)       # what a test wants to check afterwards


def options_for(case: Case, hook) -> Options:
    lines = {n: w for n, w in ((1, case.boot1), (2, case.boot2)) if w}
    return Options(boots=2, luo=case.luo, stall_retries=case.retries, hook=hook, earlyprintk=case.earlyprintk,
                   stall_timeout=case.stall_timeout, cmdlines=lines, reserve_mem=case.reserve_mem,
                   memory=case.memory, numa_nodes=case.numa_nodes)


def target_profile(build=None) -> Any:
    """pykho's profile of the kernel a chain runs (its series, else its release)."""
    from pykho import profiles as P
    b = build or find_build()
    for key in (getattr(b, "series", None), getattr(b, "release", None)):
        try:
            if key:
                return P.get_profile(key)
        except Exception:   # noqa: BLE001 - pykho's UsageError for an unknown name: try the next
            continue
    return P.E


def build_numa(build=None) -> bool:
    """Whether the chain's kernel is built with CONFIG_NUMA (the model's
    boot 2 then needs every memblock range on a node)."""
    from .coldboot import build_has_numa
    b = build or find_build()
    return bool(b is not None and build_has_numa(b.dir))


def guest_shape(case: Case) -> str:
    """"" for the default guest (1 GiB, one node), else e.g. " (guest 4G, 2 NUMA nodes)"."""
    if case.memory == "1G" and case.numa_nodes == 1:
        return ""
    return f" (guest {case.memory}" + (f", {case.numa_nodes} NUMA nodes)" if case.numa_nodes > 1 else ")")


def boot2_cmdline(opts: Options) -> str:
    """The command line boot 2 really gets (padded when boots have their own)."""
    lines = opts.boot_cmdlines()
    return lines[2] if lines else " ".join(opts.cmdline(2).split())


def tcg_hang(res: dict[str, Any]) -> bool:
    """Boot 2 went silent where the model sees a normal boot: the rare TCG
    hang (vCPUs in the clocksource watchdog / stop_machine, about one run in
    30; tests/vm/conftest.py), not the kernel's verdict on the handover."""
    real, pred = res.get("real"), res.get("pred")
    return bool(real and pred and real["fate"] == "died" and pred["fate"] == "ok"
                and res["summary"].get("exit") == "stalled"
                and real["lines"] == pred["lines"][:len(real["lines"])])


def run_case(case: Case, out: Path, build=None, rec: bool = True, keep: bool = False,
             _again: bool = True) -> dict[str, Any]:
    """Boot the case, predict, compare, record.  Returns
    {"agree", "diffs", "real", "pred", "summary", "seconds"}.  A case whose
    boot 2 hung where the model sees a normal boot (:func:`tcg_hang`) is
    booted once more (random cases: :func:`run_one_random` does it, from the
    seed)."""
    got: dict[str, Any] = {}
    t0 = time.time()
    target = target_profile(build)
    numa = build_numa(build)

    def hook(ctx):
        if ctx.stage != 1:
            return []
        ch = case.change(ctx)
        got["change"] = ch
        cmd = boot2_cmdline(opts)
        try:
            got["pred"] = predict(ctx, ch.jump, cmd, ch.kho_data, ch.scratch, target=target, numa=numa)
        except Exception:   # noqa: BLE001 - pykho failed on these bytes: the case disagrees
            got["pred_error"] = traceback.format_exc(limit=6)
        writes = [Write(p, d, stage=1, when="jump") for p, d in ch.jump]
        writes += [Write(f"kho_data+{o}", d, stage=1, when="entry") for o, d in ch.kho_data_at]
        writes += [Write(f"scratch+{o}", d, stage=1, when="entry") for o, d in ch.scratch_at]
        return writes

    opts = options_for(case, hook)
    for _attempt in range(3):
        summary = run_chain(out, opts, build)
        # boot 1 hung before machine_kexec (a TCG hang, about one run in 30):
        # nothing was changed yet, boot the case again
        if "change" in got or summary.get("exit") != "stalled":
            break
    res: dict[str, Any] = {"summary": summary, "seconds": round(time.time() - t0, 1)}
    if "pred" not in got:
        why = (f"pykho raised: {got['pred_error']}" if "pred_error" in got else
               f"boot 1 did not reach machine_kexec: {summary.get('exit')}")
        res.update(agree=False, diffs=[why], real=observe(out, summary) if "change" in got else None, pred=None)
    else:
        real = observe(out, summary)
        pred = got["pred"]
        agree, diffs = compare(real, pred)
        res.update(agree=agree, diffs=diffs, real=real, pred=pred, note=got["change"].note, info=got["change"].info)
    if _again and case.source != "random" and not res["agree"] and tcg_hang(res):
        return run_case(case, out, build, rec, keep, _again=False)
    res["nondeterminism"] = nondeterminism(res) if res.get("real") and res.get("pred") and not res["agree"] else None
    if rec:
        label = res["nondeterminism"]
        record_case(case, res, summary, note=(f"documented nondeterminism: {label}; " if label else "")
                    + "; ".join(res.get("diffs", [])))
    if not (keep or case.keep):
        shutil.rmtree(out / "ram", ignore_errors=True)
    return res


def record_case(case: Case, res: dict[str, Any], summary: dict, note: str = "") -> dict:
    kernel = summary.get("kernel") or "?"
    change = case.what + (f"; boot 2: {case.boot2}" if case.boot2 else "") + guest_shape(case)
    return records.record(kernel=kernel, next_kernel=kernel, arch="x86_64", source=case.source, case=case.name,
                          seed=case.seed, change=change,
                          real=summarise(res["real"]) if res.get("real") else {"exit": summary.get("exit")},
                          predicted=summarise(res["pred"]) if res.get("pred") else None,
                          agree=res["agree"], note=note or "; ".join(res.get("diffs", [])))


# ------------------------------------------------------------------ random cases

FAR = 0x2000000000        # 128 GiB: no RAM there (the guest has 1 GiB)
UNMAPPED = 0x7FFF0000000  # 8 TiB: outside the direct map

#: random boot-2 options: (words, weight).  Small and safe: each either
#: changes what the model must follow or must change nothing.
BOOT2_OPTIONS: list[tuple[str, int]] = [
    ("", 60), ("debugfs=on", 4), ("debugfs=off", 3), ("kho=off", 3), ("kho=0", 1), ("liveupdate=off", 3),
    ("reserve_mem=1M:4K:vmtest_two", 4), ("reserve_mem=2M:64M:vmtest_rmem", 2), ("reserve_mem=8M:4K:vmtest_rmem", 2),
    ("kho_scratch=50%", 3), ("kho_scratch=16M,0,32M", 2), ("kho_scratch=bogus", 1), ("test_kho.max_mem=0", 1),
    ("memblock=debug", 2),
]

#: mutation families and their weights
FAMILIES: list[tuple[str, int]] = [
    ("none", 4), ("fdt-prop", 14), ("fdt-bytes", 10), ("radix-entry", 12), ("bitmap-bit", 12), ("scratch-entry", 12),
    ("scratch-length", 5), ("kho-data", 10), ("sub-blob", 16),
]


def _pick(rng: random.Random, items: list[tuple[Any, int]]) -> Any:
    return rng.choices([x for x, _ in items], weights=[w for _, w in items])[0]


def _u64(ctx, phys: int) -> int:
    return struct.unpack("<Q", ctx.read(phys, 8))[0]


def _pointer_values(rng: random.Random, ctx, orig: int) -> int:
    """A replacement for a pointer that the real kernel and the model read
    alike: never into scratch (whose contents boot 2 changes before it reads)."""
    nodes = [p for p, _ in ctx.locate["radix"]["nodes"]]
    v = rng.choice([0, FAR, UNMAPPED, orig + 8, orig ^ 0x1000, rng.choice(nodes), ctx.locate["radix"]["root"],
                    ctx.locate["fdt"]["phys"]])
    return 0 if _in_scratch(ctx, v, 8) else v


def _in_scratch(ctx, phys: int, size: int = 1) -> bool:
    return any(a <= phys + size - 1 and phys < a + n for a, n in ctx.locate["scratch"]["entries"])


def mutate(rng: random.Random, ctx, family: str) -> tuple[Change, str]:
    """One structured mutation of the real handover: (change, description)."""
    from pykho.abi import fdt as F
    loc = ctx.locate
    fdt_phys = loc["fdt"]["phys"]
    if family == "none":
        return Change(), "nothing"
    if family == "fdt-prop":
        names = [("", "compatible"), ("", "preserved-memory-map")] + \
            [(s["name"], p) for s in loc["subnodes"] for p in ("preserved-data", "blob-size")]
        node, prop = rng.choice(names)
        how = rng.choice(["zero", "random", "short", "long", "delete", "pointer", "tweak"])

        def edit(p):
            import libfdt
            off = p.subnode_offset(0, node) if node else 0
            val = bytes(F.getprop(bytes(p.buf), off, prop)[0] or b"")
            if how == "zero":
                new = bytes(len(val))
            elif how == "random":
                new = rng.randbytes(len(val))
            elif how == "short":
                new = val[:4]
            elif how == "long":
                new = val + rng.randbytes(4)
            elif how == "delete":
                assert libfdt.fdt_delprop(p.buf, off, prop) == 0
                return
            elif how == "pointer" and len(val) == 8:
                new = struct.pack(">Q", _pointer_values(rng, ctx, struct.unpack(">Q", val)[0]))
            else:           # tweak: one byte changed
                b = bytearray(val or b"\0")
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
                new = bytes(b)
            assert p.setprop(off, prop, new) == 0
        return Change(jump=root_edit(ctx, edit)), f"root FDT {node or '/'}:{prop} {how}"
    if family == "fdt-bytes":
        page = bytearray(ctx.read(fdt_phys, PAGE))
        n = loc["fdt"]["totalsize"]
        k = rng.choice([1, 1, 2, 4])
        where = []
        for _ in range(k):
            i = rng.randrange(n)
            page[i] = rng.randrange(256)
            where.append(i)
        return Change(jump=[(fdt_phys, bytes(page))]), f"root FDT bytes at {sorted(where)} randomised"
    if family == "radix-entry":
        tables = [(p, lv) for p, lv in loc["radix"]["nodes"] if lv >= 1]
        phys, lv = rng.choice(tables)
        words = struct.unpack("<512Q", ctx.read(phys, PAGE))
        used = [i for i, w in enumerate(words) if w]
        i = rng.choice(used) if used and rng.random() < 0.8 else rng.randrange(512)
        new = _pointer_values(rng, ctx, words[i])
        return Change(jump=[(phys + 8 * i, struct.pack("<Q", new))]), \
            f"radix level-{lv} node 0x{phys:x} entry {i}: 0x{words[i]:x} -> 0x{new:x}"
    if family == "bitmap-bit":
        leaves = [p for p, lv in loc["radix"]["nodes"] if lv == 0]
        phys = rng.choice(leaves)
        page = bytearray(ctx.read(phys, PAGE))
        set_bits = [i for i in range(PAGE * 8) if page[i >> 3] >> (i & 7) & 1]
        bit = rng.choice(set_bits) if set_bits and rng.random() < 0.5 else rng.randrange(PAGE * 8)
        page[bit >> 3] ^= 1 << (bit & 7)
        return Change(jump=[(phys + (bit >> 3 & ~7), bytes(page[bit >> 3 & ~7:(bit >> 3 & ~7) + 8]))]), \
            f"leaf 0x{phys:x} bit {bit} flipped"
    if family == "scratch-entry":
        ents = scratch_entries(ctx)
        i = rng.randrange(len(ents))
        a, n = ents[i]
        how = rng.choice(["size-0", "halve", "grow", "addr-no-ram", "unaligned", "duplicate", "tiny-all", "swap"])
        if how == "size-0":
            ents[i] = (a, 0)
        elif how == "halve":
            ents[i] = (a, n // 2 & ~(PAGE - 1))
        elif how == "grow":
            ents[i] = (a, n + (1 << 20))
        elif how == "addr-no-ram":
            ents[i] = (FAR, n)
        elif how == "unaligned":
            ents[i] = (a + 0x800, n)
        elif how == "duplicate":
            ents.append((a, n))
        elif how == "tiny-all":
            ents = [(x, min(m, 1 << 20)) for x, m in ents]
        else:
            j = rng.randrange(len(ents))
            ents[i], ents[j] = ents[j], ents[i]
        return scratch_change(ctx, ents), f"scratch entry {i} {how}"
    if family == "scratch-length":
        # lengths past the array's own page would read the destinations of
        # the other kexec segments, written by the relocation after the jump
        # (what pykho sees): not generated (seed 6930067075234 did, 0x40000)
        size = rng.choice([0, 8, 16, 24, 32, 40, 56, 64, 0x40010, 0x40001 * 16])
        return kho_data_change(ctx, scratch_size=size), f"kho_data.scratch_size = {size}"
    if family == "kho-data":
        sd = setup_data(ctx)
        field_ = rng.choice(["fdt_addr", "fdt_size", "scratch_addr"])
        if field_ == "fdt_addr":
            v = rng.choice([0, FAR, sd["fdt_addr"] + 8, sd["fdt_addr"] + PAGE, loc["radix"]["root"]])
        elif field_ == "fdt_size":
            v = rng.choice([0, 1, 40, 0x1000, 0x2000, 0x40000, 0x40001, (1 << 64) - 1])
        else:
            v = rng.choice([0, FAR, sd["scratch_addr"] + 16, sd["scratch_addr"] + 8])
        return kho_data_change(ctx, **{field_: v}), f"kho_data.{field_} = 0x{v:x}"
    if family == "sub-blob":
        st = rng.choice(loc["subnodes"])
        base, size = st["preserved_data"], max(st["blob_size"] or 8, 8)
        blob = bytearray(ctx.read(base, size))
        if st["name"] == "LUO":
            off, new = rng.choice([(0, b"luo-v4\0\0"), (7, b"Z"), (8, struct.pack("<Q", rng.randrange(1 << 16))),
                                   (16, struct.pack("<Q", rng.choice([0, FAR, UNMAPPED]))),
                                   (24, struct.pack("<Q", rng.choice([0, FAR])))])
            what = f"luo_ser +{off}"
        elif st["name"] == "kexec-metadata":
            off, new = rng.choice([(0, struct.pack("<I", rng.choice([0, 2, 0xFFFFFFFF]))),
                                   (4, rng.randbytes(rng.randrange(1, 12)) + b"\0"),
                                   (69, struct.pack("<I", rng.randrange(1 << 32)))])
            what = f"kexec-metadata +{off}"
        else:                   # an FDT blob (kho_test, memblock): a byte of it
            off = rng.randrange(min(size, len(blob)))
            new = bytes([rng.randrange(256)])
            what = f"{st['name']} FDT byte {off}"
        return Change(jump=[(base + off, new)]), f"sub-blob {what} = {new.hex()}"
    raise ValueError(family)


def random_case(seed: int, index: int = 0) -> Case:
    """A random case: boot-2 options chosen now (the command line is fixed
    before the chain starts), the mutation chosen at the stop from the same
    random stream."""
    rng = random.Random(seed)
    boot2 = _pick(rng, BOOT2_OPTIONS)
    family = _pick(rng, FAMILIES)
    luo = rng.random() < 0.3
    desc: dict[str, str] = {}

    def change(ctx):
        ch, what = mutate(rng, ctx, family)
        desc["what"] = what
        ch.note = what
        return ch
    return Case(f"random-{seed}", family, change, boot2=boot2, luo=luo, earlyprintk=True, retries=0,
                stall_timeout=30, source="random", seed=seed, desc=desc)


def case_seed(seed: int, i: int) -> int:
    """The seed of the i-th case of a campaign (stable, spread out)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:6], "big")


def run_one_random(cs: int, workdir: Path, build=None, shape: tuple[str, int] = ("1G", 1)) -> dict[str, Any]:
    """One random case (``shape``: the guest's RAM and NUMA nodes)."""
    def make() -> Case:
        c = random_case(cs)
        c.memory, c.numa_nodes = shape
        if shape != ("1G", 1):       # its own record key: the same seed on the default guest is another case
            c.name += f"-{shape[0].lower()}-{shape[1]}node"
        return c
    case = make()
    out = workdir / f"case-{cs}"
    res = run_case(case, out, build, rec=False)
    if not res["agree"] and tcg_hang(res):       # the same case again: its choices come from the seed
        case = make()
        res = run_case(case, out, build, rec=False)
    case.what = f"{case.what}: {case.desc.get('what', '?')}"
    label = res["nondeterminism"]
    record_case(case, res, res["summary"], note=(f"documented nondeterminism: {label}; " if label else "")
                + "; ".join(res.get("diffs", [])))
    res["case"] = case
    if res["agree"]:
        shutil.rmtree(out, ignore_errors=True)
    return res


def nondeterminism(res: dict[str, Any]) -> str | None:
    """The name of a documented kind of kernel nondeterminism this
    disagreement is an instance of (docs/REAL-KERNEL.md), or None."""
    for name, test in NONDETERMINISM_TESTS:
        try:
            if test(res):
                return name
        except Exception:   # noqa: BLE001 - a predicate that does not apply
            continue
    return None


#: lines of the clients that read handed-over data after memblock_free_all
CLIENT_READ_LINES = ("luo:", "KHO: exec from:", "KHO: kexec-metadata", "test_kho:", "KHO: node ",
                     "KHO: broken KHO subnode")


def _divergence(real: list[str], pred: list[str]) -> tuple[str | None, str | None] | None:
    """The first pair of lines where the runs part ((real, predicted), None
    past an end), or None when the lists are equal."""
    for i in range(max(len(real), len(pred))):
        a = real[i] if i < len(real) else None
        b = pred[i] if i < len(pred) else None
        if a != b:
            return a, b
    return None


def _reuse_timing(res: dict[str, Any]) -> bool:
    """A page outside the map, read after memblock_free_all: when the page
    allocator hands it out again, and what the new owner wrote there, vary
    from run to run (the model predicts it reused, as zeros, at the first
    read).  Seen with the root FDT page cleared from the map: one run lost it
    before LUO's early_initcall (no luo line), the next only before kho_init's
    fs_initcall (luo line, no exec-from line); with a radix subtree dropped,
    the LUO FLB array's reused page held a garbage count and the liveupdate
    test's lookup faulted past the end of RAM.  Matches a disagreement whose
    runs part at a line of a client that reads such a page, or at a panic,
    everything before it equal; what follows depends on the page."""
    real, pred = res["real"], res["pred"]
    if "client-data-not-preserved" not in pred["violations"]:
        return False
    d = _divergence(real["lines"], pred["lines"])
    if d is None:
        return real["fate"] != pred["fate"]
    tail = CLIENT_READ_LINES + ("Kernel panic",) + OOPS_LINES
    return any(x is not None and x.startswith(tail) for x in d) or None in d


#: lines of kernel allocations that could not be preserved
PRESERVE_FAILURE_LINES = ("luo: failed", "failed to prepare memblock FDT", "KHO: failed to initialize kexec-metadata")


def _partial_pageblock(res: dict[str, Any]) -> bool:
    """An inherited scratch area not on pageblock boundaries: which of this
    kernel's unmovable allocations land in the non-CMA pageblock at its edge
    (and are then refused by the KEXEC_HANDOVER_DEBUG overlap check) varies
    from run to run.  Seen: LUO's state and the memblock FDT (seed
    30957759861033, first run); LUO's state alone (the same seed, second run);
    kho_init's own root FDT page, which sends kho_init down its error path and
    corrupts memory as debugfs=off does (seed 106024410369549).  The model
    flags the area and predicts no failure: matches a disagreement whose runs
    part at such a failure, or where the kernel stopped (corruption)."""
    real, pred = res["real"], res["pred"]
    if "scratch-pageblock-partial" not in pred["violations"]:
        return False
    d = _divergence(real["lines"], pred["lines"])
    if d is None:
        return real["fate"] != pred["fate"]
    a, _b = d
    return a is None or a.startswith(PRESERVE_FAILURE_LINES) or real["fate"] in ("corruption", "died") \
        or bool(real.get("corruption_lines"))


#: (name, predicate over a case result): see NONDETERMINISM for the evidence
NONDETERMINISM_TESTS: list[tuple[str, Any]] = [("unpreserved-page-reuse-timing", _reuse_timing),
                                               ("partial-pageblock-scratch", _partial_pageblock)]


def run_campaign(seed: int, cases: int, jobs: int = 1, workdir: Path | None = None, build=None,
                 start: int = 0, log=print, memory: str = "1G", numa_nodes: int = 1) -> dict[str, Any]:
    """Run ``cases`` random cases (indices ``start``..) ``jobs`` at a time, on
    ``build`` (default: the default kernel) in a guest of ``memory`` and
    ``numa_nodes``."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="vmtest-campaign-"))
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    seeds = [case_seed(seed, i) for i in range(start, start + cases)]
    done: list[dict[str, Any]] = []
    with cf.ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
        futs = {ex.submit(run_one_random, cs, workdir, build, (memory, numa_nodes)): cs for cs in seeds}
        for f in cf.as_completed(futs):
            cs = futs[f]
            try:
                r = f.result()
            except Exception as e:   # noqa: BLE001 - the harness failed: count it, go on
                r = {"agree": False, "diffs": [f"harness error: {type(e).__name__}: {e}"], "seconds": 0,
                     "nondeterminism": None, "case": random_case(cs)}
            done.append(r)
            tag = "agree" if r["agree"] else (f"nondeterminism ({r['nondeterminism']})" if r["nondeterminism"]
                                              else "DISAGREE")
            log(f"[{len(done)}/{len(seeds)}] seed {cs} {r['case'].what} boot2='{r['case'].boot2}': {tag} "
                f"in {r['seconds']}s" + ("" if r["agree"] else f": {'; '.join(r['diffs'])[:400]}"))
    summary = {"seed": seed, "cases": len(done), "agree": sum(1 for r in done if r["agree"]),
               "nondeterminism": sum(1 for r in done if not r["agree"] and r["nondeterminism"]),
               "disagree": [r["case"].seed for r in done if not r["agree"] and not r["nondeterminism"]],
               "seconds": round(time.time() - t0, 1), "workdir": str(workdir)}
    return summary
