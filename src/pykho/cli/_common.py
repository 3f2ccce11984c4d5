"""What every ``kho`` sub-command shares: the bundled default handover,
the argument parser class, argument types, JSON output, opening inputs.

Every mistake is one line: the parser's own errors (an unknown option, a
value of the wrong type or out of range) are raised as :class:`ArgError`
and printed by :func:`pykho.cli.main` as ``kho CMD: argument --opt: what``;
everything else wrong with the input is a :class:`~pykho.errors.KhoError`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from ..errors import UsageError

__all__ = ["DEFAULT_HANDOVER", "LIVE_DEBUGFS", "ArgError", "Parser", "default_paths", "live_paths", "open_mem",
           "hex_int", "whole", "number", "bitmap_bits", "profile_arg", "image_profile", "dump_json", "read_iomem",
           "add_input_args",
           "add_json_args", "BUILTIN_NOTE",
           "eprint", "writable_file"]

DEFAULT_HANDOVER = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "linux-7.2-luo")
BUILTIN_NOTE = ("(no PATH given: the bundled handover of a real Linux 7.2.13 kernel: test_kho, reserve_mem, "
                "LUO memfd sessions)")


class ArgError(Exception):
    """A command-line mistake found by the parser: ``prog: message``."""

    def __init__(self, prog: str, message: str) -> None:
        self.prog, self.message = prog, message
        super().__init__(f"{prog}: {message}")


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (see :class:`ArgError`)."""

    def error(self, message: str) -> NoReturn:
        raise ArgError(self.prog, f"{message} (kho {self.prog.split()[-1]} --help lists the options)"
                       if " " in self.prog else f"{message} (kho --help lists the commands)")


#: the running kernel's outgoing handover (with --mem live)
LIVE_DEBUGFS = "/sys/kernel/debug/kho/out"


def live_paths(args: argparse.Namespace) -> None:
    """``--mem live``: no PATH is the running kernel's outgoing handover
    (:data:`LIVE_DEBUGFS`), and no ``--iomem`` is /proc/iomem (as root: its
    addresses are zeros for anyone else)."""
    if getattr(args, "mem", None) != "live":
        return
    if getattr(args, "path", None) is None:
        args.path = LIVE_DEBUGFS
    if hasattr(args, "iomem") and args.iomem is None and os.geteuid() == 0 and os.path.exists("/proc/iomem"):
        args.iomem = "/proc/iomem"


def default_paths(args: argparse.Namespace) -> None:
    """No PATH: the bundled real Linux 7.2.13 handover (with ``--mem live``:
    the running kernel's, :func:`live_paths`)."""
    live_paths(args)
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
    """An address or size: decimal or 0x hex, not negative."""
    try:
        v = int(s, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number (decimal or 0x hex)") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{s!r} is negative")
    if v >= 1 << 64:
        raise argparse.ArgumentTypeError(f"{s!r} is beyond 64-bit physical addresses")
    return v


