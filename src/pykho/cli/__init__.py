"""The ``kho`` command: one module per sub-command.

Sub-commands: ``inspect``, ``validate``, ``preflight``, ``simulate``, ``compat``, ``map``,
``explore``, ``fuzz``.  Exit codes follow kernel tools: 0 fine, 1 findings of
severity error (or a violation, a rejected handover), 2 usage error or
unreadable input - always one line on stderr naming the file and the
problem, never a traceback.  Parsing the arguments imports nothing of the
model, the reports or the fuzzer: each command imports what it needs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .._version import __version__
from ..errors import KhoError
from . import compat, explore, fuzz, inspect, preflight, simulate, validate
from . import map as map_cmd

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="kho", description="Inspect, validate and simulate Linux Kexec HandOver (KHO).")
    ap.add_argument("--version", action="version", version=f"pykho {__version__}")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")
    for mod in (inspect, validate, preflight, simulate, compat, map_cmd, explore, fuzz):
        mod.add_parser(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if getattr(args, "pretty", False):
        args.json = True
    if not getattr(args, "func", None):
        ap.print_help()
        return 2
    try:
        return int(args.func(args))
    except KhoError as e:
        print(f"kho {args.cmd}: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # pragma: no cover
        return 0
    except KeyboardInterrupt:  # pragma: no cover
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
