"""The seeded multi-process campaign, saved cases, the summary, and the
``kho fuzz`` command line.

Worker ``w`` of ``J`` runs indices ``first + w, first + w + J, ...`` of
every family, a time slice of each family in turn (equal time per family;
``--max-inputs`` caps a family so the others get its time), so that two
runs of one seed with ``--first-index``/``--max-inputs`` cover two index
ranges.  Every failing input is saved as JSON under ``--crash-dir`` (the
case itself, plus seed/family/index) and :func:`replay` runs it again.  A
parent watchdog kills a worker that makes no progress for
``--hard-seconds`` of wall time (stuck in C code) and records the input it
was on.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections import Counter

from . import engine
from .cases import read_failure, save_failure
from .engine import BAD_KINDS, execute, generate
from .families import FAMILIES

__all__ = ["Campaign", "format_summary", "load_case", "replay"]


def load_case(path: str) -> tuple[str, dict]:
    """A saved failure's (family, case); a failure saved without its case is
    regenerated from seed and index.  A file that is not a saved failure is
    a :class:`~pykho.errors.UsageError` naming what is missing."""
    import os

    from ..errors import UsageError
    if not os.path.isfile(path):
        raise UsageError(f"{path}: not a regular file (give a failure saved by kho fuzz)")
    try:
        doc, case = read_failure(path)
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: not a saved kho fuzz failure ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("family"), str) or doc["family"] not in FAMILIES:
        raise UsageError(f"{path}: not a saved kho fuzz failure (no known 'family')")
    if case is None:
        try:
            case = generate(int(doc["seed"]), doc["family"], int(doc["index"]))
        except (KeyError, TypeError, ValueError):
            raise UsageError(f"{path}: saved failure has neither its case nor 'seed' and 'index'") from None
    return doc["family"], case


def replay(path: str, limit: float | None = None, raise_errors: bool = True):
    """Run a saved input again.  With ``raise_errors`` the decoder's own
    exception propagates (a KhoDecodeError or the crash); otherwise returns
    ``(kind, tag, detail)`` as :func:`~.engine.execute`."""
    family, case = load_case(path)
    if raise_errors:
        return FAMILIES[family].run(case)
    return execute(family, case, limit or 0)


class Campaign:
    """A multi-process campaign; :meth:`run` returns the summary dict."""

    def __init__(self, seconds: float, families=None, jobs: int | None = None, seed: int = 0,
                 crash_dir: str = "fuzz-crashes", limit: float = 1.0, hard_seconds: float = 20.0,
                 max_per_family: int | None = None, mem_mb: int = 3072, rss_jump_mb: int = 256,
                 keep: int = 5, progress: float = 0.0, out=sys.stdout, clock: str = "cpu", first_index: int = 0):
        self.seconds = seconds
        self.first_index = first_index
        self.families = list(families or FAMILIES)
        self.jobs = max(1, jobs or os.cpu_count() or 1)
        self.seed = seed
        self.crash_dir = crash_dir
        self.limit = limit
        self.hard = max(hard_seconds, 3 * limit)
        self.max_per_family = max_per_family
        self.mem_mb = mem_mb
        self.rss_jump_mb = rss_jump_mb
        self.keep = keep
        self.progress = progress
        self.out = out
        self.clock = clock

    def run(self) -> dict:
        import multiprocessing as mp
        ctx = mp.get_context("fork")
        queue = ctx.Queue()
        hb = ctx.Array("d", 3 * self.jobs, lock=False)
        stop_at = time.time() + self.seconds
        t0 = time.time()
        inputs: Counter[str] = Counter()
        results: dict[str, Counter] = {f: Counter() for f in self.families}
        bad: list[dict] = []
        peak_rss: dict[int, int] = {}
        busy: Counter[str] = Counter()
        # worker w runs indices first_index + w, + jobs, ... of every family
        nxt: dict[int, dict] = {w: {f: self.first_index + w for f in self.families} for w in range(self.jobs)}
        skip: dict[int, set] = {w: set() for w in range(self.jobs)}
        procs = {}

        def start(w):
            p = ctx.Process(target=engine.worker, args=(w, self.jobs, self.seed, self.families, self.limit, stop_at,
                                                        self.max_per_family, nxt[w], skip[w], queue, hb,
                                                        self.crash_dir, self.mem_mb, self.rss_jump_mb, self.keep,
                                                        self.clock),
                            daemon=True)
            hb[3 * w] = time.time()
            p.start()
            procs[w] = p

        for w in range(self.jobs):
            start(w)
        done: set[int] = set()
        last_progress = time.time()
        while len(done) < self.jobs:
            try:
                msg = queue.get(timeout=0.5)
            except Exception:  # noqa: BLE001 - queue.Empty
                msg = None
            now = time.time()
            if msg is not None:
                if msg[0] == "batch":
                    _, w, f, n, counts, bads, nx, rss, dt = msg
                    inputs[f] += n
                    busy[f] += dt
                    nxt[w][f] = nx
                    peak_rss[w] = max(peak_rss.get(w, 0), rss)
                    for (kind, tag), c in counts.items():
                        results[f][(kind, tag)] += c
                    for kind, tag, i, path, last, chain in bads:
                        bad.append({"family": f, "kind": kind, "tag": tag, "index": i, "path": path, "last": last,
                                    "chain": chain})
                elif msg[0] == "done":
                    _, w, rss = msg
                    peak_rss[w] = max(peak_rss.get(w, 0), rss)
                    done.add(w)
                    procs[w].join(timeout=5)
            # watchdog: a worker stuck in C code past the hard limit
            for w, p in list(procs.items()):
                if w in done:
                    continue
                ts = hb[3 * w]
                if not p.is_alive() and p.exitcode == 0:
                    # finished normally; its "done" message may still be in
                    # the queue (not a crash)
                    continue
                if not p.is_alive() and w not in done:
                    # died without saying so (killed by the OOM killer, a segfault in C)
                    self._record_dead(w, hb, results, bad, inputs, nxt, skip, "crash",
                                      f"worker died (exit code {p.exitcode})")
                    if time.time() < stop_at:
                        start(w)
                    else:
                        done.add(w)
                elif ts > 0 and now - ts > self.hard:
                    p.kill()
                    p.join(timeout=5)
                    self._record_dead(w, hb, results, bad, inputs, nxt, skip, "hang",
                                      f"no progress for {self.hard:.0f} s (killed)")
                    if time.time() < stop_at:
                        start(w)
                    else:
                        done.add(w)
            if self.progress and now - last_progress >= self.progress:
                last_progress = now
                tot = sum(inputs.values())
                nb = sum(1 for b in bad)
                print(f"[{now - t0:7.0f}s] {tot} inputs ({tot / max(now - t0, 1e-9):.0f}/s), "
                      f"min/family {min(inputs[f] for f in self.families)}, failures {nb}",
                      file=self.out, flush=True)
        for p in procs.values():
            p.join(timeout=5)
        wall = time.time() - t0
        child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        summary = {
            "seed": self.seed, "jobs": self.jobs, "seconds": self.seconds, "wall": wall, "limit": self.limit,
            "first_index": self.first_index, "max_index": self.max_per_family,
            "clock": self.clock,
            "families": self.families,
            "inputs": {f: inputs[f] for f in self.families},
            "busy_seconds": {f: round(busy[f], 4) for f in self.families},
            "results": {f: {f"{k}:{t}" if k != "result" else t: c for (k, t), c in sorted(results[f].items())}
                        for f in self.families},
            "failures": bad,
            "counts": {k: sum(c for f in self.families for (kk, _t), c in results[f].items() if kk == k)
                       for k in BAD_KINDS + ("generator-error",)},
            "peak_rss_kb": {str(w): r for w, r in sorted(peak_rss.items())},
            "peak_rss_children_kb": child_rss,
            "crash_dir": self.crash_dir,
        }
        return summary

    def _record_dead(self, w, hb, results, bad, inputs, nxt, skip, kind, why):
        fi, i = int(hb[3 * w + 1]), int(hb[3 * w + 2])
        f = self.families[fi]
        results[f][(kind, "killed")] += 1
        inputs[f] += 1
        path = None
        try:
            case = generate(self.seed, f, i)
            path = save_failure(self.crash_dir, self.seed, f, i, kind, "killed", why, case)
        except Exception:  # noqa: BLE001 - a generator bug: save the failure without its case
            path = save_failure(self.crash_dir, self.seed, f, i, kind, "killed", why, None)
        bad.append({"family": f, "kind": kind, "tag": "killed", "index": i, "path": path, "last": why,
                    "chain": ""})
        skip[w].add((f, i))
        nxt[w][f] = max(nxt[w].get(f, w), i + self.jobs)


def format_summary(s: dict) -> str:
    """The text summary ``kho fuzz`` prints."""
    lines = []
    fams = s["families"]
    lines.append(f"kho fuzz: seed {s['seed']}, {s['jobs']} jobs, {s['wall']:.1f} s wall, "
                 f"per-input limit {s['limit']} s ({s.get('clock', 'cpu')} time)"
                 + (f", inputs from index {s['first_index']}" if s.get("first_index") else ""))
    w = max(len(f) for f in fams)
    lines.append(f"{'family':<{w}}  {'inputs':>10}  {'/s':>7}  results by code")
    for f in fams:
        n = s["inputs"][f]
        busy = s["busy_seconds"].get(f) or 0
        rate = n / busy if busy else 0
        res = s["results"][f]
        top = sorted(res.items(), key=lambda kv: -kv[1])
        txt = ", ".join(f"{k} {v}" for k, v in top[:8]) + (f", ... ({len(top) - 8} more)" if len(top) > 8 else "")
        lines.append(f"{f:<{w}}  {n:>10}  {rate:>7.0f}  {txt}")
    tot = sum(s["inputs"].values())
    lines.append(f"total inputs {tot} ({tot / max(s['wall'], 1e-9):.0f}/s)")
    c = s["counts"]
    lines.append("crashes {crash}, hangs {hang}, lies {lie}, memory {memory}, generator errors {ge}".format(
        ge=c.get("generator-error", 0), **{k: c.get(k, 0) for k in BAD_KINDS}))
    peak = max([int(v) for v in s["peak_rss_kb"].values()] + [0])
    lines.append(f"peak RSS per worker: {peak / 1024:.0f} MiB (max over {len(s['peak_rss_kb'])} workers)")
    if s["failures"]:
        lines.append(f"failures (inputs saved under {s['crash_dir']}):")
        seen: Counter[tuple[str, str, str]] = Counter()
        for b in s["failures"]:
            key = (b["family"], b["kind"], b["tag"])
            seen[key] += 1
            if seen[key] <= 1:
                lines.append(f"  {b['family']} {b['kind']} {b['tag']} input {b['index']}: {b['last']} "
                             f"({b.get('chain', '')[:160]})"
                             + (f"  -> {b['path']}" if b["path"] else ""))
        dup = sum(v - 1 for v in seen.values())
        if dup:
            lines.append(f"  ({dup} more failures with the same signatures)")
    return "\n".join(lines)
