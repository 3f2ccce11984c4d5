"""The arm64 chain: QEMU's ``virt`` machine (``-cpu max``, TCG) boots the
arm64 kernel of build.sh's table (``7.2.13-arm64``) and each boot kexecs the
next with KHO.

On arm64 the handover does not travel in ``setup_data``: ``kexec_file_load``
writes a device tree for the next kernel whose ``/chosen`` carries
``linux,kho-fdt`` and ``linux,kho-scratch`` (drivers/of/kexec.c
``kho_add_chosen``), and arm64 has no purgatory: ``relocate_kernel`` copies
the segments and jumps to the new Image with the DT's address in ``x0``.
The runner therefore stops twice per kexec:

1. at ``machine_kexec`` (gdbstub breakpoint, virtual address from
   System.map, KASLR off): ``x0`` is the ``struct kimage``; its ``start``
   (the new Image's physical entry) and segment list are read through the
   old kernel's page tables;
2. at that physical entry (the MMU is off there): ``x0`` is the DT's
   physical address.  Everything the next kernel will find is in place: the
   DT and the scratch array at their destinations, the root FDT, the radix
   tree and the preserved pages.  The runner reads the DT, saves RAM
   (``pmemsave`` of [RAM_BASE, RAM_BASE + 1 GiB)), finds the handover from
   the DT's ``/chosen`` the way ``early_init_dt_check_kho`` does (its own
   code, no pykho), keeps the pages a test needs (``ram/ram-stageN.sparse``),
   and applies the writes a test asks for (:class:`Arm64Options.hook`).

When QEMU exits the serial log is split into ``stageN/`` (vmtest.serial).
Standard library only, like the rest of the harness.
"""
from __future__ import annotations

import dataclasses
import json
import mmap
import os
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from . import capture
from .build import Build, log, read_env
from .gdb import Gdb, GdbExited
from .qmp import Qmp
from .runner import end_qemu, fresh_capture_dir
from .serial import split_serial

__all__ = ["ARM64_KERNEL", "BASE_CMDLINE", "RAM_BASE", "Arm64Ctx", "Arm64Options", "analyse", "find_arm64_build",
           "parse_chosen", "qemu_binary", "run_chain"]

#: build.sh's name of the arm64 kernel
ARM64_KERNEL = "7.2-arm64"
#: QEMU virt: RAM starts at 1 GiB
RAM_BASE = 0x40000000
PAGE = 4096
BASE_CMDLINE = "console=ttyAMA0 kho=on liveupdate=on panic=-1 memblock=debug log_buf_len=4M"
#: gdb's aarch64 register numbers: x0..x30, sp (31), pc (32); 8 bytes each in 'g'
REG_X0, REG_PC = 0, 32
#: struct kimage (include/linux/kexec.h:339, 7.2): head, entry, last_entry, start,
#: control_code_page, swap_page, vmcoreinfo_data_copy, nr_segments, segment[]
KIMAGE_START, KIMAGE_NR_SEGMENTS, KIMAGE_SEGMENTS = 24, 56, 64
KEXEC_SEGMENT = struct.Struct("<4Q")       # buf, bufsz, mem, memsz


def qemu_binary() -> str | None:
    return shutil.which("qemu-system-aarch64")


def find_arm64_build() -> Build | None:
    """The finished arm64 build of build.sh's table (an ``Image``), or None."""
    env = os.environ.get("VMTEST_ARM64_BUILD")
    if env:
        d: Path | None = Path(env)
    else:
        try:
            out = subprocess.run(["bash", str(Path(__file__).resolve().parent / "build.sh"), "--print-dir",
                                  "--kernel", ARM64_KERNEL], check=True, capture_output=True, text=True).stdout
        except subprocess.CalledProcessError:
            return None
        d = Path(out.strip().splitlines()[-1]) if out.strip() else None
    if d is None or not all((d / f).exists() for f in ("Image", "initramfs.cpio.gz", "build-info.env",
                                                        ".kernel-complete")):
        return None
    return Build(d, read_env(d / "build-info.env"))


