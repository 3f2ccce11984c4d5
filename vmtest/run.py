#!/usr/bin/env python3
"""vmtest/run.py - boot the vmtest kernel under QEMU (TCG) and drive real KHO kexecs.

Subcommands (``run`` is the default):

  run   boot a chain of N kernels (each stage kexecs the next one with KHO).
        The QEMU gdbstub stops the guest at ``machine_kexec`` before each jump;
        the runner saves guest RAM through QMP ``pmemsave``, keeps only the pages
        a test needs (a sparse RAM directory), optionally writes given bytes into
        guest memory (fault injection for the differential tests) and lets the
        jump happen.  Writes into kexec segments (setup_data, scratch array) are
        deferred to the next kernel's x86_64_start_kernel, after purgatory's
        sha256 check (see Write).  The serial log is split into one folder per stage.
  split SERIAL OUT      split a serial log (ours or the oracle's) into stage folders
  scan  RAMFILE STAGEDIR OUT [--stage N]
                        analyse a full RAM dump taken at machine_kexec (setup_data,
                        root FDT, radix tree, scratch array copies) and write the
                        sparse RAM directory + locate-stageN.json

Capture layout (``--out DIR``)::

  qemu-cmdline.txt serial.log runner.log summary.json
  stageN/cmdline.txt dmesg.txt dmesg_kho.txt console-boot.log console-kexec.log ...
  stageN/debugfs/kho/{in,out}/...          files exactly as read from debugfs
  ram/ram-stageN.sparse/MANIFEST.tsv + <phys:012x>.bin   (RAM at machine_kexec of boot N)
  ram/locate-stageN.json                   what the runner found in that RAM
  ram/ram-stageN-out-fdt-full.dtb          the complete outgoing root FDT of boot N
  ram/qmp-stageN.txt                       registers at the breakpoint
  ram/inject-stageN.json                   bytes written (if any), with their phase

Only the Python standard library is used.  Python API: :func:`run_chain`.
"""
from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import json
import mmap
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PAGE = 4096
RAM_SIZE = 1 << 30  # -m 1G
SETUP_KEXEC_KHO = 10
FDT_MAGIC = 0xD00DFEED
KHO_DEBUGFS = "/sys/kernel/debug/kho"

BASE_CMDLINE = "console=ttyS0 kho=on liveupdate=on panic=-1 memblock=debug log_buf_len=4M"


def cache_dir() -> Path:
    return Path(os.environ.get("VMTEST_CACHE") or REPO / ".vmcache")


def log(msg: str) -> None:
    print(f"[vmtest] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# build folder

@dataclasses.dataclass
class Build:
    dir: Path
    info: dict

    @property
    def bzimage(self) -> Path:
        return self.dir / "bzImage"

    @property
    def initramfs(self) -> Path:
        return self.dir / "initramfs.cpio.gz"

    @property
    def machine_kexec(self) -> int:
        return int(self.info["VMTEST_MACHINE_KEXEC"], 16)

    def symbol(self, name: str) -> int:
        """Address of a kernel symbol from the build's System.map."""
        for line in (self.dir / "System.map").read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2] == name:
                return int(parts[0], 16)
        raise KeyError(f"{name} not in {self.dir / 'System.map'}")

    def symbolize(self, addr: int) -> str:
        """'func+0xoff' for a kernel text address (System.map)."""
        if not hasattr(self, "_syms"):
            syms = []
            for line in (self.dir / "System.map").read_text().splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[1] in "tTwW":
                    syms.append((int(parts[0], 16), parts[2]))
            syms.sort()
            self._syms = syms
        import bisect
        i = bisect.bisect_right(self._syms, (addr, "\xff")) - 1
        if i < 0 or addr - self._syms[i][0] > (1 << 20):
            return f"{addr:#x}"
        return f"{self._syms[i][1]}+{addr - self._syms[i][0]:#x}"

    @property
    def release(self) -> str:
        return self.info.get("VMTEST_KERNELRELEASE", "")


def read_env(path: Path) -> dict:
    out = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def find_build(build_dir: str | os.PathLike | None = None) -> Build | None:
    """The kernel build to use: ``build_dir``, $VMTEST_BUILD, or the one that
    ``build.sh --print-dir`` names for the current source and kernel.config."""
    cand = build_dir or os.environ.get("VMTEST_BUILD")
    if not cand:
        try:
            cand = subprocess.run(["bash", str(HERE / "build.sh"), "--print-dir"], check=True,
                                  capture_output=True, text=True).stdout.strip().splitlines()[-1]
        except (subprocess.CalledProcessError, IndexError):
            return None
    d = Path(cand)
    need = [d / "bzImage", d / "initramfs.cpio.gz", d / "build-info.env", d / ".kernel-complete"]
    if not all(p.exists() for p in need):
        return None
    return Build(d, read_env(d / "build-info.env"))


# --------------------------------------------------------------------------
# QMP and the gdb remote protocol

