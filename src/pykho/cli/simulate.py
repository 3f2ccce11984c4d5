"""``kho simulate``: a scenario through the model of both kernels."""

from __future__ import annotations

import argparse
import os

from ..errors import UsageError
from ._common import add_json_args, dump_json

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("simulate", help="run a scenario through the model of both kernels",
                       description="Run a scenario (a machine, a chain of kernels, steps) through the model and "
                                   "check the invariants after every step; exit 1 on a violation.")
    p.add_argument("scenario", nargs="?", default="seed-fixed",
                   help="built-in name or FILE.toml (default: seed-fixed; --list shows the built-ins)")
    p.add_argument("--list", action="store_true", help="list the built-in scenarios and exit")
    add_json_args(p, "the result (log, violations, kernels)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..handover import read_scenario_file
    from ..model.scenarios import BUILTIN, simulate
    if args.list:
        if args.json:
            dump_json({n: desc for n, (desc, _) in BUILTIN.items()}, args)
        else:
            for n, (desc, _) in BUILTIN.items():
                print(f"{n:20} {desc}")
        return 0
    is_file = args.scenario not in BUILTIN and os.path.lexists(args.scenario)
    if is_file:
        read_scenario_file(args.scenario)
    elif args.scenario not in BUILTIN:
        raise UsageError(f"{args.scenario!r}: not a built-in scenario (kho simulate --list) nor a TOML file")
    try:
        res = simulate(args.scenario)
    except UsageError as e:
        if not is_file or str(e).startswith(args.scenario):
            raise
        raise UsageError(f"{args.scenario}: {e}") from None
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError, RuntimeError,
            ZeroDivisionError) as e:
        if not is_file:
            raise
        raise UsageError(f"{args.scenario}: invalid scenario ({type(e).__name__}: {e})") from None
    if args.json:
        dump_json(res, args)
    else:
        print(f"scenario {res['scenario']}")
        for line in res["log"]:
            print(line)
        print()
        if res["violations"]:
            print(f"INVARIANTS: {len(res['violations'])} violation(s)")
            for v in res["violations"]:
                print(f"  {v['kind']}: [0x{v['start']:x}-0x{v['end']:x}) in {v['kernel']} during {v['step']}: "
                      f"{v['detail']}")
        else:
            print("INVARIANTS: no violation")
    return 1 if res["violations"] else 0
