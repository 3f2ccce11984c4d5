"""Load a handover from what users have: a debugfs copy, a root FDT file, memory.

A :class:`Handover` gathers the root FDT bytes (and where they live), the
scratch array, the sub-blobs, and optionally a memory source.  It records
the real kernel's known quirks as it meets them (a truncated debugfs
``out/fdt``, a KHO-booted kernel without ``out/fdt``) so that validation can
explain them instead of failing on them.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from . import clients as _clients
from . import profiles as P
from .abi import chunks as _chunks
from .abi import fdt as _fdt
from .abi import radix, structs
from .abi import root as _root
from .clients import Quirk
from .errors import KhoDecodeError, UsageError
from .profiles import PAGE_SHIFT, PAGE_SIZE, FdtBuiltAt, MapFormat

__all__ = ["Handover", "Quirk", "load", "detect_generation", "map_walker", "summarize_walk", "SCAN_LIMIT"]


@dataclass
class Handover:
    source: str
    root_blob: bytes | None = None
    root_phys: int | None = None
    root_blob_origin: str = ""
    scratch: list[structs.KhoScratch] = field(default_factory=list)
    scratch_phys: int | None = None
    scratch_len: int | None = None
    scratch_origin: str = ""
    sub_blobs: dict[str, bytes] = field(default_factory=dict)
    mem: object = None
    quirks: list[Quirk] = field(default_factory=list)
    direction: str = "out"          # "out" (about to kexec) or "in" (received)
    setup_data_phys: int | None = None
    #: where two sources of the same thing differ: (what, message); the
    #: verdict follows what the kernel reads (memory)
    disagreements: list[tuple[str, str]] = field(default_factory=list)
    _root: object = None

    @property
    def root(self) -> _root.RootFdt:
        """The decoded root FDT (raises FdtError when it does not decode)."""
        if self._root is None:
            if self.root_blob is None:
                raise KhoDecodeError("KHO root FDT", self.source, "no root FDT found")
            self._root = _root.decode_root(self.root_blob, self.root_phys if self.root_phys is not None
                                           else self.root_blob_origin)
        return self._root

    def blob_of(self, name: str) -> bytes | None:
        """A sub-blob's bytes: from memory at its address (blob-size bytes,
        or the FDT's totalsize), else from the debugfs copy."""
        st = self.root.subtree(name) if self.root_blob is not None else None
        if self.mem is not None and st is not None and st.phys:
            try:
                if st.size is not None:
                    return self.mem.read(st.phys, min(st.size, 1 << 24), f"sub-blob {name}")
                head = self.mem.read(st.phys, 40, f"sub-blob {name}")
                ts = _fdt.totalsize(head) if head[:4] == b"\xd0\x0d\xfe\xed" else PAGE_SIZE
                return self.mem.read(st.phys, min(max(ts, 40), 1 << 20), f"sub-blob {name}")
            except KhoDecodeError:
                pass
        return self.sub_blobs.get(name)


def _read(path: str, what: str, cap: int = 1 << 24) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(cap + 1)
    except OSError as e:
        raise UsageError(f"{path}: cannot read {what}: {e.strerror}") from None
    if len(data) > cap:
        raise UsageError(f"{path}: {what} larger than {cap} bytes")
    return data


#: memory larger than this is not scanned for the root FDT or setup_data
SCAN_LIMIT = 8 << 30


def _scannable(mem) -> bool:
    return sum(e - s for s, e in mem.ranges()) <= SCAN_LIMIT


