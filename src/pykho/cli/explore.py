"""``kho explore``: random lifecycles with faults, minimal replays."""

from __future__ import annotations

import argparse
import os

from ..errors import UsageError
from ._common import add_json_args, dump_json, profile_arg, whole

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("explore", help="random lifecycles with faults; report invariant violations",
                       description="Draw random two-kernel lifecycles (preservations, faults, corruptions, "
                                   "finalize or not), check the invariants, and reduce each kind of violation to "
                                   "a minimal replayable scenario. Exit 1 when anything was violated.")
    p.add_argument("--profile", default="B-prefix", metavar="GEN",
                   help="generation whose lifecycles to explore: A0 A1 B-prefix B C D E or a release "
                        "(default B-prefix, 6.19 before the seed fix)")
    p.add_argument("--runs", type=whole(1, 1_000_000), default=200, metavar="N",
                   help="number of random lifecycles, 1 to 1000000 (default 200)")
    p.add_argument("--seed", type=whole(0), default=1, metavar="S",
                   help="seed of the random lifecycles, 0 or more: the same seed draws the same runs (default 1)")
    p.add_argument("--save", metavar="DIR",
                   help="write a replayable TOML per violation kind into DIR, created if missing (default: none)")
    add_json_args(p, "the result")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..model.explore import explore, to_toml
    prof = profile_arg(args.profile, "--profile")
    if args.save is not None:
        if not args.save:
            raise UsageError("--save '': give a directory")
        if os.path.exists(args.save) and not os.path.isdir(args.save):
            raise UsageError(f"--save {args.save}: not a directory")
    res = explore(prof.name, args.runs, args.seed)
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
            raise UsageError(f"--save {args.save}: cannot write there: {e.strerror}") from None
    bad = 1 if res["violations"] or res["model_errors"] else 0
    if args.json:
        dump_json(res, args)
        return bad
    print(f"kho explore: {res['runs']} lifecycles of {res['profile']} (seed {res['seed']}) in {res['seconds']} s")
    if not res["violations"]:
        print("  no invariant violated")
    for kind, c in res["violations"].items():
        ex = c["example"]
        occ = c.get("occurrences", c["runs"])
        print(f"  {kind}: {c['runs']} of {res['runs']} runs" + (f" ({occ} occurrences)" if occ != c["runs"] else "")
              + f", first at run {c['first_run']}; e.g. [0x{ex['start']:x}-0x{ex['end']:x}) "
              f"in {ex['kernel']} during {ex['step']}")
        steps = ", ".join(s["do"] for s in c["minimal"]["step"])
        faults = c["minimal"]["kernel"][1].get("faults")
        print(f"    minimal: {steps}" + (f"; next kernel faults {faults}" if faults else "")
              + (f"  -> {c['file']}" if "file" in c else ""))
    for v in res["model_errors"].values():
        print(f"  MODEL ERROR ({v['runs']} runs): {v['error']}")
    return bad
