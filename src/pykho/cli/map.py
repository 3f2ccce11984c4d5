"""``kho map``: a picture of physical memory and the handover in it."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from ._common import add_input_args, default_paths, dump_json, open_mem, read_iomem, writable_file

__all__ = ["add_parser", "run", "DEFAULT_OUT"]

DEFAULT_OUT = "kho-map.svg"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("map", help="draw physical memory: RAM, scratch, preserved blocks, metadata",
                       description="Draw physical memory and the handover in it: an overview of the whole span "
                                   "(strips holding one thing folded) and a page-scale zoom of the windows that "
                                   "hold small blocks, map metadata and the FDTs. Prints where it wrote.")
    add_input_args(p, "debugfs kho dir or a root FDT file")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="where to draw: FILE.svg (no extra needed) or FILE.png (needs matplotlib: pip install "
                        f"'pykho[plot]') (default: ./{DEFAULT_OUT})")
    p.add_argument("--iomem", metavar="FILE",
                   help="a copy of /proc/iomem (read as root): System RAM ranges to draw (default: none, RAM "
                        "assumed from 0 to the highest object; the bundled capture's when PATH is not given)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..handover import load
    from ..reports.inspect import check_kho
    from ..reports.mapplot import collect, map_title, render_png, render_svg
    default_paths(args)
    out = DEFAULT_OUT if args.out is None else args.out
    fmt = out.rsplit(".", 1)[-1].lower() if "." in out else ""
    if fmt not in ("svg", "png"):
        raise UsageError(f"--out {out!r}: must end in .svg or .png")
    writable_file(out, "--out")
    iomem = read_iomem(args.iomem)
    ho = load(args.path, open_mem(args.mem), args.fdt_phys, iomem=iomem)
    check_kho(ho)
    layers = collect(ho, iomem)
    title = map_title(ho, args.builtin)
    if fmt == "png":
        render_png(layers, title, out)
    else:
        svg = render_svg(layers, title)
        try:
            with open(out, "w") as f:
                f.write(svg)
        except OSError as e:
            raise UsageError(f"--out {out}: cannot write: {e.strerror}") from None
    nblocks = sum(layers["counts"].values())
    res = {"out": out, "format": fmt, "title": title, "span": list(layers["span"]), "blocks": nblocks,
           "blocks_by_order": {str(o): n for o, n in layers["counts"].items()},
           "runs": sum(len(v) for v in layers["runs"].values()), "metadata_pages": layers["meta_pages"],
           "scratch_areas": len(layers["scratch"]), "base_doubt": ho.base_doubt}
    if args.json:
        dump_json(res, args)
    else:
        print(f"wrote {out}: {nblocks} preserved blocks, {layers['meta_pages']} metadata pages, "
              f"{len(layers['scratch'])} scratch areas")
        if ho.base_doubt:
            print(f"  WARNING {ho.base_doubt}")
    return 0
