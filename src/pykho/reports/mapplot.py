"""``kho map``: a picture of physical memory and what the handover does with it.

Physical memory is drawn as stacked strips (each strip one equal slice of
the address span), so a 1 GiB VM and a 1 TiB host are both legible; every
object is at least one pixel wide.  Layers: System RAM, scratch areas,
preserved blocks coloured by order, map metadata (radix nodes or chunk
pages and bitmaps), sub-blobs and the root FDT.  SVG is written directly;
PNG needs matplotlib (``pip install 'pykho[all]'``).
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from ..errors import UsageError
from ..handover import detect_generation, map_walker

__all__ = ["collect", "render_svg", "render_png"]

PAGE = 4096
ORDER_COLORS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58",
                "#b5de2b", "#fde725", "#ff7f0e"]
OTHER = {"ram": "#e6e6e6", "scratch": "#9ecae1", "meta": "#000000", "blob": "#d62728", "fdt": "#ff00ff"}


def collect(ho, iomem=None, max_blocks: int = 2_000_000) -> dict:
    r = ho.root
    prof, _ = detect_generation(ho)
    layers = {"scratch": [(a.addr, a.end) for a in ho.scratch if a.size], "blocks": [], "meta": [], "blobs": []}
    if ho.root_phys is not None:
        layers["blobs"].append(("root FDT", ho.root_phys, ho.root_phys + PAGE))
    for st in r.subtrees:
        if st.phys:
            layers["blobs"].append((st.name, st.phys, st.phys + max(st.size or PAGE, 1)))
    if ho.mem is not None and r.mem_map and prof is not None:
        w = map_walker(prof, ho.mem, r.mem_map)
        n = 0
        for order, physs in w.leaves():
            for p in (physs.tolist() if hasattr(physs, "tolist") else physs):
                if n < max_blocks:
                    layers["blocks"].append((p, order))
                n += 1
        nodes = getattr(w, "nodes", None)
        if nodes is not None:
            layers["meta"] = [(x.phys, x.phys + PAGE) for x in nodes]
        else:
            layers["meta"] = [(c.phys, c.phys + PAGE) for c in w.chunks] + \
                             [(b, b + w.preserve_bits // 8) for b in w.bitmaps]
    ends = [e for _, e in layers["scratch"]] + [p + (PAGE << o) for p, o in layers["blocks"]] + \
           [e for _, _, e in layers["blobs"]] + [e for _, e in layers["meta"]]
    if iomem:
        ram = list(iomem)
    else:
        top = max(ends, default=1 << 30)
        top = ((top + (1 << 30) - 1) >> 30) << 30
        ram = [(0, top)]
    layers["ram"] = ram
    layers["span"] = (0, max(e for _, e in ram))
    return layers


def grid(span: tuple[int, int], max_rows: int = 32) -> tuple[int, int]:
    """(rows, bytes per row): power-of-two rows, at most ``max_rows`` of them."""
    lo, hi = span
    per = 1 << 20
    while (hi - lo + per - 1) // per > max_rows:
        per <<= 1
    return (hi - lo + per - 1) // per, per


def _size(n):
    for u, s in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << s:
            return f"{n / (1 << s):g} {u}"
    return f"{n} B"


def render_svg(layers: dict, title: str, width: int = 1200, rows: int | None = None) -> str:
    lo, hi = layers["span"]
    rows, per_row = grid(layers["span"])
    left, top, rh, gap = 110, 40, 18, 6
    plot_w = width - left - 20
    height = top + rows * (rh + gap) + 120
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" '
           f'font-size="11">', '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="10" y="20" font-size="14">{escape(title)}</text>']

    def rects(s, e, y0, h, color, tip):
        s, e = max(s, lo), min(e, hi)
        while s < e:
            row = (s - lo) // per_row
            rs = lo + row * per_row
            re_ = min(rs + per_row, e)
            x = left + (s - rs) * plot_w / per_row
            w = max(1.0, (re_ - s) * plot_w / per_row)
            y = top + row * (rh + gap) + y0
            out.append(f'<rect x="{x:.2f}" y="{y:.1f}" width="{w:.2f}" height="{h}" fill="{color}">'
                       f'<title>{escape(tip)}</title></rect>')
            s = re_

    for r in range(rows):
        y = top + r * (rh + gap)
        out.append(f'<text x="4" y="{y + 13}">0x{lo + r * per_row:x}</text>')
    for s, e in layers["ram"]:
        rects(s, e, 0, rh, OTHER["ram"], f"System RAM 0x{s:x}-0x{e:x}")
    for i, (s, e) in enumerate(layers["scratch"]):
        rects(s, e, 0, rh, OTHER["scratch"], f"scratch {i}: 0x{s:x}+{_size(e - s)}")
    for p, o in layers["blocks"]:
        rects(p, p + (PAGE << o), 3, rh - 6, ORDER_COLORS[min(o, 10)], f"preserved 0x{p:x} order {o}")
    for s, e in layers["meta"]:
        rects(s, e, 0, 3, OTHER["meta"], f"map metadata 0x{s:x}")
    for name, s, e in layers["blobs"]:
        rects(s, e, rh - 3, 3, OTHER["fdt" if name == "root FDT" else "blob"], f"{name} at 0x{s:x}")
    ly = top + rows * (rh + gap) + 20
    items = [("System RAM", OTHER["ram"]), ("scratch", OTHER["scratch"]), ("map metadata (top edge)", OTHER["meta"]),
             ("sub-blob (bottom edge)", OTHER["blob"]), ("root FDT", OTHER["fdt"])]
    for i, (name, c) in enumerate(items):
        x = 10 + i * 230
        out.append(f'<rect x="{x}" y="{ly}" width="14" height="12" fill="{c}" stroke="#888"/>'
                   f'<text x="{x + 20}" y="{ly + 10}">{escape(name)}</text>')
    ly += 24
    out.append(f'<text x="10" y="{ly + 10}">preserved block order:</text>')
    for o, c in enumerate(ORDER_COLORS):
        x = 190 + o * 60
        out.append(f'<rect x="{x}" y="{ly}" width="14" height="12" fill="{c}"/><text x="{x + 18}" y="{ly + 10}">{o}'
                   f'</text>')
    ly += 24
    nb = len(layers["blocks"])
    out.append(f'<text x="10" y="{ly + 10}">{rows} strips of {_size(per_row)}; {nb} preserved blocks, '
               f'{len(layers["meta"])} metadata pages, {len(layers["scratch"])} scratch areas</text>')
    out.append("</svg>")
    return "\n".join(out)


def render_png(layers: dict, title: str, path: str):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle
    except ImportError:
        raise UsageError(f"{path}: PNG output needs matplotlib (pip install 'pykho[all]'); use .svg") from None
    lo, hi = layers["span"]
    rows, per_row = grid(layers["span"])
    fig, ax = plt.subplots(figsize=(14, 2.2 + rows * 0.35))

    def rect(s, e, y0, h, c):
        s, e = max(s, lo), min(e, hi)
        while s < e:
            row = (s - lo) // per_row
            rs = lo + row * per_row
            re_ = min(rs + per_row, e)
            ax.add_patch(Rectangle(((s - rs) / per_row, rows - 1 - row + y0),
                                   max((re_ - s) / per_row, 0.0008), h, color=c, linewidth=0))
            s = re_
    for s, e in layers["ram"]:
        rect(s, e, 0.1, 0.8, OTHER["ram"])
    for s, e in layers["scratch"]:
        rect(s, e, 0.1, 0.8, OTHER["scratch"])
    for p, o in layers["blocks"]:
        rect(p, p + (PAGE << o), 0.25, 0.5, ORDER_COLORS[min(o, 10)])
    for s, e in layers["meta"]:
        rect(s, e, 0.8, 0.1, OTHER["meta"])
    for name, s, e in layers["blobs"]:
        rect(s, e, 0.1, 0.1, OTHER["fdt" if name == "root FDT" else "blob"])
    ax.set_xlim(0, 1)
    ax.set_ylim(0, rows)
    ax.set_yticks([rows - 0.5 - r for r in range(rows)], [f"0x{lo + r * per_row:x}" for r in range(rows)])
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1], ["+0", f"+{_size(per_row // 4)}", f"+{_size(per_row // 2)}",
                                            f"+{_size(3 * per_row // 4)}", f"+{_size(per_row)}"])
    from matplotlib.patches import Patch
    handles = [Patch(color=OTHER["ram"], label="System RAM"), Patch(color=OTHER["scratch"], label="scratch"),
               Patch(color=OTHER["meta"], label="map metadata"), Patch(color=OTHER["blob"], label="sub-blob"),
               Patch(color=OTHER["fdt"], label="root FDT")] + \
        [Patch(color=c, label=f"order {o}") for o, c in enumerate(ORDER_COLORS)]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=8, fontsize=8)
    ax.set_title(title + f"  ({rows} strips of {_size(per_row)})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
