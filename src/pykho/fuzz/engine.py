"""Running inputs: generation by (seed, family, index), the per-input time
limit, crash classification, and the worker process loop.

Input ``i`` of family ``F`` under seed ``S`` is generated from
``random.Random(f"{S}:{F}:{i}")`` and a per-family seed corpus built from
``random.Random(f"{S}:{F}:corpus")`` (:func:`generate`), so it does not
depend on the number of jobs, on timing or on which worker ran it.

:func:`execute` runs one case and classifies the outcome: a result tag or
a pykho error code is fine; any other exception is a **crash** (signed by
the exception type and the innermost decoder frame); running past the limit
is a **hang**; the worker's peak RSS growing past ``rss_jump_kb`` is a
**memory** finding; a family's :class:`~.families.Lie` is a **lie**.

Time limit: each input runs under an interval timer (``ITIMER_PROF``, the
worker's CPU time, by default, so that a loaded machine does not turn slow
inputs into hangs; ``wall`` for ``ITIMER_REAL``) whose signal raises
:class:`InputTimeout`, a ``BaseException`` that decoders cannot swallow.
Workers also run under an address-space limit (``RLIMIT_AS``).
"""

from __future__ import annotations

import os
import random
import resource
import signal
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

from ..errors import KhoDecodeError, KhoError
from .cases import save_failure
from .families import FAMILIES, Lie

__all__ = [
    "BAD_KINDS",
    "CLOCK",
    "SLICE",
    "InputTimeout",
    "call_with_limit",
    "corpus_for",
    "execute",
    "generate",
    "limit_memory",
    "maxrss_kb",
    "signature",
    "worker",
]

#: outcome kinds that fail a campaign
BAD_KINDS = ("crash", "hang", "lie", "memory")


class InputTimeout(BaseException):
    """Raised by the interval timer when one input runs past the limit (a
    BaseException so that no ``except Exception`` in a decoder can swallow it)."""


# --------------------------------------------------------------------------
# generation


_CORPORA: dict[tuple[int, str], list] = {}


def corpus_for(seed: int, family: str) -> list:
    """The seed corpus of ``family`` under ``seed`` (built once per process)."""
    key = (seed, family)
    c = _CORPORA.get(key)
    if c is None:
        c = FAMILIES[family].corpus(random.Random(f"{seed}:{family}:corpus"))
        _CORPORA[key] = c
    return c


def generate(seed: int, family: str, index: int) -> dict:
    """Input ``index`` of ``family`` under ``seed`` (deterministic)."""
    rng = random.Random(f"{seed}:{family}:{index}")
    return FAMILIES[family].generate(rng, corpus_for(seed, family))


# --------------------------------------------------------------------------
# the per-input time limit


_ARMED = [False]
#: what the per-input limit measures: "cpu" (the worker's CPU time, immune to
#: a loaded machine; ITIMER_PROF/SIGPROF) or "wall" (ITIMER_REAL/SIGALRM)
CLOCK = ["cpu"]


def _timer():
    if CLOCK[0] == "wall":
        return signal.ITIMER_REAL, signal.SIGALRM, time.perf_counter
    return signal.ITIMER_PROF, signal.SIGPROF, time.process_time


def _on_alarm(signum, frame):
    if _ARMED[0]:
        raise InputTimeout()


def call_with_limit(fn, limit: float):
    """``fn()`` under a time limit (CPU seconds by default, see :data:`CLOCK`):
    raises :class:`InputTimeout` when it runs past ``limit`` seconds (in Python code; a single long C call is
    interrupted when it returns).  The timer repeats every 50 ms until
    disarmed, so a timeout swallowed where Python cannot propagate an
    exception (a ``__del__``, a weakref callback) is raised again."""
    import threading
    if not limit or limit <= 0 or not hasattr(signal, "setitimer") \
            or threading.current_thread() is not threading.main_thread():
        return fn()
    which, signum, _clock = _timer()
    if signal.getsignal(signum) is not _on_alarm:
        signal.signal(signum, _on_alarm)
    _ARMED[0] = True
    signal.setitimer(which, limit, 0.05)
    try:
        try:
            return fn()
        finally:
            _ARMED[0] = False
    finally:
        _ARMED[0] = False
        signal.setitimer(which, 0)


def maxrss_kb() -> int:
    """This process's peak RSS in KiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# --------------------------------------------------------------------------
# crash classification


_FUZZ_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _decoder_frame(filename: str, skip=()) -> bool:
    """A frame of pykho's own code outside the fuzzer (and not ending in ``skip``)."""
    return ("pykho" in filename and not os.path.abspath(filename).startswith(_FUZZ_DIR)
            and not filename.endswith(tuple(skip)))


def _chain(exc: BaseException) -> str:
    """The pykho functions on the traceback, outermost first ("via decode_luo > decode_blocks")."""
    names = [fr.name for fr in traceback.extract_tb(exc.__traceback__) if _decoder_frame(fr.filename)]
    return "via " + " > ".join(names) if names else "via ?"


