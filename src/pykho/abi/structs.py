"""Fixed-layout structures of the handover (all little-endian, packed).

``kho_scratch``      16 B  {u64 addr; u64 size}; the receiver uses len/16 entries
``setup_data``       16 B header {u64 next; u32 type; u32 len} + payload (x86)
``kho_data``         32 B  {fdt_addr, fdt_size, scratch_addr, scratch_size} (SETUP_KEXEC_KHO = 10)
``kho_vmalloc``      16 B  {u64 first; u32 total_pages; u16 flags; u16 order}
``kho_vmalloc_chunk`` one page {u64 next; u64 phys[511]}
``kho_kexec_metadata`` 73 B {u32 version; char previous_release[65]; u32 kexec_count}
KHO block            one page {u64 next; u64 count} + count entries (kho-v4)
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from ..errors import KhoDecodeError
from . import fdt as _fdt
from .mem import PhysMemory, WritableMemory, read_u64, write_u64

__all__ = [
    "KEXEC_METADATA", "KHO_BLOCK_HDR", "KHO_DATA", "KHO_KEXEC_METADATA_VERSION", "KHO_MAX_BLOCKS",
    "KHO_METADATA_NODE_NAME", "KHO_SCRATCH", "KHO_VMALLOC", "KHO_VMALLOC_ALLOC", "KHO_VMALLOC_HUGE_VMAP",
    "KHO_VMALLOC_SIZE", "NEW_UTS_LEN", "PAGE_SHIFT", "PAGE_SIZE", "SETUP_DATA_HDR", "SETUP_KEXEC_KHO",
    "KexecMetadata", "KhoData", "KhoScratch", "KhoVmalloc", "Where", "block_count_per_block", "cstr",
    "decode_blocks", "decode_chosen", "decode_kexec_metadata", "decode_scratch", "decode_setup_data",
    "decode_vmalloc", "encode_blocks", "encode_chosen", "encode_scratch", "encode_setup_data",
    "encode_vmalloc_chunks", "find_setup_data", "format_debugfs_scratch", "parse_debugfs_scratch",
    "walk_setup_data",
]

#: a where of an error: a physical address, a textual location, or unknown
Where = int | str | None

PAGE_SIZE = 4096
PAGE_SHIFT = 12

# --------------------------------------------------------------------------
# kho_scratch


@dataclass(frozen=True)
class KhoScratch:
    addr: int
    size: int

    @property
    def end(self) -> int:
        return self.addr + self.size


KHO_SCRATCH = struct.Struct("<QQ")


def encode_scratch(areas: Iterable[KhoScratch]) -> bytes:
    return b"".join(KHO_SCRATCH.pack(a.addr, a.size) for a in areas)


def decode_scratch(data: bytes, where: Where = None) -> tuple[list[KhoScratch], int]:
    """(areas, leftover bytes).  The kernel uses ``len / 16`` entries and
    ignores a remainder; the caller reports it."""
    n = len(data) // KHO_SCRATCH.size
    areas = [KhoScratch(*KHO_SCRATCH.unpack_from(data, 16 * i)) for i in range(n)]
    return areas, len(data) - 16 * n


def parse_debugfs_scratch(text: str, name: str) -> list[int]:
    """``out/scratch_phys`` / ``scratch_len``: one ``0x%llx`` line per area."""
    out: list[int] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        if not s.startswith("0x"):
            raise KhoDecodeError(f"debugfs {name}", f"line {lineno}", f"expected 0x<hex>, got {s[:40]!r}")
        try:
            out.append(int(s, 16))
        except ValueError:
            raise KhoDecodeError(f"debugfs {name}", f"line {lineno}", f"expected 0x<hex>, got {s[:40]!r}") from None
        if len(out) > 1 << 16:
            raise KhoDecodeError(f"debugfs {name}", f"line {lineno}", "more than 65536 areas")
    return out


def format_debugfs_scratch(values: Iterable[int]) -> str:
    return "".join(f"0x{v:x}\n" for v in values)


# --------------------------------------------------------------------------
# x86 setup_data / kho_data

SETUP_KEXEC_KHO = 10
SETUP_DATA_HDR = struct.Struct("<QII")
KHO_DATA = struct.Struct("<QQQQ")


@dataclass(frozen=True)
class KhoData:
    fdt_addr: int
    fdt_size: int
    scratch_addr: int
    scratch_size: int


def encode_setup_data(kd: KhoData, next_: int = 0) -> bytes:
    return SETUP_DATA_HDR.pack(next_, SETUP_KEXEC_KHO, KHO_DATA.size) + KHO_DATA.pack(
        kd.fdt_addr, kd.fdt_size, kd.scratch_addr, kd.scratch_size)


def decode_setup_data(mem: PhysMemory, phys: int) -> tuple[int, int, KhoData | None]:
    """(next, type, KhoData or None when the type is not SETUP_KEXEC_KHO)."""
    nxt, typ, ln = SETUP_DATA_HDR.unpack(mem.read(phys, 16, "setup_data"))
    if typ != SETUP_KEXEC_KHO:
        return nxt, typ, None
    if ln < KHO_DATA.size:
        raise KhoDecodeError("setup_data SETUP_KEXEC_KHO", phys, f"len {ln}, expected {KHO_DATA.size}")
    return nxt, typ, KhoData(*KHO_DATA.unpack(mem.read(phys + 16, KHO_DATA.size, "kho_data")))


def walk_setup_data(mem: PhysMemory, first: int, cap: int = 256) -> Iterator[tuple[int, int, KhoData | None]]:
    """Every ``(phys, type, KhoData|None)`` of a setup_data chain (cycle-safe)."""
    seen: set[int] = set()
    at = first
    while at:
        if at in seen or len(seen) >= cap:
            raise KhoDecodeError("setup_data chain", at, f"cycle or more than {cap} entries")
        seen.add(at)
        nxt, typ, kd = decode_setup_data(mem, at)
        yield at, typ, kd
        at = nxt


def find_setup_data(mem: PhysMemory,
                    ranges: Iterable[tuple[int, int]] | None = None) -> Iterator[tuple[int, KhoData]]:
    """Scan memory (16-byte aligned) for SETUP_KEXEC_KHO records; yields (phys, KhoData)."""
    pat = struct.pack("<II", SETUP_KEXEC_KHO, KHO_DATA.size)
    for start, end in (ranges or mem.ranges()):
        at = start
        while at < end:
            n = min(end - at, 1 << 22)
            data = mem.read(at, n)
            i = data.find(pat)
            while i >= 0:
                if (at + i - 8) % 16 == 0 and i + 8 + 32 <= len(data):
                    kd = KhoData(*KHO_DATA.unpack_from(data, i + 8))
                    if kd.fdt_size == PAGE_SIZE and kd.scratch_size and kd.scratch_size % 16 == 0:
                        yield at + i - 8, kd
                i = data.find(pat, i + 1)
            at += n


# --------------------------------------------------------------------------
# arm64 /chosen


def encode_chosen(fdt_phys: int, scratch_phys: int, scratch_len: int, addr_cells: int = 2,
                  size_cells: int = 2, fdt_size: int = PAGE_SIZE) -> bytes:
    """A minimal DT with ``/chosen`` carrying ``linux,kho-fdt`` and
    ``linux,kho-scratch`` as ``fdt_appendprop_addrrange`` writes them
    (big-endian cells sized by the root's #address-cells/#size-cells)."""
    def cells(v: int, n: int) -> bytes:
        return b"".join(struct.pack(">I", (v >> (32 * (n - 1 - i))) & 0xFFFFFFFF) for i in range(n))
    blob, err = _fdt.build(
        [("#address-cells", struct.pack(">I", addr_cells)), ("#size-cells", struct.pack(">I", size_cells))],
        [("chosen", [("linux,kho-fdt", cells(fdt_phys, addr_cells) + cells(fdt_size, size_cells)),
                     ("linux,kho-scratch", cells(scratch_phys, addr_cells) + cells(scratch_len, size_cells))])])
    if err:
        raise ValueError(f"libfdt {err}")
    return blob


def decode_chosen(blob: bytes) -> tuple[int, int, int, int] | None:
    """(fdt_phys, fdt_size, scratch_phys, scratch_len) or None when the
    kernel (``early_init_dt_check_kho``) would silently ignore them: either
    property absent or not exactly addr+size cells long."""
    root = _fdt.parse(blob, "device tree")
    acp = root.props.get("#address-cells")
    scp = root.props.get("#size-cells")
    ac: int = struct.unpack(">I", acp)[0] if acp and len(acp) == 4 else 2
    sc: int = struct.unpack(">I", scp)[0] if scp and len(scp) == 4 else 1
    chosen = root.child("chosen")
    if chosen is None or not (1 <= ac <= 2 and 1 <= sc <= 2):
        return None

    def cells(b: bytes) -> int:
        v = 0
        for i in range(len(b) // 4):
            v = (v << 32) | struct.unpack_from(">I", b, 4 * i)[0]
        return v
    out: list[int] = []
    for name in ("linux,kho-fdt", "linux,kho-scratch"):
        v = chosen.props.get(name)
        if v is None or len(v) != 4 * (ac + sc):
            return None
        out += [cells(v[:4 * ac]), cells(v[4 * ac:])]
    return out[0], out[1], out[2], out[3]


def decode_dt_memory(blob: bytes) -> list[tuple[int, int]]:
    """The RAM a device tree claims, as ``early_init_dt_scan_memory`` reads
    it (drivers/of/fdt.c): every node whose ``device_type`` is ``memory``,
    its ``linux,usable-memory`` or ``reg`` cut into (base, size) entries of
    the root's #address-cells + #size-cells (defaults 2 and 1, each value
    the low 64 bits of its cells), zero sizes skipped."""
    root = _fdt.parse(blob, "device tree")
    acp, scp = root.props.get("#address-cells"), root.props.get("#size-cells")
    ac = struct.unpack(">I", acp[:4])[0] if acp and len(acp) >= 4 else 2
    sc = struct.unpack(">I", scp[:4])[0] if scp and len(scp) >= 4 else 1

    def cells(b: bytes) -> int:
        v = 0
        for i in range(len(b) // 4):
            v = ((v << 32) | struct.unpack_from(">I", b, 4 * i)[0]) & ((1 << 64) - 1)
        return v
    out: list[tuple[int, int]] = []
    for node in root.children:
        if node.props.get("device_type", b"").split(b"\0")[0] != b"memory":
            continue
        reg = node.props.get("linux,usable-memory") or node.props.get("reg") or b""
        n = len(reg) // 4
        i = 0
        while ac + sc and n - i >= ac + sc:
            base = cells(reg[4 * i:4 * (i + ac)])
            size = cells(reg[4 * (i + ac):4 * (i + ac + sc)])
            i += ac + sc
            if size:
                out.append((base, size))
    return out


# --------------------------------------------------------------------------
# vmalloc preservation

KHO_VMALLOC = struct.Struct("<QIHH")
KHO_VMALLOC_ALLOC = 0x1
KHO_VMALLOC_HUGE_VMAP = 0x2
KHO_VMALLOC_SIZE = (PAGE_SIZE - 8) // 8   # 511


@dataclass(frozen=True)
class KhoVmalloc:
    first: int
    total_pages: int
    flags: int
    order: int

    def pack(self) -> bytes:
        return KHO_VMALLOC.pack(self.first, self.total_pages, self.flags, self.order)

    @classmethod
    def unpack(cls, data: bytes, where: Where = None) -> KhoVmalloc:
        if len(data) != KHO_VMALLOC.size:
            raise KhoDecodeError("struct kho_vmalloc", where, f"{len(data)} bytes, expected 16")
        return cls(*KHO_VMALLOC.unpack(data))


def encode_vmalloc_chunks(mem: WritableMemory, alloc_page: Callable[[], int], block_physs: list[int], order: int,
                          flags: int = KHO_VMALLOC_ALLOC) -> tuple[KhoVmalloc, list[int]]:
    """Write the chunk list for ``block_physs`` (each ``1 << order`` pages).

    As ``kho_preserve_vmalloc`` does, a new chunk is allocated as soon as
    one fills up, so a full last chunk is followed by an empty one.
    Returns the descriptor and the chunk pages.  ``alloc_page`` returns a
    zeroed page or raises (MemoryError: the caller's failure path).
    """
    first = alloc_page()
    chunks = [first]
    cur, n = first, 0
    for p in block_physs:
        write_u64(mem, cur + 8 + 8 * n, p)
        n += 1
        if n == KHO_VMALLOC_SIZE:
            new = alloc_page()
            write_u64(mem, cur, new)
            chunks.append(new)
            cur, n = new, 0
    return KhoVmalloc(first, len(block_physs) << order, flags, order), chunks


def decode_vmalloc(mem: PhysMemory, desc: KhoVmalloc, where: Where = None,
                   cap_chunks: int = 1 << 16) -> tuple[list[int], list[int]]:
    """(block phys list, chunk pages) following ``kho_restore_vmalloc``.

    Raises when the kernel would fail the restore: a block past
    ``total_pages``, a count that does not add up, an order above 10.
    """
    if desc.order > 10:
        raise KhoDecodeError("struct kho_vmalloc", where, f"order {desc.order} > MAX_PAGE_ORDER", code="vmalloc-order")
    blocks: list[int] = []
    chunks: list[int] = []
    seen: set[int] = set()
    at = desc.first
    idx = 0
    step = 1 << desc.order
    while at:
        if at in seen or len(seen) >= cap_chunks:
            raise KhoDecodeError("kho_vmalloc_chunk", at, "chunk list has a cycle or is too long",
                                 code="vmalloc-cycle")
        seen.add(at)
        page = mem.read(at, PAGE_SIZE, "kho_vmalloc_chunk")
        chunks.append(at)
        nxt: int = struct.unpack_from("<Q", page)[0]
        for i in range(KHO_VMALLOC_SIZE):
            p: int = struct.unpack_from("<Q", page, 8 + 8 * i)[0]
            if not p:
                break
            if idx + step > desc.total_pages:
                raise KhoDecodeError("kho_vmalloc_chunk", at,
                                     f"entry {i}: block beyond total_pages {desc.total_pages}",
                                     code="vmalloc-count")
            blocks.append(p)
            idx += step
        at = nxt
    if idx != desc.total_pages:
        raise KhoDecodeError("struct kho_vmalloc", where,
                             f"chunks hold {idx} pages, total_pages says {desc.total_pages}", code="vmalloc-count")
    return blocks, chunks


# --------------------------------------------------------------------------
# kexec-metadata (kho-v3+)

KHO_KEXEC_METADATA_VERSION = 1
KHO_METADATA_NODE_NAME = "kexec-metadata"
NEW_UTS_LEN = 64
KEXEC_METADATA = struct.Struct("<I65sI")   # 73 bytes, packed


@dataclass(frozen=True)
class KexecMetadata:
    version: int
    previous_release: str
    kexec_count: int

    def pack(self) -> bytes:
        rel = self.previous_release.encode()[:NEW_UTS_LEN]
        return KEXEC_METADATA.pack(self.version, rel, self.kexec_count)


def decode_kexec_metadata(data: bytes, where: Where = None) -> KexecMetadata:
    """Decode as ``kho_in_kexec_metadata`` would accept it; raise with the
    kernel's own wording when it would not."""
    if len(data) < 4:
        raise KhoDecodeError("kexec-metadata", where, f"kexec-metadata blob too small ({len(data)} bytes)",
                             code="metadata-size")
    version: int = struct.unpack_from("<I", data)[0]
    if version != KHO_KEXEC_METADATA_VERSION:
        raise KhoDecodeError("kexec-metadata", where,
                             f"kexec-metadata version {version} not supported (expected {KHO_KEXEC_METADATA_VERSION})",
                             code="metadata-version")
    if len(data) < KEXEC_METADATA.size:
        raise KhoDecodeError("kexec-metadata", where,
                             f"kexec-metadata blob too small for v{version} ({len(data)} < {KEXEC_METADATA.size})",
                             code="metadata-size")
    _, raw, count = KEXEC_METADATA.unpack_from(data)
    # strscpy into a 65-byte buffer: stops at the first NUL, at most 64 chars
    rel: bytes = raw.split(b"\0", 1)[0][:NEW_UTS_LEN]
    return KexecMetadata(version, rel.decode("utf-8", "replace"), count)


# --------------------------------------------------------------------------
# KHO serialization blocks (kho-v4)

KHO_BLOCK_HDR = struct.Struct("<QQ")
KHO_MAX_BLOCKS = 10000


def block_count_per_block(entry_size: int) -> int:
    return (PAGE_SIZE - KHO_BLOCK_HDR.size) // entry_size


def encode_blocks(mem: WritableMemory, alloc_page: Callable[[], int], entries: list[bytes],
                  entry_size: int) -> tuple[int, list[int]]:
    """Write ``entries`` into a block chain; (head phys or 0, block pages).
    ``alloc_page`` returns a zeroed page or raises."""
    per = block_count_per_block(entry_size)
    pages: list[int] = []
    prev = 0
    head = 0
    for i in range(0, len(entries), per):
        part = entries[i:i + per]
        p = alloc_page()
        mem.write(p, KHO_BLOCK_HDR.pack(0, len(part)) + b"".join(e.ljust(entry_size, b"\0")[:entry_size]
                                                                  for e in part))
        if prev:
            write_u64(mem, prev, p)
        else:
            head = p
        prev = p
        pages.append(p)
    return head, pages


def decode_blocks(mem: PhysMemory, head: int, entry_size: int,
                  where: str = "KHO block set") -> tuple[list[bytes], list[int]]:
    """Entries and block pages of a chain, with ``kho_block_set_restore``'s
    checks: Floyd's cycle check capped at 10000 iterations ("Block set is
    corrupted"), then every block's count in 1..count_per_block ("Block
    contains invalid entry count")."""
    if not head:
        return [], []
    per = block_count_per_block(entry_size)

    def nxt(p: int) -> int:
        return read_u64(mem, p, where)
    fast = slow = head
    n = 0
    while fast:
        if n >= KHO_MAX_BLOCKS:
            raise KhoDecodeError(where, head, "Block set is corrupted (more than 10000 steps)", code="block-cycle")
        n += 1
        f1 = nxt(fast)
        if not f1:
            break
        f2 = nxt(f1)
        if not f2:
            break
        fast = f2
        slow = nxt(slow)
        if slow == fast:
            raise KhoDecodeError(where, head, "Block set is corrupted (cycle)", code="block-cycle")
    entries: list[bytes] = []
    pages: list[int] = []
    at = head
    while at:
        hdr = mem.read(at, PAGE_SIZE, where)
        nx, count = KHO_BLOCK_HDR.unpack_from(hdr)
        if not count or count > per:
            raise KhoDecodeError(where, at, f"Block contains invalid entry count: {count}", code="block-count")
        pages.append(at)
        for i in range(count):
            o = 16 + i * entry_size
            entries.append(bytes(hdr[o:o + entry_size]))
        at = nx
    return entries, pages


def cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")
