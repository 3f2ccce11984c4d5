"""``kho inspect``: decode a handover and say what is in it.

Builds a plain dict (the JSON schema of ``kho inspect -j``) and renders it
as text.  Everything here only reads; judging belongs to :mod:`validate`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .. import clients as _clients
from .. import profiles as P
from ..abi import bits
from ..errors import UsageError
from ..handover import Handover, detect_generation, map_walker, summarize_walk

__all__ = ["inspect", "render", "iter_blocks", "block_line", "check_kho"]


def iter_blocks(ho: Handover, profile: P.Profile | None = None,
                preserve_bits: int | None = None) -> Iterator[tuple[int, int]]:
    """Every preserved block ``(phys, order)`` in the kernel's walk order,
    one leaf at a time: constant memory whatever the map's size."""
    prof = profile or detect_generation(ho)[0]
    r = ho.tree
    if ho.mem is None or not r.mem_map or prof is None or ho.partial is not None:
        return
    for order, physs in map_walker(prof, ho.mem, r.mem_map, preserve_bits=preserve_bits).leaves():
        for p in bits.tolist(physs):
            yield p, order


def check_kho(ho: Handover) -> Any:
    """The handover's root (whole or cut), if its compatible is KHO's; a
    :class:`~pykho.errors.UsageError` naming the file otherwise."""
    r = ho.tree
    if not (r.compatible or "").startswith("kho-"):
        what = f"its root's compatible is {r.compatible!r}" if r.compatible is not None else \
            "its root has no compatible property"
        raise UsageError(f"{ho.root_blob_origin or ho.source}: a flattened device tree, but not a KHO root FDT: "
                         f"{what} (KHO's say kho-v1 ... kho-v4)")
    return r


def block_line(p: int, o: int) -> str:
    return f"    0x{p:012x} order {o:2}  [0x{p:x}-0x{p + (1 << (o + 12)):x})"


def inspect(ho: Handover, profile: P.Profile | None = None, want_blocks: bool = False,
            preserve_bits: int | None = None) -> dict[str, Any]:
    """What the handover holds, as the JSON of ``kho inspect -j``.

    A root FDT cut short gives what its bytes hold (``partial``); a root
    whose compatible is not KHO's is a :class:`~pykho.errors.KhoDecodeError`
    (a device tree, but not a handover)."""
    r = check_kho(ho)
    detected, evidence = detect_generation(ho)
    prof = profile or detected
    h = r.header
    out: dict[str, Any] = {
        "source": ho.source,
        "compatible": r.compatible,
        "generation": prof.name if prof else None,
        "generation_evidence": evidence,
        "memory_map": r.mem_map if r.mem_map is not None else 0,
        "fdt": {"phys": ho.root_phys, "origin": ho.root_blob_origin, "totalsize": h.totalsize,
                "off_mem_rsvmap": h.off_mem_rsvmap, "off_dt_struct": h.off_dt_struct,
                "off_dt_strings": h.off_dt_strings, "version": h.version,
                "last_comp_version": h.last_comp_version},
        "subtrees": [],
        "scratch": [{"addr": a.addr, "size": a.size} for a in ho.scratch],
        "scratch_origin": ho.scratch_origin,
        "quirks": [q.__dict__ for q in ho.quirks],
        "problems": [],
        "needs_memory": ho.needs_memory(),
    }
    if r.mem_map is None:
        out["memory_map_missing"] = True
    if profile is not None and detected is not None and profile.compatible != r.compatible:
        out["profile_forced"] = {"profile": profile.name, "writes": profile.compatible, "bytes_say": r.compatible,
                                 "detected": detected.name}
    if ho.base_doubt:
        out["base_doubt"] = ho.base_doubt
    if ho.partial is not None:
        out["partial"] = ho.partial.as_dict()
    if ho.setup_data_phys is not None:
        out["setup_data"] = {"phys": ho.setup_data_phys, "scratch_addr": ho.scratch_phys,
                             "scratch_size": ho.scratch_len}
    for st in r.subtrees:
        d = st.as_dict()
        d["property"] = st.prop
        d["decoded"] = _clients.decode_subblob(st.name, ho.blob_of(st.name), ho.mem, st.phys, prof)
        out["subtrees"].append(d)
    if ho.partial is not None:
        for name in ho.partial.only_in_sub_fdts:
            out["subtrees"].append({"name": name, "phys": None, "size": None, "property": None, "cut": True,
                                    "decoded": _clients.decode_subblob(name, ho.sub_blobs.get(name), None, None,
                                                                       prof)})
        for d in out["subtrees"]:
            if d["name"] in ho.partial.incomplete:
                d["cut"] = True
    if ho.mem is not None and r.mem_map and prof is not None and ho.partial is None:
        w = map_walker(prof, ho.mem, r.mem_map, preserve_bits=preserve_bits)
        summary, meta, blocks = summarize_walk(w, want_blocks)
        out["summary"] = summary
        out["metadata"] = meta
        if want_blocks:
            out["preserved"] = blocks
        out["problems"] = [{"code": p.code, "message": str(p)} for p in w.problems]
    return out


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B" if n < 1024 else f"{n / (1 << 20):.1f} MiB"


