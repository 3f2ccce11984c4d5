"""``kho inspect``: decode a handover."""

from __future__ import annotations

import argparse

from ._common import BUILTIN_NOTE, add_input_args, default_paths, dump_json, open_mem, profile_arg

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("inspect", help="decode a handover: tree, sub-blobs, scratch, preserved blocks",
                       description="Decode a handover and say what it holds. A debugfs copy alone shows the tree "
                                   "it has (a cut 7.2 out/fdt as far as its bytes go), the scratch areas and the "
                                   "sub-blobs, and lists what needs memory. Exit 2 when the input is not a KHO "
                                   "handover or cannot be read.")
    add_input_args(p, "debugfs kho dir (kho/, kho/out, kho/in) or a root FDT file")
    p.add_argument("--blocks", action="store_true",
                   help="after the report, stream every preserved block in the kernel's walk order "
                        "(one line each; with -j one JSON line [phys, order] each), in constant memory "
                        "(default: counts only)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..handover import load
    from ..reports.inspect import block_line, inspect, iter_blocks, render
    default_paths(args)
    prof = profile_arg(args.profile, "--profile")
    ho = load(args.path, open_mem(args.mem), args.fdt_phys)
    rep = inspect(ho, prof, want_blocks=False, preserve_bits=args.bitmap_bits)
    if args.json:
        dump_json(rep, args)
    else:
        if args.builtin:
            print(BUILTIN_NOTE)
        print(render(rep))
    if args.blocks:
        for p, o in iter_blocks(ho, prof, args.bitmap_bits):
            print(f"[{p}, {o}]" if args.json else block_line(p, o))
    return 0
