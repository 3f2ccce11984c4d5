"""Load a handover from what users have: a debugfs copy, a root FDT file, memory.

A :class:`Handover` gathers the root FDT bytes (and where they live), the
scratch array, the sub-blobs, and optionally a memory source.  It records
the real kernel's known quirks as it meets them (a truncated debugfs
``out/fdt``, a KHO-booted kernel without ``out/fdt``) so that validation can
explain them instead of failing on them.

Partial input decodes what it holds: a root FDT cut short (7.2's debugfs
``out/fdt``) that cannot be completed is walked token by token as far as its
bytes go (:attr:`Handover.partial`), and :meth:`Handover.needs_memory` says
what only memory can tell.

Memory is searched for the root FDT by one bounded pass
(:func:`scan_memory`: a chunk at a time, at most :data:`SCAN_SECONDS`
seconds and :data:`SCAN_LIMIT` bytes, stopping at the root FDT that
``setup_data`` points to).  A root FDT found where the capture's own
pointers do not lead (setup_data's ``fdt_addr``, the scratch array, the
FDT's own map and sub-blob pointers, System RAM of ``--iomem``) means the
memory was probably given at the wrong base: :attr:`Handover.base_doubt`
says why, and the verdict cannot be told.
"""

from __future__ import annotations

import os
import stat
import struct
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from . import clients as _clients
from . import profiles as P
from .abi import chunks as _chunks
from .abi import fdt as _fdt
from .abi import radix, structs
from .abi import root as _root
from .abi.root import RootFdt
from .clients import Quirk
from .errors import KhoDecodeError, UsageError
from .profiles import PAGE_SHIFT, PAGE_SIZE, FdtBuiltAt, MapFormat

__all__ = ["Handover", "Partial", "Quirk", "ScanResult", "load", "read_scenario_file", "detect_generation",
           "map_walker", "scan_memory", "summarize_walk", "SCAN_LIMIT", "SCAN_SECONDS"]


