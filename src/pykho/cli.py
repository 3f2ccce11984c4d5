"""The ``kho`` command.

Sub-commands: ``inspect``, ``validate``, ``simulate``, ``compat``, ``map``,
``explore``, ``fuzz``.  Exit codes follow kernel tools: 0 fine, 1 findings of
severity error (or a violation, a rejected handover), 2 usage error or
unreadable input - always one line on stderr naming the file and the
problem, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__
from .errors import KhoError

DEFAULT_HANDOVER = os.path.join(os.path.dirname(__file__), "data", "linux-7.2-luo")


def _default_paths(args):
    """No PATH: the bundled real Linux 7.2.13 handover (test_kho selftest)."""
    if getattr(args, "path", None) is None:
        args.path = os.path.join(DEFAULT_HANDOVER, "debugfs", "kho", "out")
        if args.mem is None:
            args.mem = "sparse:" + os.path.join(DEFAULT_HANDOVER, "ram.sparse.tar.xz")
        if hasattr(args, "iomem") and args.iomem is None:
            args.iomem = os.path.join(DEFAULT_HANDOVER, "iomem.txt")
        args.builtin = True
    else:
        args.builtin = False


def _open_mem(spec):
    if spec is None:
        return None
    from .memory import open_source
    return open_source(spec)


def _int(s: str) -> int:
    return int(s, 0)


def _dump_json(obj, args):
    indent = 2 if getattr(args, "pretty", False) else None
    print(json.dumps(obj, indent=indent, default=lambda o: o.__dict__ if hasattr(o, "__dict__") else str(o)))


def cmd_inspect(args) -> int:
    from .handover import load
    from .inspect import inspect, render
    from .profiles import get_profile
    _default_paths(args)
    ho = load(args.path, _open_mem(args.mem), args.fdt_phys)
    prof = get_profile(args.profile) if args.profile else None
    rep = inspect(ho, prof, want_blocks=True, preserve_bits=args.bitmap_bits)
    if args.json:
        _dump_json(rep, args)
    else:
        if args.builtin:
            print("(no PATH given: the bundled handover of a real Linux 7.2.13 kernel: test_kho, reserve_mem, LUO memfd sessions)")
        print(render(rep, show_blocks=args.blocks))
    return 0


def cmd_validate(args) -> int:
    from .validate import validate_path
    _default_paths(args)
    return validate_path(args)


def cmd_simulate(args) -> int:
    from .model.scenarios import run_cli
    return run_cli(args)


def cmd_compat(args) -> int:
    from .model.compat import run_cli
    return run_cli(args)


def cmd_map(args) -> int:
    from .mapplot import run_cli
    _default_paths(args)
    return run_cli(args)


def cmd_explore(args) -> int:
    from .model.explore import run_cli
    return run_cli(args)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="kho", description="Inspect, validate and simulate Linux Kexec HandOver (KHO).")
    ap.add_argument("--version", action="version", version=f"pykho {__version__}")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")

    def common(p, path_help):
        p.add_argument("path", nargs="?", help=path_help + " (default: the bundled real 7.2.13 handover)")
        p.add_argument("--mem", metavar="SOURCE",
                       help="memory: raw:PATH[@0xBASE], sparse:DIR|TAR, elf:PATH, vmcore:PATH, live")
        p.add_argument("--fdt-phys", type=_int, metavar="ADDR", help="physical address of the root FDT in --mem")
        p.add_argument("--profile", metavar="GEN", help="generation (A0 A1 B-prefix B C D E or 6.18, 7.2, ...)")
        p.add_argument("--bitmap-bits", type=_int, help="kho-v1 bitmap bits (4096 or 32768); default: detect")
        p.add_argument("-j", "--json", action="store_true", help="JSON output")
        p.add_argument("-p", "--pretty", action="store_true", help="indented JSON (implies -j)")

    p = sub.add_parser("inspect", help="decode a handover: tree, sub-blobs, scratch, preserved blocks")
    common(p, "debugfs kho dir (kho/, kho/out, kho/in) or a root FDT file")
    p.add_argument("--blocks", action="store_true", help="list every preserved block (text output)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("validate", help="check a handover and predict what a kernel will do with it")
    common(p, "debugfs kho dir or a root FDT file")
    p.add_argument("--target", metavar="GEN", help="kernel that will receive it (default: the compatible's)")
    p.add_argument("--iomem", metavar="FILE", help="a copy of /proc/iomem: System RAM ranges")
    p.add_argument("--cmdline", default="kho=on", help="the target kernel's command line (kho_scratch=, "
                   "reserve_mem= are modelled); default 'kho=on'")
    p.add_argument("--blocks", action="store_true", help="also list every preserved block")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("simulate", help="run a scenario through the model of both kernels")
    p.add_argument("scenario", nargs="?", default="seed-fixed", help="built-in name or FILE.toml (default seed-fixed)")
    p.add_argument("--list", action="store_true", help="list built-in scenarios")
    p.add_argument("-j", "--json", action="store_true")
    p.add_argument("-p", "--pretty", action="store_true")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("compat", help="matrix of every old->new generation pair, computed by the model")
    p.add_argument("-j", "--json", action="store_true")
    p.add_argument("-p", "--pretty", action="store_true")
    p.set_defaults(func=cmd_compat)

    p = sub.add_parser("map", help="draw physical memory: RAM, scratch, preserved blocks, metadata")
    common(p, "debugfs kho dir or a root FDT file")
    p.add_argument("--out", required=False, default="kho-map.svg", help="FILE.svg or FILE.png")
    p.add_argument("--iomem", metavar="FILE", help="a copy of /proc/iomem")
    p.set_defaults(func=cmd_map)

    p = sub.add_parser("explore", help="random lifecycles with faults; report invariant violations")
    p.add_argument("--profile", default="B-prefix")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--save", metavar="DIR", help="write a replayable TOML per violation class")
    p.add_argument("-j", "--json", action="store_true")
    p.set_defaults(func=cmd_explore)

    try:
        from . import fuzz
        fuzz.add_parser(sub)
    except ImportError:
        pass
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if getattr(args, "pretty", False):
        args.json = True
    if not getattr(args, "func", None):
        ap.print_help()
        return 2
    try:
        return args.func(args)
    except KhoError as e:
        print(f"kho {args.cmd}: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # pragma: no cover
        return 0
    except KeyboardInterrupt:  # pragma: no cover
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
