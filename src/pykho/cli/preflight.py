"""``kho preflight``: go / no-go for a live update, right before the kexec.

Given the image about to be loaded (``--target-image``: its release picks the
generation) or a generation (``--target``), it validates the outgoing
handover (by default of the running kernel: ``--mem live``) and answers with
its exit code: 0 go, 1 no-go (each reason one line: what the next kernel
would refuse, lose or corrupt), 2 cannot tell.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import UsageError
from ._common import (
    LIVE_DEBUGFS,
    add_input_args,
    dump_json,
    image_profile,
    live_paths,
    open_mem,
    profile_arg,
    read_iomem,
)

__all__ = ["add_parser", "run", "write_textfile"]

def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("preflight", help="go / no-go before a kexec: will the next kernel take this handover?",
                       description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_input_args(p, "debugfs kho dir or a root FDT file", f"{LIVE_DEBUGFS} with --mem live")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--target-image", metavar="IMAGE",
                   help="the kernel image about to be loaded (x86 bzImage or arm64 Image): its release picks "
                        "the generation (default: none; this or --target is required)")
    g.add_argument("--target", metavar="GEN",
                   help="the generation of the next kernel (A0 ... E, 7.2, ...) (default: none; this or "
                        "--target-image is required)")
    p.add_argument("--cmdline", default="kho=on",
                   help="the next kernel's command line, as it will boot (default 'kho=on')")
    p.add_argument("--iomem", metavar="FILE", help="a copy of /proc/iomem: System RAM ranges (default: none)")
    p.add_argument("--prometheus", metavar="FILE",
                   help="also write node_exporter textfile-collector metrics to FILE (written atomically; "
                        "default: none)")
    p.set_defaults(func=run)


def write_textfile(path: str, text: str) -> None:
    """Write ``path`` the way the textfile collector wants: a temporary file
    in the same folder, renamed over the old one."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        raise UsageError(f"{path}: cannot write: {e.strerror}") from None


def run(args: argparse.Namespace) -> int:
    from .._version import __version__
    from ..handover import load
    from ..reports import doubted
    from ..reports.validate import CANNOT_TELL, go_no_go, prometheus_text, validate
    if args.target_image:
        tgt, release = image_profile(args.target_image)
        if tgt is None:
            print(f"cannot tell: {args.target_image} is Linux {release}, a release no pykho profile "
                  "covers (give --target if you know its KHO generation)", file=sys.stderr)
            return CANNOT_TELL
    else:
        tgt = profile_arg(args.target, "--target")
        assert tgt is not None
    if args.path is None:
        args.path, args.mem = LIVE_DEBUGFS, args.mem or "live"
    live_paths(args)
    path, mem = args.path, args.mem
    iomem = read_iomem(args.iomem)
    ho = load(path, open_mem(mem), args.fdt_phys, iomem=iomem)
    rep = doubted(ho, validate(ho, tgt, iomem, cmdline=args.cmdline))
    code, reasons = go_no_go(rep)
    word = {0: "go", 1: "no-go", 2: "cannot tell"}[code]
    if args.prometheus:
        write_textfile(args.prometheus, prometheus_text(rep, __version__, code))
    if args.json:
        dump_json({"decision": word, "exit": code, "target": tgt.name, "reasons": reasons, "report": rep}, args)
    else:
        print(f"{word}: the {tgt.name} kernel ({tgt.kernels}) "
              + {0: "takes this handover", 1: "would not take it intact", 2: "cannot be predicted"}[code])
        for r in reasons:
            print(f"  {r}")
    return code