@dataclass
class Partial:
    """What a root FDT cut short holds: the tree as far as its bytes go."""

    #: the tree decoded from the bytes there are (incomplete nodes included)
    root: RootFdt
    #: bytes the file holds, and the size its header gives
    have: int
    totalsize: int
    #: where the property names came from: "the file" or the fixed names of a KHO root FDT
    names_from: str
    #: nodes whose end is cut off (their properties may be missing), in FDT order
    incomplete: list[str] = field(default_factory=list)
    #: sub-blob copies of sub_fdts/ whose node is not in the bytes there are
    only_in_sub_fdts: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"have": self.have, "totalsize": self.totalsize, "names_from": self.names_from,
                "incomplete": self.incomplete, "only_in_sub_fdts": self.only_in_sub_fdts}


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
    mem: Any = None
    quirks: list[Quirk] = field(default_factory=list)
    direction: str = "out"          # "out" (about to kexec) or "in" (received)
    setup_data_phys: int | None = None
    #: where two sources of the same thing differ: (what, message); the
    #: verdict follows what the kernel reads (memory)
    disagreements: list[tuple[str, str]] = field(default_factory=list)
    #: the root FDT is cut short and could not be completed: what its bytes hold
    partial: Partial | None = None
    #: why the memory's base looks wrong (the root FDT found where the
    #: capture's own pointers do not lead), or None: a verdict on this memory
    #: cannot be told
    base_doubt: str | None = None
    _root: object = None

    @property
    def root(self) -> RootFdt:
        """The decoded root FDT (raises FdtError when it does not decode)."""
        if self._root is None:
            if self.root_blob is None:
                raise KhoDecodeError("KHO root FDT", self.source, "no root FDT found")
            self._root = _root.decode_root(self.root_blob, self.root_phys if self.root_phys is not None
                                           else self.root_blob_origin)
        return self._root  # type: ignore[return-value]  # set just above

    @property
    def tree(self) -> RootFdt:
        """The root FDT, or what a cut one holds (:attr:`partial`)."""
        if self.partial is not None:
            try:
                return self.root
            except KhoDecodeError:
                return self.partial.root
        return self.root

    def blob_of(self, name: str) -> bytes | None:
        """A sub-blob's bytes: from memory at its address (blob-size bytes,
        or the FDT's totalsize), else from the debugfs copy."""
        try:
            st = self.tree.subtree(name) if self.root_blob is not None else None
        except KhoDecodeError:
            st = None
        if self.mem is not None and st is not None and st.phys:
            try:
                if st.size is not None:
                    return bytes(self.mem.read(st.phys, min(st.size, 1 << 24), f"sub-blob {name}"))
                head = self.mem.read(st.phys, 40, f"sub-blob {name}")
                ts = _fdt.totalsize(head) if head[:4] == b"\xd0\x0d\xfe\xed" else PAGE_SIZE
                return bytes(self.mem.read(st.phys, min(max(ts, 40), 1 << 20), f"sub-blob {name}"))
            except KhoDecodeError:
                pass
        return self.sub_blobs.get(name)

    def needs_memory(self) -> list[str]:
        """What only memory can tell, one sentence each (empty with memory
        that holds the root FDT)."""
        if self.mem is not None and self.root_phys is not None and self.partial is None:
            return []
        out: list[str] = []
        try:
            t = self.tree
        except KhoDecodeError:
            return ["the root FDT: give --mem with memory captured at the jump"]
        p = self.partial
        if p is not None:
            what = [f"{n}'s properties" for n in p.incomplete]
            if p.only_in_sub_fdts:
                what.append(("the nodes " if len(p.only_in_sub_fdts) > 1 else "the node ")
                            + ", ".join(p.only_in_sub_fdts) + " (sub_fdts/ has the blob"
                            + ("s" if len(p.only_in_sub_fdts) > 1 else "") + ", not the address)")
            out.append(f"the rest of the root FDT ({p.totalsize - p.have} of {p.totalsize} bytes, cut after byte "
                       f"{p.have})" + (": " + ", and ".join(what) if what else ""))
        if t.mem_map and not self._holds_page(t.mem_map):
            out.append(f"the preserved blocks and the map's metadata: the preserved memory map at 0x{t.mem_map:x}")
        elif t.mem_map is None and p is not None and t.mem_map_len < 0:
            out.append("the preserved memory map (its property is cut off)")
        for st in t.subtrees:
            if st.phys and st.name not in self.sub_blobs and not self._holds_page(st.phys):
                out.append(f"sub-blob {st.name} at 0x{st.phys:x} (sub_fdts/ has no copy)")
        return out

    def _holds_page(self, phys: int) -> bool:
        try:
            return self.mem is not None and self.partial is None and bool(self.mem.contains(phys, 8))
        except KhoDecodeError:
            return False


def _read(path: str, what: str, cap: int = 1 << 24) -> bytes:
    from .memory.sources import read_regular
    return read_regular(path, what, cap)


#: the scan of memory for the root FDT and setup_data stops after this many bytes ...
SCAN_LIMIT = 64 << 30
#: ... or this many seconds (a 1 TiB dump is not read to the end to find a pointer)
SCAN_SECONDS = 15.0
#: bytes read at a time: the scan's memory
SCAN_CHUNK = 1 << 20
_SETUP_PAT = struct.pack("<II", structs.SETUP_KEXEC_KHO, structs.KHO_DATA.size)
_FDT_MAGIC_BYTES = struct.pack(">I", _fdt.FDT_MAGIC)


@dataclass
class ScanResult:
    """What one bounded pass over memory found."""

    setup_data: tuple[int, structs.KhoData] | None = None
    #: page-aligned addresses whose bytes start with the root FDT's first bytes (at most 8)
    fdt_pages: list[int] = field(default_factory=list)
    scanned: int = 0
    total: int = 0
    #: why the pass stopped before the end: "time", "bytes", or "" (it did not)
    stopped: str = ""
    seconds: float = 0.0


def _holds(mem: Any, phys: int, want: bytes) -> bool:
    try:
        return bool(mem.read(phys, len(want)) == want)
    except KhoDecodeError:
        return False


