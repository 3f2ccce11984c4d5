"""Guest RAM at ``machine_kexec``: the dump, its analysis and the sparse copy.

At each stop the runner saves the whole guest RAM (QMP ``pmemsave``) into a
temporary file (:func:`ram_tempfile`, :func:`pmemsave`).  :func:`scan_ram_file`
finds the KHO handover in it without pykho (the staged ``SETUP_KEXEC_KHO``
setup_data record, the root FDT, the radix tree, the scratch array copies)
and writes into the capture's ``ram/``::

  ram-stageN.sparse/MANIFEST.tsv + <phys:012x>.bin   the pages a test needs
  locate-stageN.json                                 what was found
  ram-stageN-out-fdt-full.dtb                        the complete outgoing root FDT

``python -m vmtest scan`` runs the same analysis on any full dump.
"""
from __future__ import annotations

import contextlib
import json
import mmap
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

__all__ = ["FDT_MAGIC", "PAGE", "RAM_SIZE", "SETUP_KEXEC_KHO", "analyse_ram", "guest_ram_size",
           "keep_full_ram", "parse_fdt", "pmemsave", "qemu_ram_ranges", "ram_tempfile", "ram_tmpdir", "read_sparse",
           "scan_ram_file", "select_ranges", "walk_radix", "write_sparse"]

PAGE = 4096
RAM_SIZE = 1 << 30  # -m 1G
SETUP_KEXEC_KHO = 10
FDT_MAGIC = 0xD00DFEED


# --------------------------------------------------------------------------
# the dump

def ram_tmpdir(size: int) -> Path:
    env = os.environ.get("VMTEST_RAMTMP")
    if env:
        return Path(env)
    try:
        st = os.statvfs("/dev/shm")
        if st.f_bavail * st.f_frsize > size + (512 << 20):
            return Path("/dev/shm")
    except OSError:
        pass
    return Path(tempfile.gettempdir())


def guest_ram_size(mem: str) -> int:
    m = re.fullmatch(r"(\d+)([KMGT]?)", mem.strip().upper())
    if not m:
        raise ValueError(f"bad memory size {mem!r}")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[m.group(2)]


@contextlib.contextmanager
def ram_tempfile(stage: int, size: int = RAM_SIZE) -> Iterator[Path]:
    """A temporary file for one full RAM dump of ``size`` bytes (in /dev/shm
    when there is room, $VMTEST_RAMTMP overrides), deleted when the block ends."""
    fd, name = tempfile.mkstemp(prefix=f"vmtest-ram{stage}-", suffix=".bin", dir=ram_tmpdir(size))
    os.close(fd)         # an open descriptor would keep the 1 GiB file alive after its unlink
    full = Path(name)
    try:
        yield full
    finally:
        full.unlink(missing_ok=True)


#: QEMU's pc machine (i440fx): guests of at least 3.5 GiB keep 3 GiB below
#: 4 GiB (gigabyte-aligned split) and the rest from 4 GiB up, above the PCI hole
PC_LOWMEM_SPLIT = 0xE0000000
PC_LOWMEM_ALIGNED = 0xC0000000
FOUR_GIB = 1 << 32


def qemu_ram_ranges(size: int) -> list[tuple[int, int]]:
    """Guest-physical ``(start, end)`` ranges of QEMU's pc RAM of ``size``
    bytes: all of it from 0 below 3.5 GiB, else [0, 3 GiB) and
    [4 GiB, 4 GiB + the rest) (seen in ``info mtree -f`` of QEMU 7.2)."""
    if size < PC_LOWMEM_SPLIT:
        return [(0, size)]
    return [(0, PC_LOWMEM_ALIGNED), (FOUR_GIB, FOUR_GIB + size - PC_LOWMEM_ALIGNED)]


def pmemsave(qmp, dest: Path, memory: str = "1G") -> None:
    """Save the guest's RAM of ``memory`` into ``dest`` through QMP (``qmp``: a
    :class:`vmtest.qmp.Qmp`), file offset = physical address.  RAM above the
    PCI hole is saved on its own and copied to its offset from the end down,
    the part file shrinking as it goes (never two full copies at once); the
    hole stays a hole of the file (reads as zeros, holds no memory)."""
    ranges = qemu_ram_ranges(guest_ram_size(memory))
    (lo, hi), rest = ranges[0], ranges[1:]
    qmp.execute("pmemsave", val=lo, size=hi - lo, filename=str(dest))
    for start, end in rest:
        part = dest.with_name(dest.name + f".{start:x}")
        try:
            qmp.execute("pmemsave", val=start, size=end - start, filename=str(part))
            _place_at(part, dest, start)
        finally:
            part.unlink(missing_ok=True)


