"""Run one command as a process and measure it: wall time, peak RSS, exit.

A process's ``ru_maxrss`` counts the memory it had before exec, so a
command forked straight from the benchmark (50 MiB of Python and numpy)
would never show less than 50 MiB.  :func:`run` therefore starts the
command through bench/spawn.c, a small C wrapper that forks it, waits for
it with ``wait4`` and writes that child's own rusage and wall time (fork
to exit) to a report file.  Without a C compiler the command is forked from
here and its RSS is flagged as an upper bound (``rss_exact`` False).

Meanwhile a watcher thread reads the command's ``/proc/PID/statm`` every
few milliseconds and kills it when it passes the RSS cap or the time cap
(the report then still gives what it reached).  Limits set before exec,
inherited by the command: ``RLIMIT_AS`` (a backstop well above the RSS cap,
for growth faster than the watcher), ``RLIMIT_FSIZE`` (its output file), no
core dumps.  Stdout and stderr go to files, never pipes, so a command
printing gigabytes neither blocks nor fills the caller's memory.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
PAGE = os.sysconf("SC_PAGE_SIZE")
GiB = 1 << 30

_spawn_cache: dict[str, str | None] = {}


def spawn_wrapper(outdir: str = os.path.join(HERE, "out")) -> str | None:
    """bench/spawn.c compiled into ``outdir`` (once per process), or None without gcc."""
    if outdir in _spawn_cache:
        return _spawn_cache[outdir]
    exe = os.path.join(outdir, "spawn")
    src = os.path.join(HERE, "spawn.c")
    gcc = shutil.which("gcc") or shutil.which("cc")
    ok = None
    if gcc:
        os.makedirs(outdir, exist_ok=True)
        if not os.path.exists(exe) or os.path.getmtime(exe) < os.path.getmtime(src):
            tmp = f"{exe}.{os.getpid()}"
            if subprocess.run([gcc, "-O2", "-Wall", "-o", tmp, src], capture_output=True).returncode == 0:
                os.replace(tmp, exe)
        ok = exe if os.path.exists(exe) else None
    _spawn_cache[outdir] = ok
    return ok


@dataclass
class Result:
    argv: list[str]
    rc: int | None                 # exit status; -N for signal N
    wall_s: float
    rss_peak_bytes: int            # ru_maxrss of the command
    user_s: float
    sys_s: float
    killed: str | None = None      # "time cap 300 s", "RSS cap 8192 MiB", "output cap ...", "address-space cap"
    stdout_path: str = ""
    stdout_bytes: int = 0
    stderr_tail: str = ""
    watched_rss_peak_bytes: int = 0
    rss_exact: bool = True         # False: forked from the caller, ru_maxrss includes the caller's pre-exec RSS
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.killed is None and self.rc is not None and self.rc >= 0

    def as_dict(self) -> dict:
        return asdict(self)


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _child_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = f.read().split()
        return int(kids[0]) if kids else None
    except (OSError, ValueError):
        return None


def run(argv: list[str], *, stdout_path: str, env: dict | None = None, cwd: str | None = None,
        time_cap: float = 300.0, rss_cap: int = 8 * GiB, out_cap: int = GiB, as_cap: int | None = None,
        poll_s: float = 0.005, spawn: str | None | bool = True) -> Result:
    """Run ``argv`` to completion or to a cap; stdout to ``stdout_path``.
    ``spawn``: the wrapper's path, True for bench/spawn.c compiled on demand,
    False or None to fork the command from here."""
    as_cap = as_cap if as_cap is not None else max(2 * rss_cap, rss_cap + 4 * GiB)
    wrapper = spawn_wrapper() if spawn is True else (spawn or None)
    report = stdout_path + ".rusage"
    if os.path.exists(report):
        os.unlink(report)
    full = [wrapper, report, *argv] if wrapper else list(argv)

    def limits():
        resource.setrlimit(resource.RLIMIT_AS, (as_cap, as_cap))
        resource.setrlimit(resource.RLIMIT_FSIZE, (out_cap, out_cap))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    err_path = stdout_path + ".stderr"
    killed: list[str] = []
    peak = [0]
    done = threading.Event()
    with open(stdout_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(full, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                             start_new_session=True, preexec_fn=limits)

        def watch():
            target = None if wrapper else p.pid
            while not done.wait(poll_s):
                if target is None:
                    target = _child_of(p.pid)
                r = _rss(target) if target else 0
                peak[0] = max(peak[0], r)
                why = None
                if r > rss_cap:
                    why = f"RSS cap {rss_cap >> 20} MiB"
                elif time.perf_counter() - t0 > time_cap:
                    why = f"time cap {time_cap:g} s"
                if why:
                    killed.append(why)
                    try:
                        if target:
                            os.kill(target, signal.SIGKILL)    # the wrapper reaps it and reports
                        else:
                            os.killpg(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    return

        w = threading.Thread(target=watch, daemon=True)
        w.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        except BaseException:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            raise
        wall = time.perf_counter() - t0
        done.set()
        w.join()
        p.returncode = os.waitstatus_to_exitcode(status)
        try:
            os.killpg(p.pid, signal.SIGKILL)             # anything the command left behind
        except (ProcessLookupError, PermissionError):
            pass
    rc, maxrss, user, sys_ = p.returncode, ru.ru_maxrss * 1024, ru.ru_utime, ru.ru_stime
    exact = False
    if wrapper:
        try:
            with open(report) as f:
                fields = f.read().split()
            os.unlink(report)
            rc = os.waitstatus_to_exitcode(int(fields[1]))
            maxrss, user, sys_, wall = int(fields[2]) * 1024, float(fields[3]), float(fields[4]), float(fields[5])
            exact = True
        except (OSError, ValueError, IndexError):
            rc = rc if rc else -signal.SIGKILL            # the wrapper itself was killed
            exact = False
    with open(err_path, "rb") as f:
        f.seek(0, os.SEEK_END)
        n = f.tell()
        f.seek(max(0, n - 4000))
        tail = f.read().decode("utf-8", "replace")
    os.unlink(err_path)
    why = killed[0] if killed else None
    if why is None and (rc == -signal.SIGXFSZ or os.path.getsize(stdout_path) >= out_cap):
        why = f"output cap {out_cap >> 20} MiB"
    if why is None and rc != 0 and "MemoryError" in tail:
        why = f"address-space cap {as_cap >> 20} MiB (MemoryError)"
    return Result(argv=list(argv), rc=rc, wall_s=wall, rss_peak_bytes=maxrss, user_s=user, sys_s=sys_, killed=why,
                  stdout_path=stdout_path, stdout_bytes=os.path.getsize(stdout_path), stderr_tail=tail[-1500:],
                  watched_rss_peak_bytes=peak[0], rss_exact=exact)
