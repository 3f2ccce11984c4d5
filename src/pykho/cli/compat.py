"""``kho compat``: the old -> new generation matrix, computed by the model."""

from __future__ import annotations

import argparse

from ._common import add_json_args, dump_json

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("compat", help="matrix of every old->new generation pair, computed by the model",
                       description="Hand the handover of each generation's modelled kernel to each generation's "
                                   "modelled next kernel and say what happens (ok, rej, fail, BAD).")
    add_json_args(p, "one object per cell")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..model.compat import matrix, render
    cells = matrix()
    if args.json:
        dump_json(cells, args)
    else:
        print(render(cells))
    return 0