def _place_at(part: Path, dest: Path, offset: int, chunk: int = 64 << 20) -> None:
    """Copy ``part`` into ``dest`` at ``offset``, last chunk first, cutting
    ``part`` down after each chunk."""
    n = part.stat().st_size
    with open(part, "r+b") as src, open(dest, "r+b") as dst:
        dst.truncate(offset + n)
        while n > 0:
            k = min(chunk, n)
            n -= k
            src.seek(n)
            dst.seek(offset + n)
            dst.write(src.read(k))
            src.truncate(n)


def keep_full_ram(full: Path, dest: Path) -> None:
    """Store a full dump zstd-compressed (``--keep-full-ram``)."""
    subprocess.run(["zstd", "-q", "-f", "-T0", "-3", "--long=30", str(full), "-o", str(dest)], check=True)


# --------------------------------------------------------------------------
# RAM analysis (independent of pykho)

def parse_fdt(buf: bytes) -> dict:
    """Minimal flattened-device-tree reader: returns the root node as
    {"name", "props": {name: bytes}, "children": [...]} plus "_header"."""
    if len(buf) < 40:
        raise ValueError("FDT: too short")
    (magic, totalsize, off_struct, off_strings, _rsv, version, last_comp, _cpu,
     size_strings, size_struct) = struct.unpack(">10I", buf[:40])
    if magic != FDT_MAGIC:
        raise ValueError(f"FDT: bad magic {magic:#x}")
    if totalsize > len(buf):
        raise ValueError(f"FDT: totalsize {totalsize} beyond the {len(buf)} bytes available")
    strings = buf[off_strings:off_strings + size_strings]
    pos = off_struct
    end = off_struct + size_struct
    stack: list[dict] = []
    root = None
    while pos < end:
        tok = struct.unpack(">I", buf[pos:pos + 4])[0]
        pos += 4
        if tok == 1:
            z = buf.index(b"\0", pos)
            node = {"name": buf[pos:z].decode("latin-1"), "props": {}, "children": []}
            pos = (z + 1 + 3) & ~3
            if stack:
                stack[-1]["children"].append(node)
            else:
                root = node
            stack.append(node)
        elif tok == 2:
            stack.pop()
        elif tok == 3:
            ln, nameoff = struct.unpack(">II", buf[pos:pos + 8])
            pos += 8
            nz = strings.index(b"\0", nameoff)
            stack[-1]["props"][strings[nameoff:nz].decode("latin-1")] = bytes(buf[pos:pos + ln])
            pos = (pos + ln + 3) & ~3
        elif tok == 4:
            continue
        elif tok == 9:
            break
        else:
            raise ValueError(f"FDT: bad token {tok:#x} at {pos - 4}")
    if root is None:
        raise ValueError("FDT: no root node")
    root["_header"] = {"totalsize": totalsize, "version": version, "last_comp_version": last_comp,
                       "off_dt_struct": off_struct, "off_dt_strings": off_strings}
    return root


def _u64(b: bytes | None) -> int | None:
    return struct.unpack("<Q", b)[0] if b is not None and len(b) == 8 else None


