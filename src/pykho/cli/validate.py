"""``kho validate``: findings and the target kernel's verdict."""

from __future__ import annotations

import argparse

from ._common import BUILTIN_NOTE, add_input_args, default_paths, dump_json, open_mem, read_iomem

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("validate", help="check a handover and predict what a kernel will do with it")
    add_input_args(p, "debugfs kho dir or a root FDT file")
    p.add_argument("--target", metavar="GEN", help="kernel that will receive it (default: the compatible's)")
    p.add_argument("--iomem", metavar="FILE", help="a copy of /proc/iomem: System RAM ranges")
    p.add_argument("--cmdline", default="kho=on", help="the target kernel's command line (kho_scratch=, "
                   "reserve_mem=, debugfs= are modelled); default 'kho=on'")
    p.add_argument("--blocks", action="store_true", help="also list every preserved block")
    p.add_argument("--prometheus", metavar="FILE",
                   help="also write node_exporter textfile-collector metrics to FILE (written atomically)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..handover import load
    from ..profiles import get_profile
    from ..reports.validate import exit_code, render, render_rich, validate
    default_paths(args)
    ho = load(args.path, open_mem(args.mem), args.fdt_phys)
    tgt = get_profile(args.target) if args.target else (get_profile(args.profile) if args.profile else None)
    iomem = read_iomem(args.iomem)
    rep = validate(ho, tgt, iomem, want_blocks=args.blocks, cmdline=args.cmdline)
    if args.prometheus:
        from .._version import __version__
        from ..reports.validate import prometheus_text
        from .preflight import write_textfile
        write_textfile(args.prometheus, prometheus_text(rep, __version__))
    if args.json:
        dump_json(rep, args)
    else:
        if args.builtin:
            print(BUILTIN_NOTE)
        if not render_rich(rep):
            print(render(rep))
    return exit_code(rep)
