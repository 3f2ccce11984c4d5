"""Writing chosen bytes into guest memory while a boot hands over (fault injection).

A :class:`Write` names a target (a physical address or a symbol such as
``fdt+0x40``, resolved against the stop's RAM analysis by :func:`resolve_target`)
and a phase:

* ``jump``: at ``machine_kexec`` of boot N, for memory that stays in place;
* ``entry``: at ``x86_64_start_kernel`` of boot N+1, once purgatory has
  copied the kexec segments to their destinations and checked their sha256
  (:func:`entry_writes` finds them through ``boot_params``).

The same entry stop can give boot N+1 a command line of its own
(:func:`write_cmdline`, used for ``Options.cmdlines``).  Writes come from
``--inject`` (:func:`parse_inject_arg`), from Python, or from a hook called at
every stop with a :class:`StopContext` (:func:`command_hook` runs a program).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

from .capture import SETUP_KEXEC_KHO
from .gdb import REG_RDI

__all__ = ["COMMAND_LINE_SIZE", "StopContext", "Write", "apply_writes", "command_hook", "entry_writes",
           "parse_inject_arg", "resolve_target", "write_cmdline"]

#: x86 COMMAND_LINE_SIZE: the longest kernel command line, its NUL included
COMMAND_LINE_SIZE = 2048
# struct boot_params offsets (x86 boot protocol)
_BP_EXT_CMD_LINE_PTR = 0x0C8
_BP_CMD_LINE_PTR = 0x228
_BP_SETUP_DATA = 0x250


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
        r = subprocess.run(cmd, shell=True, env=env, capture_output=True, text=True, check=False)
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
# applying writes through the gdbstub

def apply_writes(n: int, out: Path, gdb, stop: dict, writes: list, loc: dict,
                 entry: dict | None, phase: str, rlog) -> None:
    """Write, read back and record ``writes`` (into ``stop["injected"]`` and
    ram/inject-stageN.json).  ``gdb`` is a :class:`vmtest.gdb.Gdb` on the stopped guest."""
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


def entry_writes(n: int, out: Path, gdb, stop: dict, writes: list, loc: dict, rlog,
                 cmdline: str | None = None) -> None:
    """At the next kernel's x86_64_start_kernel(real_mode_data): the kexec segments
    are at their destinations.  Find the SETUP_KEXEC_KHO record through
    boot_params.hdr.setup_data and apply the deferred writes; then, if
    ``cmdline`` is given, make it the next kernel's command line (:func:`write_cmdline`)."""
    bp_phys = gdb.read_reg(REG_RDI)                # rdi: physical address of boot_params
    if writes or cmdline is None:
        sd = struct.unpack("<Q", gdb.read_phys(bp_phys + _BP_SETUP_DATA, 8))[0]
        entry = None
        for _ in range(64):
            if not sd:
                break
            nxt, typ, _len = struct.unpack("<QII", gdb.read_phys(sd, 16))
            if typ == SETUP_KEXEC_KHO:
                fdt_addr, _fdt_size, sc_addr, sc_size = struct.unpack("<4Q", gdb.read_phys(sd + 16, 32))
                entry = {"boot_params": bp_phys, "setup_data": sd, "fdt_addr": fdt_addr,
                         "scratch_addr": sc_addr, "scratch_size": sc_size}
                break
            sd = nxt
        if entry is None:
            raise RuntimeError(f"stop {n}: no SETUP_KEXEC_KHO record reachable from boot_params at {bp_phys:#x}")
        stop["entry"] = {k: f"{v:#x}" for k, v in entry.items()}
        rlog(f"stop {n}: boot_params {bp_phys:#x}, setup_data {entry['setup_data']:#x}, "
             f"scratch array {entry['scratch_addr']:#x}+{entry['scratch_size']:#x}")
        apply_writes(n, out, gdb, stop, writes, loc, entry, "entry", rlog)
    if cmdline is not None:
        rec = write_cmdline(gdb, bp_phys, cmdline)
        stop["next_cmdline"] = rec
        rlog(f"stop {n}: boot {n + 1}'s command line ({len(cmdline)} bytes) written at {rec['phys']}"
             + ("" if rec["verified"] else " -- READ-BACK MISMATCH"))


def write_cmdline(gdb, boot_params: int, cmdline: str) -> dict:
    """Replace, in place, the command line a stopped kernel entry is about to copy
    (``boot_params.hdr.cmd_line_ptr`` | ``ext_cmd_line_ptr`` << 32).

    Only the room of the line already there (the one the previous boot gave
    ``kexec_file_load``) is usable: a longer ``cmdline`` raises ValueError.
    The runner pads every boot's line to the same length, so each fits.
    The compressed kernel's decompressor has already run on the old line."""
    ptr = struct.unpack("<I", gdb.read_phys(boot_params + _BP_CMD_LINE_PTR, 4))[0]
    ptr |= struct.unpack("<I", gdb.read_phys(boot_params + _BP_EXT_CMD_LINE_PTR, 4))[0] << 32
    if not ptr:
        raise RuntimeError(f"boot_params at {boot_params:#x} has no command line pointer")
    old = b""
    while b"\0" not in old and len(old) < COMMAND_LINE_SIZE:
        old += gdb.read_phys(ptr + len(old), 256)
    if b"\0" not in old:
        raise RuntimeError(f"no NUL in the {COMMAND_LINE_SIZE} bytes of the command line at {ptr:#x}")
    old = old[:old.index(b"\0")]
    new = cmdline.encode() + b"\0"
    if len(new) > len(old) + 1:
        raise ValueError(f"command line of {len(new) - 1} bytes does not fit in the {len(old)} "
                         f"bytes of the one at {ptr:#x}")
    gdb.write_phys(ptr, new)
    return {"phys": f"{ptr:#x}", "before": old.decode("latin-1"), "written": cmdline,
            "verified": gdb.read_phys(ptr, len(new)) == new}


# ------------------------------------------------------------------ crafted radix maps (x86 and arm64 cases)

def radix_nodes(ctx, level: int) -> list[int]:
    """The located radix tables of ``level`` at a stop (``ctx``: a stop context)."""
    return [p for p, lv in ctx.locate["radix"]["nodes"] if lv == level]


def first_entry(ctx, table: int) -> int:
    """Byte offset of the first non-zero entry of a radix table."""
    words = struct.unpack("<512Q", ctx.read(table, 4096))
    return 8 * next(i for i, w in enumerate(words) if w)


def radix_root_entry_outside(ctx) -> list[tuple[int, bytes]]:
    """The root table's first entry pointed 8 TiB up, outside the guest's RAM."""
    r = ctx.locate["radix"]["root"]
    return [(r + first_entry(ctx, r), struct.pack("<Q", 0x7FFF0000000))]


def radix_level2_to_root(ctx) -> list[tuple[int, bytes]]:
    """A level-2 table's first entry pointed back at the root table."""
    t = radix_nodes(ctx, 2)[0]
    return [(t + first_entry(ctx, t), struct.pack("<Q", ctx.locate["radix"]["root"]))]