def walk_radix(read_page: Callable[[int], bytes], root: int, ram_size: int) -> dict:
    """Walk the KHO (kho-v2..v4) radix tree the way the kernel does: tables at
    levels 5..1 (512 LE u64 physical addresses, ascending index), a 32768-bit
    bitmap at level 0 (ascending bit).  key = (1 << (52 - order)) | (pa >> (12 + order))."""
    nodes: list[list[int]] = []
    entries: list[list[int]] = []
    errors: list[str] = []
    seen: set[int] = set()

    def visit(phys: int, level: int, start: int):
        if phys % PAGE or phys + PAGE > ram_size:
            errors.append(f"level {level} node pointer {phys:#x} is not a page inside RAM")
            return
        if phys in seen:
            errors.append(f"node {phys:#x} reached twice (cycle or shared node)")
            return
        seen.add(phys)
        nodes.append([phys, level])
        page = read_page(phys)
        if level == 0:
            words = struct.unpack("<512Q", page)
            for w, word in enumerate(words):
                while word:
                    low = word & -word
                    bit = low.bit_length() - 1
                    word ^= low
                    key = start | (w * 64 + bit)
                    order = 53 - key.bit_length()
                    if order < 0:
                        errors.append(f"key {key:#x} has no valid order")
                        continue
                    pa = (key << (12 + order)) & ((1 << 64) - 1)
                    entries.append([pa, order])
            return
        table = struct.unpack("<512Q", page)
        shift = (level - 1) * 9 + 15
        for i, child in enumerate(table):
            if child:
                visit(child, level - 1, start | (i << shift))

    if root:
        visit(root, 5, 0)
    return {"root": root, "nodes": nodes, "entries": entries, "errors": errors}


def _find_all(mm, needle: bytes, start: int = 0, end: int | None = None) -> Iterable[int]:
    """Offsets of ``needle`` in ``mm``.  Guest RAM is mostly zero pages, where
    bytes.find degrades badly for needles that contain zeros; a regular
    expression searching for the needle's part after its leading zero bytes
    (found with memchr-like speed) and a full compare are much quicker."""
    end = len(mm) if end is None else end
    lead = len(needle) - len(needle.lstrip(b"\0"))
    if lead == len(needle):
        raise ValueError("needle is all zeros")
    pat = re.compile(re.escape(needle[lead:]), re.DOTALL)
    for m in pat.finditer(mm, max(0, start + lead), end):
        i = m.start() - lead
        if i >= start and mm[i:i + len(needle)] == needle:
            yield i


def _read_scratch_text(stage_dir: Path) -> list[list[int]] | None:
    d = stage_dir / "debugfs/kho/out"
    try:
        phys = [int(x, 16) for x in (d / "scratch_phys").read_text().split()]
        lens = [int(x, 16) for x in (d / "scratch_len").read_text().split()]
    except (OSError, ValueError):
        return None
    if len(phys) != len(lens):
        return None
    return [[a, s] for a, s in zip(phys, lens)]


def _score_handover(mm, fdt_addr: int, stage_dir: Path | None) -> int:
    """How well the handover whose root FDT is at fdt_addr matches this boot's debugfs."""
    try:
        total = struct.unpack(">I", mm[fdt_addr + 4:fdt_addr + 8])[0]
        raw = bytes(mm[fdt_addr:fdt_addr + max(PAGE, min(total, 1 << 20))])
        root = parse_fdt(raw)
    except (ValueError, struct.error, IndexError):
        return -1
    score = 1
    out = stage_dir / "debugfs/kho/out" if stage_dir else None
    if out and (out / "fdt").exists():
        dbg = (out / "fdt").read_bytes()
        if dbg and raw.startswith(dbg):
            score += 10
    for child in root["children"]:
        p, n = _u64(child["props"].get("preserved-data")), _u64(child["props"].get("blob-size"))
        f = out / "sub_fdts" / child["name"] if out else None
        if p is not None and n is not None and f is not None and f.exists() and p + n <= len(mm):
            if bytes(mm[p:p + n]) == f.read_bytes():
                score += 2
    return score


