#!/usr/bin/env python3
"""pykho end-to-end benchmark: the ``kho`` commands users run, as processes,
on handover directories as users have them, against a C walker over the
same files.

    .venv/bin/python bench/run.py                 # every case (generates missing ones first)
    .venv/bin/python bench/run.py --quick         # order0-64G and memfd-64G only
    .venv/bin/python bench/run.py --cases host-1T --commands c,validate --reps 3
    .venv/bin/python bench/run.py --in-process    # the old in-process rows (bench/inprocess.py)

Per case (bench/gen.py writes and caches them under bench/out/handovers/),
each command runs as its own process, N times (bench/proc.py: wall time
from fork to exit, peak RSS of that process, killed at a time or RSS cap):

    C walker   bench/walker.c --handover DIR   (reads debugfs fdt + ram/, walks the radix map per bit)
    validate   kho validate DIR/debugfs/kho/out --mem sparse:DIR/ram --iomem DIR/iomem.txt -j
    inspect    kho inspect  DIR/debugfs/kho/out --mem sparse:DIR/ram -j
    map        kho map      DIR/debugfs/kho/out --mem sparse:DIR/ram --iomem DIR/iomem.txt --out F.svg

and once per run ``kho --version`` (start-up).  validate's and inspect's
JSON summary (blocks, bytes, by_order) must equal the C walker's counts and
the generator's; a difference, a crash or a non-zero exit marks the row
FAIL and the exit code 1.  A killed command is reported as KILLED with what
it reached.  Prints one table and writes it with every repetition's figures
to bench/out/latest.json (and a time-stamped copy).  See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SRC = os.path.join(REPO, "src")
OUT = os.path.join(HERE, "out")
sys.path.insert(0, SRC)
sys.path.insert(0, HERE)

import proc  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30
DEFAULT_CASES = ["order0-64G", "memfd-64G", "order0-1T", "host-1T", "host-4T"]
QUICK_CASES = ["order0-64G", "memfd-64G"]
COMMANDS = ["c", "validate", "inspect", "map"]
LABEL = {"c": "C walker", "validate": "validate -j", "inspect": "inspect -j", "map": "map --out svg",
         "version": "kho --version", "numpy": "import numpy", "cycle": "simulate host-1T"}
#: JSON larger than this is not parsed whole: its "summary" object is found by search
PARSE_WHOLE = 64 * MiB

#: the issue's targets: (case, command) -> [(kind, limit)]; kinds: "ratio" (best wall / C's best wall),
#: "rss" (peak RSS, bytes), "wall" (best wall, s), "above_start" ((best wall - kho --version's) / C's)
_HOST = [("ratio", 2.0), ("rss", GiB)]
TARGETS: dict[tuple[str, str], list[tuple[str, float]]] = {
    ("order0-1T", "validate"): [("ratio", 2.0), ("rss", GiB)],
    ("order0-1T", "inspect"): [("ratio", 2.0)],
    ("order0-1T", "map"): [("wall", 10.0)],
    ("memfd-64G", "validate"): [("above_start", 3.0)],
    ("-", "version"): [("wall", 0.1)],
    # item 4: the model's whole kexec cycle of a 1 TiB host preserving 512 GiB (kho simulate host-1T)
    ("-", "cycle"): [("wall", 60.0), ("rss", 2 * GiB)],
}
for _c in ("host-1T", "host-4T"):
    for _k in ("validate", "inspect", "map"):
        TARGETS[(_c, _k)] = list(_HOST)


# --------------------------------------------------------------------------- commands

def compile_c(src: str, out: str, extra: tuple[str, ...] = ()) -> tuple[str | None, str]:
    """``bench/SRC`` built into ``out`` with gcc, ``-O2 -march=native`` or
    else ``-O2`` (and ``extra``): (path or None, what built it or why not)."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if not gcc:
        return None, "no C compiler"
    r = None
    for flags in (["-O2", "-march=native"], ["-O2"]):
        r = subprocess.run([gcc, *flags, *extra, "-Wall", "-o", out, os.path.join(HERE, src)],
                           capture_output=True, text=True)
        if r.returncode == 0:
            ver = subprocess.run([gcc, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
            return out, f"{ver} {' '.join(flags)}"
    return None, f"gcc failed: {r.stderr.strip()[:300] if r else ''}"


def compile_walker() -> tuple[str | None, str]:
    return compile_c("walker.c", os.path.join(OUT, "walker"))


def kho_env() -> dict:
    """The environment the kho processes run in: this tree's src/ first, and
    byte-compiled modules as an installed pykho has them (kept under
    bench/out/pycache, so the source tree gets no __pycache__ and
    PYTHONDONTWRITEBYTECODE in the caller's environment cannot make every
    process compile every module again)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = os.path.join(OUT, "pycache")
    return env


def kho_argv(spec: str | None) -> list[str]:
    """How to start ``kho``: ``--kho`` as given, else the console script beside
    this Python (what ``pip install`` puts on PATH), else ``python -c``."""
    if spec:
        return spec.split()
    script = os.path.join(os.path.dirname(sys.executable), "kho")
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-c", "import sys; sys.argv[0] = 'kho'; from pykho.cli import main; sys.exit(main())"]


def command_argv(cmd: str, d: str, kho: list[str], walker: str | None, svg: str) -> list[str] | None:
    out = os.path.join(d, "debugfs", "kho", "out")
    mem = "sparse:" + os.path.join(d, "ram")
    iomem = os.path.join(d, "iomem.txt")
    if cmd == "c":
        return [walker, "--handover", d] if walker else None
    if cmd == "validate":
        return kho + ["validate", out, "--mem", mem, "--iomem", iomem, "-j"]
    if cmd == "inspect":
        return kho + ["inspect", out, "--mem", mem, "-j"]
    if cmd == "map":
        return kho + ["map", out, "--mem", mem, "--iomem", iomem, "--out", svg]
    raise ValueError(cmd)


def summary_of(path: str, size: int) -> tuple[dict | None, dict | None, str | None]:
    """(the JSON's "summary", the whole JSON when small, error) of a command's stdout."""
    if size == 0:
        return None, None, "no output"
    if size <= PARSE_WHOLE:
        try:
            with open(path) as f:
                doc = json.load(f)
        except ValueError as e:
            return None, None, f"stdout is not JSON: {e}"
        return doc.get("summary"), doc, None if "summary" in doc else "no summary in the JSON"
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        at = m.rfind(b'"summary": {')
        if at < 0:
            return None, None, f"no summary in {size >> 20} MiB of JSON"
        text = m[at + 11:at + 11 + (1 << 16)].decode("utf-8", "replace")
    try:
        obj, _ = json.JSONDecoder().raw_decode(text)
    except ValueError as e:
        return None, None, f"summary unreadable: {e}"
    return obj, None, None


def counts(d: dict) -> tuple:
    return int(d["blocks"]), int(d["bytes"]), {str(k): int(v) for k, v in d["by_order"].items()}


# --------------------------------------------------------------------------- measuring

def measure(argv, reps, env, caps, tmp, name, long_s=20.0):
    """Run ``argv`` up to ``reps`` times (once when killed or slower than ``long_s``)."""
    results = []
    for i in range(reps):
        r = proc.run(argv, stdout_path=os.path.join(tmp, f"{name}.{i}.out"), env=env, **caps)
        results.append(r)
        if not r.ok or r.wall_s > long_s:
            break
    return results


def row_for(case, cmd, results, c_best, version_best, exp, check=True):
    walls = [r.wall_s for r in results]
    last = results[-1]
    row = {"case": case, "command": cmd, "label": LABEL[cmd], "argv": last.argv, "n": len(results),
           "wall_best_s": min(walls), "wall_median_s": statistics.median(walls), "walls_s": walls,
           "rss_peak_bytes": max(r.rss_peak_bytes for r in results),
           "user_s": min(r.user_s for r in results), "sys_s": min(r.sys_s for r in results),
           "rc": last.rc, "killed": last.killed, "rss_exact": all(r.rss_exact for r in results),
           "stdout_bytes": last.stdout_bytes,
           "stderr_tail": last.stderr_tail if (last.rc or last.killed) else "", "errors": []}
    errs = row["errors"]
    if last.killed:
        row["status"] = f"KILLED: {last.killed} at {last.wall_s:.1f} s, {last.watched_rss_peak_bytes >> 20} MiB"
    elif last.rc:
        tail = (last.stderr_tail.strip().splitlines() or [""])[-1][:120]
        errs.append(f"exit {last.rc}" + (f": {tail}" if tail else ""))
    if not last.killed and check:
        if cmd == "c":
            try:
                c = json.loads(open(last.stdout_path).read())
                row["c"] = c
                if counts(c) != counts(exp):
                    errs.append(f"C walker counts {counts(c)} != generator's {counts(exp)}")
                if c.get("physsum") != exp["physsum"]:
                    errs.append("C walker's sum of addresses differs from the generator's")
                if c["problems"] or c["duplicates"] or c["overlaps"]:
                    errs.append(f"C walker: {c['problems']} problems, {c['duplicates']} duplicates, "
                                f"{c['overlaps']} overlaps")
            except (OSError, ValueError, KeyError) as e:
                errs.append(f"C walker output unreadable: {e}")
        elif cmd in ("validate", "inspect"):
            summ, doc, err = summary_of(last.stdout_path, last.stdout_bytes)
            if err:
                errs.append(err)
            else:
                row["summary"] = summ
                if counts(summ) != counts(exp):
                    errs.append(f"summary {counts(summ)[:2]} by order {counts(summ)[2]} != expected "
                                f"{counts(exp)[:2]} by order {counts(exp)[2]}")
            if doc is not None and cmd == "validate":
                bad = [f["code"] for f in doc.get("findings", []) if f.get("severity") == "error"]
                row["findings"] = [f["code"] for f in doc.get("findings", [])]
                if bad:
                    errs.append("error findings on a valid handover: " + ", ".join(sorted(set(bad))))
                row["verdict_outcome"] = doc.get("verdict", {}).get("outcome")
        elif cmd == "cycle" and not last.rc:
            out = open(last.stdout_path).read()
            if "INVARIANTS: no violation" not in out:
                errs.append("the host cycle broke an invariant: " + " / ".join(out.splitlines()[-3:])[:200])
            m = re.search(r"restored (\d+) of (\d+) pages", out)
            if not m or m.group(1) != m.group(2):
                errs.append("not every preserved page was restored: " + (m.group(0) if m else "no restore line"))
        elif cmd == "map" and not last.rc:
            svg = last.argv[-1]
            if not os.path.isfile(svg) or os.path.getsize(svg) == 0:
                errs.append("no SVG written")
            else:
                row["svg_bytes"] = os.path.getsize(svg)
                os.unlink(svg)
    for r in results:
        if os.path.exists(r.stdout_path):
            os.unlink(r.stdout_path)
    if errs:
        row["status"] = "FAIL: " + "; ".join(errs)
    elif "status" not in row:
        row["status"] = "ok"
    row["ok"] = not errs
    if c_best and cmd != "c" and not last.killed:
        row["ratio_c"] = row["wall_best_s"] / c_best
    judge(row, c_best, version_best)
    return row


def judge(row, c_best, version_best):
    """The issue's targets for this row: text, value and verdict of each."""
    checks = TARGETS.get((row["case"], row["command"]))
    if not checks:
        row["target"], row["met"] = "-", None
        return
    texts, mets, gots = [], [], []
    killed = row.get("killed")
    for kind, lim in checks:
        if kind == "ratio":
            texts.append(f"<= {lim:g}x C")
            v = None if killed or not c_best else row["wall_best_s"] / c_best
            gots.append(f"{v:.2f}x" if v is not None else ">cap")
        elif kind == "rss":
            texts.append(f"<= {lim / MiB:.0f} MiB")
            v = None if killed and "RSS" in killed else row["rss_peak_bytes"]
            gots.append(f"{v / MiB:.0f} MiB" if v is not None else ">cap")
        elif kind == "wall":
            texts.append(f"<= {lim:g} s")
            v = None if killed else row["wall_best_s"]
            gots.append(f"{v:.3f} s" if v is not None else ">cap")
        elif kind == "above_start":
            texts.append(f"(t - start-up) <= {lim:g}x C")
            v = None if killed or not c_best or version_best is None else \
                (row["wall_best_s"] - version_best) / c_best
            gots.append(f"{v:.1f}x" if v is not None else ">cap")
        else:
            raise ValueError(kind)
        mets.append(v is not None and v <= lim)
    row["target"] = ", ".join(texts)
    row["target_got"] = ", ".join(gots)
    row["met"] = all(mets)
    # the time the targets allow, for the floor line under the table
    budgets = [lim * c_best + (version_best if kind == "above_start" else 0.0)
               for kind, lim in checks if kind in ("ratio", "above_start") and c_best
               and (kind == "ratio" or version_best is not None)]
    if budgets:
        row["budget_s"] = min(budgets)


def floor_line(rows) -> str | None:
    """The rows whose time target is below ``python -c 'import numpy'``
    measured in the same run: no command that imports numpy can meet them."""
    floor = next((r["wall_best_s"] for r in rows if r["command"] == "numpy" and r["ok"]), None)
    if floor is None:
        return None
    below = [f"{r['case']} {r['command']} ({fmt_s(r['budget_s'])})" for r in rows
             if r.get("budget_s") is not None and r["budget_s"] < floor]
    return (f"time targets below python -c 'import numpy' ({fmt_s(floor)}) alone: "
            + (", ".join(below) if below else "none"))


# --------------------------------------------------------------------------- table

def fmt_s(x):
    if x is None:
        return "-"
    if x < 1e-3:
        return f"{x * 1e6:.0f}us"
    if x < 1:
        return f"{x * 1e3:.1f}ms"
    return f"{x:.2f}s"


def render(rows, env) -> str:
    hdr = ["case", "command", "n", "wall best", "median", "RSS MiB", "xC", "target", "got", "met", "status"]
    lines = []
    for r in rows:
        k = r.get("killed")
        lines.append([r["case"], r["label"], str(r["n"]), (">" if k else "") + fmt_s(r["wall_best_s"]),
                      "-" if k else fmt_s(r["wall_median_s"]),
                      (">" if k and "RSS" in k else "" if r["rss_exact"] else "<") + f"{r['rss_peak_bytes'] / MiB:.0f}",
                      f"{r['ratio_c']:.2f}x" if "ratio_c" in r else "-", r["target"], r.get("target_got", "-"),
                      {True: "yes", False: "NO", None: "-"}[r["met"]], r["status"][:110]])
    widths = [max(len(str(x)) for x in col) for col in zip(hdr, *lines)]
    right = {2, 3, 4, 5, 6}

    def row_s(cells):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    out = [row_s(hdr), row_s(["-" * w for w in widths])] + [row_s(x) for x in lines]
    out.append("")
    for name, c in env["cases"].items():
        e = c["expected"]
        out.append(f"{name}: {c['title']}; {e['blocks']:,} blocks by order "
                   + ", ".join(f"{o}: {n:,}" for o, n in e["by_order"].items())
                   + f"; {c['map_pages']:,} map pages ({c['ram_dir_bytes'] / MiB:.0f} MiB in ram/)")
    out.append("")
    fl = floor_line(rows)
    if fl:
        out.append(fl)
    out.append(f"wall: best of n processes, fork to exit; RSS: peak of the process (max over its n runs); "
               f"xC: wall best / the C walker's wall best; caps: {env['time_cap']:g} s, "
               f"{env['rss_cap'] >> 20} MiB RSS")
    out.append(f"pykho {env['pykho_version']} (commit {env['commit']}), python {env['python']}, numpy {env['numpy']}, "
               f"C: {env['cc']}; {env['cpu']}, {env['cpus']} CPUs; load average {env['load_start']} at start, "
               f"{env.get('load_end', '?')} at end")
    return "\n".join(out)


def environment(cc: str, kho: list[str], env: dict) -> dict:
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
    probe = subprocess.run([sys.executable, "-c", "import pykho, sys; print(pykho.__version__); print(pykho.__file__)"],
                           capture_output=True, text=True, env=env)
    ver, path = (probe.stdout.split("\n") + ["?", "?"])[:2]
    try:
        commit = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"], capture_output=True,
                                text=True).stdout.strip() or "?"
    except OSError:
        commit = "?"
    return {"python": platform.python_version(), "numpy": numpy.__version__, "cc": cc, "cpu": cpu,
            "cpus": os.cpu_count(), "platform": platform.platform(), "kho": kho, "pykho_version": ver,
            "pykho_from_this_tree": os.path.realpath(path).startswith(os.path.realpath(SRC)), "commit": commit,
            "load_start": " ".join(f"{x:.2f}" for x in os.getloadavg())}


# --------------------------------------------------------------------------- driver

def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--in-process" in argv:
        argv.remove("--in-process")
        import inprocess
        return inprocess.main(argv)
    import gen
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(DEFAULT_CASES), help="comma-separated, of: " + ", ".join(gen.CASES))
    ap.add_argument("--quick", action="store_true", help="only " + ", ".join(QUICK_CASES))
    ap.add_argument("--commands", default=",".join(COMMANDS), help="comma-separated, of: " + ", ".join(COMMANDS))
    ap.add_argument("--reps", type=int, default=0, help="processes per command (default 5; 3 for cases of 512 GiB "
                    "and up; once when a run takes over 20 s or is killed)")
    ap.add_argument("--version-reps", type=int, default=10)
    ap.add_argument("--time-cap", type=float, default=300.0, help="seconds before a command is killed (300)")
    ap.add_argument("--rss-cap-mib", type=int, default=8192, help="peak RSS before a command is killed (8192)")
    ap.add_argument("--kho", help="how to start kho (default: the kho script beside this Python, this tree's src/ "
                    "first on PYTHONPATH)")
    ap.add_argument("--no-cycle", action="store_true", help="skip the model's host cycle (kho simulate host-1T)")
    ap.add_argument("--regen", action="store_true", help="regenerate the cases even when cached")
    ap.add_argument("--strict", action="store_true", help="exit 1 also when a target is missed or a command killed")
    a = ap.parse_args(argv)
    os.makedirs(OUT, exist_ok=True)

    def say(msg):
        print(msg, file=sys.stderr, flush=True)

    names = QUICK_CASES if a.quick else [c for c in a.cases.split(",") if c]
    for c in names:
        if c not in gen.CASES:
            ap.error(f"unknown case {c!r}")
    cmds = [c for c in a.commands.split(",") if c]
    for c in cmds:
        if c not in COMMANDS:
            ap.error(f"unknown command {c!r}")
    walker, cc = compile_walker() if "c" in cmds else (None, "not used")
    spawn = proc.spawn_wrapper(OUT)
    if not spawn:
        say("no C compiler for bench/spawn.c: peak RSS figures include this process's (upper bounds)")
    env = kho_env()
    kho = kho_argv(a.kho)
    info = environment(cc, kho, env)
    caps = {"time_cap": a.time_cap, "rss_cap": a.rss_cap_mib * MiB}
    info.update(time_cap=a.time_cap, rss_cap=a.rss_cap_mib * MiB, cases={})
    tmp = os.path.join(OUT, "tmp")
    os.makedirs(tmp, exist_ok=True)

    # warm-up (not timed): byte-compiled modules and the page cache
    say("warm-up ...")
    proc.run(kho + ["--version"], stdout_path=os.path.join(tmp, "warm.out"), env=env, **caps)
    d_small, _ = gen.ensure("order0-1G")
    for cmd in ("validate", "inspect", "map"):
        if cmd in cmds:
            proc.run(command_argv(cmd, d_small, kho, walker, os.path.join(tmp, "warm.svg")),
                     stdout_path=os.path.join(tmp, "warm.out"), env=env, **caps)
    rows = []
    res = measure(kho + ["--version"], a.version_reps, env, caps, tmp, "version")
    vrow = row_for("-", "version", res, None, None, None, check=False)
    version_best = vrow["wall_best_s"] if vrow["ok"] and not vrow["killed"] else None
    rows.append(vrow)
    say(f"  kho --version: {fmt_s(vrow['wall_best_s'])}")
    # the floor of any command that needs numpy: the interpreter and numpy's import, nothing else
    res = measure([sys.executable, "-c", "import numpy"], a.version_reps, env, caps, tmp, "numpy")
    rows.append(row_for("-", "numpy", res, None, None, None, check=False))
    say(f"  python -c 'import numpy': {fmt_s(rows[-1]['wall_best_s'])}")
    if not a.no_cycle:
        say("  kho simulate host-1T ...")
        res = measure(kho + ["simulate", "host-1T"], 1, env, caps, tmp, "cycle")
        crow = row_for("-", "cycle", res, None, None, None)
        rows.append(crow)
        say(f"    {fmt_s(crow['wall_best_s'])}, {crow['rss_peak_bytes'] >> 20} MiB: {crow['status'][:100]}")
    for case in names:
        say(f"{case}: generating ..." if not os.path.isfile(os.path.join(gen.case_dir(case), "case.json"))
            or a.regen else f"{case}: cached")
        d, doc = gen.ensure(case, force=a.regen)
        info["cases"][case] = {k: doc[k] for k in ("title", "expected", "map_pages", "ram_dir_bytes", "ram_bytes",
                                                  "generate_s", "describe")}
        exp = doc["expected"]
        reps = a.reps or (3 if doc["ram_bytes"] >= 512 * GiB else 5)
        c_best = None
        for cmd in cmds:
            argv_c = command_argv(cmd, d, kho, walker, os.path.join(tmp, f"{case}.svg"))
            if argv_c is None:
                continue
            say(f"  {case} {LABEL[cmd]} x{reps} ...")
            res = measure(argv_c, reps, env if cmd != "c" else None, caps, tmp, f"{case}-{cmd}")
            row = row_for(case, cmd, res, c_best, version_best, exp)
            if cmd == "c" and row["ok"]:
                c_best = row["wall_best_s"]
            rows.append(row)
            say(f"    {fmt_s(row['wall_best_s'])}, {row['rss_peak_bytes'] >> 20} MiB: {row['status'][:100]}")
    info["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    text = render(rows, info)
    print(text)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    doc = {"environment": info, "rows": rows, "table": text,
           "targets": {f"{c}/{k}": v for (c, k), v in TARGETS.items()}}
    for name in ("latest.json", f"results-{stamp}.json"):
        with open(os.path.join(OUT, name), "w") as f:
            json.dump(doc, f, indent=1)
    say(f"\nJSON: {os.path.join(OUT, 'latest.json')}")
    bad = any(not r["ok"] for r in rows)
    if a.strict:
        bad = bad or any(r["met"] is False or r.get("killed") for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