def _setup_records(data: bytes, at: int, n: int) -> Iterator[int]:
    """Offsets below ``n`` of 16-byte aligned ``SETUP_KEXEC_KHO`` setup_data
    headers in ``data`` (read at physical ``at``): vectorised with numpy,
    else found with a one-byte search (memchr: fast over zero pages)."""
    lead = (-at) % 16
    try:
        import numpy as np
        have_np = True
    except ImportError:  # pragma: no cover - numpy is optional
        have_np = False
    if have_np:
        usable = (len(data) - lead) // 16 * 16
        a = np.frombuffer(data, dtype="<u4", count=usable // 4, offset=lead)
        hits = np.flatnonzero((a[2::4] == structs.SETUP_KEXEC_KHO) & (a[3::4] == structs.KHO_DATA.size))
        for h in hits.tolist():
            if lead + 16 * h < n:
                yield lead + 16 * h
        return
    i = data.find(_SETUP_PAT[:1], 0)
    while 0 <= i < n + 8:
        rec = i - 8
        if rec >= 0 and (at + rec) % 16 == 0 and data[i:i + 8] == _SETUP_PAT and rec < n:
            yield rec
        i = data.find(_SETUP_PAT[:1], i + 1)


def scan_memory(mem: Any, prefix: bytes | None, seconds: float | None = None, limit: int | None = None) -> ScanResult:
    """One pass over what ``mem`` holds, ``SCAN_CHUNK`` bytes at a time:
    the first valid ``SETUP_KEXEC_KHO`` setup_data record, and page starts
    holding ``prefix`` (the root FDT's first bytes).  Stops early once the
    setup_data found points at a page holding ``prefix`` (or at all, when no
    prefix is sought), and after ``seconds`` or ``limit`` bytes."""
    seconds = SCAN_SECONDS if seconds is None else seconds
    limit = SCAN_LIMIT if limit is None else limit
    res = ScanResult(total=sum(e - s for s, e in mem.ranges()))
    t0 = time.monotonic()
    want = prefix[:64] if prefix else None
    tail = max(len(_SETUP_PAT) + 8 + structs.KHO_DATA.size, len(want) if want else 0)
    for start, end in mem.ranges():
        at = start
        while at < end:
            n = min(end - at, SCAN_CHUNK - (at % SCAN_CHUNK) if at % SCAN_CHUNK else SCAN_CHUNK)
            try:
                data = mem.read(at, min(end - at, n + tail))
            except KhoDecodeError:
                at += n
                continue
            if res.setup_data is None:
                for i in _setup_records(data, at, n):
                    if at + i >= start and i + 16 + structs.KHO_DATA.size <= len(data):
                        kd = structs.KhoData(*structs.KHO_DATA.unpack_from(data, i + 16))
                        if kd.fdt_size == PAGE_SIZE and kd.scratch_size and kd.scratch_size % 16 == 0:
                            res.setup_data = (at + i, kd)
                            break
            if want is not None and len(res.fdt_pages) < 8:
                # page starts only: a root FDT is page aligned
                first = (-at) % PAGE_SIZE
                for off in range(first, n, PAGE_SIZE):
                    if data[off:off + 4] == _FDT_MAGIC_BYTES and data[off:off + len(want)] == want:
                        res.fdt_pages.append(at + off)
                        if len(res.fdt_pages) >= 8:
                            break
            at += n
            res.scanned += n
            if res.setup_data is not None and (want is None or res.fdt_pages or
                                               _holds(mem, res.setup_data[1].fdt_addr, want)):
                res.seconds = time.monotonic() - t0
                return res
            if res.scanned >= limit:
                res.stopped = "bytes"
            elif time.monotonic() - t0 > seconds:
                res.stopped = "time"
            if res.stopped:
                res.seconds = time.monotonic() - t0
                return res
    res.seconds = time.monotonic() - t0
    return res


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n >> 20} MiB" if n >= 1 << 20 else f"{n} bytes"


def _span(mem: Any) -> tuple[int, int]:
    rs = mem.ranges()
    return (rs[0][0], rs[-1][1]) if rs else (0, 0)