def analyse_ram(mm, stage_dir: Path | None) -> dict:
    """Find the KHO handover state in a RAM image taken at machine_kexec."""
    ram_size = len(mm)
    res: dict = {"ram_size": ram_size, "setup_data": [], "fdt": None, "radix": None,
                 "subnodes": [], "scratch": None, "errors": []}

    def page(p: int) -> bytes:
        return bytes(mm[p:p + PAGE])

    # 1. staged SETUP_KEXEC_KHO setup_data records: {u64 next; u32 type=10; u32 len=32;
    #    u64 fdt_addr; u64 fdt_size; u64 scratch_addr; u64 scratch_size}
    needle = struct.pack("<II", SETUP_KEXEC_KHO, 32)
    for i in _find_all(mm, needle, 8):
        if i % 4:
            continue
        rec = i - 8
        nxt, = struct.unpack("<Q", mm[rec:rec + 8])
        fdt_addr, fdt_size, sc_addr, sc_size = struct.unpack("<4Q", mm[i + 8:i + 40])
        if (fdt_addr % PAGE or not 0 < fdt_addr < ram_size or not 0 < fdt_size <= (1 << 20)
                or sc_size == 0 or sc_size > 65536 or sc_addr >= ram_size):
            continue
        if struct.unpack(">I", mm[fdt_addr:fdt_addr + 4])[0] != FDT_MAGIC:
            continue
        res["setup_data"].append({"phys": rec, "next": nxt, "fdt_addr": fdt_addr, "fdt_size": fdt_size,
                                  "scratch_addr": sc_addr, "scratch_size": sc_size})
    if not res["setup_data"]:
        res["errors"].append("no SETUP_KEXEC_KHO setup_data found in RAM")
        return res
    # RAM can also hold stale records (a previous kexec's staged boot_params that
    # nobody overwrote).  Score each distinct record by how well its handover
    # matches what this boot's debugfs shows, and keep the best one.
    groups: dict[tuple, list[dict]] = {}
    for s in res["setup_data"]:
        groups.setdefault((s["fdt_addr"], s["fdt_size"], s["scratch_addr"], s["scratch_size"]), []).append(s)
    scored = sorted(((_score_handover(mm, k[0], stage_dir), k) for k in groups), reverse=True)
    res["setup_data_candidates"] = [{"fdt_addr": k[0], "scratch_addr": k[2], "score": sc,
                                     "copies": [s["phys"] for s in groups[k]]} for sc, k in scored]
    if len(scored) > 1 and scored[0][0] == scored[1][0]:
        res["errors"].append(f"cannot tell which setup_data is current: {res['setup_data_candidates']}")
    best = scored[0][1]
    res["setup_data"] = groups[best]
    res["setup_data_stale"] = [s for k, g in groups.items() if k != best for s in g]
    sd = res["setup_data"][-1]

    # 2. root FDT
    fdt_addr = sd["fdt_addr"]
    hdr_total = struct.unpack(">I", mm[fdt_addr + 4:fdt_addr + 8])[0]
    span = max(sd["fdt_size"], min(hdr_total, 1 << 20))
    raw = bytes(mm[fdt_addr:fdt_addr + span])
    try:
        root = parse_fdt(raw)
    except ValueError as e:
        res["errors"].append(f"root FDT: {e}")
        return res
    props = root["props"]
    compat = props.get("compatible", b"").split(b"\0")[0].decode("latin-1")
    mem_map_raw = props.get("preserved-memory-map")
    mem_map = _u64(mem_map_raw)
    res["fdt"] = {"phys": fdt_addr, "totalsize": hdr_total, "compatible": compat,
                  "preserved_memory_map": mem_map, "header": root["_header"]}
    res["_fdt_bytes"] = raw[:hdr_total]
    for child in root["children"]:
        res["subnodes"].append({"name": child["name"],
                                "preserved_data": _u64(child["props"].get("preserved-data")),
                                "blob_size": _u64(child["props"].get("blob-size")),
                                "props": sorted(child["props"])})

    # 3. radix tree
    if mem_map:
        res["radix"] = walk_radix(page, mem_map, ram_size)
    else:
        res["errors"].append("preserved-memory-map missing or zero")

    # 4. scratch array copies (the kexec segment is still at its staging page)
    sc = _read_scratch_text(stage_dir) if stage_dir else None
    copies: list[int] = []
    if sc:
        blob = b"".join(struct.pack("<QQ", a, s) for a, s in sc)
        copies = list(_find_all(mm, blob))
    res["scratch"] = {"entries": sc, "copies": copies,
                      "destination": sd["scratch_addr"], "size": sd["scratch_size"]}

    # 5. sub-blobs versus the debugfs copies
    for sn in res["subnodes"]:
        p, n = sn["preserved_data"], sn["blob_size"]
        if p is None or n is None or p + n > ram_size:
            continue
        if stage_dir:
            f = stage_dir / "debugfs/kho/out/sub_fdts" / sn["name"]
            if f.exists():
                sn["same_as_debugfs"] = bytes(mm[p:p + n]) == f.read_bytes()
    return res


