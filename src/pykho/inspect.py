"""``kho inspect``: decode a handover and say what is in it.

Builds a plain dict (the JSON schema of ``kho inspect -j``) and renders it
as text.  Everything here only reads; judging belongs to :mod:`validate`.
"""

from __future__ import annotations

from collections import Counter

from . import profiles as P
from .abi import chunks as _chunks
from .abi import clients, radix, structs
from .abi import fdt as _fdt
from .errors import KhoDecodeError
from .handover import Handover

PAGE_SHIFT = 12


def detect_generation(ho: Handover) -> tuple[P.Profile | None, str]:
    """The generation that wrote this handover, with the evidence.

    The compatible string decides between ``kho-v1``..``kho-v4``.  Inside
    ``kho-v1`` the bitmap size tells 6.16/6.17 (512 bytes) from 6.18+ (one
    page), and the FDT layout tells a finalize-built FDT (A: never edited,
    header area 48 bytes) from one edited in place at boot (B: 40 bytes
    after the first ``kho_add_subtree``).
    """
    r = ho.root
    cands = P.profiles_for_compatible(r.compatible or "")
    if not cands:
        return None, f"compatible {r.compatible!r} names no known generation"
    if len(cands) == 1:
        return cands[0], f"compatible {r.compatible!r}"
    ev = [f"compatible {r.compatible!r}"]
    bits_n = None
    if ho.mem is not None and r.mem_map:
        bits_n, why = _chunks.guess_preserve_bits(ho.mem, r.mem_map)
        ev.append(why)
    if bits_n == 512 * 8:
        return P.A0, "; ".join(ev)
    h = r.header
    if h.off_mem_rsvmap == 40:
        ev.append("FDT edited in place (header area 40 bytes): built at boot, 6.19+")
        return P.B, "; ".join(ev)
    if r.mem_map == 0:
        ev.append("preserved-memory-map is 0: a 6.19+ kernel that never finalized")
        return P.B_PREFIX, "; ".join(ev)
    if r.subtrees:
        ev.append("sequential-write layout with sub-nodes: built at finalize, 6.16-6.18")
        return (P.A1 if bits_n == 4096 * 8 else P.A0 if bits_n else P.A1), "; ".join(ev)
    ev.append("layout does not tell 6.18 from 6.19+; assuming 6.19+")
    return P.B, "; ".join(ev)


def walker(profile: P.Profile, mem, mem_map: int, strict: bool = False, preserve_bits: int | None = None):
    """The memory-map walker for ``profile``: radix or chunk list."""
    if profile.map_format == "radix":
        return radix.RadixWalk(mem, mem_map, strict=strict)
    return _chunks.ChunkWalk(mem, mem_map, preserve_bits or profile.preserve_bits, strict=strict)


class Progress:
    """One status line on stderr during long walks, only on a terminal."""

    def __init__(self, what: str):
        import sys
        import time
        self.on = sys.stderr.isatty()
        self.what, self.t0, self.last, self.time, self.err = what, time.time(), 0.0, time.time, sys.stderr

    def update(self, leaves: int, blocks: int):
        if self.on and self.time() - self.last > 0.5:
            self.last = self.time()
            self.err.write(f"\r{self.what}: {leaves} leaves, {blocks} blocks, {self.last - self.t0:.1f} s")
            self.err.flush()

    def done(self):
        if self.on and self.last:
            self.err.write("\r" + " " * 70 + "\r")
            self.err.flush()


