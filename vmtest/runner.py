"""The chain runner: QEMU (TCG) boots N kernels, each kexecs the next with KHO.

:func:`run_chain` starts QEMU paused (:func:`qemu_argv`), arms a gdbstub
breakpoint at ``machine_kexec`` and runs the stage loop: at every stop it
saves and scans the RAM (:mod:`vmtest.capture`), applies the writes and hook
of :class:`Options` (:mod:`vmtest.inject`), steps past the breakpoint and
lets the kexec happen; a second breakpoint at the next kernel's
``x86_64_start_kernel`` serves the entry-phase writes and the per-boot
command lines (``Options.cmdlines``).  A lost gdbstub link is connected
again; a silent guest is declared hung.  When QEMU exits the serial log is
split into ``stageN/`` (:mod:`vmtest.serial`) and ``summary.json`` written.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from . import capture
from .build import Build, find_build, log
from .gdb import REG_RIP, Gdb, GdbExited, arm
from .gdb import reconnect as reconnect_gdb
from .inject import COMMAND_LINE_SIZE, StopContext, apply_writes, entry_writes
from .qmp import Qmp
from .rootfs import cpio_newc
from .serial import split_serial

__all__ = ["BASE_CMDLINE", "PAD_WORD", "Options", "end_qemu", "numa_argv", "qemu_argv", "qemu_binary", "run_chain"]

BASE_CMDLINE = "console=ttyS0 kho=on liveupdate=on panic=-1 memblock=debug log_buf_len=4M"
#: padding word that makes every boot's command line as long as the longest one
PAD_WORD = "vmtest.pad="


@dataclasses.dataclass
class Options:
    """How to run a chain.  Boot N's kernel command line is ``base_cmdline``, the
    reserve_mem= / test_kho.max_mem= / earlyprintk words, ``cmdlines[N]`` (or
    ``append`` for a boot not in ``cmdlines``) and the words the guest's /init
    reads (vmtest_stage=N vmtest_last= vmtest_luo=)."""
    boots: int = 2
    luo: bool = True
    reserve_mem: str | None = "4M:4K:vmtest_rmem"
    test_kho_max_mem: int | None = 1 << 20
    append: str = ""
    base_cmdline: str = BASE_CMDLINE
    memory: str = "1G"
    smp: int = 2
    # NUMA nodes of the guest: above 1, the RAM is split evenly into that many
    # QEMU memory backends, one per node (-numa node,memdev=), and the vCPUs
    # into as many sockets; the kernel learns the nodes from ACPI SRAT
    numa_nodes: int = 1
    timeout: float = 600.0            # whole chain
    stall_timeout: float = 90.0       # guest running but the serial console silent this long: hung
    earlyprintk: bool = False         # earlyprintk=serial,ttyS0 (shows how far a dying kernel got)
    keep: str = "preserved"           # meta | preserved | all-preserved
    keep_cap: int = 64 << 20
    keep_full_ram: bool = False       # keep ram-stageN.full.bin.zst in the capture
    stall_retries: int = 0            # boot the chain again (at most this often) if it hangs
    gdb_drop_before_stop: int | None = None   # test hook: reset the gdbstub link while waiting for stop N (N >= 2)
    writes: list = dataclasses.field(default_factory=list)      # list[Write]
    hook: Callable[[StopContext], list] | None = None
    # {boot: words}: that boot's own extra command line words, in place of ``append``
    # (see boot_cmdlines for how boots 2.. get them)
    cmdlines: dict = dataclasses.field(default_factory=dict)   # dict[int, str]
    # {boot: kernel}: boot N runs another kernel of build.sh's table ("7.3.4",
    # "7.2-unfixed") or a Build; boots not listed run the chain's build.  The
    # stage-1 initramfs then carries every boot's image as /kernel.N (see
    # chain_initramfs); the breakpoints follow the kernel that runs
    kernels: dict = dataclasses.field(default_factory=dict)    # dict[int, str | Build]
    # a disk image attached read-only as virtio-blk (the live guest's Debian
    # root, vmtest/rootfs.py); None: no disk
    disk: str | None = None
    # a gzip cpio appended to boot 1's initramfs (its files replace the cached
    # initramfs' ones: vmtest.rootfs.live_initrd_extra); b"": nothing
    initrd_extra: bytes = b""

    def cmdline(self, stage: int = 1) -> str:
        """The kernel command line of boot ``stage`` (as built, before any padding)."""
        words = [self.base_cmdline]
        if self.reserve_mem:
            words.append(f"reserve_mem={self.reserve_mem}")
        if self.test_kho_max_mem is not None:
            words.append(f"test_kho.max_mem={self.test_kho_max_mem}")
        if self.earlyprintk:
            words.append("earlyprintk=serial,ttyS0,115200")
        extra = self.cmdlines.get(stage, self.append)
        if extra:
            words.append(extra)
        words.append(f"vmtest_stage={stage} vmtest_last={self.boots} vmtest_luo={1 if self.luo else 0}")
        return " ".join(words)

    def boot_cmdlines(self) -> dict[int, str]:
        """{boot: command line} for every boot when ``cmdlines`` is set, else {}.

        The guest's /init hands its own /proc/cmdline (vmtest_stage bumped) to
        kexec_file_load, so without help every boot inherits boot 1's line.
        With ``cmdlines``, boot 1 gets its line through QEMU's -append and the
        runner writes boot N's (N >= 2) over the inherited one at boot N's
        x86_64_start_kernel, before the kernel copies it.  It can only write
        into the room of the line already there, so every line is normalised
        to single spaces and padded with a ``vmtest.pad=x...`` word (a dotted
        name: the kernel drops it instead of handing it to /init) to the same
        length.  The decompressor of boot N >= 2 still sees boot N-1's line."""
        if not self.cmdlines:
            return {}
        bad = [k for k in self.cmdlines if not (isinstance(k, int) and 1 <= k <= self.boots)]
        if bad:
            raise ValueError(f"cmdlines: boots {bad} are not in 1..{self.boots}")
        lines = {n: " ".join(self.cmdline(n).split()) for n in range(1, self.boots + 1)}
        width = max(len(x) for x in lines.values()) + 1 + len(PAD_WORD)
        if width + 1 > COMMAND_LINE_SIZE:
            raise ValueError(f"cmdlines: a padded command line of {width} bytes is longer than "
                             f"the kernel takes ({COMMAND_LINE_SIZE - 1})")
        return {n: f"{x} {PAD_WORD}" + "x" * (width - len(x) - 1 - len(PAD_WORD)) for n, x in lines.items()}


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def qemu_binary() -> str | None:
    return shutil.which("qemu-system-x86_64")