def _doubt_base(ho: Handover, mem: Any, scan: ScanResult | None, iomem: list[tuple[int, int]] | None,
                found_by_scan: bool) -> str | None:
    """Why the memory's base looks wrong, or None."""
    phys = ho.root_phys
    if phys is None:
        return None
    name = getattr(mem, "name", "memory")
    if scan is not None and scan.setup_data is not None:
        sd_at, kd = scan.setup_data
        if kd.fdt_addr != phys:
            delta = phys - kd.fdt_addr
            lo = _span(mem)[0]
            hint = (f"; every address lines up if the memory starts 0x{abs(delta):x} "
                    f"{'lower' if delta > 0 else 'higher'}, at 0x{lo - delta:x}") if lo - delta >= 0 else ""
            return (f"setup_data at 0x{sd_at:x} says the root FDT is at 0x{kd.fdt_addr:x}, but it was found at "
                    f"0x{phys:x} in {name}: the memory is probably given at the wrong base{hint}")
        lo, hi = _span(mem)
        if not (lo <= kd.scratch_addr < hi):
            return (f"setup_data at 0x{sd_at:x} puts the scratch array at 0x{kd.scratch_addr:x}, outside "
                    f"{name} (0x{lo:x}-0x{hi:x}): the memory is probably given at the wrong base")
    if iomem and not any(s <= phys < e for s, e in iomem):
        return (f"the root FDT was found at 0x{phys:x}, outside System RAM of --iomem: the memory is probably "
                "given at the wrong base")
    if found_by_scan:
        try:
            r = _root.decode_root(ho.root_blob or b"", phys)
        except KhoDecodeError:
            return None
        ptrs = ([("preserved-memory-map", r.mem_map)] if r.mem_map else []) + \
            [(f"{s.name}'s blob", s.phys) for s in r.subtrees if s.phys]
        lo, hi = _span(mem)
        if ptrs and all(not (lo <= p < hi) for _, p in ptrs):
            what = ", ".join(f"{n} 0x{p:x}" for n, p in ptrs[:3]) + (", ..." if len(ptrs) > 3 else "")
            return (f"the root FDT found at 0x{phys:x} points only outside {name} (0x{lo:x}-0x{hi:x}): {what}: "
                    "the memory is probably given at the wrong base")
    return None


def _kind_of(path: str) -> str:
    """"dir" or "file" for what ``path`` is; a UsageError for anything else."""
    from .memory.sources import file_kind
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file or directory") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISREG(st.st_mode):
        return "file"
    raise UsageError(f"{path}: {file_kind(st.st_mode)}, not a debugfs kho directory or a root FDT file")


_DEBUGFS_NAMES = ("fdt", "scratch_phys", "scratch_len", "sub_fdts")


