"""``kho map``: a picture of physical memory and what the handover does with it.

Two panels, one scene (:func:`layout`) drawn as SVG (no dependency) or PNG
(matplotlib, ``pip install 'pykho[plot]'``):

* the overview: the whole span as stacked strips of a power-of-two size;
  a run of strips that hold one thing only (System RAM, one scratch area,
  one order of preserved blocks) is folded into one labelled strip, so a
  1 GiB VM and a 1 TiB host both fit in a screen;
* the zoom: every object too small to see in the overview (preserved
  blocks, map metadata pages, the root FDT and sub-blobs) gathered into a
  few windows drawn at page scale, each window its own range.

Scratch areas get a colour each (lowmem, global, one per node), preserved
blocks a colour per order, metadata is black; the legend lists only what
the picture holds.  Preserved blocks are collected as coalesced runs per
order (a fully preserved 1 TiB host is a handful of runs, never a Python
object per block).
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from typing import Any

from ..abi import bits
from ..errors import UsageError
from ..handover import Handover, detect_generation, map_walker

__all__ = ["collect", "layout", "render_svg", "render_png", "map_title", "Scene"]

PAGE = 4096
#: preserved blocks by order: strong colours, none of them a scratch pastel
ORDER_COLORS = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#1f78b4",
                "#b2182b", "#6a3d9a", "#00a6d6", "#444444"]
#: scratch areas: lowmem, global, then one per node (pastels)
SCRATCH_COLORS = ["#a6cee3", "#b2df8a", "#fdbf6f", "#cab2d6", "#fb9a99", "#ffff99", "#8dd3c7", "#bebada",
                  "#d9d9d9", "#ccebc5"]
RAM, HOLE, META, BLOB, FDT = "#e3e3e3", "#ffffff", "#000000", "#e41a1c", "#ff00ff"
#: a layer never thinner than this many pixels
MIN_PX = 1.5


def escape(text: str) -> str:
    """``&``, ``<`` and ``>`` as XML entities (what ``xml.sax.saxutils.escape``
    does, without the 50 ms of ``urllib`` and ``http`` that module imports)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _size(n: int) -> str:
    for u, s in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << s:
            v = n / (1 << s)
            return f"{v:.0f} {u}" if v == int(v) else f"{v:.1f} {u}"
    return f"{n} B"


def scratch_name(i: int) -> str:
    return ("lowmem", "global")[i] if i < 2 else f"node {i - 2}"