class Qmp:
    def __init__(self, path: Path, timeout: float = 30):
        deadline = time.time() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        self.sock.settimeout(600)
        self.buf = b""
        self._recv()  # greeting
        self.execute("qmp_capabilities")

    def _recv(self) -> dict:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("QMP closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, cmd: str, **args):
        msg = {"execute": cmd}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            r = self._recv()
            if "return" in r:
                return r["return"]
            if "error" in r:
                raise RuntimeError(f"QMP {cmd}: {r['error']}")
            # asynchronous events are ignored

    def hmp(self, line: str) -> str:
        return self.execute("human-monitor-command", **{"command-line": line})

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class GdbExited(Exception):
    pass


class Gdb:
    """Just enough of the gdb remote serial protocol for QEMU's gdbstub."""

    def __init__(self, port: int, timeout: float = 30):
        deadline = time.time() + timeout
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        self.buf = b""
        self.sock.settimeout(None)
        self.request("qSupported:swbreak+")
        # QEMU answers '?' with the stop reason; it also pauses the guest on a
        # new connection and drops every breakpoint
        self.halt_reason = self.request("?")

    def _fill(self, timeout: float | None):
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError
        if not chunk:
            raise GdbExited("gdbstub connection closed")
        self.buf += chunk

    def _read_packet(self, timeout: float | None = None) -> str:
        deadline = None if timeout is None else time.time() + timeout
        while True:
            # drop acks and anything before a packet start
            i = self.buf.find(b"$")
            if i < 0:
                self.buf = b""
            else:
                self.buf = self.buf[i:]
                j = self.buf.find(b"#")
                if j >= 0 and len(self.buf) >= j + 3:
                    data = self.buf[1:j]
                    self.buf = self.buf[j + 3:]
                    self.sock.sendall(b"+")
                    return data.decode("latin-1")
            left = None if deadline is None else max(0.0, deadline - time.time())
            if left == 0.0:
                raise TimeoutError
            self._fill(left)

    def send(self, data: str):
        cs = sum(data.encode("latin-1")) & 0xFF
        self.sock.sendall(f"${data}#{cs:02x}".encode("latin-1"))

    def request(self, data: str, timeout: float = 60) -> str:
        self.send(data)
        return self._read_packet(timeout)

    def wait_stop(self, timeout: float | None) -> str:
        """Wait for a stop reply (T../S..) or exit (W../X..)."""
        while True:
            r = self._read_packet(timeout)
            if r and r[0] in "TSWX":
                return r
            # 'O' console output packets and the like are ignored

    def read_reg(self, num: int) -> int:
        """A register of the stopped vCPU (x86_64 numbering: 5 = rdi, 16 = rip)."""
        r = self.request(f"p{num:x}")
        if r and not r.startswith("E"):
            return int.from_bytes(bytes.fromhex(r), "little")
        # QEMU 7.2 has no 'p': read them all ('g': rax..r15, then rip; 8 bytes each)
        g = bytes.fromhex(self.request("g"))
        if len(g) < 8 * (num + 1) or num > 16:
            raise RuntimeError(f"gdbstub cannot read register {num}")
        return int.from_bytes(g[8 * num:8 * num + 8], "little")

    def phys_mode(self, on: bool):
        r = self.request(f"Qqemu.PhyMemMode:{1 if on else 0}")
        if r != "OK":
            raise RuntimeError(f"gdbstub refused Qqemu.PhyMemMode: {r!r}")

    def write_phys(self, addr: int, data: bytes, chunk: int = 1024):
        self.phys_mode(True)
        try:
            for off in range(0, len(data), chunk):
                part = data[off:off + chunk]
                r = self.request(f"M{addr + off:x},{len(part):x}:{part.hex()}")
                if r != "OK":
                    raise RuntimeError(f"gdbstub M at {addr + off:#x}: {r!r}")
        finally:
            self.phys_mode(False)

    def read_phys(self, addr: int, length: int, chunk: int = 1024) -> bytes:
        self.phys_mode(True)
        out = bytearray()
        try:
            for off in range(0, length, chunk):
                n = min(chunk, length - off)
                r = self.request(f"m{addr + off:x},{n:x}")
                if r.startswith("E") and len(r) == 3:
                    raise RuntimeError(f"gdbstub m at {addr + off:#x}: {r!r}")
                out += bytes.fromhex(r)
        finally:
            self.phys_mode(False)
        return bytes(out)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------
# serial log splitting

MARK = re.compile(r"^@@KHO-(STAGE-START|STAGE-END|TEXT-BEGIN|TEXT-END|TEXT-RC|BLOB-BEGIN|BLOB-END|NOTE|KEXEC)\s+(.*)$")


def _kv(s: str) -> dict:
    out = {}
    for w in s.split():
        if "=" in w:
            k, v = w.split("=", 1)
            out[k] = v
    return out


def split_serial(serial: Path, out: Path) -> dict:
    """Split a vmtest (or oracle) serial log into stageN/ folders.

    Returns {stage: {"texts": [...], "blobs": {path: ok}, "notes": [...],
    "kexec": bool, "end": bool, "errors": [...]}}.
    """
    raw = serial.read_bytes().decode("utf-8", "replace").replace("\r", "")
    lines = raw.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    banner = re.compile(r"^\[\s*\d+\.\d+\] Linux version \d")
    stages: dict[int, dict] = {}
    stage = 1               # the stage whose lines we are reading
    kexec_stage = 0         # the stage that last announced a kexec
    console: list[str] = []  # console lines outside the /init dumps
    cur_text: tuple[str, list[str]] | None = None
    cur_blob: tuple[str, dict, list[str]] | None = None
    phase = "boot"          # boot -> init -> (kexec -> boot ...) | end

    def st(n: int) -> dict:
        return stages.setdefault(n, {"texts": [], "blobs": {}, "notes": [], "kexec": False,
                                     "end": False, "errors": [], "started": False})

    def sdir(n: int) -> Path:
        d = out / f"stage{n}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def flush(n: int, name: str):
        nonlocal console
        if console and n > 0:
            (sdir(n) / name).write_text("\n".join(console) + "\n")
            st(n)
        console = []

    for line in lines:
        m = MARK.match(line)
        if cur_blob is not None and not (m and m.group(1) == "BLOB-END"):
            if re.fullmatch(r"[A-Za-z0-9+/=]+", line.strip() or "-"):
                cur_blob[2].append(line.strip())
            continue
        if cur_text is not None and not (m and m.group(1) in ("TEXT-END", "TEXT-RC")):
            cur_text[1].append(line)
            continue
        if not m:
            if phase == "kexec" and banner.match(line):
                flush(kexec_stage, "console-kexec.log")   # the old kernel's last words
                phase = "boot"
            console.append(line)
            continue
        kind, rest = m.group(1), m.group(2)
        kv = _kv(rest)
        n = int(kv.get("stage", stage))
        if kind == "STAGE-START":
            if phase == "kexec":
                flush(kexec_stage, "console-kexec.log")
            stage = n
            s = st(stage)
            s["started"] = True
            s["last"] = int(kv["last"]) if "last" in kv else None
            flush(stage, "console-boot.log")
            phase = "init"
        elif kind == "TEXT-BEGIN":
            cur_text = (kv.get("name", "text"), [])
        elif kind == "TEXT-RC":
            if cur_text is not None:
                st(n).setdefault("rc", {})[cur_text[0]] = int(kv.get("rc", "0"))
        elif kind == "TEXT-END":
            if cur_text is not None:
                name, buf = cur_text
                (sdir(n) / f"{name}.txt").write_text("\n".join(buf) + ("\n" if buf else ""))
                st(n)["texts"].append(name)
            cur_text = None
        elif kind == "BLOB-BEGIN":
            cur_blob = (kv.get("path", ""), kv, [])
        elif kind == "BLOB-END":
            if cur_blob is not None:
                path, meta, b64 = cur_blob
                data = base64.b64decode("".join(b64))
                ok = (str(len(data)) == meta.get("size")
                      and hashlib.sha256(data).hexdigest() == meta.get("sha256"))
                if path.startswith(KHO_DEBUGFS + "/"):
                    rel = Path("debugfs/kho") / path[len(KHO_DEBUGFS) + 1:]
                else:
                    rel = Path("blobs") / path.lstrip("/")
                dest = sdir(n) / rel
                if path in st(n)["blobs"]:   # dumped twice: keep both
                    dest = dest.with_name(dest.name + ".again")
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
                st(n)["blobs"][path] = ok
                if not ok:
                    st(n)["errors"].append(f"blob {path}: size/sha256 mismatch")
            cur_blob = None
        elif kind == "NOTE":
            st(n)["notes"].append(rest.split(None, 1)[1] if " " in rest else "")
        elif kind == "KEXEC":
            st(n)["kexec"] = True
            flush(n, "console-init.log")
            phase = "kexec"
            kexec_stage = n
            stage = n + 1
        elif kind == "STAGE-END":
            st(n)["end"] = True
            flush(n, "console-init.log")
            phase = "end"
    # whatever is left: the last words of a kexec whose next kernel never printed,
    # the boot log of a kernel that never reached /init, or the final shutdown
    if phase == "kexec":
        flush(kexec_stage, "console-kexec.log")
    elif phase == "boot":
        flush(stage, "console-boot.log")
    elif phase == "end":
        flush(stage, "console-end.log")
    else:
        flush(stage, "console-init.log")
    for n, s in stages.items():
        (sdir(n) / "stage.json").write_text(json.dumps(s, indent=1, sort_keys=True) + "\n")
    return stages


# --------------------------------------------------------------------------
# RAM analysis (independent of pykho)

def parse_fdt(buf: bytes) -> dict:
    """Minimal flattened-device-tree reader: returns the root node as
    {"name", "props": {name: bytes}, "children": [...]} plus "_header"."""
    if len(buf) < 40:
        raise ValueError("FDT: too short")
    (magic, totalsize, off_struct, off_strings, _rsv, version, last_comp, _cpu,
     size_strings, size_struct) = struct.unpack(">10I", buf[:40])
    if magic != FDT_MAGIC:
        raise ValueError(f"FDT: bad magic {magic:#x}")
    if totalsize > len(buf):
        raise ValueError(f"FDT: totalsize {totalsize} beyond the {len(buf)} bytes available")
    strings = buf[off_strings:off_strings + size_strings]
    pos = off_struct
    end = off_struct + size_struct
    stack: list[dict] = []
    root = None
    while pos < end:
        tok = struct.unpack(">I", buf[pos:pos + 4])[0]
        pos += 4
        if tok == 1:
            z = buf.index(b"\0", pos)
            node = {"name": buf[pos:z].decode("latin-1"), "props": {}, "children": []}
            pos = (z + 1 + 3) & ~3
            if stack:
                stack[-1]["children"].append(node)
            else:
                root = node
            stack.append(node)
        elif tok == 2:
            stack.pop()
        elif tok == 3:
            ln, nameoff = struct.unpack(">II", buf[pos:pos + 8])
            pos += 8
            nz = strings.index(b"\0", nameoff)
            stack[-1]["props"][strings[nameoff:nz].decode("latin-1")] = bytes(buf[pos:pos + ln])
            pos = (pos + ln + 3) & ~3
        elif tok == 4:
            continue
        elif tok == 9:
            break
        else:
            raise ValueError(f"FDT: bad token {tok:#x} at {pos - 4}")
    if root is None:
        raise ValueError("FDT: no root node")
    root["_header"] = {"totalsize": totalsize, "version": version, "last_comp_version": last_comp,
                       "off_dt_struct": off_struct, "off_dt_strings": off_strings}
    return root


def _u64(b: bytes | None) -> int | None:
    return struct.unpack("<Q", b)[0] if b is not None and len(b) == 8 else None


def walk_radix(read_page: Callable[[int], bytes], root: int, ram_size: int) -> dict:
    """Walk the KHO (kho-v2..v4) radix tree the way the kernel does: tables at
    levels 5..1 (512 LE u64 physical addresses, ascending index), a 32768-bit
    bitmap at level 0 (ascending bit).  key = (1 << (52 - order)) | (pa >> (12 + order))."""
    nodes: list[list[int]] = []
    entries: list[list[int]] = []
    errors: list[str] = []
    seen: set[int] = set()

    def visit(phys: int, level: int, start: int):
        if phys % PAGE or phys + PAGE > ram_size:
            errors.append(f"level {level} node pointer {phys:#x} is not a page inside RAM")
            return
        if phys in seen:
            errors.append(f"node {phys:#x} reached twice (cycle or shared node)")
            return
        seen.add(phys)
        nodes.append([phys, level])
        page = read_page(phys)
        if level == 0:
            words = struct.unpack("<512Q", page)
            for w, word in enumerate(words):
                while word:
                    low = word & -word
                    bit = low.bit_length() - 1
                    word ^= low
                    key = start | (w * 64 + bit)
                    order = 53 - key.bit_length()
                    if order < 0:
                        errors.append(f"key {key:#x} has no valid order")
                        continue
                    pa = (key << (12 + order)) & ((1 << 64) - 1)
                    entries.append([pa, order])
            return
        table = struct.unpack("<512Q", page)
        shift = (level - 1) * 9 + 15
        for i, child in enumerate(table):
            if child:
                visit(child, level - 1, start | (i << shift))

    if root:
        visit(root, 5, 0)
    return {"root": root, "nodes": nodes, "entries": entries, "errors": errors}


def _find_all(mm, needle: bytes, start: int = 0, end: int | None = None) -> Iterable[int]:
    """Offsets of ``needle`` in ``mm``.  Guest RAM is mostly zero pages, where
    bytes.find degrades badly for needles that contain zeros; a regular
    expression searching for the needle's part after its leading zero bytes
    (found with memchr-like speed) and a full compare are much quicker."""
    end = len(mm) if end is None else end
    lead = len(needle) - len(needle.lstrip(b"\0"))
    if lead == len(needle):
        raise ValueError("needle is all zeros")
    pat = re.compile(re.escape(needle[lead:]), re.DOTALL)
    for m in pat.finditer(mm, max(0, start + lead), end):
        i = m.start() - lead
        if i >= start and mm[i:i + len(needle)] == needle:
            yield i


def _read_scratch_text(stage_dir: Path) -> list[list[int]] | None:
    d = stage_dir / "debugfs/kho/out"
    try:
        phys = [int(x, 16) for x in (d / "scratch_phys").read_text().split()]
        lens = [int(x, 16) for x in (d / "scratch_len").read_text().split()]
    except (OSError, ValueError):
        return None
    if len(phys) != len(lens):
        return None
    return [[a, s] for a, s in zip(phys, lens)]


def _score_handover(mm, fdt_addr: int, stage_dir: Path | None) -> int:
    """How well the handover whose root FDT is at fdt_addr matches this boot's debugfs."""
    try:
        total = struct.unpack(">I", mm[fdt_addr + 4:fdt_addr + 8])[0]
        raw = bytes(mm[fdt_addr:fdt_addr + max(PAGE, min(total, 1 << 20))])
        root = parse_fdt(raw)
    except (ValueError, struct.error, IndexError):
        return -1
    score = 1
    out = stage_dir / "debugfs/kho/out" if stage_dir else None
    if out and (out / "fdt").exists():
        dbg = (out / "fdt").read_bytes()
        if dbg and raw.startswith(dbg):
            score += 10
    for child in root["children"]:
        p, n = _u64(child["props"].get("preserved-data")), _u64(child["props"].get("blob-size"))
        f = out / "sub_fdts" / child["name"] if out else None
        if p is not None and n is not None and f is not None and f.exists() and p + n <= len(mm):
            if bytes(mm[p:p + n]) == f.read_bytes():
                score += 2
    return score


def analyse_ram(mm, stage_dir: Path | None) -> dict:
    """Find the KHO handover state in a RAM image taken at machine_kexec."""
    ram_size = len(mm)
    res: dict = {"ram_size": ram_size, "setup_data": [], "fdt": None, "radix": None,
                 "subnodes": [], "scratch": None, "errors": []}

    def page(p: int) -> bytes:
        return bytes(mm[p:p + PAGE])

    # 1. staged SETUP_KEXEC_KHO setup_data records: {u64 next; u32 type=10; u32 len=32;
    #    u64 fdt_addr; u64 fdt_size; u64 scratch_addr; u64 scratch_size}
    needle = struct.pack("<II", SETUP_KEXEC_KHO, 32)
    for i in _find_all(mm, needle, 8):
        if i % 4:
            continue
        rec = i - 8
        nxt, = struct.unpack("<Q", mm[rec:rec + 8])
        fdt_addr, fdt_size, sc_addr, sc_size = struct.unpack("<4Q", mm[i + 8:i + 40])
        if (fdt_addr % PAGE or not 0 < fdt_addr < ram_size or not 0 < fdt_size <= (1 << 20)
                or sc_size == 0 or sc_size > 65536 or sc_addr >= ram_size):
            continue
        if struct.unpack(">I", mm[fdt_addr:fdt_addr + 4])[0] != FDT_MAGIC:
            continue
        res["setup_data"].append({"phys": rec, "next": nxt, "fdt_addr": fdt_addr, "fdt_size": fdt_size,
                                  "scratch_addr": sc_addr, "scratch_size": sc_size})
    if not res["setup_data"]:
        res["errors"].append("no SETUP_KEXEC_KHO setup_data found in RAM")
        return res
    # RAM can also hold stale records (a previous kexec's staged boot_params that
    # nobody overwrote).  Score each distinct record by how well its handover
    # matches what this boot's debugfs shows, and keep the best one.
    groups: dict[tuple, list[dict]] = {}
    for s in res["setup_data"]:
        groups.setdefault((s["fdt_addr"], s["fdt_size"], s["scratch_addr"], s["scratch_size"]), []).append(s)
    scored = sorted(((_score_handover(mm, k[0], stage_dir), k) for k in groups), reverse=True)
    res["setup_data_candidates"] = [{"fdt_addr": k[0], "scratch_addr": k[2], "score": sc,
                                     "copies": [s["phys"] for s in groups[k]]} for sc, k in scored]
    if len(scored) > 1 and scored[0][0] == scored[1][0]:
        res["errors"].append(f"cannot tell which setup_data is current: {res['setup_data_candidates']}")
    best = scored[0][1]
    res["setup_data"] = groups[best]
    res["setup_data_stale"] = [s for k, g in groups.items() if k != best for s in g]
    sd = res["setup_data"][-1]

    # 2. root FDT
    fdt_addr = sd["fdt_addr"]
    hdr_total = struct.unpack(">I", mm[fdt_addr + 4:fdt_addr + 8])[0]
    span = max(sd["fdt_size"], min(hdr_total, 1 << 20))
    raw = bytes(mm[fdt_addr:fdt_addr + span])
    try:
        root = parse_fdt(raw)
    except ValueError as e:
        res["errors"].append(f"root FDT: {e}")
        return res
    props = root["props"]
    compat = props.get("compatible", b"").split(b"\0")[0].decode("latin-1")
    mem_map_raw = props.get("preserved-memory-map")
    mem_map = _u64(mem_map_raw)
    res["fdt"] = {"phys": fdt_addr, "totalsize": hdr_total, "compatible": compat,
                  "preserved_memory_map": mem_map, "header": root["_header"]}
    res["_fdt_bytes"] = raw[:hdr_total]
    for child in root["children"]:
        res["subnodes"].append({"name": child["name"],
                                "preserved_data": _u64(child["props"].get("preserved-data")),
                                "blob_size": _u64(child["props"].get("blob-size")),
                                "props": sorted(child["props"])})

    # 3. radix tree
    if mem_map:
        res["radix"] = walk_radix(page, mem_map, ram_size)
    else:
        res["errors"].append("preserved-memory-map missing or zero")

    # 4. scratch array copies (the kexec segment is still at its staging page)
    sc = _read_scratch_text(stage_dir) if stage_dir else None
    copies: list[int] = []
    if sc:
        blob = b"".join(struct.pack("<QQ", a, s) for a, s in sc)
        copies = list(_find_all(mm, blob))
    res["scratch"] = {"entries": sc, "copies": copies,
                      "destination": sd["scratch_addr"], "size": sd["scratch_size"]}

    # 5. sub-blobs versus the debugfs copies
    for sn in res["subnodes"]:
        p, n = sn["preserved_data"], sn["blob_size"]
        if p is None or n is None or p + n > ram_size:
            continue
        if stage_dir:
            f = stage_dir / "debugfs/kho/out/sub_fdts" / sn["name"]
            if f.exists():
                sn["same_as_debugfs"] = bytes(mm[p:p + n]) == f.read_bytes()
    return res


def select_ranges(res: dict, keep: str = "preserved", cap: int = 64 << 20) -> tuple[list[tuple[int, int]], dict]:
    """Page-aligned (start, length) ranges to keep from a RAM image."""
    ram = res["ram_size"]
    want: list[tuple[int, int]] = []

    def add(p: int | None, n: int | None):
        if p is None or n is None or n <= 0 or p >= ram:
            return
        a = p & ~(PAGE - 1)
        b = min(ram, (p + n + PAGE - 1) & ~(PAGE - 1))
        want.append((a, b - a))

    for s in res["setup_data"]:
        add(s["phys"], 48)
    if res["fdt"]:
        add(res["fdt"]["phys"], max(PAGE, res["fdt"]["totalsize"]))
    for sn in res["subnodes"]:
        add(sn["preserved_data"], sn["blob_size"])
    if res["radix"]:
        for p, _lvl in res["radix"]["nodes"]:
            add(p, PAGE)
    if res["scratch"]:
        n = len(res["scratch"]["entries"] or []) * 16
        for c in res["scratch"]["copies"]:
            add(c, n)
        add(res["scratch"]["destination"], res["scratch"]["size"])
    stats = {"keep": keep, "preserved_kept": 0, "preserved_skipped": 0, "preserved_bytes_kept": 0}
    if keep in ("preserved", "all-preserved") and res["radix"]:
        budget = cap if keep == "preserved" else 1 << 62
        for pa, order in sorted(res["radix"]["entries"], key=lambda e: (e[1], e[0])):
            size = PAGE << order
            if size <= budget:
                add(pa, size)
                budget -= size
                stats["preserved_kept"] += 1
                stats["preserved_bytes_kept"] += size
            else:
                stats["preserved_skipped"] += 1
    want.sort()
    merged: list[list[int]] = []
    for a, n in want:
        if merged and a <= merged[-1][0] + merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], a + n - merged[-1][0])
        else:
            merged.append([a, n])
    return [(a, n) for a, n in merged], stats