def summarize_walk(w, want_blocks: bool = False):
    """(summary dict, blocks list or None, problems) of one pass over a walker."""
    by_order: Counter = Counter()
    total = 0
    nbytes = 0
    blocks = [] if want_blocks else None
    prog = Progress("walking the preserved memory map")
    leaves = 0
    for order, physs in w.leaves():
        leaves += 1
        if leaves & 63 == 0:
            prog.update(leaves, total)
        n = len(physs)
        by_order[order] += n
        total += n
        nbytes += n << (order + PAGE_SHIFT)
        if want_blocks:
            blocks.extend([p, order] for p in (physs.tolist() if hasattr(physs, "tolist") else physs))
    prog.done()
    if isinstance(w, radix.RadixWalk):
        meta = {"radix_nodes": sum(1 for n in w.nodes if n.level > 0),
                "radix_leaves": sum(1 for n in w.nodes if n.level == 0)}
        meta["bytes"] = 4096 * (meta["radix_nodes"] + meta["radix_leaves"])
    else:
        meta = {"chunks": len(w.chunks), "bitmaps": len(w.bitmaps)}
        meta["bytes"] = 4096 * len(w.chunks) + len(w.bitmaps) * (w.preserve_bits // 8)
    summary = {"blocks": total, "bytes": nbytes, "by_order": {str(k): v for k, v in sorted(by_order.items())}}
    return summary, meta, blocks


def decode_subblob(name: str, blob: bytes | None, mem, where) -> dict:
    """Decode a known client's blob; unknown names give their size only."""
    if blob is None:
        return {"error": "blob not available"}
    try:
        if name == structs.KHO_METADATA_NODE_NAME:
            md = structs.decode_kexec_metadata(blob, where)
            return {"kind": "kexec-metadata", "version": md.version, "previous_release": md.previous_release,
                    "kexec_count": md.kexec_count}
        if name == clients.MEMBLOCK_KHO_FDT:
            return {"kind": "memblock", "reserve_mem": [r.__dict__ for r in clients.decode_memblock(blob, where)]}
        if name == clients.KHO_TEST_FDT:
            t = clients.decode_kho_test(blob, where, mem)
            out = {"kind": "test_kho", "nr_folios": t.nr_folios, "csum": t.csum}
            if t.folios_info:
                out["folios_info"] = t.folios_info.__dict__
            if t.folios:
                out["folios"] = [[p, o] for p, o in t.folios]
            return out
        if name == clients.LUO_KHO_ENTRY_NAME:
            luo = clients.decode_luo(blob, where, mem)
            return {"kind": "luo", "compatible": luo.compatible, "liveupdate_num": luo.liveupdate_num,
                    "sessions_pa": luo.sessions_pa, "flbs_pa": luo.flbs_pa,
                    "sessions": [{"name": s.name, "files": [
                        {"compatible": f.compatible, "token": f.token, "data": f.data, "memfd": f.memfd}
                        for f in s.files]} for s in luo.sessions],
                    "flbs": luo.flbs}
        if blob[:4] == b"\xd0\x0d\xfe\xed":
            tree = _fdt.parse(blob, f"sub-FDT {name}", where)
            return {"kind": "fdt", "compatible": tree.prop_str("compatible")}
        return {"kind": "raw", "bytes": len(blob)}
    except KhoDecodeError as e:
        return {"error": str(e), "code": e.code}


def inspect(ho: Handover, profile: P.Profile | None = None, want_blocks: bool = True,
            preserve_bits: int | None = None) -> dict:
    r = ho.root
    detected, evidence = detect_generation(ho)
    prof = profile or detected
    h = r.header
    out = {
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
    }
    if ho.setup_data_phys is not None:
        out["setup_data"] = {"phys": ho.setup_data_phys, "scratch_addr": ho.scratch_phys,
                             "scratch_size": ho.scratch_len}
    for st in r.subtrees:
        d = st.as_dict()
        d["property"] = st.prop
        d["decoded"] = decode_subblob(st.name, ho.blob_of(st.name), ho.mem, st.phys)
        out["subtrees"].append(d)
    if ho.mem is not None and r.mem_map and prof is not None:
        w = walker(prof, ho.mem, r.mem_map, preserve_bits=preserve_bits)
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


def render(rep: dict, show_blocks: bool = False) -> str:
    L = []
    f = rep["fdt"]
    L.append(f"KHO handover from {rep['source']}")
    L.append(f"  generation     {rep['generation']}  ({rep['generation_evidence']})")
    where = f"0x{f['phys']:x}" if f["phys"] is not None else f["origin"]
    L.append(f"  root FDT       {where}, {f['totalsize']} bytes, rsvmap at {f['off_mem_rsvmap']}")
    L.append("  /")
    L.append(f"    compatible = \"{rep['compatible']}\"")
    L.append(f"    preserved-memory-map = 0x{rep['memory_map']:x}")
    for st in rep["subtrees"]:
        L.append(f"    {st['name']} {{")
        if st["size"] is not None:
            L.append(f"      blob-size = {st['size']}")
        phys = f"0x{st['phys']:x}" if st["phys"] is not None else "(missing or not 8 bytes)"
        L.append(f"      {st['property'] or 'preserved-data'} = {phys}")
        dec = st["decoded"]
        if "error" in dec:
            L.append(f"      !! {dec['error']}")
        elif dec.get("kind") == "kexec-metadata":
            L.append(f"      # kexec-metadata v{dec['version']}: previous release {dec['previous_release']!r}, "
                     f"kexec count {dec['kexec_count']}")
        elif dec.get("kind") == "memblock":
            for r in dec["reserve_mem"]:
                L.append(f"      # reserve_mem {r['name']}: 0x{r['start']:x}+0x{r['size']:x}")
        elif dec.get("kind") == "test_kho":
            L.append(f"      # test_kho: {dec['nr_folios']} folios, csum 0x{dec['csum']:x}")
        elif dec.get("kind") == "luo":
            L.append(f"      # LUO {dec['compatible']}, liveupdate number {dec['liveupdate_num']}, "
                     f"{len(dec['sessions'])} sessions, {len(dec['flbs'])} FLBs")
            for s in dec["sessions"]:
                for fl in s["files"]:
                    extra = ""
                    if fl.get("memfd") and "size" in fl["memfd"]:
                        extra = f", memfd size {fl['memfd']['size']}, {fl['memfd']['nr_folios']} folios"
                    L.append(f"      #   session {s['name']!r}: {fl['compatible']} token 0x{fl['token']:x}{extra}")
        elif dec.get("kind"):
            L.append(f"      # {dec['kind']}" + (f" {dec.get('compatible')}" if dec.get("compatible") else ""))
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
                L.append(f"    0x{p:012x} order {o:2}  [0x{p:x}-0x{p + (1 << (o + 12)):x})")
    for q in rep["quirks"]:
        L.append(f"  note [{q['code']}] {q['message']}")
    for p in rep["problems"]:
        L.append(f"  problem [{p['code']}] {p['message']}")
    return "\n".join(L)