def _find_root_in_memory(mem, prefix: bytes, hints: list[int]) -> int | None:
    want = prefix[:min(len(prefix), 64)]
    for phys in hints:
        try:
            if mem.read(phys, len(want)) == want:
                return phys
        except KhoDecodeError:
            continue
    # scan page starts of what the source holds (sparse extracts are small;
    # a full dump costs one read per page, bounded by SCAN_LIMIT)
    if not _scannable(mem):
        return None
    for start, end in mem.ranges():
        if end - start > 1 << 32:
            continue
        at = (start + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        while at + len(want) <= end:
            n = min(end - at, 1 << 24)
            chunk = mem.read(at, n)
            for off in range(0, n - len(want) + 1, PAGE_SIZE):
                if chunk[off:off + len(want)] == want:
                    return at + off
            at += n
    return None


def load(path: str, mem=None, fdt_phys: int | None = None) -> Handover:
    """Open a debugfs-style directory (``.../kho``, ``.../kho/out``,
    ``.../kho/in``) or a root FDT file, with optional memory."""
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file or directory")
    ho = Handover(source=path, mem=mem)
    if os.path.isdir(path):
        d = path
        if os.path.isdir(os.path.join(d, "out")) or os.path.isdir(os.path.join(d, "in")):
            d = os.path.join(d, "out") if os.path.exists(os.path.join(d, "out", "fdt")) or not \
                os.path.isdir(os.path.join(d, "in")) else os.path.join(d, "in")
        ho.direction = "in" if os.path.basename(os.path.normpath(d)) == "in" else "out"
        fdt_path = os.path.join(d, "fdt")
        if os.path.isfile(fdt_path):
            ho.root_blob = _read(fdt_path, "root FDT", 1 << 20)
            ho.root_blob_origin = fdt_path
        elif ho.direction == "out":
            ho.quirks.append(Quirk("debugfs-no-out-fdt",
                                   f"{d} has no fdt: a kernel that was itself booted through KHO does not "
                                   "create out/fdt in debugfs (its outgoing FDT is still handed over)"))
        for name in ("scratch_phys", "scratch_len"):
            p = os.path.join(d, name)
            if os.path.isfile(p):
                vals = structs.parse_debugfs_scratch(_read(p, name, 1 << 20).decode("utf-8", "replace"), p)
                setattr(ho, "_" + name, vals)
        phys, lens = getattr(ho, "_scratch_phys", None), getattr(ho, "_scratch_len", None)
        if phys is not None and lens is not None:
            if len(phys) != len(lens):
                raise KhoDecodeError("debugfs scratch_phys/scratch_len", d,
                                     f"{len(phys)} addresses but {len(lens)} sizes")
            ho.scratch = [structs.KhoScratch(a, s) for a, s in zip(phys, lens)]
            ho.scratch_origin = os.path.join(d, "scratch_phys")
        sub = os.path.join(d, "sub_fdts")
        if os.path.isdir(sub):
            for name in sorted(os.listdir(sub)):
                p = os.path.join(sub, name)
                if os.path.isfile(p) and "." not in name:
                    ho.sub_blobs[name] = _read(p, f"sub-blob {name}", 1 << 24)
    else:
        ho.root_blob = _read(path, "root FDT", 1 << 20)
        ho.root_blob_origin = path
        ho.direction = "file"

    if ho.root_blob is not None:
        h = _fdt.header(ho.root_blob)
        if h and h.magic == _fdt.FDT_MAGIC and h.totalsize > len(ho.root_blob):
            ho.quirks.append(Quirk("debugfs-fdt-truncated",
                                   f"{ho.root_blob_origin} holds {len(ho.root_blob)} bytes but its header says "
                                   f"totalsize {h.totalsize}: debugfs keeps the size the FDT had at kho_init, "
                                   "sub-trees added later grew it in place"
                                   + ("; reading the full FDT from memory" if mem is not None else
                                      "; give --mem to read the full FDT")))

    if mem is not None:
        hints = [fdt_phys] if fdt_phys else []
        live = getattr(mem, "kho_out_fdt_phys", None)
        if live is not None and fdt_phys is None:
            p = live()
            if p:
                hints.append(p)
        kd_found = None
        try:
            for at, kd in (structs.find_setup_data(mem) if _scannable(mem) else ()):
                kd_found = (at, kd)
                hints.append(kd.fdt_addr)
                break
        except KhoDecodeError:
            pass
        if kd_found:
            ho.setup_data_phys = kd_found[0]
            ho.scratch_phys, ho.scratch_len = kd_found[1].scratch_addr, kd_found[1].scratch_size
        if fdt_phys is not None:
            ho.root_phys = fdt_phys
        elif ho.root_blob is not None:
            ho.root_phys = _find_root_in_memory(mem, ho.root_blob, hints)
        elif kd_found:
            ho.root_phys = kd_found[1].fdt_addr
        if ho.root_phys is not None:
            file_blob, file_origin = ho.root_blob, ho.root_blob_origin
            ho.root_blob = _root.read_root_from_memory(mem, ho.root_phys)
            ho.root_blob_origin = f"memory at 0x{ho.root_phys:x}"
            if file_blob is not None and fdt_phys is None:
                off = _first_difference(file_blob, ho.root_blob)
                if off is not None:
                    ho.disagreements.append((
                        "root FDT", f"{file_origin} and the root FDT in memory at 0x{ho.root_phys:x} differ from "
                        f"byte {off} (0x{file_blob[off]:02x} vs 0x{ho.root_blob[off]:02x}"
                        + (")" if off < len(ho.root_blob) else ", memory's FDT is shorter)")
                        + ": the next kernel reads memory"))
        elif ho.root_blob is not None and not _scannable(mem):
            ho.quirks.append(Quirk("root-fdt-not-located",
                                   f"{mem.name} is larger than {SCAN_LIMIT >> 30} GiB and was not scanned for the "
                                   "root FDT; give --fdt-phys (or vmlinux debug info for --mem live)"))
        if kd_found:
            try:
                data = mem.read(kd_found[1].scratch_addr, min(kd_found[1].scratch_size, 1 << 16), "kho_scratch array")
                areas, _ = structs.decode_scratch(data)
            except KhoDecodeError:
                areas = []
            if any(a.size or a.addr for a in areas):
                if not ho.scratch:
                    ho.scratch = areas
                    ho.scratch_origin = f"memory at 0x{kd_found[1].scratch_addr:x}"
                elif areas != ho.scratch:
                    ho.disagreements.append((
                        "scratch array", f"{ho.scratch_origin} lists {_areas(ho.scratch)} but the scratch array in "
                        f"memory at 0x{kd_found[1].scratch_addr:x} (from setup_data) holds {_areas(areas)}: the "
                        "next kernel reads memory"))
    if ho.root_blob is None:
        hint = ""
        if any(q.code == "debugfs-no-out-fdt" for q in ho.quirks):
            hint = ("; this kernel was booted through KHO, so debugfs has no out/fdt: use in/ for the handover it "
                    "received, or --mem with a dump to find the outgoing FDT")
        raise UsageError(f"{path}: no root FDT (no fdt file, and no memory to find one in){hint}")
    if mem is not None and ho.sub_blobs:
        _blob_disagreements(ho)
    if mem is None and any(q.code == "debugfs-fdt-truncated" for q in ho.quirks):
        _reconstruct_strings(ho)
    _client_quirks(ho)
    return ho


def _reconstruct_strings(ho: Handover) -> None:
    """Complete a truncated debugfs ``out/fdt``.

    The file is the current page cut at the size the FDT had at
    ``kho_init``.  What is cut is known: the struct block always ends with
    the root's END_NODE and FDT_END tokens, and root FDTs of kernels that
    build at boot hold the same property names in the same order.  The
    completion is used only when every surviving byte agrees with it, the
    header's sizes match it, and ``fdt_check_full`` passes; otherwise the
    file is left as it is.
    """
    blob = ho.root_blob
    h = _fdt.header(blob)
    tail = bytes.fromhex("0000000200000009")            # END_NODE (root), FDT_END
    s_end = h.off_dt_struct + h.size_dt_struct
    if s_end != h.off_dt_strings or h.off_dt_strings + h.size_dt_strings != h.totalsize or \
            len(blob) < s_end - len(tail):
        return
    if blob[s_end - len(tail):min(len(blob), s_end)] != tail[:max(0, min(len(blob), s_end) - (s_end - len(tail)))]:
        return
    struct_part = blob[:s_end - len(tail)] + tail
    for prof in P.PROFILES.values():
        if prof.fdt_built_at is not FdtBuiltAt.BOOT:
            continue
        page = _root.build_root_at_boot(prof, 0)
        page.add_subtree("x", 0, 0)
        ref = page.blob()
        rh = _fdt.header(ref)
        strings = ref[rh.off_dt_strings:rh.off_dt_strings + rh.size_dt_strings]
        have = blob[s_end:]
        if len(strings) != h.size_dt_strings or not strings.startswith(have):
            continue
        full = struct_part + strings
        if _fdt.check_full(full) == 0:
            ho.root_blob = full
            ho.quirks.append(Quirk("debugfs-fdt-completed",
                                   f"completed the cut {h.totalsize - len(blob)} bytes: the root's closing tokens "
                                   "and the fixed property names of a root FDT built at boot (the tree itself "
                                   "was all in the file); give --mem to read the real bytes"))
            return


def _first_difference(a: bytes, b: bytes) -> int | None:
    """The first offset where ``a`` differs from ``b`` over ``a``'s length."""
    n = len(a)
    if b[:n] == a:
        return None
    for i in range(n):
        if i >= len(b) or a[i] != b[i]:
            return i
    return None


def _areas(areas: list[structs.KhoScratch]) -> str:
    return ", ".join(f"0x{a.addr:x}+0x{a.size:x}" for a in areas)


def _blob_disagreements(ho: Handover) -> None:
    """A debugfs sub-blob copy against the bytes in memory at its address;
    a client plugin may know why its copy differs in normal operation."""
    try:
        subtrees = {st.name: st for st in ho.root.subtrees}
    except KhoDecodeError:
        return
    for name, file_blob in ho.sub_blobs.items():
        st = subtrees.get(name)
        if st is None or not st.phys:
            continue
        try:
            mem_blob = ho.mem.read(st.phys, len(file_blob), f"sub-blob {name}")
        except KhoDecodeError:
            continue
        off = _first_difference(file_blob, mem_blob)
        if off is None:
            continue
        known = _clients.by_node(name).expected_difference(file_blob, mem_blob)
        if known is not None:
            ho.quirks.append(known)
        else:
            ho.disagreements.append((f"sub-blob {name}", f"the debugfs copy of {name!r} and memory at "
                                     f"0x{st.phys:x} differ from byte {off}: the client reads memory"))


def _client_quirks(ho: Handover) -> None:
    """What each client's debugfs blob shows that needs explaining."""
    for name, blob in ho.sub_blobs.items():
        ho.quirks.extend(_clients.by_node(name).quirks(blob, ho.direction, ho.mem is not None))


def detect_generation(ho: Handover) -> tuple[P.Profile | None, str]:
    """The generation that wrote this handover, with the evidence.

    The compatible string decides between ``kho-v1``..``kho-v4``.  Inside
    ``kho-v1`` the bitmap size tells 6.16/6.17 (512 bytes) from 6.18+ (one
    page), and the FDT layout tells a finalize-built FDT (6.16-6.18: never
    edited, header area 48 bytes) from one edited in place at boot (6.19+:
    40 bytes after the first ``kho_add_subtree``).
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


def map_walker(profile: P.Profile, mem: Any, mem_map: int, strict: bool = False,
               preserve_bits: int | None = None) -> Any:
    """The decoder of ``profile``'s memory map: radix tree or chunk list."""
    if profile.map_format is MapFormat.RADIX:
        return radix.RadixWalk(mem, mem_map, strict=strict)
    return _chunks.ChunkWalk(mem, mem_map, preserve_bits or profile.preserve_bits, strict=strict)


class Progress:
    """One status line on stderr during long walks, only on a terminal."""

    def __init__(self, what: str):
        import sys
        import time
        self.on = sys.stderr.isatty()
        self.what, self.t0, self.last, self.time, self.err = what, time.time(), 0.0, time.time, sys.stderr

    def update(self, leaves: int, blocks: int) -> None:
        if self.on and self.time() - self.last > 0.5:
            self.last = self.time()
            self.err.write(f"\r{self.what}: {leaves} leaves, {blocks} blocks, {self.last - self.t0:.1f} s")
            self.err.flush()

    def done(self) -> None:
        if self.on and self.last:
            self.err.write("\r" + " " * 70 + "\r")
            self.err.flush()


def summarize_walk(w: Any, want_blocks: bool = False) -> tuple[dict[str, Any], dict[str, int], list | None]:
    """(summary, map metadata, blocks or None) of one pass over a walker."""
    if not want_blocks and hasattr(w, "summarize"):
        # counted by popcount, overlaps and duplicates checked as sets of
        # bitmaps: nothing per block is built (host-size maps)
        ms = w.summarize()
        summary = {"blocks": ms.blocks, "bytes": ms.bytes,
                   "by_order": {str(k): v for k, v in sorted(ms.by_order.items())}}
        return summary, _map_metadata(w), None
    by_order: Counter[int] = Counter()
    total = 0
    nbytes = 0
    blocks: list | None = [] if want_blocks else None
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
        if blocks is not None:
            blocks.extend([p, order] for p in (physs.tolist() if hasattr(physs, "tolist") else physs))
    prog.done()
    summary = {"blocks": total, "bytes": nbytes, "by_order": {str(k): v for k, v in sorted(by_order.items())}}
    return summary, _map_metadata(w), blocks


def _map_metadata(w: Any) -> dict[str, int]:
    """The map's own pages, as the walker met them."""
    if isinstance(w, radix.RadixWalk):
        meta = {"radix_nodes": sum(1 for n in w.nodes if n.level > 0),
                "radix_leaves": sum(1 for n in w.nodes if n.level == 0)}
        meta["bytes"] = PAGE_SIZE * (meta["radix_nodes"] + meta["radix_leaves"])
    else:
        meta = {"chunks": len(w.chunks), "bitmaps": len(w.bitmaps)}
        meta["bytes"] = PAGE_SIZE * len(w.chunks) + len(w.bitmaps) * (w.preserve_bits // 8)
    return meta
