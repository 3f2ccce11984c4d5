"""``kho explore``: random lifecycles with faults, minimal replays."""

from __future__ import annotations

import argparse
import os

from ..errors import UsageError
from ._common import dump_json

__all__ = ["add_parser", "run"]


def _positive(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{s!r} must be at least 1")
    return v


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("explore", help="random lifecycles with faults; report invariant violations")
    p.add_argument("--profile", default="B-prefix", metavar="GEN",
                   help="generation whose lifecycles to explore (default B-prefix, the seed's kernel)")
    p.add_argument("--runs", type=_positive, default=200, help="number of random lifecycles (default 200)")
    p.add_argument("--seed", type=int, default=1, help="seed of the random lifecycles (default 1)")
    p.add_argument("--save", metavar="DIR", help="write a replayable TOML per violation class into DIR")
    p.add_argument("-j", "--json", action="store_true", help="JSON output")
    p.add_argument("-p", "--pretty", action="store_true", help="indented JSON (implies -j)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..model.explore import explore, to_toml
    from ..profiles import get_profile
    get_profile(args.profile)
    res = explore(args.profile, args.runs, args.seed)
    if args.save:
        try:
            os.makedirs(args.save, exist_ok=True)
            for kind, c in res["violations"].items():
                path = os.path.join(args.save, f"{res['profile']}-{kind}.toml")
                with open(path, "w") as f:
                    f.write(to_toml(c["minimal"], f"kho explore --profile {res['profile']} --runs {res['runs']} "
                                                  f"--seed {res['seed']}: minimal lifecycle reaching {kind}\n"
                                                  f"replay: kho simulate {path}"))
                c["file"] = path
        except OSError as e:
            raise UsageError(f"{args.save}: cannot write there: {e.strerror}") from None
    bad = 1 if res["violations"] or res["model_errors"] else 0
    if args.json:
        dump_json(res, args)
        return bad
    print(f"kho explore: {res['runs']} lifecycles of {res['profile']} (seed {res['seed']}) in {res['seconds']} s")
    if not res["violations"]:
        print("  no invariant violated")
    for kind, c in res["violations"].items():
        ex = c["example"]
        print(f"  {kind}: {c['runs']} runs, first at run {c['first_run']}; e.g. [0x{ex['start']:x}-0x{ex['end']:x}) "
              f"in {ex['kernel']} during {ex['step']}")
        steps = ", ".join(s["do"] for s in c["minimal"]["step"])
        faults = c["minimal"]["kernel"][1].get("faults")
        print(f"    minimal: {steps}" + (f"; next kernel faults {faults}" if faults else "")
              + (f"  -> {c['file']}" if "file" in c else ""))
    for v in res["model_errors"].values():
        print(f"  MODEL ERROR ({v['runs']} runs): {v['error']}")
    return bad
