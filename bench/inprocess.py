#!/usr/bin/env python3
"""pykho memory-map benchmark, in process: encode, decode and validate radix
trees and chunk lists of 1 GiB to 1 TiB with pykho's functions (not the
``kho`` commands: bench/run.py times those), against a C walker compiled in
the same run.

    .venv/bin/python bench/run.py --in-process            # every case (about 2 minutes)
    .venv/bin/python bench/inprocess.py --quick           # the same, without the 1 TiB cases
    .venv/bin/python bench/inprocess.py --cases memfd-64G --formats radix --reps 9

Prints a table and writes it as JSON to bench/out/ (inprocess-latest.json
and a time-stamped copy).  Every (case, map format) runs in its own Python process
so its peak memory is its own.  See bench/README.md for what each column
measures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "out")
sys.path.insert(0, HERE)

TARGET_RATIO = 2.0          # decode + validate of 1 TiB order-0 radix, times the C walker
TARGET_MEMFD_S = 0.0218     # the kernel's own figure for the 526,386-preservation radix walk
DEFAULT_CASES = ["order0-1G", "order0-64G", "order0-1T", "mix-1G", "mix-64G", "mix-1T", "memfd-64G"]


# --------------------------------------------------------------------------- worker

def _best(fn, reps):
    """(best wall-clock seconds, best process CPU seconds, last result) of ``reps`` runs."""
    wall = cpu = None
    out = None
    for _ in range(reps):
        c, t = time.process_time(), time.perf_counter()
        out = fn()
        dt, dc = time.perf_counter() - t, time.process_time() - c
        wall = dt if wall is None else min(wall, dt)
        cpu = dc if cpu is None else min(cpu, dc)
    return wall, cpu, out


def worker(case: str, fmt: str, reps: int, walker: str | None, per_block: bool, clock: str) -> dict:
    import tracemalloc

    import cases

    from pykho.abi import chunks, radix

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    runs, ram = cases.CASES[case]()
    exp = cases.expected(runs)
    pbits = 32768

    row = {"case": case, "format": fmt, "clock": clock, "blocks": exp["blocks"], "bytes": exp["bytes"],
           "pages": exp["bytes"] >> 12, "by_order": exp["by_order"]}
    walls, cpus = [], []
    for _ in range(max(1, min(reps, 3))):
        mem, bump = cases.memory_for(case, runs, ram)
        c, t = time.process_time(), time.perf_counter()
        where = cases.encode(fmt, runs, mem, bump, pbits)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    row["encode_wall_s"], row["encode_cpu_s"] = min(walls), min(cpus)
    row["map_pages"] = len(mem.pages)

    def walker_obj():
        return radix.RadixWalk(mem, where) if fmt == "radix" else chunks.ChunkWalk(mem, where, pbits)

    def decode():
        n = s = 0
        for _, physs in walker_obj().batches():
            n += len(physs)
            s += int(physs.sum())
        return n, s % (1 << 64)

    def validate():
        return walker_obj().summarize()

    row["decode_wall_s"], row["decode_cpu_s"], (n, physsum) = _best(decode, reps)
    row["validate_wall_s"], row["validate_cpu_s"], summ = _best(validate, reps)
    for k in ("encode", "decode", "validate"):
        row[f"{k}_s"] = row[f"{k}_{clock}_s"]
    row["decode_validate_s"] = row["decode_s"] + row["validate_s"]
    row["pages_per_s"] = row["pages"] / row["decode_validate_s"]
    row["summary"] = summ.as_dict()
    errors = []
    if (n, physsum) != (exp["blocks"], exp["physsum"]):
        errors.append(f"decode: {n} blocks, phys sum {physsum}; expected {exp['blocks']}, {exp['physsum']}")
    if (summ.blocks, summ.bytes) != (exp["blocks"], exp["bytes"]) or \
            {str(k): v for k, v in sorted(summ.by_order.items())} != exp["by_order"]:
        errors.append(f"summary {summ!r} differs from the runs")
    if summ.problems or summ.duplicates or summ.overlaps:
        errors.append(f"summary reports problems: {summ!r}")

    # peak memory of one decode and one validate pass (Python and numpy allocations)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    decode()
    row["decode_peak_bytes"] = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    validate()
    row["validate_peak_bytes"] = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()

    if per_block and row["blocks"] <= 1 << 20:
        blocks = [(p + (i << (12 + o)), o) for p, n_, o in runs for i in range(n_)]
        m2, b2 = cases.memory_for(case, runs, ram)
        c, t = time.process_time(), time.perf_counter()
        if fmt == "radix":
            radix.encode(blocks, m2, b2.page)
        else:
            tr = chunks.ChunkTracker(pbits)
            for p, o in blocks:
                tr.add(p, o)
            chunks.encode(tr, m2, b2.alloc)
        row["encode_per_block_wall_s"] = time.perf_counter() - t
        row["encode_per_block_cpu_s"] = time.process_time() - c
        row["encode_per_block_s"] = row[f"encode_per_block_{clock}_s"]
        del blocks, m2

    if walker:
        img = os.path.join(OUT, f"img-{os.getpid()}.bin")
        try:
            row["image_bytes"] = cases.dump_image(mem, img)
            args = [walker, img, fmt, hex(where)] + ([str(pbits)] if fmt == "chunks" else []) + [str(reps)]
            for key, extra in (("c", []), ("c_popcount", ["--popcount"])):
                c = json.loads(subprocess.run(args + extra, check=True, capture_output=True, text=True).stdout)
                row[key] = c
                if (c["blocks"], int(c["bytes"]), c["by_order"], c["duplicates"], c["overlaps"], c["problems"]) != \
                        (exp["blocks"], exp["bytes"], exp["by_order"], summ.duplicates, summ.overlaps, 0):
                    errors.append(f"C walker ({c['mode']}) disagrees: {c}")
                if not extra and c["physsum"] != physsum:
                    errors.append(f"C walker phys sum {c['physsum']} != pykho's {physsum}")
        finally:
            if os.path.exists(img):
                os.unlink(img)
        key = "cpu_total_s" if clock == "cpu" else "total_s"
        row["c_s"] = row["c"][key]
        row["ratio"] = row["decode_validate_s"] / row["c_s"]
        row["c_popcount_s"] = row["c_popcount"][key]
        row["ratio_validate_popcount"] = row["validate_s"] / row["c_popcount_s"]
    row["errors"] = errors
    row["ok"] = not errors
    row["rss_peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    row["rss_start_bytes"] = rss0 * 1024
    return row


# --------------------------------------------------------------------------- driver

def compile_walker() -> tuple[str | None, str]:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if not gcc:
        return None, "no C compiler"
    exe = os.path.join(OUT, "walker")
    src = os.path.join(HERE, "walker.c")
    for flags in (["-O2", "-march=native"], ["-O2"]):
        r = subprocess.run([gcc, *flags, "-Wall", "-o", exe, src], capture_output=True, text=True)
        if r.returncode == 0:
            ver = subprocess.run([gcc, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
            return exe, f"{ver} {' '.join(flags)}"
    return None, f"gcc failed: {r.stderr.strip()[:300]}"


#: (RAM, fraction preserved, folio order): the 64 GiB VM preserves two 1 GiB
#: memfds in 4 KiB pages (524,288 order-0 folios, each through the
#: preservation API); the 1 TiB host a quarter of RAM in order-10 folios
MODEL_CASES = {"model-64G-vm": (64 << 30, 2 / 64, 0), "model-1T-quarter": (1 << 40, 0.25, 10)}


def model_worker(case: str) -> dict:
    """One model cycle in this process: time and peak RSS."""
    import pykho.model as model
    ram, frac, order = MODEL_CASES[case]
    c, t = time.process_time(), time.perf_counter()
    r = model.run_cycle(ram=ram, preserve_fraction=frac, order=order)
    bad = r["violations"] or r["restored"] < r["preserved_blocks"] or r["populate"] != "accepted"
    return {"case": case, "status": "ok" if not bad else f"failed: {len(r['violations'])} violations, "
            f"{r['restored']}/{r['preserved_blocks']} restored", "blocks": r["preserved_blocks"],
            "wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c,
            "rss_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def model_rows(clock: str) -> list[dict]:
    """The model's full kexec cycle (boot, preserve, kexec, populate, memory
    init, restore all) for a 64 GiB VM and a 1 TiB host with a quarter
    preserved, each in its own process, when pykho.model offers
    ``run_cycle(ram=, preserve_fraction=)``."""
    try:
        import pykho.model as model
    except Exception as e:  # pragma: no cover
        return [{"case": c, "status": f"n/a (model import failed: {e})"} for c in MODEL_CASES]
    if getattr(model, "run_cycle", None) is None:
        return [{"case": c, "status": "n/a (model API pending)"} for c in MODEL_CASES]
    rows = []
    for case in MODEL_CASES:
        print(f"  {case} ...", file=sys.stderr, flush=True)
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "--model", case],
                           capture_output=True, text=True)
        if r.returncode:
            rows.append({"case": case, "status": "failed: " + (r.stderr.strip().splitlines() or ["?"])[-1][:80]})
        else:
            row = json.loads(r.stdout)
            row["seconds"] = row[f"{clock}_s"]
            rows.append(row)
    return rows


def fmt_s(x):
    if x is None:
        return "-"
    if x < 1e-3:
        return f"{x * 1e6:.0f}us"
    if x < 1:
        return f"{x * 1e3:.1f}ms"
    return f"{x:.2f}s"


def fmt_mib(b):
    return "-" if b is None else f"{b / (1 << 20):.0f}"


def render(rows, models, env) -> str:
    hdr = ["case", "map", "blocks", "encode", "decode", "validate", "dec+val", "Mpage/s", "walk MiB", "RSS MiB",
           "C scan", "py/C", "C popcnt", "val/Cpop", "ok"]
    lines = []
    for r in rows:
        if "error" in r:
            lines.append([r["case"], r["format"], "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-",
                          "FAIL: " + r["error"][:60]])
            continue
        lines.append([
            r["case"], r["format"], f"{r['blocks']:,}", fmt_s(r["encode_s"]), fmt_s(r["decode_s"]),
            fmt_s(r["validate_s"]), fmt_s(r["decode_validate_s"]), f"{r['pages_per_s'] / 1e6:.0f}",
            fmt_mib(max(r["decode_peak_bytes"], r["validate_peak_bytes"])), fmt_mib(r["rss_peak_bytes"]),
            fmt_s(r.get("c_s")), f"{r['ratio']:.2f}x" if "ratio" in r else "-",
            fmt_s(r.get("c_popcount_s")),
            f"{r['ratio_validate_popcount']:.1f}x" if "ratio_validate_popcount" in r else "-",
            "ok" if r["ok"] else "MISMATCH"])
    for m in models:
        lines.append([m["case"], "model", "", "", "", "", fmt_s(m.get("seconds")) if "seconds" in m else "", "", "",
                      fmt_mib(m.get("rss_peak_bytes")) if "rss_peak_bytes" in m else "", "", "", "", "",
                      m["status"]])
    widths = [max(len(str(x)) for x in col) for col in zip(hdr, *lines)]
    right = {2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}
    def row_s(cells):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    out = [row_s(hdr), row_s(["-" * w for w in widths])] + [row_s(x) for x in lines]
    out.append("")
    out += targets(rows, models)
    out.append("")
    out.append(f"times: best of N, {'process CPU time' if env['clock'] == 'cpu' else 'wall clock'} "
               f"(pykho and C alike; the other clock is in the JSON)")
    out.append(f"python {env['python']}, numpy {env['numpy']}, C: {env['cc']}; {env['cpu']}, {env['cpus']} CPUs; "
               f"load average {env['load_start']} at start, {env['load_end']} at end")
    return "\n".join(out)


def targets(rows, models) -> list[str]:
    out = []
    by = {(r["case"], r["format"]): r for r in rows if "error" not in r}
    r = by.get(("order0-1T", "radix"))
    if r and "ratio" in r:
        verdict = "met" if r["ratio"] <= TARGET_RATIO else "MISSED"
        out.append(f"target: decode+validate 1 TiB order-0 radix <= {TARGET_RATIO:g}x the C walker: "
                   f"{fmt_s(r['decode_validate_s'])} / {fmt_s(r['c_s'])} = {r['ratio']:.2f}x  [{verdict}]")
    else:
        out.append("target: decode+validate 1 TiB order-0 radix <= 2x C: not measured in this run")
    r = by.get(("memfd-64G", "radix"))
    if r:
        verdict = "met" if r["decode_validate_s"] <= TARGET_MEMFD_S else "MISSED"
        out.append(f"target: 526,386-preservation radix map decode+validate <= 21.8 ms: "
                   f"{fmt_s(r['decode_validate_s'])}  [{verdict}]")
    else:
        out.append("target: 526,386-preservation map <= 21.8 ms: not measured in this run")
    for m in models:
        if m["case"] == "model-1T-quarter":
            if "seconds" in m:
                ok = m["seconds"] <= 30 and m["rss_peak_bytes"] <= 2 << 30
                out.append(f"target: model full cycle of a 1 TiB host with a quarter preserved <= 30 s, <= 2 GiB: "
                           f"{fmt_s(m['seconds'])}, {fmt_mib(m['rss_peak_bytes'])} MiB  [{'met' if ok else 'MISSED'}]")
            else:
                out.append(f"target: model full cycle of a 1 TiB host with a quarter preserved <= 30 s, <= 2 GiB: "
                           f"{m['status']}")
    return out


def environment(cc: str) -> dict:
    import numpy
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"python": platform.python_version(), "numpy": numpy.__version__, "cc": cc, "cpu": cpu,
            "cpus": os.cpu_count(), "platform": platform.platform(),
            "load_start": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(DEFAULT_CASES),
                    help="comma-separated: " + ", ".join(DEFAULT_CASES))
    ap.add_argument("--formats", default="radix,chunks")
    ap.add_argument("--reps", type=int, default=0, help="repetitions, best kept (default 7, 3 for 1 TiB)")
    ap.add_argument("--quick", action="store_true", help="leave out the 1 TiB cases")
    ap.add_argument("--no-c", action="store_true", help="do not build or run the C walker")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="time the table shows: process CPU time (default; steady on a shared machine) "
                         "or wall clock (both are in the JSON)")
    ap.add_argument("--per-block", action="store_true",
                    help="also time the per-block encoders (RadixTree.add, ChunkTracker) on cases up to 1M blocks")
    ap.add_argument("--worker", nargs=2, metavar=("CASE", "FORMAT"), help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--walker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    os.makedirs(OUT, exist_ok=True)

    if a.model:
        print(json.dumps(model_worker(a.model)))
        return 0
    if a.worker:
        case, fmt = a.worker
        print(json.dumps(worker(case, fmt, a.reps or 3, a.walker, a.per_block, a.clock)))
        return 0

    import cases
    names = [c for c in a.cases.split(",") if c]
    for c in names:
        if c not in cases.CASES:
            ap.error(f"unknown case {c!r}")
    if a.quick:
        names = [c for c in names if not c.endswith("-1T")]
    walker, cc = (None, "not used") if a.no_c else compile_walker()
    env = environment(cc)
    env["clock"] = a.clock
    rows = []
    for case in names:
        for fmt in a.formats.split(","):
            reps = a.reps or (3 if case.endswith("-1T") else 7)
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", case, fmt, "--reps", str(reps),
                   "--clock", a.clock]
            if walker:
                cmd += ["--walker", walker]
            if a.per_block:
                cmd.append("--per-block")
            print(f"  {case} {fmt} ...", file=sys.stderr, flush=True)
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                rows.append({"case": case, "format": fmt, "error": (r.stderr.strip().splitlines() or ["?"])[-1]})
            else:
                rows.append(json.loads(r.stdout))
    models = model_rows(a.clock)
    env["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    text = render(rows, models, env)
    print(text)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    doc = {"environment": env, "rows": rows, "model": models, "table": text,
           "targets": {"ratio_1T_order0_radix": TARGET_RATIO, "memfd_radix_s": TARGET_MEMFD_S}}
    for name in ("inprocess-latest.json", f"inprocess-{stamp}.json"):
        with open(os.path.join(OUT, name), "w") as f:
            json.dump(doc, f, indent=1)
    print(f"\nJSON: {os.path.join(OUT, 'inprocess-latest.json')}", file=sys.stderr)
    return 0 if all(r.get("ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
