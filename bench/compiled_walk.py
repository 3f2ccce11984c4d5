#!/usr/bin/env python3
"""What compiled code in pykho's walk would give: the runs of the radix
leaves computed by bench/runs.c (loaded with ctypes) instead of numpy.

    .venv/bin/python bench/compiled_walk.py host-4T
    .venv/bin/python bench/compiled_walk.py host-1T --reps 5

For a benchmark case: every leaf group the model's walk takes (256 leaves
of one order) gets its runs from both, which must be the same arrays; both
are timed (best of the repetitions); then ``kho validate`` of the case runs
in this process with pykho's runs and with the compiled ones (imports done
before the clock starts), alternately, best of the repetitions.  The
compiled runs replace ``pykho.abi.bits.radix_batch_runs`` for that run
only; pykho itself has no compiled code.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import os
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))
sys.path.insert(0, HERE)

import gen  # noqa: E402
import numpy as np  # noqa: E402
import run  # noqa: E402

from pykho.abi import bits, radix  # noqa: E402
from pykho.handover import load  # noqa: E402
from pykho.memory import SparseDir  # noqa: E402


def build(out: str) -> ctypes.CDLL | None:
    """bench/runs.c as a shared library under ``out`` (None without gcc)."""
    lib, _ = run.compile_c("runs.c", os.path.join(out, "libruns.so"), ("-shared", "-fPIC"))
    if lib is None:
        return None
    dll = ctypes.CDLL(lib)
    dll.radix_runs.restype = ctypes.c_size_t
    dll.radix_runs.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_uint,
                               ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    return dll


def compiled_runs(dll: ctypes.CDLL, numpy_runs: Any) -> Any:
    """A drop-in for ``bits.radix_batch_runs`` that asks runs.c, and hands
    what it does not take (other page sizes, results numpy would refuse)
    to ``numpy_runs``."""
    def runs(pages: Any, keys: Any, shift: int) -> Any:
        if shift >= 64 or any(len(p) != 4096 for p in pages):
            return numpy_runs(pages, keys, shift)
        flat = np.frombuffer(bits._joined(pages), dtype="<u8")
        # a run starts at a set bit whose lower neighbour in its word is clear: at most this many
        cap = int(np.bitwise_count(flat & ~(flat << np.uint64(1))).sum()) + 1
        s, e = np.empty(cap, np.int64), np.empty(cap, np.int64)
        keys_a = np.asarray(keys, dtype=np.uint64)
        k = dll.radix_runs(flat.ctypes.data, len(pages), keys_a.ctypes.data, shift, s.ctypes.data,
                           e.ctypes.data, cap)
        if k > cap:
            return numpy_runs(pages, keys, shift)
        s, e = s[:k].copy(), e[:k].copy()
        if not bool((e > s).all()) or (k > 1 and not bool((s[1:] >= e[:-1]).all())):
            return numpy_runs(pages, keys, shift)      # wraps or not ascending: numpy says None
        return s, e
    return runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("case", choices=sorted(gen.CASES))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--handovers", default=gen.OUT, help="where the cases are cached (bench/out/handovers)")
    a = ap.parse_args(argv)
    os.makedirs(run.OUT, exist_ok=True)
    dll = build(run.OUT)
    if dll is None:
        print("no C compiler: nothing to compare", file=sys.stderr)
        return 2
    d, _ = gen.ensure(a.case, out=a.handovers)
    numpy_runs = bits.radix_batch_runs
    c_runs = compiled_runs(dll, numpy_runs)
    mem = SparseDir(os.path.join(d, "ram"))
    ho = load(os.path.join(d, "debugfs", "kho", "out"), mem)
    w = radix.RadixWalk(mem, ho.tree.mem_map)
    groups = [(pages, keys, 12 + order) for order, _, keys, pages, _ in w._leaf_batches([256, 256])
              if order is not None]
    nruns = 0
    for g in groups:
        want, got = numpy_runs(*g), c_runs(*g)
        if want is None or got is None or not (np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1])):
            print(f"{a.case}: the compiled runs differ from pykho's on a group of {len(g[0])} leaves", file=sys.stderr)
            return 1
        nruns += len(want[0])
    best = {}
    for name, fn in (("numpy", numpy_runs), ("compiled", c_runs)) * a.reps:
        t = time.perf_counter()
        for g in groups:
            fn(*g)
        best[name] = min(best.get(name, 1e9), time.perf_counter() - t)
    import pykho.model.kernel  # noqa: F401 - imported before the clock starts
    import pykho.reports.validate  # noqa: F401
    from pykho.cli import main as kho
    args = ["validate", os.path.join(d, "debugfs", "kho", "out"), "--mem", "sparse:" + os.path.join(d, "ram"),
            "--iomem", os.path.join(d, "iomem.txt"), "-j"]
    val = {}
    for name, fn in (("numpy", numpy_runs), ("compiled", c_runs)) * a.reps:
        bits.radix_batch_runs = fn
        try:
            t = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                rc = kho(args)
            val[name] = min(val.get(name, 1e9), time.perf_counter() - t)
        finally:
            bits.radix_batch_runs = numpy_runs
        if rc != 0:
            print(f"{a.case}: kho validate exited {rc} with the {name} runs", file=sys.stderr)
            return 1
    print(f"{a.case}: runs equal on {len(groups)} leaf groups ({nruns:,} runs before the model joins groups)")
    print(f"  leaf runs, every group:       numpy {best['numpy']:.3f} s, compiled {best['compiled']:.3f} s")
    print(f"  kho validate -j in process:   numpy {val['numpy']:.3f} s, compiled {val['compiled']:.3f} s"
          f" (best of {a.reps}, imports before the clock)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