def signature(exc: BaseException, skip=()) -> str:
    """Exception type + innermost pykho frame outside the fuzzer (for de-duplication)."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = "?"
    for fr in reversed(tb):
        if _decoder_frame(fr.filename, skip):
            where = f"{Path(fr.filename).name}:{fr.lineno}:{fr.name}"
            break
    else:
        if tb:
            fr = tb[-1]
            where = f"{Path(fr.filename).name}:{fr.lineno}:{fr.name}"
    return f"{type(exc).__name__}@{where}"


def execute(family: str, case: dict, limit: float = 1.0, rss_jump_kb: int | None = None):
    """Run one case: (kind, tag, detail) where kind is "result", "crash",
    "hang", "lie" or "memory" and tag is the result or error code (or the
    crash signature)."""
    fam = FAMILIES[family]
    rss0 = maxrss_kb() if rss_jump_kb else 0
    clock = _timer()[2]
    t0 = clock()
    kind, tag, detail = "result", "ok", ""
    try:
        tag = call_with_limit(lambda: fam.run(case), limit)
    except InputTimeout as e:
        # the tag names where the time went (innermost decoder frame, memory reads skipped)
        kind, tag = "hang", signature(e, ("base.py", "bits.py")).replace("InputTimeout", "timeout")
        detail = _chain(e) + "\n" + traceback.format_exc(limit=-12)
    except Lie as e:
        kind, tag, detail = "lie", f"Lie@{family}", str(e)
    except KhoDecodeError as e:
        tag = e.code
        str(e)   # the message must format
    except KhoError as e:
        tag = type(e).__name__
        str(e)
    except RecursionError as e:
        kind, tag, detail = "crash", signature(e), _chain(e)[:300] + "\n" + traceback.format_exc(limit=-8)
    except Exception as e:  # noqa: BLE001 - this is what we are looking for
        kind, tag, detail = "crash", signature(e), _chain(e) + "\n" + traceback.format_exc()
    elapsed = clock() - t0
    if kind == "result" and limit and elapsed > limit:
        kind, tag, detail = "hang", "slow", f"{elapsed:.2f} s ({CLOCK[0]} time)"
    if kind == "result" and rss_jump_kb:
        jump = maxrss_kb() - rss0
        if jump > rss_jump_kb:
            kind, tag, detail = "memory", f"rss+{jump // 1024}MB", f"peak RSS grew by {jump // 1024} MiB"
    return kind, tag, detail


# --------------------------------------------------------------------------
# worker processes


#: seconds each worker spends on one family before moving to the next; every
#: family gets the same share of time, and a family that reached
#: ``--max-inputs`` drops out so the others get its share
SLICE = 0.25


def limit_memory(mb: int):
    """Cap this process's address space at its current size plus ``mb`` MiB."""
    if not mb:
        return
    try:
        vm_kb = 0
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    vm_kb = int(line.split()[1])
        lim = vm_kb * 1024 + mb * (1 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    except (OSError, ValueError):
        pass


def worker(wid: int, jobs: int, seed: int, families: list[str], limit: float, stop_at: float,
           max_per_family: int | None, resume: dict, skip: set, queue, hb, crash_dir: str, mem_mb: int,
           rss_jump_mb: int, keep: int, clock: str = "cpu"):
    """One worker process: indices ``resume[f], +jobs, ...`` of every family,
    a time slice of each in turn, until ``stop_at``.  Reports a ``batch``
    per slice and ``done`` at the end on ``queue``; ``hb[3*wid:3*wid+3]`` is
    its heartbeat (time, family number, index) for the parent's watchdog."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    CLOCK[0] = clock
    signal.signal(_timer()[1], _on_alarm)
    limit_memory(mem_mb)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
    nxt = {f: resume.get(f, wid) for f in families}
    saved: Counter[tuple[str, str, str]] = Counter()
    # short campaigns use shorter slices so that every family gets rounds
    slice_s = max(0.01, min(SLICE, (stop_at - time.time()) / (8 * max(1, len(families)))))
    try:
        for f in families:
            corpus_for(seed, f)
        while time.time() < stop_at:
            active = [f for f in families if max_per_family is None or nxt[f] < max_per_family]
            if not active:
                break
            for fi, f in enumerate(families):
                if f not in active:
                    continue
                counts: Counter[tuple[str, str]] = Counter()
                bad = []
                n = 0
                t_start = time.perf_counter()
                t_end = t_start + slice_s
                while time.perf_counter() < t_end:
                    i = nxt[f]
                    if max_per_family is not None and i >= max_per_family:
                        break
                    nxt[f] += jobs
                    if (f, i) in skip:
                        continue
                    hb[3 * wid] = time.time()
                    hb[3 * wid + 1] = fi
                    hb[3 * wid + 2] = i
                    try:
                        case = generate(seed, f, i)
                    except Exception as e:  # noqa: BLE001 - a generator bug; report it, go on
                        counts[("generator-error", signature(e))] += 1
                        n += 1
                        continue
                    kind, tag, detail = execute(f, case, limit, rss_jump_mb * 1024 if rss_jump_mb else None)
                    counts[(kind, tag)] += 1
                    n += 1
                    if kind in BAD_KINDS:
                        path = None
                        if saved[(f, kind, tag)] < keep:
                            saved[(f, kind, tag)] += 1
                            path = save_failure(crash_dir, seed, f, i, kind, tag, detail, case)
                        lines = detail.splitlines() if detail else [""]
                        bad.append((kind, tag, i, path, lines[-1], lines[0]))
                    if time.time() >= stop_at:
                        break
                queue.put(("batch", wid, f, n, dict(counts), bad, nxt[f], maxrss_kb(),
                           time.perf_counter() - t_start))
                if time.time() >= stop_at:
                    break
    finally:
        hb[3 * wid] = -1.0
        queue.put(("done", wid, maxrss_kb()))
        for fam in FAMILIES.values():
            fam.cleanup()