def load(path: str | None, mem: Any = None, fdt_phys: int | None = None,
         iomem: list[tuple[int, int]] | None = None) -> Handover:
    """Open a debugfs-style directory (``.../kho``, ``.../kho/out``,
    ``.../kho/in``) or a root FDT file, with optional memory; or memory
    alone (``path`` None: the root FDT is found through setup_data or
    ``fdt_phys``).  ``iomem`` (System RAM ranges) lets a root FDT found
    outside RAM be doubted."""
    if path is None:
        if mem is None:
            raise UsageError("no handover given: a debugfs kho copy, a root FDT file, or memory")
        kind = "memory"
        path = str(getattr(mem, "name", "memory"))
    else:
        kind = _kind_of(path)
    ho = Handover(source=path, mem=mem)
    if kind == "memory":
        ho.direction = "memory"
    elif kind == "dir":
        d = path
        if os.path.isdir(os.path.join(d, "out")) or os.path.isdir(os.path.join(d, "in")):
            d = os.path.join(d, "out") if os.path.exists(os.path.join(d, "out", "fdt")) or not \
                os.path.isdir(os.path.join(d, "in")) else os.path.join(d, "in")
        present = [n for n in _DEBUGFS_NAMES if os.path.lexists(os.path.join(d, n))]
        if not present:
            raise UsageError(f"{path}: no fdt, no scratch_phys: not a copy of /sys/kernel/debug/kho "
                             "(nor of its out/ or in/)")
        ho.direction = "in" if os.path.basename(os.path.normpath(d)) == "in" else "out"
        fdt_path = os.path.join(d, "fdt")
        if os.path.lexists(fdt_path):
            ho.root_blob = _read(fdt_path, "root FDT", 1 << 20)
            ho.root_blob_origin = fdt_path
        elif ho.direction == "out" and os.path.lexists(os.path.join(d, "scratch_phys")):
            ho.quirks.append(Quirk("debugfs-no-out-fdt",
                                   f"{d} has no fdt: a kernel that was itself booted through KHO does not "
                                   "create out/fdt in debugfs (its outgoing FDT is still handed over)"))
        for name in ("scratch_phys", "scratch_len"):
            p = os.path.join(d, name)
            if os.path.lexists(p):
                raw = _read(p, name, 1 << 20)
                try:
                    text = raw.decode("ascii")
                except UnicodeDecodeError:
                    raise UsageError(f"{p}: not a debugfs {name} copy (not ASCII text)") from None
                vals = structs.parse_debugfs_scratch(text, p)
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
        if not ho.root_blob:
            raise UsageError(f"{path}: an empty file, not a root FDT")

    cut = None
    if ho.root_blob is not None:
        h = _fdt.header(ho.root_blob)
        if h and h.magic == _fdt.FDT_MAGIC and h.totalsize > len(ho.root_blob):
            cut = Quirk("debugfs-fdt-truncated",
                        f"{ho.root_blob_origin} holds {len(ho.root_blob)} bytes but its header says "
                        f"totalsize {h.totalsize}: debugfs keeps the size the FDT had at kho_init, "
                        "sub-trees added later grew it in place")
            ho.quirks.append(cut)

    if mem is not None and ho.direction == "in" and getattr(mem, "live", False):
        # the running kernel is the one that received this handover: it walked
        # the map at boot and reserved only the blocks it lists, so the map's
        # own nodes, and what the clients restored and released since, are its
        # free memory now; the debugfs copies are what arrived
        ho.quirks.append(Quirk(
            "live-in-consumed",
            f"{path} was received by the running kernel, which walked its preserved-memory map at boot "
            "(kho_memory_init) and has reused the map's own pages since: the copies in debugfs are reported, "
            f"{getattr(mem, 'name', 'memory')} is not read"))
        ho.mem = mem = None
    if mem is not None:
        _locate_in_memory(ho, mem, fdt_phys, iomem)
    if cut is not None:
        cut.message += ("; reading the full FDT from memory" if ho.root_phys is not None else
                        "; give --mem to read the full FDT" if mem is None else
                        "; the memory given does not hold the full FDT")
    if ho.root_blob is None:
        hint = ""
        if any(q.code == "debugfs-no-out-fdt" for q in ho.quirks):
            hint = ("; this kernel was booted through KHO, so debugfs has no out/fdt: use in/ for the handover it "
                    "received, or --mem with a dump to find the outgoing FDT")
        if kind == "memory":
            raise UsageError(f"{path}: no root FDT found (no setup_data pointing at one): give --fdt-phys")
        raise UsageError(f"{path}: no root FDT (no fdt file, and no memory to find one in){hint}")
    if mem is not None and ho.sub_blobs:
        _blob_disagreements(ho)
    if ho.root_phys is None and any(q.code == "debugfs-fdt-truncated" for q in ho.quirks):
        _reconstruct_strings(ho)
        if _fdt.check_full(ho.root_blob) != 0:
            ho.partial = _partial_root(ho.root_blob, set(ho.sub_blobs))
    _client_quirks(ho)
    return ho


