"""``kho validate``: findings and the target kernel's verdict."""

from __future__ import annotations

import argparse
import os
import sys

from ._common import (
    BUILTIN_NOTE,
    add_input_args,
    default_paths,
    dump_json,
    image_profile,
    open_mem,
    profile_arg,
    read_iomem,
)

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("validate", help="check a handover and predict what a kernel will do with it",
                       description="Check a handover and boot the target kernel's model on it: findings, the "
                                   "lines that kernel prints, what it restores. Exit 0 fine, 1 error findings or "
                                   "a refused handover, 2 unreadable input or a verdict that cannot be told "
                                   "(the report on stdout, the reason on stderr).")
    add_input_args(p, "debugfs kho dir or a root FDT file")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--target", metavar="GEN",
                   help="the generation of the kernel that will receive it: A0 A1 B-prefix B C D E F or a release "
                        "(default: --target-image's, else --profile; for what the running kernel received, "
                        "debugfs in/ with --mem live: the running kernel's; else the one the compatible string "
                        "names)")
    g.add_argument("--target-image", metavar="IMAGE",
                   help="the kernel image that will receive it (x86 bzImage or arm64 Image): its release picks "
                        "the generation, as for kho preflight (default: none)")
    p.add_argument("--iomem", metavar="FILE",
                   help="a copy of /proc/iomem (read as root): System RAM ranges of the machine (default: none; "
                        "the bundled capture's when PATH is not given)")
    p.add_argument("--cmdline", default="kho=on", help="the target kernel's command line (kho_scratch=, "
                   "reserve_mem=, debugfs= are modelled) (default 'kho=on')")
    p.add_argument("--blocks", action="store_true", help="also list every preserved block (default: counts only)")
    p.add_argument("--prometheus", metavar="FILE",
                   help="also write node_exporter textfile-collector metrics to FILE (written atomically; "
                        "default: none)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..handover import load
    from ..reports import doubted
    from ..reports.validate import exit_code, render, render_rich, validate
    default_paths(args)
    tgt = profile_arg(args.target, "--target")
    if args.target_image:
        tgt, release = image_profile(args.target_image)
        if tgt is None:
            print(f"kho validate: {args.target_image} is Linux {release}, a release no pykho profile covers "
                  "(give --target if you know its KHO generation)", file=sys.stderr)
            return 2
    tgt = tgt or profile_arg(args.profile, "--profile")
    iomem = read_iomem(args.iomem)
    ho = load(args.path, open_mem(args.mem), args.fdt_phys, iomem=iomem)
    if tgt is None and args.mem == "live" and ho.direction == "in":
        # the handover the running kernel received: that kernel is its receiver
        from ..profiles import profile_for_release
        tgt = profile_for_release(os.uname().release)
    rep = doubted(ho, validate(ho, tgt, iomem, want_blocks=args.blocks, cmdline=args.cmdline))
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
    rc = exit_code(rep)
    if rc == 2:
        v = rep["verdict"]
        sys.stdout.flush()
        why = " ".join(str(v.get("outcome") or "the input is incomplete").split())
        why = why[len("cannot tell: "):] if why.startswith("cannot tell: ") else why
        print(f"kho validate: {args.path}: cannot tell what {v['target']} does with it: {why}", file=sys.stderr)
    return rc