def qemu_argv(qemu: str, opts: Options, build: Build, serial: Path, qmp_sock: Path, port: int,
              cmdline: str, initrd: Path | None = None) -> list[str]:
    """The QEMU command line: TCG, paused (-S), serial console into ``serial``,
    QMP on a unix socket, the gdbstub on 127.0.0.1:``port``, direct kernel boot."""
    return [qemu, "-accel", "tcg", "-m", opts.memory, *numa_argv(opts), "-no-reboot",
            "-nodefaults", "-display", "none", "-S",
            "-serial", f"file:{serial}",
            "-qmp", f"unix:{qmp_sock},server,nowait",
            "-gdb", f"tcp:127.0.0.1:{port}",
            "-kernel", str(build.bzimage), "-initrd", str(initrd or build.initramfs),
            "-append", cmdline] + (
            ["-drive", f"file={opts.disk},if=virtio,format=raw,readonly=on,cache=unsafe"] if opts.disk else [])


def numa_argv(opts: Options) -> list[str]:
    """``-smp`` and, for a guest of several NUMA nodes, its memory backends,
    nodes and the socket of each node's vCPUs."""
    n = opts.numa_nodes
    if n <= 1:
        return ["-smp", str(opts.smp)]
    size = capture.guest_ram_size(opts.memory)
    if size % (n << 20) or opts.smp % n:
        raise ValueError(f"{n} NUMA nodes need the RAM ({opts.memory}) in whole MiB per node and "
                         f"the {opts.smp} vCPUs in as many sockets")
    argv = ["-smp", f"{opts.smp},sockets={n},cores={opts.smp // n},threads=1"]
    for i in range(n):
        argv += ["-object", f"memory-backend-ram,id=ram{i},size={size // n >> 20}M",
                 "-numa", f"node,nodeid={i},memdev=ram{i}"]
    argv += [a for i in range(n) for a in ("-numa", f"cpu,node-id={i},socket-id={i}")]
    return argv


