"""``kho simulate``: a scenario through the model of both kernels."""

from __future__ import annotations

import argparse

from ._common import dump_json

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("simulate", help="run a scenario through the model of both kernels")
    p.add_argument("scenario", nargs="?", default="seed-fixed",
                   help="built-in name or FILE.toml (default: seed-fixed; --list shows the built-ins)")
    p.add_argument("--list", action="store_true", help="list the built-in scenarios and exit")
    p.add_argument("-j", "--json", action="store_true", help="JSON output (log, violations, kernels)")
    p.add_argument("-p", "--pretty", action="store_true", help="indented JSON (implies -j)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..model.scenarios import BUILTIN, simulate
    if args.list:
        for n, (desc, _) in BUILTIN.items():
            print(f"{n:20} {desc}")
        return 0
    res = simulate(args.scenario)
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
