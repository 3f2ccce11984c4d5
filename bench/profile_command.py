#!/usr/bin/env python3
"""Where one benchmark command spends its time: the same ``kho`` process
``bench/run.py`` times, run once under ``python -X importtime`` and once
under cProfile, summarised.

    .venv/bin/python bench/profile_command.py host-4T validate
    .venv/bin/python bench/profile_command.py memfd-64G validate --top 12
    .venv/bin/python bench/profile_command.py host-1T map --sort tottime

Prints the process's wall time, the import time by top-level module (numpy
apart from pykho's own), then pykho's functions by cumulative time (or any
function by own time with ``--sort tottime``).  The profile is written to
bench/out/profile-CASE-COMMAND.prof (``python -m pstats`` reads it).  Timed
figures under a profiler are inflated (about 1.3x for imports, more for
Python-heavy code); the point is the split, not the total.  See
bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import pstats
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import gen  # noqa: E402
import run  # noqa: E402

_IMPORT = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)$")


def imports(argv: list[str], env: dict) -> tuple[float, float, list[tuple[str, float]]]:
    """(total seconds, numpy's seconds, [(top-level module, seconds)]) of
    ``argv`` (a Python script and its arguments) run with ``-X importtime``."""
    r = subprocess.run([sys.executable, "-X", "importtime", *argv], env=env, capture_output=True, text=True)
    tops: list[tuple[str, float]] = []
    numpy = 0.0
    for line in r.stderr.splitlines():
        m = _IMPORT.match(line)
        if not m:
            continue
        if not m.group(3):
            tops.append((m.group(4), int(m.group(2)) / 1e6))
        if m.group(4) == "numpy" and not numpy:
            numpy = int(m.group(2)) / 1e6
    return sum(s for _, s in tops), numpy, sorted(tops, key=lambda t: -t[1])


def script_argv(kho: list[str]) -> list[str]:
    """``kho`` as arguments to a Python interpreter: a script (cProfile
    runs scripts, not ``-c``)."""
    if kho[0] == sys.executable and kho[1:2] == ["-c"]:
        entry = os.path.join(run.OUT, "kho_entry.py")
        with open(entry, "w") as f:
            f.write(kho[2].replace("; ", "\n") + "\n")
        return [entry]
    return kho


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("case", choices=sorted(gen.CASES))
    ap.add_argument("command", choices=[c for c in run.COMMANDS if c != "c"])
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--sort", choices=["cumulative", "tottime"], default="cumulative")
    ap.add_argument("--handovers", default=gen.OUT, help="where the cases are cached (bench/out/handovers)")
    a = ap.parse_args(argv)
    d, _ = gen.ensure(a.case, out=a.handovers)
    os.makedirs(run.OUT, exist_ok=True)
    env = run.kho_env()
    kho = script_argv(run.kho_argv(None))
    svg = os.path.join(run.OUT, f"profile-{a.case}.svg")
    cmd = run.command_argv(a.command, d, kho, None, svg)
    assert cmd is not None
    devnull = subprocess.DEVNULL
    subprocess.run([sys.executable, *cmd], env=env, stdout=devnull, stderr=devnull)   # byte-compile, warm the cache
    t0 = time.perf_counter()
    rc = subprocess.run([sys.executable, *cmd], env=env, stdout=devnull, stderr=devnull).returncode
    wall = time.perf_counter() - t0
    total, numpy, tops = imports(cmd, env)
    prof = os.path.join(run.OUT, f"profile-{a.case}-{a.command}.prof")
    subprocess.run([sys.executable, "-m", "cProfile", "-o", prof, *cmd], env=env, stdout=devnull, stderr=devnull)
    print(f"{a.case} {run.LABEL[a.command]}: {wall:.3f} s wall as a process (exit {rc})")
    shown = ", ".join(f"{n} {s * 1e3:.0f} ms" for n, s in tops[:8])
    print(f"imports (python -X importtime): {total:.3f} s, numpy {numpy:.3f} s of it; by top-level module: {shown}")
    st = pstats.Stats(prof)
    print(f"\ncProfile ({a.sort}; {'pykho functions' if a.sort == 'cumulative' else 'every function'}), "
          f"{prof}:")
    rows = []
    for (path, line, fn), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        if a.sort == "cumulative" and "/pykho/" not in path.replace(os.sep, "/"):
            continue
        rows.append((ct if a.sort == "cumulative" else tt, tt, ct, nc, f"{os.path.basename(path)}:{line}({fn})"))
    rows.sort(key=lambda r: -r[0])
    print(f"  {'cumulative':>10}  {'own':>8}  {'calls':>8}  function")
    for _, tt, ct, nc, name in rows[:a.top]:
        print(f"  {ct:10.3f}  {tt:8.3f}  {nc:8d}  {name}")
    return 0 if rc in (0, 1) else 1


if __name__ == "__main__":
    sys.exit(main())