def render(rep: dict[str, Any], show_blocks: bool = False) -> str:
    L = []
    f = rep["fdt"]
    L.append(f"KHO handover from {rep['source']}")
    if rep.get("base_doubt"):
        L.append(f"  WARNING        {rep['base_doubt']}")
    pf = rep.get("profile_forced")
    if pf:
        L.append(f"  WARNING        --profile {pf['profile']} writes {pf['writes']!r} but these bytes say "
                 f"{pf['bytes_say']!r} ({pf['detected']}): decoded as {pf['profile']} anyway")
    L.append(f"  generation     {rep['generation']}  ({rep['generation_evidence']})")
    where = f"0x{f['phys']:x}" if f["phys"] is not None else f["origin"]
    part = rep.get("partial")
    if part:
        L.append(f"  root FDT       {where}, cut short: {part['have']} of {f['totalsize']} bytes, rsvmap at "
                 f"{f['off_mem_rsvmap']} (the tree below is what those bytes hold; property names: "
                 f"{part['names_from']})")
    else:
        L.append(f"  root FDT       {where}, {f['totalsize']} bytes, rsvmap at {f['off_mem_rsvmap']}")
    L.append("  /")
    L.append(f"    compatible = \"{rep['compatible']}\"")
    if rep.get("memory_map_missing"):
        L.append("    preserved-memory-map: " + ("cut off" if part else "missing or not 8 bytes"))
    else:
        L.append(f"    preserved-memory-map = 0x{rep['memory_map']:x}")
    for st in rep["subtrees"]:
        cut = st.get("cut")
        if cut and st["property"] is None and st["phys"] is None and part and st["name"] in part["only_in_sub_fdts"]:
            L.append(f"    {st['name']} {{   (cut off the root FDT; its blob from sub_fdts/)")
        else:
            L.append(f"    {st['name']} {{" + ("   (cut short here)" if cut else ""))
            if st["size"] is not None:
                L.append(f"      blob-size = {st['size']}")
            if st["phys"] is not None:
                L.append(f"      {st['property'] or 'preserved-data'} = 0x{st['phys']:x}")
            elif not cut:
                L.append(f"      {st['property'] or 'preserved-data'} = (missing or not 8 bytes)")
        dec = st["decoded"]
        if "error" in dec:
            if not (cut and dec.get("code") == "blob-missing"):
                L.append(f"      !! {dec['error']}")
        else:
            plugin = _clients.by_node(st["name"])
            if dec.get("kind") != plugin.kind:
                plugin = _clients.GenericClient
            for line in plugin.describe(dec):
                L.append(f"      # {line}")
        L.append("    }")
    if rep["scratch"]:
        L.append(f"  scratch ({rep['scratch_origin']})")
        names = ["lowmem", "global"]
        for i, a in enumerate(rep["scratch"]):
            nm = names[i] if i < 2 else f"node {i - 2}"
            L.append(f"    [{i}] {nm:8} 0x{a['addr']:x}+0x{a['size']:x}  ({_size(a['size'])})")
    if "summary" in rep:
        s = rep["summary"]
        L.append(f"  preserved      {s['blocks']} blocks, {_size(s['bytes'])}")
        L.append("    by order     " + ", ".join(f"{o}: {n}" for o, n in s["by_order"].items()))
        L.append("    map metadata " + ", ".join(f"{k} {v}" for k, v in rep["metadata"].items()))
        if show_blocks and "preserved" in rep:
            for p, o in rep["preserved"]:
                L.append(block_line(p, o))
    if rep.get("needs_memory"):
        L.append("  needs memory   (give --mem with memory captured at the jump)")
        for line in rep["needs_memory"]:
            L.append(f"    - {line}")
    for q in rep["quirks"]:
        if q["code"] != "mem-base-doubtful":
            L.append(f"  note [{q['code']}] {q['message']}")
    for p in rep["problems"]:
        L.append(f"  problem [{p['code']}] {p['message']}")
    return "\n".join(L)