def _shell_line(argv: list[str]) -> str:
    return " ".join(a if re.fullmatch(r"[\w@%+=:,./-]+", a) else "'" + a.replace("'", "'\\''") + "'"
                    for a in argv)


def end_qemu(summary: dict, proc: subprocess.Popen, gdb, qmp, qemu_err, work: Path) -> None:
    """Close the gdbstub and QMP links, let QEMU exit (killed when it does
    not), record its exit code and the tail of its stderr, drop the work folder."""
    if gdb:
        gdb.close()
    if qmp:
        qmp.close()
    try:
        proc.wait(timeout=10 if summary["exit"] == "qemu-exited" else 0.1)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    summary["qemu_rc"] = proc.returncode
    qemu_err.seek(0)
    summary["qemu_stderr"] = qemu_err.read()[-4000:]
    qemu_err.close()
    shutil.rmtree(work, ignore_errors=True)


def chain_initramfs(builds: dict[int, Build], dest: Path) -> Path:
    """The stage-1 initramfs of a chain whose boots run different kernels:
    boot 1's own initramfs with a second (gzip) cpio appended that adds
    ``/kernel.N`` = boot N's bzImage for every N >= 2 (the kernel unpacks
    concatenated archives in order).  The guest's /init kexecs
    ``/kernel.<next stage>`` when it exists, else ``/kernel``, and hands its
    rootfs, these files included, to the next boot."""
    import gzip
    extra = {f"kernel.{n}": (b.bzimage.read_bytes(), 0o644) for n, b in sorted(builds.items()) if n >= 2}
    data = builds[1].initramfs.read_bytes() + gzip.compress(cpio_newc(extra), 6, mtime=0)
    dest.write_bytes(data)
    return dest


def resolve_builds(opts: Options, build: Build | None) -> dict[int, Build]:
    """{boot: Build} for every boot of the chain (``opts.kernels`` over ``build``)."""
    base = build or find_build()
    if base is None:
        raise RuntimeError("no kernel build: run vmtest/setup.sh and vmtest/build.sh")
    bad = [k for k in opts.kernels if not (isinstance(k, int) and 1 <= k <= opts.boots)]
    if bad:
        raise ValueError(f"kernels: boots {bad} are not in 1..{opts.boots}")
    out = {}
    for n in range(1, opts.boots + 1):
        k = opts.kernels.get(n)
        if k is None:
            out[n] = base
        elif isinstance(k, Build):
            out[n] = k
        else:
            b = find_build(kernel=str(k))
            if b is None:
                raise RuntimeError(f"no build of kernel {k!r} for boot {n}: run vmtest/build.sh --kernel {k}")
            out[n] = b
    return out