def _merge(runs: list[tuple[int, int]], quantum: int = 1) -> list[tuple[int, int]]:
    """Sorted runs, those closer than ``quantum`` bytes joined."""
    out: list[tuple[int, int]] = []
    for s, e in sorted(runs):
        if out and s - out[-1][1] < quantum:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def collect(ho: Handover, iomem: list[tuple[int, int]] | None = None, max_runs: int = 200_000) -> dict[str, Any]:
    """What the map draws: RAM, scratch areas, preserved runs per order with
    block counts, metadata runs, blobs, the span.  Runs closer than a page
    are kept apart; beyond ``max_runs`` runs of one order, runs closer than
    what a pixel of the overview holds are joined (the picture is the same)."""
    r = ho.tree
    prof, _ = detect_generation(ho)
    layers: dict[str, Any] = {
        "scratch": [(scratch_name(i), a.addr, a.end) for i, a in enumerate(ho.scratch) if a.size],
        "runs": {}, "counts": {}, "meta": [], "meta_pages": 0, "blobs": [], "coarsened": False,
        "compatible": r.compatible, "generation": prof.name if prof else None,
    }
    if ho.root_phys is not None:
        layers["blobs"].append(("root FDT", ho.root_phys, ho.root_phys + PAGE))
    for st in r.subtrees:
        if st.phys:
            layers["blobs"].append((st.name, st.phys, st.phys + max(st.size or PAGE, 1)))
    if ho.scratch_phys:
        layers["blobs"].append(("scratch array", ho.scratch_phys, ho.scratch_phys + max(ho.scratch_len or 16, 1)))
    top_guess = 1 << 30
    runs: dict[int, list[tuple[int, int]]] = {}
    counts: dict[int, int] = {}
    if ho.mem is not None and r.mem_map and prof is not None and ho.partial is None:
        w = map_walker(prof, ho.mem, r.mem_map)
        if hasattr(w, "runs") and bits.HAVE_NUMPY:
            _collect_runs(w, runs, counts, max_runs, layers)
        else:
            _collect_blocks(w, runs, counts, max_runs, layers)
        nodes = getattr(w, "nodes", None)
        if nodes is not None:
            meta = [(n.phys, n.phys + PAGE) for n in nodes]
        else:
            meta = [(c.phys, c.phys + PAGE) for c in w.chunks] + \
                   [(b, b + max(w.preserve_bits // 8, 1)) for b in w.bitmaps]
        layers["meta_pages"] = len(meta)
        layers["meta"] = _merge(meta)
    layers["runs"] = {o: _merge(v) for o, v in sorted(runs.items())}
    layers["counts"] = dict(sorted(counts.items()))
    ends = [e for _, _, e in layers["scratch"]] + [e for v in layers["runs"].values() for _, e in v[-1:]] + \
           [e for _, _, e in layers["blobs"]] + [e for _, e in layers["meta"][-1:]]
    if iomem:
        ram = _merge(list(iomem))
    else:
        top = max(ends + [top_guess])
        ram = [(0, ((top + (1 << 30) - 1) >> 30) << 30)]
    layers["ram"] = ram
    lo = min([s for s, _ in ram] + [s for _, s, _ in layers["scratch"]])
    hi = max([e for _, e in ram] + ends)
    layers["span"] = (lo & ~((1 << 20) - 1), hi)
    return layers


def _collect_blocks(w: Any, runs: dict[int, list[tuple[int, int]]], counts: dict[int, int], max_runs: int,
                    layers: dict[str, Any]) -> None:
    """Runs per order from the walker's blocks, leaf by leaf (kho-v1 chunk
    lists, or no numpy)."""
    from ..model.machine import block_runs
    quantum: dict[int, int] = {}
    for order, physs in w.leaves():
        if not len(physs):
            continue
        counts[order] = counts.get(order, 0) + len(physs)
        lst = runs.setdefault(order, [])
        q = quantum.get(order, 1)
        for s, e in block_runs(order, physs):
            if lst and 0 <= s - lst[-1][1] < q:
                lst[-1] = (lst[-1][0], max(e, lst[-1][1]))
            else:
                lst.append((s, e))
        if len(lst) > max_runs:
            # more runs than a picture can tell apart: join the closest
            q = max(q, PAGE)
            while len(lst) > max_runs // 2:
                q *= 2
                lst = _merge(lst, q)
            quantum[order] = q
            runs[order] = lst
            layers["coarsened"] = True


def _join_arrays(s: Any, e: Any, q: int) -> tuple[Any, Any]:
    """Sorted runs (arrays) with those closer than ``q`` bytes joined."""
    import numpy as np
    if len(s) < 2:
        return s, e
    reach = np.maximum.accumulate(e)
    keep = s[1:] - reach[:-1] >= q
    return s[np.concatenate(([True], keep))], reach[np.concatenate((keep, [True]))]


def _coarse_quantum(gaps: Any, keep: int) -> int:
    """The smallest ``PAGE << k`` (``k >= 1``) that, as the gap below which
    sorted disjoint runs are joined, leaves at most ``keep`` runs (``gaps``:
    between each run and the next): found from the gaps at once (joining
    at ``q`` keeps exactly the gaps of ``q`` and more, so doubling ``q``
    pass after pass ends at the same quantum)."""
    import numpy as np
    q = 2 * PAGE
    if len(gaps) >= keep >= 1:
        # the keep-th largest gap must be joined: q above it
        v = int(np.partition(gaps, len(gaps) - keep)[len(gaps) - keep])
        while q <= v:
            q *= 2
    return q


def _collect_runs(w: Any, runs: dict[int, list[tuple[int, int]]], counts: dict[int, int], max_runs: int,
                  layers: dict[str, Any]) -> None:
    """Runs per order straight from a radix walk's leaf groups (arrays, no
    object per block or run until the runs are few enough to draw)."""
    import numpy as np
    parts: dict[int, list[tuple[Any, Any]]] = {}
    for order, n, starts, ends in w.runs():
        counts[order] = counts.get(order, 0) + n
        parts.setdefault(order, []).append((starts, ends))
    for order in list(parts):
        pl = parts.pop(order)           # each order's pieces freed once joined
        s = np.concatenate([a for a, _ in pl])
        e = np.concatenate([b for _, b in pl])
        del pl
        if len(s) > 1 and not bool(np.all(s[1:] >= e[:-1])):
            # not disjoint in walk order (a malformed map): sorted, and
            # overlapping runs joined
            ix = np.argsort(s, kind="stable")
            s, e = _join_arrays(s[ix], e[ix], 0)
        gaps = s[1:] - e[:-1]                         # >= 0: one order's runs come ascending
        if np.count_nonzero(gaps) + 1 > max_runs:
            # more runs than a picture can tell apart: join the closest
            # (touching runs with them: the quantum is above a page)
            keep = gaps >= _coarse_quantum(gaps, max_runs // 2)
            layers["coarsened"] = True
        else:
            keep = gaps != 0                          # touching runs are one
        del gaps
        s, e = s[np.concatenate(([True], keep))], e[np.concatenate((keep, [True]))]
        runs[order] = list(zip(s.tolist(), e.tolist()))


def map_title(ho: Handover, builtin: bool = False) -> str:
    """``KHO handover <where> (compatible, generation)`` without an absolute path."""
    src = os.path.normpath(ho.source)
    if builtin:
        where = "bundled Linux 7.2.13 capture"
    else:
        rel = os.path.relpath(src) if os.path.isabs(src) else src
        if rel.startswith(".."):
            parts = src.split(os.sep)
            rel = os.path.join(*parts[-3:]) if len(parts) > 3 else src.lstrip(os.sep)
        where = rel
    try:
        gen = detect_generation(ho)[0]
        what = f"{ho.tree.compatible}" + (f", {gen.name} ({gen.kernels})" if gen else "")
    except Exception:  # noqa: BLE001 - a title never fails a map
        what = "?"
    return f"KHO handover {where} ({what})"


# ------------------------------------------------------------------ the scene


@dataclass
class Scene:
    """Rectangles and texts in pixels (y downward), for SVG and PNG alike."""

    width: int
    height: int = 0
    #: x, y, w, h, fill, tooltip, edge colour
    rects: list[tuple[float, float, float, float, str, str, str]] = field(default_factory=list)
    #: x, y, text, size, anchor, colour, weight
    texts: list[tuple[float, float, str, float, str, str, str]] = field(default_factory=list)

    def rect(self, x: float, y: float, w: float, h: float, fill: str, tip: str = "", edge: str = "") -> None:
        self.rects.append((x, y, w, h, fill, tip, edge))

    def text(self, x: float, y: float, s: str, size: float = 11, anchor: str = "start", color: str = "#000000",
             weight: str = "normal") -> None:
        self.texts.append((x, y, s, size, anchor, color, weight))


def _grid(span: tuple[int, int], max_rows: int) -> tuple[int, int]:
    lo, hi = span
    per = 1 << 20
    while (hi - lo + per - 1) // per > max_rows:
        per <<= 1
    return (hi - lo + per - 1) // per, per


def _clip(runs: list[tuple[int, int]], s: int, e: int) -> list[tuple[int, int]]:
    import bisect
    i = max(0, bisect.bisect_right(runs, (s, 1 << 70)) - 1)
    out = []
    while i < len(runs) and runs[i][0] < e:
        a, b = runs[i]
        if b > s:
            out.append((max(a, s), min(b, e)))
        i += 1
    return out


@dataclass
class _Layer:
    """One thing drawn: disjoint runs sorted by start (``starts``/``ends``),
    its colour and what its tooltips say."""
    name: str
    color: str
    starts: list[int]
    ends: list[int]
    kind: str               # "scratch", "order", "meta", "blob"
    label: str = ""         # scratch area or blob name
    order: int = 0

    def tip(self, s: int, e: int) -> str:
        if self.kind == "scratch":
            return f"scratch {self.label}: 0x{s:x}+{_size(e - s)}"
        if self.kind == "order":
            n = (e - s) >> (12 + self.order)
            return f"preserved 0x{s:x}-0x{e:x} order {self.order}" + (f" ({n} blocks)" if n > 1 else "")
        if self.kind == "meta":
            return f"map metadata 0x{s:x}-0x{e:x} ({(e - s) // PAGE} pages)"
        return f"{self.label} at 0x{s:x}"

    def within(self, s: int, e: int) -> list[tuple[int, int]]:
        """The runs meeting [s, e), unclipped."""
        i = bisect.bisect_right(self.ends, s)
        out = []
        while i < len(self.starts) and self.starts[i] < e:
            out.append((self.starts[i], self.ends[i]))
            i += 1
        return out


def _items(layers: dict[str, Any]) -> list[_Layer]:
    """Everything drawn, bottom layer first: one :class:`_Layer` per scratch
    area, per order, for the metadata, per blob."""
    out: list[_Layer] = []
    for i, (name, s, e) in enumerate(layers["scratch"]):
        out.append(_Layer(f"scratch{i}", SCRATCH_COLORS[i % len(SCRATCH_COLORS)], [s], [e], "scratch", name))
    for o, rl in layers["runs"].items():
        out.append(_Layer(f"order{o}", ORDER_COLORS[min(o, len(ORDER_COLORS) - 1)], [a for a, _ in rl],
                          [b for _, b in rl], "order", order=o))
    if layers["meta"]:
        out.append(_Layer("meta", META, [a for a, _ in layers["meta"]], [b for _, b in layers["meta"]], "meta"))
    for name, s, e in layers["blobs"]:
        fdt = name == "root FDT"
        out.append(_Layer("fdt" if fdt else "blob", FDT if fdt else BLOB, [s], [e], "blob", name))
    return out


def _band(layer: str, y: float, h: float, slot: tuple[int, int] = (0, 1)) -> tuple[float, float]:
    """Where in a strip a layer is drawn: scratch full height, blocks and
    metadata pages (never the same pages) in the middle, the root FDT and
    sub-blobs (inside preserved blocks) along the bottom edge.  ``slot``
    (k of n) gives each of n orders its own line of the middle band, so
    that orders interleaved closer than a pixel all show."""
    if layer.startswith("scratch"):
        return y, h
    if layer.startswith("order"):
        k, n = slot
        return y + h * (0.2 + 0.6 * k / n), h * 0.6 / n
    if layer == "meta":
        return y + h * 0.2, h * 0.6
    return y + h - max(3.0, h * 0.2), max(3.0, h * 0.2)


def _signature(layers: dict[str, Any], items: list[_Layer], s: int, e: int) -> str | None:
    """What a strip [s, e) holds when it holds exactly one thing throughout
    (RAM only, one scratch area, one order), else None."""
    ram = _clip(layers["ram"], s, e)
    if not ram:
        return "hole"
    if ram != [(s, e)]:
        return None
    covering = None
    for lay in items:
        for a, b in lay.within(s, e):
            if a <= s and b >= e and lay.kind in ("scratch", "order"):
                if covering is None or lay.kind == "order":
                    covering = lay.name
                continue
            return None
    return covering or "ram"


def _zoom_windows(layers: dict[str, Any], items: list, small: int, max_windows: int) -> list[tuple[int, int]]:
    """Windows (start, end) holding every object smaller than ``small`` bytes."""
    objs = sorted((s, e) for lay in items for s, e in zip(lay.starts, lay.ends) if e - s < small)
    if not objs:
        return []
    gap = 16 * PAGE
    while True:
        wins: list[tuple[int, int]] = []
        for s, e in objs:
            if wins and s - wins[-1][1] <= gap:
                wins[-1] = (wins[-1][0], max(e, wins[-1][1]))
            else:
                wins.append((s, e))
        if len(wins) <= max_windows:
            break
        gap *= 2
        objs = wins         # windows joined at a wider gap are windows of windows
    out = []
    for s, e in wins:
        s0 = (s // PAGE) * PAGE
        e0 = -(-e // PAGE) * PAGE
        ext = max(e0 - s0, 16 * PAGE)
        pad = max(2 * PAGE, (ext // 16) // PAGE * PAGE)
        out.append((max(0, s0 - pad), max(e0, s0 + ext - (e0 - s0)) + pad))
    return out


def layout(layers: dict[str, Any], title: str, width: int = 1200, max_rows: int = 32, max_windows: int = 12) -> Scene:
    """The picture of ``layers`` (see :func:`collect`) as a :class:`Scene`."""
    sc = Scene(width)
    left, right = 118, 16
    pw = width - left - right
    lo, hi = layers["span"]
    rows, per_row = _grid((lo, hi), max_rows)
    items = _items(layers)
    orders = [lay.name for lay in items if lay.kind == "order"]
    slots = {name: (k, len(orders)) for k, name in enumerate(orders)}
    nblocks = sum(layers["counts"].values())
    nbytes = sum(((e - s) for rl in layers["runs"].values() for s, e in rl))
    sc.text(10, 24, title, 15, weight="bold")
    sub = (f"{nblocks} preserved blocks ({_size(nbytes)})" if layers["counts"] or layers["meta_pages"]
           else "no preserved map read (no memory given, or the map is empty)")
    sub += f", {layers['meta_pages']} map metadata pages, {len(layers['scratch'])} scratch areas"
    sc.text(10, 44, sub, 11, color="#333333")
    y = 62
    sc.text(10, y + 12, f"whole span 0x{lo:x}-0x{hi:x} ({_size(hi - lo)}): strips of {_size(per_row)}, "
                        "a run of strips holding one thing folded into one", 11, weight="bold")
    y += 22
    rh, gap = 18, 6

    def draw(s: int, e: int, y0: float, x0: float, w: float, h: float, scale_s: int, scale_n: int,
             pages: bool = False) -> None:
        px = w / scale_n
        for a, b in _clip(layers["ram"], s, e):
            sc.rect(x0 + (a - scale_s) * px, y0, max(MIN_PX, (b - a) * px), h, RAM, f"System RAM 0x{a:x}-0x{b:x}")
        for lay in items:
            by, bh = _band(lay.name, y0, h, slots.get(lay.name, (0, 1)))
            paged = pages and lay.kind in ("order", "meta")
            step = PAGE << lay.order if lay.kind == "order" else PAGE
            # runs less than a pixel apart are one rectangle (a strip shows
            # at most a rectangle per pixel of a layer, whatever the runs)
            joined: list[list[int]] = []
            for a, b in lay.within(s, e):
                if joined and (a - joined[-1][1]) * px < 1:
                    joined[-1][1] = max(b, joined[-1][1])
                    joined[-1][2] += 1
                else:
                    joined.append([a, b, 1])
            for a, b, n in joined:
                a2, b2 = max(a, s), min(b, e)
                xw = (b2 - a2) * px
                if paged and PAGE * px >= 4 and xw > 2:
                    xw -= 1          # a hairline between neighbouring pages at page scale
                tip = lay.tip(a, b) if n == 1 else \
                    f"{lay.name}: {n} runs 0x{a:x}-0x{b:x}, closer than a pixel at this scale"
                sc.rect(x0 + (a2 - scale_s) * px, by, max(MIN_PX, xw), bh, lay.color, tip)
                if paged and n == 1 and step * px >= 6:
                    for q in range(a + (a2 - a) // step * step + step, b2, step):  # every block its own cell
                        sc.rect(x0 + (q - scale_s) * px - 0.5, by, 1.0, bh, "#ffffff")

    r = 0
    while r < rows:
        s = lo + r * per_row
        sig = _signature(layers, items, s, min(s + per_row, hi))
        n = 1
        if sig is not None:
            while r + n < rows and _signature(layers, items, lo + (r + n) * per_row,
                                              min(lo + (r + n + 1) * per_row, hi)) == sig:
                n += 1
        e = min(s + n * per_row, hi)
        sc.text(left - 6, y + 13, f"0x{s:x}", 10, anchor="end")
        if n > 1:
            # one strip stands for n alike: drawn as the first, labelled with the run
            draw(s, s + per_row, y, left, pw, rh, s, per_row)
            what = {"ram": "System RAM only", "hole": "no RAM"}.get(sig or "", "")
            if sig and sig.startswith("scratch"):
                what = f"scratch {layers['scratch'][int(sig[7:])][0]} only"
            elif sig and sig.startswith("order"):
                what = f"preserved order-{sig[5:]} blocks only"
            label = f"{n} strips alike, 0x{s:x}-0x{e:x} ({_size(e - s)}): {what}"
            tw = 6.2 * len(label) + 12
            sc.rect(left + (pw - tw) / 2, y + 2, tw, rh - 4, "#ffffff", edge="#999999")
            sc.text(left + pw / 2, y + 13, label, 10, anchor="middle", color="#222222")
        else:
            draw(s, e, y, left, pw, rh, s, per_row)
        y += rh + gap
        r += n
    for i in range(5):
        sc.text(left + pw * i / 4, y + 6, f"+{_size(per_row * i // 4)}" if i else "+0", 9,
                anchor="middle" if 0 < i < 4 else ("start" if i == 0 else "end"), color="#555555")
    y += 18

    # the zoom: what the overview cannot show
    small = max(PAGE, int(per_row / pw * 4))
    wins = _zoom_windows(layers, items, small, max_windows)
    if wins:
        y += 8
        sc.text(10, y + 12, f"zoom: the {len(wins)} window{'s' if len(wins) > 1 else ''} holding what is smaller "
                            f"than 4 pixels above (each window at its own scale; page scale where it fits)", 11,
                weight="bold")
        y += 22
        cols = 3 if len(wins) > 2 else len(wins)
        cgap = 14
        cw = (width - 20 - cgap * (cols - 1)) / cols
        for k, (s, e) in enumerate(wins):
            c = k % cols
            if c == 0 and k:
                y += 64
            x0 = 10 + c * (cw + cgap)
            npages = (e - s) // PAGE
            scale = f"{cw / npages:.0f} px per page" if cw >= npages else f"1 px = {_size(int((e - s) / cw))}"
            sc.text(x0, y + 10, f"0x{s:x}-0x{e:x}  ({npages} pages, {scale})", 10)
            draw(s, e, y + 16, x0, cw, 22, s, e - s, pages=True)
            # names of the root FDT and sub-blobs under their page
            last_x = -1e9
            line = 0
            for name, a, _b in sorted(layers["blobs"], key=lambda t: t[1]):
                if not (s <= a < e):
                    continue
                x = x0 + (a - s) * cw / (e - s)
                line = line + 1 if x - last_x < 7 * len(name) and line < 2 else 0
                sc.text(x, y + 50 + 10 * line, name, 8, color=FDT if name == "root FDT" else BLOB)
                last_x = x
        y += 80
    # the legend: only what the picture holds
    y += 6
    entries: list[tuple[str, str]] = [("System RAM", RAM)]
    if any(_clip(layers["ram"], lo, hi)) and sum(b - a for a, b in layers["ram"]) < hi - lo:
        entries.append(("not RAM", HOLE))
    for i, (name, s, e) in enumerate(layers["scratch"]):
        entries.append((f"scratch {name} ({_size(e - s)})", SCRATCH_COLORS[i % len(SCRATCH_COLORS)]))
    for o, cnt in layers["counts"].items():
        entries.append((f"order {o} ({_size(PAGE << o)}): {cnt}", ORDER_COLORS[min(o, len(ORDER_COLORS) - 1)]))
    if layers["meta_pages"]:
        entries.append((f"map metadata: {layers['meta_pages']} pages", META))
    if any(n == "root FDT" for n, _, _ in layers["blobs"]):
        entries.append(("root FDT (bottom edge)", FDT))
    if any(n != "root FDT" for n, _, _ in layers["blobs"]):
        entries.append(("sub-blob, scratch array (bottom edge)", BLOB))
    x = 10.0
    for name, col in entries:
        wtxt = 7 * len(name) + 30
        if x + wtxt > width - 10:
            x = 10.0
            y += 20
        sc.rect(x, y, 14, 12, col, name, edge="#888888")
        sc.text(x + 20, y + 10, name, 10)
        x += wtxt
    y += 20
    if layers.get("coarsened"):
        sc.text(10, y + 10, "runs closer than an overview pixel were joined (too many to draw apart)", 9,
                color="#555555")
        y += 16
    sc.height = int(y + 10)
    return sc


# ------------------------------------------------------------------ output


def render_svg(layers: dict[str, Any], title: str, width: int = 1200) -> str:
    sc = layout(layers, title, width)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{sc.width}" height="{sc.height}" '
           f'font-family="DejaVu Sans, sans-serif" font-size="11">', '<rect width="100%" height="100%" fill="white"/>']
    for x, y, w, h, fill, tip, edge in sc.rects:
        st = f' stroke="{edge}"' if edge else ""
        t = f"<title>{escape(tip)}</title>" if tip else ""
        out.append(f'<rect x="{x:.2f}" y="{y:.2f}" width="{w:.2f}" height="{h:.2f}" fill="{fill}"{st}>{t}</rect>')
    for x, y, s, size, anchor, col, weight in sc.texts:
        out.append(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{col}"'
                   + (f' font-weight="{weight}"' if weight != "normal" else "") + f">{escape(s)}</text>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def render_png(layers: dict[str, Any], title: str, path: str, width: int = 1200) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.collections import PatchCollection
        from matplotlib.patches import Rectangle
    except ImportError:
        raise UsageError(f"{path}: PNG output needs matplotlib (pip install 'pykho[plot]'); use .svg") from None
    sc = layout(layers, title, width)
    dpi = 100
    fig = plt.figure(figsize=(sc.width / dpi, sc.height / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, sc.width)
    ax.set_ylim(sc.height, 0)
    ax.axis("off")
    patches = [Rectangle((x, y), w, h) for x, y, w, h, _, _, _ in sc.rects]
    pc = PatchCollection(patches, facecolors=[r[4] for r in sc.rects], edgecolors=[r[6] or "none" for r in sc.rects],
                         linewidths=[0.6 if r[6] else 0 for r in sc.rects])
    ax.add_collection(pc)
    ha = {"start": "left", "middle": "center", "end": "right"}
    for x, y, s, size, anchor, col, weight in sc.texts:
        ax.text(x, y, s, fontsize=size * 0.75, ha=ha[anchor], va="baseline", color=col, weight=weight)
    try:
        fig.savefig(path, dpi=dpi)
    except OSError as e:
        raise UsageError(f"--out {path}: cannot write: {e.strerror}") from None
    finally:
        plt.close(fig)