def write_sparse(mm, ranges: list[tuple[int, int]], out: Path):
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rows = ["# file\tphys_start\tlength"]
    for a, n in ranges:
        name = f"{a:012x}.bin"
        (out / name).write_bytes(mm[a:a + n])
        rows.append(f"{name}\t{a:#x}\t{n:#x}")
    (out / "MANIFEST.tsv").write_text("\n".join(rows) + "\n")


def scan_ram_file(ram_file: Path, stage_dir: Path | None, ram_out: Path, stage: int,
                  keep: str = "preserved", cap: int = 64 << 20) -> dict:
    """Analyse a full RAM image and write ram-stageN.sparse/, locate-stageN.json and
    ram-stageN-out-fdt-full.dtb into ram_out."""
    ram_out.mkdir(parents=True, exist_ok=True)
    with open(ram_file, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        res = analyse_ram(mm, stage_dir)
        ranges, stats = select_ranges(res, keep, cap)
        write_sparse(mm, ranges, ram_out / f"ram-stage{stage}.sparse")
    fdt_bytes = res.pop("_fdt_bytes", None)
    if fdt_bytes:
        (ram_out / f"ram-stage{stage}-out-fdt-full.dtb").write_bytes(fdt_bytes)
    res["sparse"] = {"dir": f"ram-stage{stage}.sparse", "ranges": [[a, n] for a, n in ranges],
                     "bytes": sum(n for _a, n in ranges), **stats}
    (ram_out / f"locate-stage{stage}.json").write_text(json.dumps(res, indent=1) + "\n")
    return res


# --------------------------------------------------------------------------
# injection

@dataclasses.dataclass
class Write:
    """Bytes to write into guest-physical memory before boot ``stage`` hands over.

    ``target`` is an int (physical address) or a symbol, with an optional
    ``+offset``:
      fdt          the outgoing root FDT page
      memmap       the radix tree root (value of preserved-memory-map)
      node:I       the I-th radix node page in walk order
      blob:NAME    the sub-blob of root subnode NAME (preserved-data)
      setup_data   the SETUP_KEXEC_KHO setup_data record (+0 header, +16 struct kho_data)
      kho_data     = setup_data+16
      scratch      the scratch array the next kernel receives

    When (``when``):
      "jump"   at machine_kexec of boot ``stage``: for memory that stays in place
               (root FDT, radix nodes, sub-blobs, preserved pages).
      "entry"  at x86_64_start_kernel of boot ``stage + 1``, after purgatory has
               copied the kexec segments to their destinations and checked their
               sha256 (a segment patched before the jump makes purgatory spin
               forever).  Needed for setup_data, kho_data and scratch.
      "auto"   (default) "entry" for setup_data / kho_data / scratch, else "jump".
    """
    target: int | str
    data: bytes
    stage: int = 1
    when: str = "auto"

    def phase(self) -> str:
        if self.when != "auto":
            return self.when
        if isinstance(self.target, str) and re.match(r"\s*(setup_data|kho_data|scratch)\b", self.target):
            return "entry"
        return "jump"


def _split_target(target: int | str) -> tuple[str | int, int]:
    if isinstance(target, int):
        return target, 0
    t = target.strip()
    off = 0
    m = re.fullmatch(r"(.+?)\s*\+\s*(0x[0-9a-fA-F]+|\d+)", t)
    if m:
        t, off = m.group(1), int(m.group(2), 0)
    if re.fullmatch(r"0x[0-9a-fA-F]+|\d+", t):
        return int(t, 0) + off, 0
    return t, off


def resolve_target(target: int | str, loc: dict, entry: dict | None = None) -> list[int]:
    """Physical address(es) of a write target.  ``loc`` is the machine_kexec
    analysis; ``entry`` (at the next kernel's entry) gives the final places of
    the kexec segments: {"setup_data": phys, "scratch_addr": phys}."""
    t, off = _split_target(target)
    if isinstance(t, int):
        return [t]
    if t in ("setup_data", "kho_data", "scratch"):
        extra = 16 if t == "kho_data" else 0
        if entry is not None:
            base = entry["scratch_addr"] if t == "scratch" else entry["setup_data"] + extra
            return [base + off]
        # before the jump: the staged copies (patching them trips purgatory's sha256 check)
        if t == "scratch":
            return [c + off for c in (loc.get("scratch") or {}).get("copies", [])]
        return [s["phys"] + extra + off for s in loc.get("setup_data", [])]
    if t == "fdt" and loc.get("fdt"):
        return [loc["fdt"]["phys"] + off]
    if t == "memmap" and loc.get("fdt") and loc["fdt"]["preserved_memory_map"]:
        return [loc["fdt"]["preserved_memory_map"] + off]
    if t.startswith("node:") and loc.get("radix"):
        return [loc["radix"]["nodes"][int(t[5:], 0)][0] + off]
    if t.startswith("blob:"):
        for sn in loc.get("subnodes", []):
            if sn["name"] == t[5:] and sn["preserved_data"] is not None:
                return [sn["preserved_data"] + off]
    raise ValueError(f"cannot resolve injection target {target!r} in this RAM")


def parse_inject_arg(s: str) -> Write:
    """STAGE:[jump@|entry@]TARGET:DATA where DATA is hex, @FILE, or zero:N."""
    stage, target, data = s.split(":", 2)
    when = "auto"
    m = re.match(r"(jump|entry)@(.*)", target)
    if m:
        when, target = m.group(1), m.group(2)
    if target in ("node", "blob"):          # node:I / blob:NAME contain a colon
        more, data = data.split(":", 1)
        target = f"{target}:{more}"
    if data.startswith("@"):
        payload = Path(data[1:]).read_bytes()
    elif data.startswith("zero:"):
        payload = bytes(int(data[5:], 0))
    else:
        payload = bytes.fromhex(data)
    tgt: int | str = int(target, 0) if re.fullmatch(r"0x[0-9a-fA-F]+|\d+", target) else target
    return Write(tgt, payload, int(stage), when)


@dataclasses.dataclass
class StopContext:
    """What an injection hook sees at a machine_kexec stop (RAM is readable)."""
    stage: int
    capture: Path
    stage_dir: Path
    ram_dir: Path           # sparse RAM directory of this stop
    locate: dict
    ram_file: Path          # full RAM image, deleted after the hook returns

    def read(self, phys: int, length: int) -> bytes:
        with open(self.ram_file, "rb") as f:
            f.seek(phys)
            return f.read(length)


def command_hook(cmd: str) -> Callable[[StopContext], list[Write]]:
    """Hook that runs a shell command.  Its environment has VMTEST_STAGE,
    VMTEST_CAPTURE, VMTEST_STAGE_DIR, VMTEST_RAM_DIR, VMTEST_LOCATE and
    VMTEST_RAM_FULL; it prints a JSON list of
    {"target": int|"symbol", "hex": "...", "when": "auto"|"jump"|"entry"}."""
    def hook(ctx: StopContext) -> list[Write]:
        env = dict(os.environ, VMTEST_STAGE=str(ctx.stage), VMTEST_CAPTURE=str(ctx.capture),
                   VMTEST_STAGE_DIR=str(ctx.stage_dir), VMTEST_RAM_DIR=str(ctx.ram_dir),
                   VMTEST_LOCATE=str(ctx.capture / "ram" / f"locate-stage{ctx.stage}.json"),
                   VMTEST_RAM_FULL=str(ctx.ram_file))
        r = subprocess.run(cmd, shell=True, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"inject command failed ({r.returncode}): {r.stderr.strip()}")
        items = json.loads(r.stdout or "[]")
        out = []
        for it in items:
            tgt = it.get("target", it.get("phys"))
            if isinstance(tgt, str) and re.fullmatch(r"0x[0-9a-fA-F]+|\d+", tgt):
                tgt = int(tgt, 0)
            out.append(Write(tgt, bytes.fromhex(it["hex"]), ctx.stage, it.get("when", "auto")))
        return out
    return hook


# --------------------------------------------------------------------------
# the runner

@dataclasses.dataclass
class Options:
    boots: int = 2
    luo: bool = True
    reserve_mem: str | None = "4M:4K:vmtest_rmem"
    test_kho_max_mem: int | None = 1 << 20
    append: str = ""
    base_cmdline: str = BASE_CMDLINE
    memory: str = "1G"
    smp: int = 2
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

    def cmdline(self) -> str:
        words = [self.base_cmdline]
        if self.reserve_mem:
            words.append(f"reserve_mem={self.reserve_mem}")
        if self.test_kho_max_mem is not None:
            words.append(f"test_kho.max_mem={self.test_kho_max_mem}")
        if self.earlyprintk:
            words.append("earlyprintk=serial,ttyS0,115200")
        if self.append:
            words.append(self.append)
        words.append(f"vmtest_stage=1 vmtest_last={self.boots} vmtest_luo={1 if self.luo else 0}")
        return " ".join(words)


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _ram_tmpdir(size: int) -> Path:
    env = os.environ.get("VMTEST_RAMTMP")
    if env:
        return Path(env)
    try:
        st = os.statvfs("/dev/shm")
        if st.f_bavail * st.f_frsize > size + (512 << 20):
            return Path("/dev/shm")
    except OSError:
        pass
    return Path(tempfile.gettempdir())


def qemu_binary() -> str | None:
    return shutil.which("qemu-system-x86_64")


def run_chain(out: str | os.PathLike, opts: Options | None = None, build: Build | None = None) -> dict:
    """Boot ``opts.boots`` kernels in a KHO kexec chain; write the capture to ``out``.
    Returns the summary (also written to out/summary.json).  A chain that hangs
    (exit "stalled") is booted again up to ``opts.stall_retries`` times; the hung
    attempts are kept in out/stalled-attempt-K/."""
    opts = opts or Options()
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


def _run_chain_once(out: Path, opts: Options, build: Build | None) -> dict:
    build = build or find_build()
    if build is None:
        raise RuntimeError("no kernel build: run vmtest/setup.sh and vmtest/build.sh")
    qemu = qemu_binary()
    if not qemu:
        raise RuntimeError("qemu-system-x86_64 not found: run vmtest/setup.sh")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("stage*"):
        shutil.rmtree(stale)
    if (out / "ram").exists():
        shutil.rmtree(out / "ram")
    (out / "ram").mkdir()
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
    cmdline = opts.cmdline()
    argv = [qemu, "-accel", "tcg", "-m", opts.memory, "-smp", str(opts.smp), "-no-reboot",
            "-nodefaults", "-display", "none", "-S",
            "-serial", f"file:{serial}",
            "-qmp", f"unix:{qmp_sock},server,nowait",
            "-gdb", f"tcp:127.0.0.1:{port}",
            "-kernel", str(build.bzimage), "-initrd", str(build.initramfs),
            "-append", cmdline]
    (out / "qemu-cmdline.txt").write_text(" ".join(
        a if re.fullmatch(r"[\w@%+=:,./-]+", a) else "'" + a.replace("'", "'\\''") + "'" for a in argv) + "\n")
    rlog(f"kernel {build.release} from {build.dir}")
    rlog(f"cmdline: {cmdline}")
    qemu_err = open(work / "qemu.stderr", "w+")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=qemu_err, stderr=qemu_err)
    summary: dict = {"boots_requested": opts.boots, "cmdline": cmdline, "kernel": build.release,
                     "build_dir": str(build.dir), "machine_kexec": f"{build.machine_kexec:#x}",
                     "stops": [], "exit": None}
    gdb = qmp = None
    bp = build.machine_kexec
    entry_bp = build.symbol("x86_64_start_kernel")
    pending = None          # (stage, stop record, writes) waiting for the next kernel's entry
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
        try:
            gdb = Gdb(port, timeout=10)
        except (OSError, GdbExited, TimeoutError):
            if proc.poll() is not None:
                return None
            raise
        summary["gdb_reconnects"] = summary.get("gdb_reconnects", 0) + 1
        if gdb.request(f"Z0,{bp:x},1") != "OK":
            raise RuntimeError("gdbstub refused the breakpoint after reconnecting")
        if pending and gdb.request(f"Z0,{entry_bp:x},1") != "OK":
            raise RuntimeError("gdbstub refused the entry breakpoint after reconnecting")
        return gdb.halt_reason

    def step_over(rip: int):
        """Step off the instruction at ``rip`` (without its breakpoint) and continue."""
        for attempt in range(2):
            try:
                armed = rip == bp
                if armed:
                    gdb.request(f"z0,{rip:x},1")
                gdb.send("s")
                gdb.wait_stop(60)
                if armed:
                    gdb.request(f"Z0,{rip:x},1")
                gdb.send("c")
                return
            except lost as e:
                if attempt or reconnect(e) is None:
                    raise
                # the guest is paused where it got to; the step is done again
                rip = gdb.read_reg(16)

    try:
        qmp = Qmp(qmp_sock)
        gdb = Gdb(port)
        if gdb.request(f"Z0,{bp:x},1") != "OK":
            raise RuntimeError("gdbstub refused the breakpoint")
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
            rip = gdb.read_reg(16)
            t_hit = time.time()
            if rip == bp:
                stop_no += 1
                rlog(f"stop {stop_no}: guest at machine_kexec ({r})")
                stop, deferred, loc = _handle_stop(stop_no, out, qmp, gdb, opts, rlog)
                summary["stops"].append(stop)
                if deferred:
                    pending = (stop_no, stop, deferred, loc)
                    if gdb.request(f"Z0,{entry_bp:x},1") != "OK":
                        raise RuntimeError("gdbstub refused the entry breakpoint")
                    rlog(f"stop {stop_no}: {len(deferred)} write(s) wait for the next kernel's "
                         f"x86_64_start_kernel ({entry_bp:#x})")
                stop["seconds"] = round(time.time() - t_hit, 2)
            elif rip == entry_bp and pending:
                n, stop, deferred, loc = pending
                rlog(f"stop {n}: next kernel at x86_64_start_kernel")
                _entry_writes(n, out, gdb, stop, deferred, loc, rlog)
                pending = None
                gdb.request(f"z0,{entry_bp:x},1")
            else:
                rlog(f"unexpected stop at {rip:#x} ({r}); continuing")
            # step over the breakpoint we are on (if still armed), go on
            step_over(rip)
            last_change = time.time()
        if pending:
            summary.setdefault("problems", []).append(
                f"stop {pending[0]}: the next kernel never reached x86_64_start_kernel; "
                f"{len(pending[2])} deferred write(s) not done")
    except Exception as e:  # noqa: BLE001 - record and clean up
        summary["exit"] = f"error: {type(e).__name__}: {e}"
        rlog(summary["exit"])
    finally:
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
    stages = split_serial(serial, out)
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