@dataclasses.dataclass
class Arm64Options:
    boots: int = 2
    luo: bool = True
    reserve_mem: str | None = "4M:4K:vmtest_rmem"
    test_kho_max_mem: int | None = 1 << 20
    append: str = ""
    memory: str = "1G"
    smp: int = 2
    numa: bool = False                 # two NUMA nodes of 512 MiB (-numa, the DT's numa-node-id)
    timeout: float = 600.0
    stall_timeout: float = 90.0
    keep: str = "preserved"
    keep_cap: int = 64 << 20
    #: called at each entry stop with an Arm64Ctx; returns [(phys, bytes)] to write
    hook: Callable[[Arm64Ctx], list] | None = None

    def cmdline(self, stage: int = 1) -> str:
        words = [BASE_CMDLINE]
        if self.reserve_mem:
            words.append(f"reserve_mem={self.reserve_mem}")
        if self.test_kho_max_mem is not None:
            words.append(f"test_kho.max_mem={self.test_kho_max_mem}")
        if self.append:
            words.append(self.append)
        words.append(f"vmtest_stage={stage} vmtest_last={self.boots} vmtest_luo={1 if self.luo else 0}")
        return " ".join(words)


@dataclasses.dataclass
class Arm64Ctx:
    """What a hook sees at boot ``stage``'s kexec (the next kernel's entry)."""
    stage: int
    out: Path
    stage_dir: Path
    locate: dict
    ram_file: Path                      # the full dump (file offset 0 = RAM_BASE), valid during the call

    def read(self, phys: int, n: int) -> bytes:
        with open(self.ram_file, "rb") as f:
            f.seek(phys - RAM_BASE)
            return f.read(n)


# ------------------------------------------------------------------ the DT for the next kernel

def _cells(b: bytes) -> int:
    v = 0
    for i in range(0, len(b) - 3, 4):
        v = ((v << 32) | struct.unpack_from(">I", b, i)[0]) & ((1 << 64) - 1)
    return v


def parse_chosen(dtb: bytes) -> dict:
    """The root's #address-cells/#size-cells and the raw and decoded
    ``/chosen`` KHO properties of the DT the next kernel boots with."""
    root = capture.parse_fdt(dtb)
    rp = root["props"]
    ac = struct.unpack(">I", rp["#address-cells"])[0] if len(rp.get("#address-cells", b"")) == 4 else None
    sc = struct.unpack(">I", rp["#size-cells"])[0] if len(rp.get("#size-cells", b"")) == 4 else None
    chosen = next((c for c in root["children"] if c["name"] == "chosen"), None)
    out: dict = {"address_cells": ac, "size_cells": sc, "chosen": chosen is not None}
    for key, name in (("kho_fdt", "linux,kho-fdt"), ("kho_scratch", "linux,kho-scratch")):
        v = chosen["props"].get(name) if chosen else None
        out[key + "_raw"] = v.hex() if v is not None else None
        if v is not None and ac and sc and len(v) == 4 * (ac + sc):
            out[key] = [_cells(v[:4 * ac]), _cells(v[4 * ac:])]
    return out


# ------------------------------------------------------------------ RAM analysis (no pykho)

def analyse(mm, chosen: dict, stage_dir: Path | None) -> dict:
    """The handover in a RAM image (file offset 0 = RAM_BASE) as the next
    kernel will find it: the root FDT and scratch array named by /chosen,
    the sub-nodes and the radix tree."""
    size = len(mm)
    end = RAM_BASE + size
    res: dict = {"ram_base": RAM_BASE, "ram_size": size, "chosen": chosen, "fdt": None, "radix": None,
                 "subnodes": [], "scratch": None, "errors": []}

    def inside(p: int | None, n: int | None) -> bool:
        return p is not None and n is not None and RAM_BASE <= p and p + n <= end

    def rd(p: int, n: int) -> bytes:
        return bytes(mm[p - RAM_BASE:p - RAM_BASE + n]) if inside(p, n) else b""

    kf, ks = chosen.get("kho_fdt"), chosen.get("kho_scratch")
    if not kf or not ks:
        res["errors"].append("no usable linux,kho-fdt / linux,kho-scratch in /chosen")
        return res
    sc_addr, sc_size = ks
    entries = []
    if inside(sc_addr, sc_size):
        raw = rd(sc_addr, sc_size)
        entries = [list(struct.unpack_from("<QQ", raw, i)) for i in range(0, len(raw) - 15, 16)]
    res["scratch"] = {"destination": sc_addr, "size": sc_size, "entries": entries}
    fdt_addr = kf[0]
    if not inside(fdt_addr, 40):
        res["errors"].append(f"root FDT {fdt_addr:#x} outside RAM")
        return res
    total = struct.unpack(">I", rd(fdt_addr + 4, 4))[0]
    raw = rd(fdt_addr, max(PAGE, min(total, 1 << 20)))
    try:
        root = capture.parse_fdt(raw)
    except (ValueError, struct.error, IndexError) as e:
        res["errors"].append(f"root FDT: {e}")
        return res
    props = root["props"]
    mem_map = capture._u64(props.get("preserved-memory-map"))
    res["fdt"] = {"phys": fdt_addr, "size": kf[1], "totalsize": total,
                  "compatible": props.get("compatible", b"").split(b"\0")[0].decode("latin-1"),
                  "preserved_memory_map": mem_map, "header": root["_header"]}
    res["_fdt_bytes"] = raw[:total]
    for child in root["children"]:
        res["subnodes"].append({"name": child["name"],
                                "preserved_data": capture._u64(child["props"].get("preserved-data")),
                                "blob_size": capture._u64(child["props"].get("blob-size")),
                                "props": sorted(child["props"])})

    def page(p: int) -> bytes:
        return rd(p, PAGE) if p >= RAM_BASE else bytes(PAGE)
    if mem_map:
        res["radix"] = capture.walk_radix(page, mem_map, end)
    else:
        res["errors"].append("preserved-memory-map missing or zero")
    for sn in res["subnodes"]:
        p, n = sn["preserved_data"], sn["blob_size"]
        f = stage_dir / "debugfs/kho/out/sub_fdts" / sn["name"] if stage_dir else None
        if inside(p, n) and f is not None and f.exists():
            sn["same_as_debugfs"] = rd(p, n) == f.read_bytes()
    return res