def whole(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argument type: a whole number in ``[lo, hi]``."""
    def conv(s: str) -> int:
        try:
            v = int(s, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not a whole number") from None
        if lo is not None and v < lo:
            raise argparse.ArgumentTypeError(f"{s!r} must be at least {lo}")
        if hi is not None and v > hi:
            raise argparse.ArgumentTypeError(f"{s!r} must be at most {hi}")
        return v
    conv.__name__ = "whole number"
    return conv


def number(lo: float = 0.0, lo_open: bool = False) -> Callable[[str], float]:
    """An argument type: a finite number at least ``lo`` (above it with ``lo_open``)."""
    def conv(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{s!r} is not a finite number")
        if v < lo or (lo_open and v == lo):
            raise argparse.ArgumentTypeError(f"{s!r} must be {'above' if lo_open else 'at least'} {lo:g}")
        return v
    conv.__name__ = "number"
    return conv


def bitmap_bits(s: str) -> int:
    """kho-v1 bitmap size in bits: 4096 (6.16/6.17: 512 bytes) or 32768 (6.18: one page)."""
    v = hex_int(s)
    if v not in (4096, 32768):
        raise argparse.ArgumentTypeError(f"{s!r}: kho-v1 bitmaps hold 4096 bits (6.16, 6.17) or 32768 (6.18)")
    return v


def profile_arg(value: str | None, option: str) -> Any:
    """The generation named by ``option`` (None when the option was not given)."""
    if value is None:
        return None
    from ..profiles import PROFILES, get_profile
    try:
        return get_profile(value)
    except UsageError:
        raise UsageError(f"{option} {value!r}: unknown kernel generation; known: {', '.join(PROFILES)} "
                         "(or a release: 6.16 ... 7.3)") from None


def image_profile(path: str, option: str = "--target-image") -> tuple[Any, str]:
    """(generation, release) of the kernel image at ``path`` (x86 bzImage or
    arm64 Image): its release picks the generation, None when no profile
    covers that release.  An unreadable file or one without a release is a
    :class:`UsageError`."""
    from ..abi.image import MAX_IMAGE_BYTES, kernel_release
    from ..profiles import profile_for_release
    if not os.path.isfile(path):
        raise UsageError(f"{path}: not a regular file (give the kernel image to be loaded)")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_IMAGE_BYTES)
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror}") from None
    img = kernel_release(data)
    if img.release is None:
        raise UsageError(f"{path}: no kernel release found ({img.why})")
    return profile_for_release(img.release), img.release


def dump_json(obj: Any, args: argparse.Namespace) -> None:
    indent = 2 if getattr(args, "pretty", False) else None
    print(json.dumps(obj, indent=indent, default=lambda o: o.__dict__ if hasattr(o, "__dict__") else str(o)))


def read_iomem(path: str | None) -> list[tuple[int, int]] | None:
    """System RAM ranges of a ``/proc/iomem`` copy given with ``--iomem``."""
    if path is None:
        return None
    if not path:
        raise UsageError("--iomem '': give a copy of /proc/iomem")
    from ..memory import parse_iomem
    from ..memory.sources import read_regular
    raw = read_regular(path, "--iomem file", 1 << 22)
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise UsageError(f"--iomem {path}: not a /proc/iomem copy (not ASCII text)") from None
    try:
        ranges = parse_iomem(text)
    except (ValueError, IndexError):
        ranges = []
    if not ranges:
        raise UsageError(f"--iomem {path}: not a /proc/iomem copy (no 'System RAM' line)")
    if all(s == 0 and e == 1 for s, e in ranges):
        raise UsageError(f"--iomem {path}: every System RAM address is 0: /proc/iomem read without root "
                         "privileges hides them; copy it as root")
    bad = [(s, e) for s, e in ranges if e <= s]
    if bad:
        raise UsageError(f"--iomem {path}: System RAM range 0x{bad[0][0]:x}-0x{bad[0][1] - 1:x} ends before it starts")
    return sorted(ranges)


def writable_file(path: str, option: str) -> None:
    """Refuse an output path that cannot be written before doing the work."""
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise UsageError(f"{option} {path}: cannot write: {d} is not a directory"
                         if os.path.exists(d) else f"{option} {path}: cannot write: no directory {d}")
    if os.path.isdir(path):
        raise UsageError(f"{option} {path}: cannot write: it is a directory")
    if not os.access(d, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise UsageError(f"{option} {path}: cannot write: permission denied")


def add_json_args(p: argparse.ArgumentParser, what: str = "the report") -> None:
    p.add_argument("-j", "--json", action="store_true", help=f"print {what} as JSON (default: text)")
    p.add_argument("-p", "--pretty", action="store_true", help="indented JSON (implies -j)")


def add_input_args(p: argparse.ArgumentParser, path_help: str,
                   path_default: str = "the bundled real 7.2.13 handover") -> None:
    p.add_argument("path", nargs="?", help=f"{path_help} (default: {path_default})")
    p.add_argument("--mem", metavar="SOURCE",
                   help="memory to read the handover from: raw:PATH[@0xBASE] (a raw image whose first byte is "
                        "physical address BASE, default 0), sparse:DIR|TAR (MANIFEST.tsv extract), elf:PATH "
                        "(QEMU dump-guest-memory), vmcore:PATH or live (drgn) (default: none, or the bundled "
                        "capture's RAM when PATH is not given)")
    p.add_argument("--fdt-phys", type=hex_int, metavar="ADDR",
                   help="physical address of the root FDT in --mem (default: found through setup_data or by "
                        "a bounded scan of the memory given)")
    p.add_argument("--profile", metavar="GEN",
                   help="decode as this generation: A0 A1 B-prefix B C D E or a release (6.18, 7.2, ...) "
                        "(default: told from the compatible string and the bytes)")
    p.add_argument("--bitmap-bits", type=bitmap_bits, metavar="N",
                   help="kho-v1 bitmap size in bits: 4096 (6.16/6.17) or 32768 (6.18) (default: detected)")
    add_json_args(p)


def eprint(msg: str) -> None:
    print(msg, file=sys.stderr)