def run_chain(out: str | os.PathLike, opts: Options | None = None, build: Build | None = None,
              cmdlines: dict[int, str] | None = None, kernels: dict[int, str | Build] | None = None) -> dict:
    """Boot ``opts.boots`` kernels in a KHO kexec chain; write the capture to ``out``.
    Returns the summary (also written to out/summary.json).  A chain that hangs
    (exit "stalled") is booted again up to ``opts.stall_retries`` times; the hung
    attempts are kept in out/stalled-attempt-K/.  ``cmdlines`` ({boot: words})
    is merged into ``opts.cmdlines``: those boots get their own extra words;
    ``kernels`` ({boot: name or Build}) into ``opts.kernels``: those boots run
    another kernel (a cross-version chain)."""
    opts = opts or Options()
    if cmdlines:
        opts = dataclasses.replace(opts, cmdlines={**opts.cmdlines, **cmdlines})
    if kernels:
        opts = dataclasses.replace(opts, kernels={**opts.kernels, **kernels})
    opts.boot_cmdlines()    # a bad cmdlines raises here, before QEMU starts
    out = Path(out)
    for attempt in range(opts.stall_retries + 1):
        summary = _run_chain_once(out, opts, build)
        # a hang, or the host side losing its gdbstub / QMP connection
        transient = summary["exit"] == "stalled" or (
            summary["exit"].startswith("error:") and any(
                w in summary["exit"] for w in ("ConnectionReset", "BrokenPipe", "ConnectionRefused", "timed out")))
        if not transient or attempt == opts.stall_retries:
            break
        keep = out / f"stalled-attempt-{attempt + 1}"
        keep.mkdir(parents=True, exist_ok=True)
        for p in list(out.iterdir()):
            if not p.name.startswith("stalled-attempt-"):
                shutil.move(str(p), str(keep / p.name))
        log(f"the chain hung (attempt {attempt + 1}); booting it again, evidence in {keep}")
    summary["stalled_attempts"] = attempt
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def fresh_capture_dir(out: str | os.PathLike) -> Path:
    """``out`` made ready for a chain's capture: created, with the stage
    directories and the RAM extracts of an earlier run removed."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("stage*"):
        shutil.rmtree(stale)
    shutil.rmtree(out / "ram", ignore_errors=True)
    (out / "ram").mkdir()
    return out


def _run_chain_once(out: Path, opts: Options, build: Build | None) -> dict:
    builds = resolve_builds(opts, build)
    build = builds[1]
    # one kernel for every boot: the single-kernel path as it always was
    multi = len({b.dir for b in builds.values()}) > 1
    qemu = qemu_binary()
    if not qemu:
        raise RuntimeError("qemu-system-x86_64 not found: run vmtest/setup.sh")
    out = fresh_capture_dir(out)
    t_start = time.time()
    runner_log = open(out / "runner.log", "w")

    def rlog(msg: str):
        line = f"[{time.time() - t_start:7.1f}s] {msg}"
        runner_log.write(line + "\n")
        runner_log.flush()
        log(msg)

    work = Path(tempfile.mkdtemp(prefix="vmtest-"))
    qmp_sock = work / "qmp.sock"
    port = _free_port()
    serial = out / "serial.log"
    boot_lines = opts.boot_cmdlines()    # {} unless boots have their own lines
    cmdline = boot_lines.get(1) or opts.cmdline()
    initrd = chain_initramfs(builds, work / "initramfs-chain.cpio.gz") if multi else None
    if opts.initrd_extra:
        base = (initrd or build.initramfs).read_bytes()
        initrd = work / "initramfs-extra.cpio.gz"
        initrd.write_bytes(base + opts.initrd_extra)
    argv = qemu_argv(qemu, opts, build, serial, qmp_sock, port, cmdline, initrd)
    (out / "qemu-cmdline.txt").write_text(_shell_line(argv) + "\n")
    rlog(f"kernel {build.release} from {build.dir}")
    if multi:
        rlog("kernels: " + ", ".join(f"boot {n} {b.name} ({b.dir.name})" for n, b in builds.items()))
    rlog(f"cmdline: {cmdline}")
    qemu_err = open(work / "qemu.stderr", "w+")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=qemu_err, stderr=qemu_err)
    summary: dict = {"boots_requested": opts.boots, "cmdline": cmdline, "kernel": build.release,
                     "memory": opts.memory, "numa_nodes": opts.numa_nodes,
                     "build_dir": str(build.dir), "machine_kexec": f"{build.machine_kexec:#x}",
                     "stops": [], "exit": None}
    if multi:
        summary["kernels"] = {str(n): {"name": b.name, "release": b.release, "build_dir": str(b.dir),
                                       "machine_kexec": f"{b.machine_kexec:#x}"} for n, b in builds.items()}
    gdb = qmp = None
    bp = build.machine_kexec
    entry_bp = build.symbol("x86_64_start_kernel")
    # a chain of different kernels: after stop N the old kernel's machine_kexec
    # breakpoint is dropped and the next kernel's x86_64_start_kernel armed; at
    # that entry the new kernel's machine_kexec is armed (swap)
    bp_armed = True
    pending = None          # (stage, stop record, writes, loc, cmdline[, swap]) waiting for the next kernel's entry
    deadline = t_start + opts.timeout
    drop = opts.gdb_drop_before_stop
    lost = (ConnectionResetError, BrokenPipeError, GdbExited)

    def reconnect(why: BaseException) -> str | None:
        """The gdbstub link dropped while QEMU runs on: connect again (QEMU
        pauses the guest and forgets its breakpoints), arm them again, and
        return the halt reason; None when QEMU is gone."""
        nonlocal gdb
        gdb.close()
        if proc.poll() is not None:
            return None
        rlog(f"gdbstub link lost ({type(why).__name__}: {why}); connecting again")
        want = ([(bp, "breakpoint")] if bp_armed else []) + ([(entry_bp, "entry breakpoint")] if pending else [])
        try:
            gdb = reconnect_gdb(port, want, timeout=10)
        except (OSError, GdbExited, TimeoutError):
            if proc.poll() is not None:
                return None
            raise
        summary["gdb_reconnects"] = summary.get("gdb_reconnects", 0) + 1
        return gdb.halt_reason

    def step_over(rip: int):
        """Step off the instruction at ``rip`` (without its breakpoint) and continue."""
        for attempt in range(2):
            try:
                armed = rip == bp
                if armed:
                    gdb.clear_breakpoint(rip)
                gdb.send("s")
                gdb.wait_stop(60)
                if armed and bp_armed:
                    gdb.set_breakpoint(rip)
                gdb.send("c")
                return
            except lost as e:
                if attempt or reconnect(e) is None:
                    raise
                # the guest is paused where it got to; the step is done again
                rip = gdb.read_reg(REG_RIP)

    try:
        qmp = Qmp(qmp_sock)
        gdb = Gdb(port)
        arm(gdb, [(bp, "breakpoint")])
        rlog(f"breakpoint at machine_kexec {bp:#x}; starting the guest")
        gdb.send("c")
        stop_no = 0
        last_size, last_change = -1, time.time()
        while True:
            now = time.time()
            left = deadline - now
            if left <= 0:
                summary["exit"] = "timeout"
                rlog(f"timeout after {opts.timeout:.0f}s")
                summary["stall_cpus"] = _where_are_cpus(qmp, build, out, rlog)
                break
            size = serial.stat().st_size if serial.exists() else 0
            if size != last_size:
                last_size, last_change = size, now
            elif now - last_change > opts.stall_timeout:
                summary["exit"] = "stalled"
                rlog(f"guest hung: no console output for {opts.stall_timeout:.0f}s")
                summary["stall_cpus"] = _where_are_cpus(qmp, build, out, rlog)
                break
            try:
                if drop and drop == stop_no + 1 and stop_no >= 1:
                    drop = None
                    gdb.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    gdb.sock.close()                    # a reset, as QEMU's were seen to do
                    raise ConnectionResetError("dropped on purpose (Options.gdb_drop_before_stop)")
                r = gdb.wait_stop(min(left, 2.0))
            except TimeoutError:
                if proc.poll() is not None:
                    summary["exit"] = "qemu-exited"
                    break
                continue
            except lost as e:
                # QEMU closes the link when it exits; a reset while it runs on
                # (seen at the second stop of some runs) is survived
                try:
                    proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    pass
                r = reconnect(e)
                if r is None:
                    summary["exit"] = "qemu-exited"
                    break
            if r[0] in "WX":
                summary["exit"] = "qemu-exited"
                break
            rip = gdb.read_reg(REG_RIP)
            t_hit = time.time()
            if rip == bp and bp_armed:
                stop_no += 1
                rlog(f"stop {stop_no}: guest at machine_kexec ({r})")
                stop, deferred, loc = _handle_stop(stop_no, out, qmp, gdb, opts, rlog)
                summary["stops"].append(stop)
                next_line = boot_lines.get(stop_no + 1)
                nxt = builds.get(stop_no + 1)
                swap = nxt is not None and nxt.dir != builds[stop_no].dir
                if swap:
                    # the next kernel's own addresses; the old machine_kexec
                    # breakpoint is not set again after the step (step_over)
                    bp_armed = False
                    entry_bp = nxt.symbol("x86_64_start_kernel")
                    stop["next_kernel"] = nxt.name
                    rlog(f"stop {stop_no}: boot {stop_no + 1} runs {nxt.name}: its x86_64_start_kernel "
                         f"{entry_bp:#x}, then its machine_kexec {nxt.machine_kexec:#x}")
                if deferred or next_line or swap:
                    pending = (stop_no, stop, deferred, loc, next_line, swap)
                    arm(gdb, [(entry_bp, "entry breakpoint")])
                    waiting = [f"{len(deferred)} write(s)"] if deferred else []
                    waiting += [f"boot {stop_no + 1}'s command line"] if next_line else []
                    waiting += [f"boot {stop_no + 1}'s breakpoints"] if swap else []
                    verb = "wait" if deferred else "waits"
                    rlog(f"stop {stop_no}: {' and '.join(waiting)} {verb} for the next kernel's "
                         f"x86_64_start_kernel ({entry_bp:#x})")
                stop["seconds"] = round(time.time() - t_hit, 2)
            elif rip == entry_bp and pending:
                n, stop, deferred, loc, next_line, swap = pending
                rlog(f"stop {n}: next kernel at x86_64_start_kernel")
                if deferred or next_line or not swap:
                    entry_writes(n, out, gdb, stop, deferred, loc, rlog, next_line)
                pending = None
                gdb.clear_breakpoint(entry_bp)
                if swap:
                    bp = builds[n + 1].machine_kexec
                    arm(gdb, [(bp, "breakpoint")])
                    bp_armed = True
            else:
                rlog(f"unexpected stop at {rip:#x} ({r}); continuing")
            # step over the breakpoint we are on (if still armed), go on
            step_over(rip)
            last_change = time.time()
        if pending:
            summary.setdefault("problems", []).append(
                f"stop {pending[0]}: the next kernel never reached x86_64_start_kernel; "
                f"{len(pending[2])} deferred write(s) not done"
                + (f", boot {pending[0] + 1}'s command line not written" if pending[4] else ""))
    except Exception as e:  # noqa: BLE001 - record and clean up
        summary["exit"] = f"error: {type(e).__name__}: {e}"
        rlog(summary["exit"])
    finally:
        end_qemu(summary, proc, gdb, qmp, qemu_err, work)
    stages = split_serial(serial, out)
    if boot_lines:
        summary["cmdlines"] = {str(n): x for n, x in boot_lines.items()}
        for problem in _check_cmdlines(out, boot_lines):
            summary.setdefault("problems", []).append(problem)
            rlog(problem)
    summary["stages"] = {str(n): {k: s[k] for k in ("started", "kexec", "end", "errors", "notes")}
                         for n, s in sorted(stages.items())}
    summary["stages_reached"] = max((n for n, s in stages.items() if s["started"]), default=0)
    summary["completed"] = bool(stages.get(opts.boots, {}).get("end"))
    summary["elapsed_s"] = round(time.time() - t_start, 1)
    rlog(f"done: exit={summary['exit']} qemu_rc={summary['qemu_rc']} stages_reached="
         f"{summary['stages_reached']}/{opts.boots} completed={summary['completed']} "
         f"in {summary['elapsed_s']}s")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    runner_log.close()
    return summary


def _check_cmdlines(out: Path, boot_lines: dict[int, str]) -> list[str]:
    """Every boot that reached /init printed its /proc/cmdline (stageN/cmdline.txt):
    it must be the line that boot was given."""
    problems = []
    for n, want in sorted(boot_lines.items()):
        f = out / f"stage{n}" / "cmdline.txt"
        if f.exists() and f.read_text().strip() != want:
            problems.append(f"boot {n} ran with the command line {f.read_text().strip()!r}, not {want!r}")
    return problems


def _handle_stop(n: int, out: Path, qmp: Qmp, gdb: Gdb, opts: Options, rlog) -> tuple[dict, list, dict]:
    """One machine_kexec stop: registers, the serial log so far, the RAM dump and
    its scan, the hook and the jump-phase writes.  Returns (stop record,
    entry-phase writes, RAM analysis)."""
    ram_out = out / "ram"
    stop: dict = {"stage": n}
    regs = qmp.hmp("info registers")
    (ram_out / f"qmp-stage{n}.txt").write_text(regs)
    m = re.search(r"RIP=([0-9a-f]+)", regs)
    stop["rip"] = f"0x{m.group(1)}" if m else None
    split_serial(out / "serial.log", out)   # the stage's own dumps are complete by now
    with capture.ram_tempfile(n, capture.guest_ram_size(opts.memory)) as full:
        t0 = time.time()
        capture.pmemsave(qmp, full, opts.memory)
        stop["pmemsave_s"] = round(time.time() - t0, 2)
        t0 = time.time()
        loc = capture.scan_ram_file(full, out / f"stage{n}", ram_out, n, opts.keep, opts.keep_cap)
        stop["scan_s"] = round(time.time() - t0, 2)
        stop["sparse_bytes"] = loc["sparse"]["bytes"]
        stop["errors"] = loc["errors"]
        if loc.get("fdt"):
            stop["fdt"] = f"{loc['fdt']['phys']:#x}"
        if loc.get("radix"):
            stop["preserved_entries"] = len(loc["radix"]["entries"])
        rlog(f"stop {n}: RAM saved in {stop['pmemsave_s']}s, scanned in {stop['scan_s']}s, "
             f"kept {loc['sparse']['bytes']} bytes in {len(loc['sparse']['ranges'])} ranges"
             + (f"; problems: {loc['errors']}" if loc["errors"] else ""))
        writes = [w for w in opts.writes if w.stage == n]
        if opts.hook:
            ctx = StopContext(n, out, out / f"stage{n}", ram_out / f"ram-stage{n}.sparse", loc, full)
            writes += list(opts.hook(ctx) or [])
        now = [w for w in writes if w.phase() == "jump"]
        deferred = [w for w in writes if w.phase() == "entry"]
        if now:
            apply_writes(n, out, gdb, stop, now, loc, None, "jump", rlog)
        if opts.keep_full_ram:
            capture.keep_full_ram(full, ram_out / f"ram-stage{n}.full.bin.zst")
    return stop, deferred, loc


def _where_are_cpus(qmp: Qmp, build: Build, out: Path, rlog) -> list[str]:
    """Where a hung guest's vCPUs are: two register snapshots a second apart,
    RIPs symbolized with System.map (saved to hang-registers.txt)."""
    where = []
    try:
        dumps = []
        for _ in range(2):
            dumps.append(qmp.hmp("info registers -a"))
            time.sleep(1)
        (out / "hang-registers.txt").write_text("\n\n==== one second later ====\n\n".join(dumps))
        for i, d in enumerate(dumps):
            rips = [int(x, 16) for x in re.findall(r"RIP=([0-9a-f]+)", d)]
            where.append(f"snapshot {i}: " + ", ".join(f"CPU{c} {build.symbolize(r)}" for c, r in enumerate(rips)))
        for w in where:
            rlog(f"hung at {w}")
    except Exception as e:  # noqa: BLE001
        where.append(f"could not read registers: {e}")
    return where