# ------------------------------------------------------------------ gdb helpers

def _regs(gdb: Gdb) -> list[int]:
    g = bytes.fromhex(gdb.request("g"))
    return [int.from_bytes(g[8 * i:8 * i + 8], "little") for i in range(min(34, len(g) // 8))]


def _read_virt(gdb: Gdb, addr: int, n: int) -> bytes:
    r = gdb.request(f"m{addr:x},{n:x}")
    if r.startswith("E") and len(r) == 3:
        raise RuntimeError(f"gdbstub cannot read {addr:#x}: {r}")
    return bytes.fromhex(r)


# ------------------------------------------------------------------ the chain

def run_chain(out: str | os.PathLike, opts: Arm64Options | None = None, build: Build | None = None) -> dict:
    """Boot ``opts.boots`` arm64 kernels in a KHO kexec chain; the capture goes
    to ``out`` (summary.json, serial.log, stageN/, ram/)."""
    opts = opts or Arm64Options()
    build = build or find_arm64_build()
    if build is None:
        raise RuntimeError("no arm64 kernel build: run vmtest/setup.sh and vmtest/build.sh --kernel 7.2-arm64")
    qemu = qemu_binary()
    if not qemu:
        raise RuntimeError("qemu-system-aarch64 not found: run vmtest/setup.sh")
    out = fresh_capture_dir(out)
    t_start = time.time()
    rlog_f = open(out / "runner.log", "w")

    def rlog(msg: str) -> None:
        rlog_f.write(f"[{time.time() - t_start:7.1f}s] {msg}\n")
        rlog_f.flush()
        log(msg)

    work = Path(tempfile.mkdtemp(prefix="vmtest-arm64-"))
    qmp_sock = work / "qmp.sock"
    s = __import__("socket").socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    serial = out / "serial.log"
    cmdline = opts.cmdline()
    argv = [qemu, "-M", "virt", "-cpu", "max", "-accel", "tcg", "-m", opts.memory, "-smp", str(opts.smp),
            "-no-reboot", "-nodefaults", "-display", "none", "-S", "-serial", f"file:{serial}",
            "-qmp", f"unix:{qmp_sock},server,nowait", "-gdb", f"tcp:127.0.0.1:{port}",
            "-kernel", str(build.dir / "Image"), "-initrd", str(build.initramfs), "-append", cmdline]
    if opts.numa:
        half = capture.guest_ram_size(opts.memory) // 2 >> 20
        cpus = [f"cpus={i}" for i in range(opts.smp)]
        argv += ["-object", f"memory-backend-ram,id=m0,size={half}M", "-object",
                 f"memory-backend-ram,id=m1,size={half}M",
                 "-numa", f"node,nodeid=0,memdev=m0,{cpus[0]}",
                 "-numa", "node,nodeid=1,memdev=m1" + (f",{cpus[1]}" if len(cpus) > 1 else "")]
    (out / "qemu-cmdline.txt").write_text(" ".join(argv) + "\n")
    rlog(f"arm64 kernel {build.release} from {build.dir}; cmdline: {cmdline}")
    qemu_err = open(work / "qemu.stderr", "w+")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=qemu_err, stderr=qemu_err)
    bp = build.machine_kexec
    summary: dict = {"arch": "arm64", "boots_requested": opts.boots, "cmdline": cmdline, "kernel": build.release,
                     "kernel_name": build.name, "build_dir": str(build.dir), "machine_kexec": f"{bp:#x}",
                     "numa": opts.numa, "stops": [], "exit": None}
    gdb = qmp = None
    entry = None            # (stage, stop record, physical entry) after a machine_kexec stop
    deadline = t_start + opts.timeout
    try:
        qmp = Qmp(qmp_sock)
        gdb = Gdb(port)
        if not gdb.set_breakpoint(bp):
            raise RuntimeError("gdbstub refused the machine_kexec breakpoint")
        gdb.send("c")
        stop_no = 0
        last_size, last_change = -1, time.time()
        while True:
            now = time.time()
            if now > deadline:
                summary["exit"] = "timeout"
                break
            size = serial.stat().st_size if serial.exists() else 0
            if size != last_size:
                last_size, last_change = size, now
            elif now - last_change > opts.stall_timeout:
                summary["exit"] = "stalled"
                rlog(f"guest hung: no console output for {opts.stall_timeout:.0f}s")
                try:
                    (out / "hang-registers.txt").write_text(qmp.hmp("info registers -a"))
                except Exception:  # noqa: BLE001
                    pass
                break
            try:
                r = gdb.wait_stop(min(deadline - now, 2.0))
            except TimeoutError:
                if proc.poll() is not None:
                    summary["exit"] = "qemu-exited"
                    break
                continue
            except (ConnectionResetError, BrokenPipeError, GdbExited):
                summary["exit"] = "qemu-exited"
                break
            if r[0] in "WX":
                summary["exit"] = "qemu-exited"
                break
            regs = _regs(gdb)
            pc = regs[REG_PC]
            if pc == bp and entry is None:
                stop_no += 1
                kimage = regs[REG_X0]
                start = struct.unpack("<Q", _read_virt(gdb, kimage + KIMAGE_START, 8))[0]
                nseg = struct.unpack("<Q", _read_virt(gdb, kimage + KIMAGE_NR_SEGMENTS, 8))[0]
                segs = []
                if nseg <= 16:
                    raw = _read_virt(gdb, kimage + KIMAGE_SEGMENTS, 32 * nseg)
                    segs = [{"mem": m, "memsz": ms, "bufsz": bs} for _b, bs, m, ms in
                            (KEXEC_SEGMENT.unpack_from(raw, 32 * i) for i in range(nseg))]
                stop = {"stage": stop_no, "pc": f"{pc:#x}", "kimage": f"{kimage:#x}", "entry": f"{start:#x}",
                        "segments": segs}
                summary["stops"].append(stop)
                rlog(f"stop {stop_no}: machine_kexec, kimage {kimage:#x}, next kernel's entry {start:#x}, "
                     f"{nseg} segments")
                gdb.clear_breakpoint(bp)
                if not gdb.set_breakpoint(start):
                    raise RuntimeError(f"gdbstub refused the entry breakpoint {start:#x}")
                entry = (stop_no, stop, start)
            elif entry is not None and pc == entry[2]:
                n, stop, start = entry
                t0 = time.time()
                _entry_stop(n, out, qmp, gdb, regs, stop, opts, rlog)
                stop["seconds"] = round(time.time() - t0, 2)
                gdb.clear_breakpoint(start)
                gdb.set_breakpoint(bp)
                entry = None
            else:
                rlog(f"unexpected stop at {pc:#x} ({r}); continuing")
            gdb.send("c")
            last_change = time.time()
        if entry is not None:
            summary.setdefault("problems", []).append(f"stop {entry[0]}: the next kernel never reached its entry")
    except Exception as e:  # noqa: BLE001 - recorded, QEMU cleaned up
        summary["exit"] = f"error: {type(e).__name__}: {e}"
        rlog(summary["exit"])
    finally:
        end_qemu(summary, proc, gdb, qmp, qemu_err, work)
    stages = split_serial(serial, out) if serial.exists() else {}
    summary["stages"] = {str(k): {x: v[x] for x in ("started", "kexec", "end", "errors", "notes")}
                         for k, v in sorted(stages.items())}
    summary["stages_reached"] = max((k for k, v in stages.items() if v["started"]), default=0)
    summary["completed"] = bool(stages.get(opts.boots, {}).get("end"))
    summary["elapsed_s"] = round(time.time() - t_start, 1)
    rlog(f"done: exit={summary['exit']} stages_reached={summary['stages_reached']}/{opts.boots} "
         f"completed={summary['completed']} in {summary['elapsed_s']}s")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    rlog_f.close()
    return summary


def _entry_stop(n: int, out: Path, qmp: Qmp, gdb: Gdb, regs: list[int], stop: dict, opts: Arm64Options,
                rlog) -> None:
    """The next kernel's first instruction: the DT, the RAM, the analysis, the writes."""
    ram_out = out / "ram"
    dtb_phys = regs[REG_X0]
    head = gdb.read_phys(dtb_phys, 40)
    total = struct.unpack(">I", head[4:8])[0] if head[:4] == b"\xd0\x0d\xfe\xed" else 0
    dtb = gdb.read_phys(dtb_phys, min(max(total, 40), 1 << 20))
    (ram_out / f"next-dt-stage{n}.dtb").write_bytes(dtb)
    stop["dtb"] = f"{dtb_phys:#x}"
    try:
        chosen = parse_chosen(dtb)
    except (ValueError, struct.error, IndexError) as e:
        chosen = {"error": str(e)}
    stop["chosen"] = chosen
    split_serial(out / "serial.log", out)
    sd = out / f"stage{n}"
    fd, name = tempfile.mkstemp(prefix=f"vmtest-arm64-ram{n}-", suffix=".bin",
                                dir=capture.ram_tmpdir(capture.guest_ram_size(opts.memory)))
    os.close(fd)
    full = Path(name)
    try:
        t0 = time.time()
        qmp.execute("pmemsave", val=RAM_BASE, size=capture.guest_ram_size(opts.memory), filename=str(full))
        stop["pmemsave_s"] = round(time.time() - t0, 2)
        with open(full, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            loc = analyse(mm, chosen, sd if sd.exists() else None)
            loc["dtb"] = {"phys": dtb_phys, "size": len(dtb)}
            ranges, _ = capture.select_ranges(loc, opts.keep, opts.keep_cap, base=RAM_BASE,
                                              extra=[(dtb_phys, len(dtb))])
            shifted = [(a - RAM_BASE, ln) for a, ln in ranges]
            capture.write_sparse(mm, shifted, ram_out / f"ram-stage{n}.sparse")
        # the manifest names physical addresses
        man = ram_out / f"ram-stage{n}.sparse" / "MANIFEST.tsv"
        rows = ["# file\tphys_start\tlength"]
        for a, ln in ranges:
            src = ram_out / f"ram-stage{n}.sparse" / f"{a - RAM_BASE:012x}.bin"
            src.rename(src.with_name(f"{a:012x}.bin"))
            rows.append(f"{a:012x}.bin\t{a:#x}\t{ln:#x}")
        man.write_text("\n".join(rows) + "\n")
        fdt_bytes = loc.pop("_fdt_bytes", None)
        if fdt_bytes:
            (ram_out / f"ram-stage{n}-out-fdt-full.dtb").write_bytes(fdt_bytes)
        loc["sparse"] = {"dir": f"ram-stage{n}.sparse", "ranges": [[a, ln] for a, ln in ranges]}
        stop["errors"] = loc["errors"]
        if loc.get("radix"):
            stop["preserved_entries"] = len(loc["radix"]["entries"])
        writes = []
        if opts.hook:
            writes = list(opts.hook(Arm64Ctx(n, out, sd, loc, full)) or [])
        done = []
        for phys, data in writes:
            before = gdb.read_phys(phys, len(data))
            gdb.write_phys(phys, data)
            after = gdb.read_phys(phys, len(data))
            done.append({"phys": f"{phys:#x}", "len": len(data), "before": before.hex()[:256],
                         "after": after.hex()[:256], "ok": after == data})
        if done:
            (ram_out / f"inject-stage{n}.json").write_text(json.dumps(done, indent=1) + "\n")
            stop["writes"] = done
        (ram_out / f"locate-stage{n}.json").write_text(json.dumps(loc, indent=1) + "\n")
    finally:
        full.unlink(missing_ok=True)
    rlog(f"stop {n}: next kernel's entry, DT at {dtb_phys:#x} ({len(dtb)} bytes), RAM saved in "
         f"{stop['pmemsave_s']}s, {len(stop.get('writes', []))} write(s)"
         + (f"; problems: {loc['errors']}" if loc["errors"] else ""))


# ------------------------------------------------------------------ pykho's side

def predict(ctx: Arm64Ctx, writes: list[tuple[int, bytes]] = (), cmdline: str | None = None) -> dict:
    """pykho's verdict for boot ``ctx.stage + 1``: the 7.2 model (arch arm64)
    booted on the captured RAM with ``writes`` applied (copy-on-write), the
    handover found from the DT the next kernel receives (``x0``), as that
    kernel's ``early_init_dt_check_kho`` finds it.  The same dict shape as
    vmtest.campaign.predict."""
    from pykho import profiles as P
    from pykho.handover import load
    from pykho.memory import CowMemory, RawImage
    from pykho.memory.iomem import parse_iomem
    from pykho.reports.validate import validate

    from . import campaign as camp
    dt = ctx.locate["dtb"]
    cmdline = cmdline or (ctx.stage_dir / "cmdline.txt").read_text().strip().replace(
        f"vmtest_stage={ctx.stage}", f"vmtest_stage={ctx.stage + 1}")
    with RawImage(str(ctx.ram_file), base=RAM_BASE) as raw:
        cow = CowMemory(raw, raw.ranges())
        for phys, data in writes:
            cow.write(phys, data)
        boot_dt = cow.read(dt["phys"], dt["size"])
        fdt_guess = (ctx.locate.get("fdt") or {}).get("phys")
        out = str(ctx.stage_dir / "debugfs" / "kho" / "out")
        ho = load(out, cow, fdt_guess)
        iomem_txt = ctx.stage_dir / "iomem.txt"
        iomem = parse_iomem(iomem_txt.read_text()) if iomem_txt.exists() else None
        rep = validate(ho, P.E, iomem=iomem or None, want_reserved=True, cmdline=cmdline, arch="arm64",
                       boot_data=boot_dt)
    v = rep["verdict"]
    viol = [x["kind"] for x in v.get("model_violations", [])]
    if any(x["kind"] == "panic" and x["step"] == "setup_arch" for x in v.get("model_violations", [])):
        fate = "silent-panic"        # before any console (earlycon too): the machine dies silently
    elif any(x.startswith("Kernel panic") for x in v["log"]):
        fate = "panic"
    elif any(k in camp.CORRUPTING for k in viol):
        fate = "corruption"
    else:
        fate = "ok"
    return {"lines": [x for x in v["log"] if x.startswith(camp.RELEVANT + ARM64_RELEVANT)],
            "reserved": v.get("reserved"), "oops": v.get("oops"), "fate": fate, "populate": v["populate"],
            "outcome": v.get("outcome"), "violations": sorted(set(viol)), "cmdline": cmdline,
            "debugfs": v.get("debugfs", {}), "clients": v.get("clients", {}),
            "findings": sorted({f["code"] for f in rep["findings"] if f["severity"] == "error"}),
            "report": rep}


#: arm64's own fault lines (arch/arm64/mm/fault.c die_kernel_fault)
ARM64_OOPS = ("Unable to handle kernel paging request at virtual address ",
              "Unable to handle kernel NULL pointer dereference at virtual address ")
ARM64_RELEVANT = ARM64_OOPS


def compare(real: dict, pred: dict) -> tuple[bool, list[str]]:
    """vmtest.campaign.compare; arm64's fault line is compared exactly for a
    read through the linear map (the model knows the address), by range
    (compare's oops check) for a struct page write (a field offset the
    compiler chose)."""
    from . import campaign as camp
    if pred.get("oops") and pred["oops"].get("access") != "read":
        real = dict(real, lines=[x for x in real["lines"] if not x.startswith(ARM64_OOPS)])
    return camp.compare(real, pred)


def observe(capture_dir: Path, summary: dict, stage: int = 2) -> dict:
    """What boot ``stage`` did (vmtest.campaign.observe, plus arm64's fault line)."""
    from . import campaign as camp
    obs = camp.observe(capture_dir, summary, stage)
    lines = camp.boot_lines(Path(capture_dir) / f"stage{stage}")
    rel = []
    for x in lines:
        if x.startswith(camp.USERSPACE):
            break
        if x.startswith(camp.RELEVANT + ARM64_RELEVANT):
            rel.append(x.rstrip())
    obs["lines"] = rel
    faults = [x.split("virtual address ")[1].split()[0] for x in rel if x.startswith(ARM64_OOPS)]
    obs["oops"] = faults[0] if faults else None
    return obs