def _handle_stop(n: int, out: Path, qmp: Qmp, gdb: Gdb, opts: Options, rlog) -> dict:
    ram_out = out / "ram"
    stop: dict = {"stage": n}
    regs = qmp.hmp("info registers")
    (ram_out / f"qmp-stage{n}.txt").write_text(regs)
    m = re.search(r"RIP=([0-9a-f]+)", regs)
    stop["rip"] = f"0x{m.group(1)}" if m else None
    split_serial(out / "serial.log", out)   # the stage's own dumps are complete by now
    tmp = _ram_tmpdir(RAM_SIZE)
    fd, name = tempfile.mkstemp(prefix=f"vmtest-ram{n}-", suffix=".bin", dir=tmp)
    os.close(fd)         # an open descriptor would keep the 1 GiB file alive after its unlink
    full = Path(name)
    try:
        t0 = time.time()
        size = _guest_ram_size(opts.memory)
        qmp.execute("pmemsave", val=0, size=size, filename=str(full))
        stop["pmemsave_s"] = round(time.time() - t0, 2)
        t0 = time.time()
        loc = scan_ram_file(full, out / f"stage{n}", ram_out, n, opts.keep, opts.keep_cap)
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
            _apply_writes(n, out, gdb, stop, now, loc, None, "jump", rlog)
        if opts.keep_full_ram:
            dest = ram_out / f"ram-stage{n}.full.bin.zst"
            subprocess.run(["zstd", "-q", "-f", "-T0", "-3", "--long=30", str(full), "-o", str(dest)], check=True)
    finally:
        full.unlink(missing_ok=True)
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