def _locate_in_memory(ho: Handover, mem: Any, fdt_phys: int | None, iomem: list[tuple[int, int]] | None) -> None:
    """Find the root FDT and setup_data in ``mem``; read the root FDT from
    there; doubt the memory's base when the capture's pointers disagree."""
    hints = [fdt_phys] if fdt_phys is not None else []
    live = getattr(mem, "kho_out_fdt_phys", None)
    if live is not None and fdt_phys is None:
        p = live()
        if p:
            hints.append(p)
    prefix = ho.root_blob[:64] if ho.root_blob and len(ho.root_blob) >= 8 else None
    found_hint = next((h for h in hints if prefix is None or _holds(mem, h, prefix)), None) \
        if fdt_phys is None else fdt_phys
    scan = scan_memory(mem, prefix if found_hint is None else None)
    kd_found = scan.setup_data
    if kd_found:
        ho.setup_data_phys = kd_found[0]
        ho.scratch_phys, ho.scratch_len = kd_found[1].scratch_addr, kd_found[1].scratch_size
    found_by_scan = False
    if fdt_phys is not None:
        ho.root_phys = fdt_phys
    elif found_hint is not None:
        ho.root_phys = found_hint
    elif kd_found and (prefix is None or _holds(mem, kd_found[1].fdt_addr, prefix)):
        ho.root_phys = kd_found[1].fdt_addr
    elif scan.fdt_pages:
        ho.root_phys = scan.fdt_pages[0]
        found_by_scan = True
    if ho.root_phys is not None:
        file_blob, file_origin = ho.root_blob, ho.root_blob_origin
        try:
            ho.root_blob = _root.read_root_from_memory(mem, ho.root_phys)
        except KhoDecodeError as e:
            if fdt_phys is not None:
                raise UsageError(f"--fdt-phys 0x{fdt_phys:x}: {e}") from None
            raise
        ho.root_blob_origin = f"memory at 0x{ho.root_phys:x}"
        if file_blob is not None and fdt_phys is None:
            off = _first_difference(file_blob, ho.root_blob)
            if off is not None:
                ho.disagreements.append((
                    "root FDT", f"{file_origin} and the root FDT in memory at 0x{ho.root_phys:x} differ from "
                    f"byte {off} (0x{file_blob[off]:02x} vs 0x{ho.root_blob[off]:02x}"
                    + (")" if off < len(ho.root_blob) else ", memory's FDT is shorter)")
                    + ": the next kernel reads memory"))
    elif ho.root_blob is not None:
        name = getattr(mem, "name", "memory")
        if scan.stopped:
            ho.quirks.append(Quirk(
                "root-fdt-not-located",
                f"{name} was searched for {scan.seconds:.0f} s ({_gib(scan.scanned)} of {_gib(scan.total)}) "
                f"without finding setup_data or a page starting with {ho.root_blob_origin}'s first bytes; "
                "give --fdt-phys (or vmlinux debug info for --mem live)"))
        else:
            ho.quirks.append(Quirk(
                "root-fdt-not-in-memory",
                f"the root FDT of {ho.root_blob_origin} is not in {name}: all {_gib(scan.total)} searched "
                "(no setup_data pointing at it, no page starting with its first bytes); the tree below is the "
                "file's"))
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
    if fdt_phys is None:
        ho.base_doubt = _doubt_base(ho, mem, scan, iomem, found_by_scan)
    elif iomem and not any(s <= fdt_phys < e for s, e in iomem):
        ho.base_doubt = (f"--fdt-phys 0x{fdt_phys:x} is outside System RAM of --iomem: the address or the "
                         "memory's base is probably wrong")
    if ho.base_doubt:
        ho.quirks.append(Quirk("mem-base-doubtful", ho.base_doubt))


_FDT_BEGIN_NODE, _FDT_END_NODE, _FDT_PROP, _FDT_NOP, _FDT_END = 1, 2, 3, 4, 9


def _reference_strings() -> list[bytes]:
    """The strings blocks of KHO root FDTs built at boot, per generation."""
    out: list[bytes] = []
    for prof in P.PROFILES.values():
        if prof.fdt_built_at is not FdtBuiltAt.BOOT:
            continue
        page = _root.build_root_at_boot(prof, 0)
        page.add_subtree("x", 0, 0)
        ref = page.blob()
        rh = _fdt.header(ref)
        assert rh is not None
        s = ref[rh.off_dt_strings:rh.off_dt_strings + rh.size_dt_strings]
        if s not in out:
            out.append(s)
    return out


