"""What every ``kho`` sub-command shares: the bundled default handover,
argument types, JSON output, opening inputs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ..errors import UsageError

__all__ = ["DEFAULT_HANDOVER", "default_paths", "open_mem", "hex_int", "dump_json", "read_iomem",
           "add_input_args", "BUILTIN_NOTE"]

DEFAULT_HANDOVER = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "linux-7.2-luo")
BUILTIN_NOTE = ("(no PATH given: the bundled handover of a real Linux 7.2.13 kernel: test_kho, reserve_mem, "
                "LUO memfd sessions)")


def default_paths(args: argparse.Namespace) -> None:
    """No PATH: the bundled real Linux 7.2.13 handover."""
    if getattr(args, "path", None) is None:
        args.path = os.path.join(DEFAULT_HANDOVER, "debugfs", "kho", "out")
        if args.mem is None:
            args.mem = "sparse:" + os.path.join(DEFAULT_HANDOVER, "ram.sparse.tar.xz")
        if hasattr(args, "iomem") and args.iomem is None:
            args.iomem = os.path.join(DEFAULT_HANDOVER, "iomem.txt")
        args.builtin = True
    else:
        args.builtin = False


def open_mem(spec: str | None) -> Any:
    if spec is None:
        return None
    from ..memory import open_source
    return open_source(spec)


def hex_int(s: str) -> int:
    """An address or size: decimal or 0x hex."""
    try:
        v = int(s, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number (decimal or 0x hex)") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{s!r} is negative")
    return v


def dump_json(obj: Any, args: argparse.Namespace) -> None:
    indent = 2 if getattr(args, "pretty", False) else None
    print(json.dumps(obj, indent=indent, default=lambda o: o.__dict__ if hasattr(o, "__dict__") else str(o)))


def read_iomem(path: str | None) -> list[tuple[int, int]] | None:
    """System RAM ranges of a ``/proc/iomem`` copy given with ``--iomem``."""
    if not path:
        return None
    from ..memory import parse_iomem
    try:
        with open(path, "rb") as f:
            raw = f.read(1 << 22)
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror}") from None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a /proc/iomem copy (not ASCII text)") from None
    ranges = parse_iomem(text)
    if not ranges:
        raise UsageError(f"{path}: not a /proc/iomem copy (no 'System RAM' line)")
    return ranges


def add_input_args(p: argparse.ArgumentParser, path_help: str) -> None:
    p.add_argument("path", nargs="?", help=path_help + " (default: the bundled real 7.2.13 handover)")
    p.add_argument("--mem", metavar="SOURCE",
                   help="memory: raw:PATH[@0xBASE], sparse:DIR|TAR, elf:PATH, vmcore:PATH, live")
    p.add_argument("--fdt-phys", type=hex_int, metavar="ADDR", help="physical address of the root FDT in --mem")
    p.add_argument("--profile", metavar="GEN", help="generation (A0 A1 B-prefix B C D E or 6.18, 7.2, ...)")
    p.add_argument("--bitmap-bits", type=hex_int, help="kho-v1 bitmap bits (4096 or 32768); default: detect")
    p.add_argument("-j", "--json", action="store_true", help="JSON output")
    p.add_argument("-p", "--pretty", action="store_true", help="indented JSON (implies -j)")


def eprint(msg: str) -> None:
    print(msg, file=sys.stderr)
