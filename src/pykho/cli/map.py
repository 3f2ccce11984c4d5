"""``kho map``: a picture of physical memory and the handover in it."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from ._common import add_input_args, default_paths, open_mem, read_iomem

__all__ = ["add_parser", "run", "DEFAULT_OUT"]

DEFAULT_OUT = "kho-map.svg"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("map", help="draw physical memory: RAM, scratch, preserved blocks, metadata")
    add_input_args(p, "debugfs kho dir or a root FDT file")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="FILE",
                   help=f"FILE.svg or FILE.png (PNG needs matplotlib: pip install 'pykho[plot]'); "
                        f"default ./{DEFAULT_OUT}")
    p.add_argument("--iomem", metavar="FILE", help="a copy of /proc/iomem: System RAM ranges")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from ..handover import load
    from ..reports.mapplot import collect, render_png, render_svg
    default_paths(args)
    if not (args.out.endswith(".png") or args.out.endswith(".svg")):
        raise UsageError(f"{args.out}: --out must end in .svg or .png")
    ho = load(args.path, open_mem(args.mem), args.fdt_phys)
    iomem = read_iomem(args.iomem)
    layers = collect(ho, iomem)
    title = f"KHO handover {os.path.basename(os.path.normpath(ho.source))} ({ho.root.compatible})"
    if args.out.endswith(".png"):
        render_png(layers, title, args.out)
    else:
        try:
            with open(args.out, "w") as f:
                f.write(render_svg(layers, title))
        except OSError as e:
            raise UsageError(f"{args.out}: cannot write: {e.strerror}") from None
    print(f"wrote {args.out}: {len(layers['blocks'])} preserved blocks, {len(layers['meta'])} metadata pages, "
          f"{len(layers['scratch'])} scratch areas")
    return 0