def _partial_root(blob: bytes, sub_fdts: set[str]) -> Partial | None:
    """Walk a cut root FDT's struct block as far as its bytes go.

    Property names come from the file's strings block when it holds them,
    else from the fixed strings of a KHO root FDT built at boot whose
    surviving bytes agree (the names are always the same four)."""
    h = _fdt.header(blob)
    if h is None or h.magic != _fdt.FDT_MAGIC or h.off_dt_struct >= len(blob):
        return None
    have_strings = blob[h.off_dt_strings:min(len(blob), h.off_dt_strings + h.size_dt_strings)]
    strings, names_from = have_strings, "the file's"
    if len(have_strings) < h.size_dt_strings:
        for ref in _reference_strings():
            if len(ref) == h.size_dt_strings and ref.startswith(have_strings):
                strings, names_from = ref, "those every KHO root FDT uses (its strings block is cut)"
                break

    def name_at(off: int) -> str:
        if off < len(strings):
            end = strings.find(b"\0", off)
            if end >= 0:
                return strings[off:end].decode("utf-8", "replace")
        return f"<name at strings+{off}>"

    end = min(len(blob), h.off_dt_struct + h.size_dt_struct)
    pos = h.off_dt_struct
    top = _fdt.FdtNode(name="", offset=0)
    stack: list[_fdt.FdtNode] = []
    seen_root = False
    while pos + 4 <= end:
        tok = struct.unpack_from(">I", blob, pos)[0]
        if tok == _FDT_BEGIN_NODE:
            nul = blob.find(b"\0", pos + 4, end)
            if nul < 0:
                break
            name = blob[pos + 4:nul].decode("utf-8", "replace")
            node = top if not seen_root else _fdt.FdtNode(name=name, offset=pos - h.off_dt_struct)
            if seen_root:
                if not stack:
                    break
                stack[-1].children.append(node)
            seen_root = True
            stack.append(node)
            pos = (nul + 1 + 3) & ~3
        elif tok == _FDT_PROP:
            if pos + 12 > end or not stack:
                break
            ln, nameoff = struct.unpack_from(">II", blob, pos + 4)
            if pos + 12 + ln > end:
                break
            stack[-1].props.setdefault(name_at(nameoff), bytes(blob[pos + 12:pos + 12 + ln]))
            pos = (pos + 12 + ln + 3) & ~3
        elif tok == _FDT_END_NODE:
            if not stack:
                break
            stack.pop()
            pos += 4
        elif tok == _FDT_NOP:
            pos += 4
        else:
            break
    if not seen_root:
        return None
    incomplete = [n.name or "/" for n in stack[1:]]
    subs: list[_root.Subtree] = []
    for child in top.children:
        phys: int | None = None
        prop: str | None = None
        for pn in _root.ADDRESS_PROPS:
            v = child.props.get(pn)
            if v is not None:
                prop, phys = pn, (_fdt.u64(v) if len(v) == 8 else None)
                break
        sz = child.props.get(_root.SIZE_PROP)
        subs.append(_root.Subtree(child.name, phys, _fdt.u64(sz) if sz is not None and len(sz) == 8 else None,
                                  prop, dict(child.props)))
    mm = top.props.get(_root.MEMORY_MAP_PROP)
    r = _root.RootFdt(blob=bytes(blob), header=h, compatible=top.prop_str("compatible"),
                      compatible_raw=top.props.get("compatible"),
                      mem_map=_fdt.u64(mm) if mm is not None and len(mm) == 8 else None,
                      mem_map_len=len(mm) if mm is not None else -1, subtrees=subs, tree=top)
    return Partial(root=r, have=len(blob), totalsize=h.totalsize, names_from=names_from, incomplete=incomplete,
                   only_in_sub_fdts=sorted(sub_fdts - {c.name for c in top.children}))