def _apply_writes(n: int, out: Path, gdb: Gdb, stop: dict, writes: list, loc: dict,
                  entry: dict | None, phase: str, rlog):
    record = stop.setdefault("injected", [])
    for w in writes:
        for addr in resolve_target(w.target, loc, entry):
            before = gdb.read_phys(addr, len(w.data))
            gdb.write_phys(addr, w.data)
            after = gdb.read_phys(addr, len(w.data))
            record.append({"target": w.target if isinstance(w.target, str) else f"{w.target:#x}",
                           "when": phase, "phys": f"{addr:#x}", "length": len(w.data),
                           "before": before.hex(), "written": w.data.hex(), "verified": after == w.data})
            rlog(f"stop {n}: wrote {len(w.data)} bytes at {addr:#x} ({w.target!s}, {phase})"
                 + ("" if after == w.data else " -- READ-BACK MISMATCH"))
    (out / "ram" / f"inject-stage{n}.json").write_text(json.dumps(record, indent=1) + "\n")


def _entry_writes(n: int, out: Path, gdb: Gdb, stop: dict, writes: list, loc: dict, rlog):
    """At the next kernel's x86_64_start_kernel(real_mode_data): the kexec segments
    are at their destinations.  Find the SETUP_KEXEC_KHO record through
    boot_params.hdr.setup_data and apply the deferred writes."""
    bp_phys = gdb.read_reg(5)                      # rdi: physical address of boot_params
    sd = struct.unpack("<Q", gdb.read_phys(bp_phys + 0x250, 8))[0]
    entry = None
    for _ in range(64):
        if not sd:
            break
        nxt, typ, ln = struct.unpack("<QII", gdb.read_phys(sd, 16))
        if typ == SETUP_KEXEC_KHO:
            fdt_addr, fdt_size, sc_addr, sc_size = struct.unpack("<4Q", gdb.read_phys(sd + 16, 32))
            entry = {"boot_params": bp_phys, "setup_data": sd, "fdt_addr": fdt_addr,
                     "scratch_addr": sc_addr, "scratch_size": sc_size}
            break
        sd = nxt
    if entry is None:
        raise RuntimeError(f"stop {n}: no SETUP_KEXEC_KHO record reachable from boot_params at {bp_phys:#x}")
    stop["entry"] = {k: f"{v:#x}" for k, v in entry.items()}
    rlog(f"stop {n}: boot_params {bp_phys:#x}, setup_data {entry['setup_data']:#x}, "
         f"scratch array {entry['scratch_addr']:#x}+{entry['scratch_size']:#x}")
    _apply_writes(n, out, gdb, stop, writes, loc, entry, "entry", rlog)