def select_ranges(res: dict, keep: str = "preserved", cap: int = 64 << 20, base: int = 0,
                  extra: Iterable[tuple[int, int]] = ()) -> tuple[list[tuple[int, int]], dict]:
    """Page-aligned (start, length) ranges to keep from a RAM image of RAM
    ``[base, base + ram_size)`` (arm64's starts at 1 GiB), ``extra`` ranges
    (arm64: the DT) kept too."""
    end = base + res["ram_size"]
    want: list[tuple[int, int]] = []

    def add(p: int | None, n: int | None):
        if p is None or n is None or n <= 0 or p < base or p >= end:
            return
        a = p & ~(PAGE - 1)
        b = min(end, (p + n + PAGE - 1) & ~(PAGE - 1))
        want.append((a, b - a))

    for p, n in extra:
        add(p, n)
    for s in res.get("setup_data", []):
        add(s["phys"], 48)
    if res["fdt"]:
        add(res["fdt"]["phys"], max(PAGE, res["fdt"]["totalsize"]))
    for sn in res["subnodes"]:
        add(sn["preserved_data"], sn["blob_size"])
    if res["radix"]:
        for p, _lvl in res["radix"]["nodes"]:
            add(p, PAGE)
    if res["scratch"]:
        n = len(res["scratch"]["entries"] or []) * 16
        for c in res["scratch"].get("copies", []):
            add(c, n)
        add(res["scratch"]["destination"], res["scratch"]["size"])
    stats = {"keep": keep, "preserved_kept": 0, "preserved_skipped": 0, "preserved_bytes_kept": 0}
    if keep in ("preserved", "all-preserved") and res["radix"]:
        budget = cap if keep == "preserved" else 1 << 62
        for pa, order in sorted(res["radix"]["entries"], key=lambda e: (e[1], e[0])):
            size = PAGE << order
            if size <= budget:
                add(pa, size)
                budget -= size
                stats["preserved_kept"] += 1
                stats["preserved_bytes_kept"] += size
            else:
                stats["preserved_skipped"] += 1
    want.sort()
    merged: list[list[int]] = []
    for a, n in want:
        if merged and a <= merged[-1][0] + merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], a + n - merged[-1][0])
        else:
            merged.append([a, n])
    return [(a, n) for a, n in merged], stats


def write_sparse(mm, ranges: list[tuple[int, int]], out: Path):
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rows = ["# file\tphys_start\tlength"]
    for a, n in ranges:
        name = f"{a:012x}.bin"
        (out / name).write_bytes(mm[a:a + n])
        rows.append(f"{name}\t{a:#x}\t{n:#x}")
    (out / "MANIFEST.tsv").write_text("\n".join(rows) + "\n")


def scan_ram_file(ram_file: Path, stage_dir: Path | None, ram_out: Path, stage: int,
                  keep: str = "preserved", cap: int = 64 << 20) -> dict:
    """Analyse a full RAM image and write ram-stageN.sparse/, locate-stageN.json and
    ram-stageN-out-fdt-full.dtb into ram_out."""
    ram_out.mkdir(parents=True, exist_ok=True)
    with open(ram_file, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        res = analyse_ram(mm, stage_dir)
        ranges, stats = select_ranges(res, keep, cap)
        write_sparse(mm, ranges, ram_out / f"ram-stage{stage}.sparse")
    fdt_bytes = res.pop("_fdt_bytes", None)
    if fdt_bytes:
        (ram_out / f"ram-stage{stage}-out-fdt-full.dtb").write_bytes(fdt_bytes)
    res["sparse"] = {"dir": f"ram-stage{stage}.sparse", "ranges": [[a, n] for a, n in ranges],
                     "bytes": sum(n for _a, n in ranges), **stats}
    (ram_out / f"locate-stage{stage}.json").write_text(json.dumps(res, indent=1) + "\n")
    return res



def read_sparse(ram_dir: str | os.PathLike, phys: int, length: int) -> bytes:
    """Read guest-physical bytes from a sparse RAM directory (MANIFEST.tsv)."""
    ram_dir = Path(ram_dir)
    for line in (ram_dir / "MANIFEST.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, start, n = line.split("\t")
        start, n = int(start, 0), int(n, 0)
        if start <= phys and phys + length <= start + n:
            with open(ram_dir / name, "rb") as f:
                f.seek(phys - start)
                return f.read(length)
    raise KeyError(f"{phys:#x}+{length:#x} is not in {ram_dir}")