#: top-level tables a scenario file may hold, and what each must be
_SCENARIO_TABLES: dict[str, type] = {"machine": dict, "kernel": list, "step": list, "host": dict}


def read_scenario_file(path: str) -> dict[str, Any]:
    """A scenario FILE.toml (``kho simulate FILE.toml``), read and checked
    enough that the model gets tables of the right shape; a
    :class:`~pykho.errors.UsageError` naming the file otherwise (a FIFO, a
    device, bytes that are not UTF-8 text, TOML that does not parse)."""
    import tomllib

    from .memory.sources import read_regular
    data = read_regular(path, "scenario file", 1 << 20)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not a TOML scenario (not UTF-8 text: byte 0x{data[e.start]:02x} at offset "
                         f"{e.start})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not a TOML scenario ({e})") from None
    unknown = sorted(set(doc) - set(_SCENARIO_TABLES))
    if unknown:
        raise UsageError(f"{path}: unknown table {unknown[0]!r} (a scenario has [machine], [[kernel]], [[step]] "
                         "or [host])")
    for name, typ in _SCENARIO_TABLES.items():
        if name in doc and not isinstance(doc[name], typ):
            raise UsageError(f"{path}: {name!r} must be {'a table' if typ is dict else 'an array of tables'}")
        if typ is list and name in doc and not all(isinstance(x, dict) for x in doc[name]):
            raise UsageError(f"{path}: every [[{name}]] must be a table")
    if not doc:
        raise UsageError(f"{path}: an empty scenario (give [[kernel]] and [[step]] tables, or [host])")
    for i, k in enumerate(doc.get("kernel", [])):
        if "profile" in k:
            try:
                P.get_profile(str(k["profile"]))
            except UsageError:
                raise UsageError(f"{path}: [[kernel]] #{i + 1}: profile {k['profile']!r} is not a known generation "
                                 f"({', '.join(P.PROFILES)})") from None
    host = doc.get("host")
    if host is not None:
        unknown = sorted(set(host) - {"ram", "guest_bytes", "memfd_bytes", "range_bytes", "profile"})
        if unknown:
            raise UsageError(f"{path}: [host] has no key {unknown[0]!r} (ram, guest_bytes, memfd_bytes, "
                             "range_bytes, profile)")
        for key in ("ram", "guest_bytes", "memfd_bytes", "range_bytes"):
            v = host.get(key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise UsageError(f"{path}: [host] {key} = {v!r}: a number of bytes, 0 or more")
        rb = host.get("range_bytes", 1 << 30)
        if rb < PAGE_SIZE or rb & (rb - 1):
            raise UsageError(f"{path}: [host] range_bytes = {rb}: a power of two of at least {PAGE_SIZE}")
        if host.get("ram", 1 << 40) < 1 << 30:
            raise UsageError(f"{path}: [host] ram = {host['ram']}: at least 1 GiB")
        if host.get("guest_bytes", 512 << 30) + host.get("memfd_bytes", 1 << 30) >= host.get("ram", 1 << 40):
            raise UsageError(f"{path}: [host] guest_bytes + memfd_bytes must be less than ram")
        if "profile" in host:
            try:
                P.get_profile(str(host["profile"]))
            except UsageError:
                raise UsageError(f"{path}: [host] profile {host['profile']!r} is not a known generation") from None
    return doc


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
    h = _fdt.header(blob) if blob is not None else None
    if blob is None or h is None:
        return
    tail = bytes.fromhex("0000000200000009")            # END_NODE (root), FDT_END
    s_end = h.off_dt_struct + h.size_dt_struct
    if s_end != h.off_dt_strings or h.off_dt_strings + h.size_dt_strings != h.totalsize or \
            len(blob) < s_end - len(tail):
        return
    if blob[s_end - len(tail):min(len(blob), s_end)] != tail[:max(0, min(len(blob), s_end) - (s_end - len(tail)))]:
        return
    struct_part = blob[:s_end - len(tail)] + tail
    for strings in _reference_strings():
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
    r = ho.tree
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