def _guest_ram_size(mem: str) -> int:
    m = re.fullmatch(r"(\d+)([KMGT]?)", mem.strip().upper())
    if not m:
        raise ValueError(f"bad memory size {mem!r}")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[m.group(2)]


# --------------------------------------------------------------------------
# helpers for tests

def read_sparse(ram_dir: str | os.PathLike, phys: int, length: int) -> bytes:
    """Read guest-physical bytes from a sparse RAM directory (MANIFEST.tsv)."""
    ram_dir = Path(ram_dir)
    for line in (ram_dir / "MANIFEST.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, start, n = line.split("\t")
        start, n = int(start, 0), int(n, 0)
        if start <= phys and phys + length <= start + n:
            with open(ram_dir / name, "rb") as f:
                f.seek(phys - start)
                return f.read(length)
    raise KeyError(f"{phys:#x}+{length:#x} is not in {ram_dir}")


KHO_LINE = re.compile(r"KHO|test_kho|luo|liveupdate|reserve_mem|Revived memory", re.I)
MEMBLOCK_KHO = re.compile(r"__memblock_reserve: \[(0x[0-9a-f]+)-(0x[0-9a-f]+)\].*kho_preserved_memory_reserve")


def dmesg_lines(stage_dir: Path) -> list[str]:
    f = Path(stage_dir) / "dmesg.txt"
    return f.read_text(errors="replace").splitlines() if f.exists() else []


def strip_ts(line: str) -> str:
    return re.sub(r"^\[\s*\d+\.\d+\]\s?", "", line)


def kho_reserved(stage_dir: Path) -> list[list[int]]:
    """[[phys, order], ...] from the kho_preserved_memory_reserve lines of a boot's dmesg."""
    out = []
    for line in dmesg_lines(stage_dir):
        m = MEMBLOCK_KHO.search(line)
        if m:
            a, b = int(m.group(1), 16), int(m.group(2), 16)
            size = b - a + 1
            out.append([a, (size // PAGE).bit_length() - 1])
    return out


# --------------------------------------------------------------------------
# CLI

def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "split":
        p = argparse.ArgumentParser(prog="run.py split")
        p.add_argument("serial")
        p.add_argument("out")
        a = p.parse_args(argv[1:])
        st = split_serial(Path(a.serial), Path(a.out))
        for n, s in sorted(st.items()):
            print(f"stage{n}: started={s['started']} kexec={s['kexec']} end={s['end']} "
                  f"blobs={len(s['blobs'])} errors={s['errors']}")
        return 0
    if argv and argv[0] == "scan":
        p = argparse.ArgumentParser(prog="run.py scan")
        p.add_argument("ram")
        p.add_argument("stage_dir")
        p.add_argument("out")
        p.add_argument("--stage", type=int, default=1)
        p.add_argument("--keep", default="preserved", choices=["meta", "preserved", "all-preserved"])
        a = p.parse_args(argv[1:])
        res = scan_ram_file(Path(a.ram), Path(a.stage_dir), Path(a.out), a.stage, a.keep)
        print(json.dumps({k: res[k] for k in ("fdt", "errors", "sparse")}, indent=1))
        if res.get("radix"):
            print(f"radix: {len(res['radix']['nodes'])} nodes, {len(res['radix']['entries'])} entries")
        return 0
    if argv and argv[0] == "run":
        argv = argv[1:]
    p = argparse.ArgumentParser(prog="run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="capture folder (emptied of stage*/ and ram/)")
    p.add_argument("--boots", type=int, default=2, help="number of kernels in the chain (2 = round trip)")
    p.add_argument("--build", help="build folder (default: the one build.sh names)")
    p.add_argument("--no-luo", action="store_true", help="do not preserve/check a LUO memfd")
    p.add_argument("--reserve-mem", default="4M:4K:vmtest_rmem", help="reserve_mem= value ('' for none)")
    p.add_argument("--test-kho-max-mem", default="1048576", help="test_kho.max_mem ('' for the default 8 MiB)")
    p.add_argument("--append", default="", help="extra kernel command line words")
    p.add_argument("--timeout", type=float, default=600, help="seconds for the whole chain")
    p.add_argument("--stall-timeout", type=float, default=90,
                   help="give up when the guest runs but prints nothing for this long")
    p.add_argument("--stall-retries", type=int, default=0, help="boot the chain again this often if it hangs")
    p.add_argument("--earlyprintk", action="store_true", help="add earlyprintk=serial,ttyS0")
    p.add_argument("--keep", default="preserved", choices=["meta", "preserved", "all-preserved"],
                   help="which RAM pages to keep (meta: KHO metadata pages only)")
    p.add_argument("--keep-full-ram", action="store_true",
                   help="also keep each full RAM image zstd-compressed in the capture (~15-50 MB each)")
    p.add_argument("--inject", action="append", default=[], metavar="STAGE:TARGET:DATA",
                   help="write DATA (hex, @file or zero:N) at TARGET (phys address or fdt, memmap, "
                        "setup_data, scratch, node:I, blob:NAME, each with optional +OFF) when boot "
                        "STAGE stops at machine_kexec")
    p.add_argument("--inject-cmd", help="shell command run at every stop; prints JSON writes (see command_hook)")
    a = p.parse_args(argv)
    opts = Options(boots=a.boots, luo=not a.no_luo, reserve_mem=a.reserve_mem or None,
                   test_kho_max_mem=int(a.test_kho_max_mem, 0) if a.test_kho_max_mem else None,
                   append=a.append, timeout=a.timeout, stall_timeout=a.stall_timeout,
                   earlyprintk=a.earlyprintk, stall_retries=a.stall_retries, keep=a.keep, keep_full_ram=a.keep_full_ram,
                   writes=[parse_inject_arg(s) for s in a.inject],
                   hook=command_hook(a.inject_cmd) if a.inject_cmd else None)
    build = find_build(a.build)
    if build is None:
        print("no kernel build found: run vmtest/setup.sh (root) and vmtest/build.sh", file=sys.stderr)
        return 2
    s = run_chain(a.out, opts, build)
    for n in range(1, a.boots + 1):
        sd = Path(a.out) / f"stage{n}"
        lines = [strip_ts(x) for x in dmesg_lines(sd) if re.search(r"KHO:|test_kho:|luo:|Revived", x)]
        print(f"--- stage {n}: " + ("; ".join(lines[:8]) if lines else "(no KHO lines)"))
    print(json.dumps({k: s[k] for k in ("exit", "qemu_rc", "stages_reached", "completed", "elapsed_s")}))
    return 0 if s["completed"] else 1


if __name__ == "__main__":
    sys.exit(main())
