"""The ``kho`` command: one module per sub-command.

Sub-commands: ``inspect``, ``validate``, ``preflight``, ``simulate``, ``compat``, ``map``,
``explore``, ``fuzz``.  Exit codes follow kernel tools: 0 fine, 1 findings of
severity error (or a violation, a rejected handover), 2 usage error,
unreadable input or "cannot tell" - always one line on stderr naming the
file or option and the problem, never a traceback; 3 an internal error of
pykho (one line too; ``PYKHO_TRACEBACK=1`` shows the traceback).  Parsing the
arguments imports nothing of the model, the reports or the fuzzer: each
command imports what it needs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .._version import __version__
from ..errors import KhoError
from . import compat, explore, fuzz, inspect, preflight, simulate, validate
from . import map as map_cmd
from ._common import ArgError, Parser

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="kho", description="Inspect, validate and simulate Linux Kexec HandOver (KHO).",
                epilog="Exit codes: 0 fine; 1 error findings, a rejected handover, an invariant violation; "
                       "2 a usage error, unreadable input or a verdict that cannot be told (one line on stderr); "
                       "3 an internal error of pykho. 'kho COMMAND --help' describes each command.")
    ap.add_argument("--version", action="version", version=f"pykho {__version__}")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=Parser)
    for mod in (inspect, validate, preflight, simulate, compat, map_cmd, explore, fuzz):
        mod.add_parser(sub)
    return ap


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``kho`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    ap = build_parser()
    try:
        args, extra = ap.parse_known_args(argv)
        if extra:
            cmd = getattr(args, "cmd", None)
            raise ArgError(f"kho {cmd}" if cmd else "kho", f"unrecognized arguments: {' '.join(extra)}"
                           + (f" (kho {cmd} --help lists the options)" if cmd else " (kho --help lists the commands)"))
    except ArgError as e:
        print(_one_line(str(e)) if e.prog != "kho" else f"kho: {_one_line(e.message)}", file=sys.stderr)
        return 2
    except SystemExit as e:          # --help, --version
        return e.code if isinstance(e.code, int) else 0
    if getattr(args, "pretty", False):
        args.json = True
    if not getattr(args, "func", None):
        print("kho: no command given: inspect, validate, simulate, compat, map, explore or fuzz "
              "(kho --help says what each does)", file=sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except KhoError as e:
        print(f"kho {args.cmd}: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # pragma: no cover
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the interpreter closes it at exit
        except OSError:
            pass
        return 0
    except KeyboardInterrupt:  # pragma: no cover
        return 130
    except MemoryError:
        print(f"kho {args.cmd}: out of memory", file=sys.stderr)
        return 2
    except OSError as e:
        if os.environ.get("PYKHO_TRACEBACK"):
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"kho {args.cmd}: {where}{_one_line(e.strerror or str(e))}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the last net: one line, never a traceback
        if os.environ.get("PYKHO_TRACEBACK"):
            raise
        print(f"kho {args.cmd}: internal error, a bug in pykho ({type(e).__name__}: {_one_line(str(e))[:300]}); "
              "PYKHO_TRACEBACK=1 shows where", file=sys.stderr)
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
