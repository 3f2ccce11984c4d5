"""Sub-blobs of known KHO clients: memblock ``reserve_mem``, ``test_kho``, LUO, memfd.

Each has an encoder producing the bytes the kernel writes (same libfdt call
sequence for FDT blobs) and a decoder returning plain data.  Decoders raise
:class:`KhoDecodeError` naming the blob and the offset or address.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..errors import KhoDecodeError, MemoryFault
from . import fdt as _fdt
from .structs import (KhoVmalloc, cstr, decode_blocks, decode_vmalloc, KHO_VMALLOC)

PAGE_SIZE = 4096

def read_blocks(mem, blocks: list[int], block_size: int, need: int, structure: str) -> bytes:
    """The first ``need`` bytes of a vmalloc area made of ``blocks``: reads
    stop there, so a descriptor cannot make us read more than the array it
    claims to hold."""
    out, have = [], 0
    for p in blocks:
        if have >= need:
            break
        n = min(block_size, need - have)
        out.append(mem.read(p, n, structure))
        have += n
    return b"".join(out)


# --------------------------------------------------------------------------
# memblock reserve_mem ("memblock" sub-node)

MEMBLOCK_KHO_FDT = "memblock"
MEMBLOCK_COMPATIBLE = "memblock-v1"
RESERVE_MEM_COMPATIBLE = "reserve-mem-v1"


@dataclass(frozen=True)
class ReserveMem:
    name: str
    start: int
    size: int


def encode_memblock(regions: list[ReserveMem]) -> tuple[bytes, int]:
    """``prepare_kho_fdt``'s FDT: (blob, libfdt status)."""
    return _fdt.build(
        [("compatible", MEMBLOCK_COMPATIBLE)],
        [(r.name, [("compatible", RESERVE_MEM_COMPATIBLE), ("start", _fdt.p64(r.start)),
                   ("size", _fdt.p64(r.size))]) for r in regions])


def decode_memblock(blob: bytes, where=None) -> list[ReserveMem]:
    root = _fdt.parse(blob, "memblock sub-FDT", where)
    if _fdt.node_check_compatible(blob, 0, MEMBLOCK_COMPATIBLE) != 0:
        raise KhoDecodeError("memblock sub-FDT", where, f"compatible is not {MEMBLOCK_COMPATIBLE!r}",
                             code="memblock-compatible")
    out = []
    for c in root.children:
        start, size = c.prop_u64("start"), c.prop_u64("size")
        if c.prop_str("compatible") != RESERVE_MEM_COMPATIBLE or start is None or size is None:
            raise KhoDecodeError("memblock sub-FDT", where,
                                 f"node {c.name!r}: expected reserve-mem-v1 with 8-byte start and size",
                                 code="memblock-node")
        out.append(ReserveMem(c.name, start, size))
    return out


# --------------------------------------------------------------------------
# lib/test_kho.c ("kho_test" sub-node)

KHO_TEST_FDT = "kho_test"
KHO_TEST_COMPAT = "kho-test-v1"
KHO_TEST_MAGIC = 0x4B484F21


@dataclass
class KhoTest:
    nr_folios: int
    csum: int
    folios_info: KhoVmalloc | None        # 6.18+: vmalloc'd array
    folios_inline: list[int] | None       # 6.16/6.17: array in the FDT
    folios: list[tuple[int, int]] = field(default_factory=list)   # (phys, order) once read


def encode_kho_test(nr_folios: int, csum: int, folios_info: KhoVmalloc | None = None,
                    inline: list[int] | None = None, size: int = PAGE_SIZE) -> tuple[bytes, int]:
    """``kho_test_prepare_fdt``: compatible as raw bytes with its NUL, magic,
    then ``/data`` with nr_folios, folios_info, csum (all native)."""
    info = folios_info.pack() if folios_info is not None else b"".join(struct.pack("<Q", v) for v in inline or [])
    return _fdt.build(
        [("compatible", KHO_TEST_COMPAT.encode() + b"\0"), ("magic", _fdt.p32(KHO_TEST_MAGIC))],
        [("data", [("nr_folios", _fdt.p32(nr_folios)), ("folios_info", info), ("csum", _fdt.p32(csum))])],
        size=size)


def decode_kho_test(blob: bytes, where=None, mem=None, inline: bool | None = None) -> KhoTest:
    """``inline``: True for 6.16/6.17 (u64 array in the FDT), False for 6.18+
    (``struct kho_vmalloc``); None guesses from the length (16 bytes is
    ambiguous with two inline folios and is read as 6.18+)."""
    root = _fdt.parse(blob, "kho_test sub-FDT", where)
    if _fdt.node_check_compatible(blob, 0, KHO_TEST_COMPAT) != 0:
        raise KhoDecodeError("kho_test sub-FDT", where, f"compatible is not {KHO_TEST_COMPAT!r}")
    magic = root.props.get("magic")
    if magic is None or len(magic) != 4 or _fdt.u32(magic) != KHO_TEST_MAGIC:
        raise KhoDecodeError("kho_test sub-FDT", where, "magic is not 0x4b484f21 ('KHO!')")
    data = root.child("data")
    if data is None:
        raise KhoDecodeError("kho_test sub-FDT", where, "no /data node")
    nr, csum, info = data.props.get("nr_folios"), data.props.get("csum"), data.props.get("folios_info")
    if nr is None or len(nr) != 4 or csum is None or len(csum) != 4 or info is None:
        raise KhoDecodeError("kho_test sub-FDT", where, "/data needs 4-byte nr_folios and csum and folios_info")
    t = KhoTest(_fdt.u32(nr), _fdt.u32(csum), None, None)
    if len(info) == KHO_VMALLOC.size and inline is not True:
        t.folios_info = KhoVmalloc.unpack(info, where)
        if mem is not None:
            blocks, _ = decode_vmalloc(mem, t.folios_info, where)
            raw = read_blocks(mem, blocks, PAGE_SIZE << t.folios_info.order, 8 * t.nr_folios,
                              "test_kho folios_info")
            vals = struct.unpack_from(f"<{t.nr_folios}Q", raw) if len(raw) >= 8 * t.nr_folios else ()
            t.folios = [(v & ~0xFFF, v & 0xFFF) for v in vals]
    elif len(info) == 8 * t.nr_folios:
        t.folios_inline = list(struct.unpack(f"<{t.nr_folios}Q", info))
        t.folios = [(v & ~0xFFF, v & 0xFFF) for v in t.folios_inline]
    else:
        raise KhoDecodeError("kho_test sub-FDT", where, f"folios_info has {len(info)} bytes")
    return t


def csum_partial(data: bytes, csum: int = 0) -> int:
    """The 32-bit one's-complement running sum test_kho keeps (``csum_partial``
    on x86-64 folds into 32 bits)."""
    total = csum
    n = len(data) // 4
    if n:
        total += sum(struct.unpack_from(f"<{n}I", data))
    rest = data[4 * n:]
    if rest:
        total += int.from_bytes(rest.ljust(4, b"\0"), "little")
    while total >> 32:
        total = (total & 0xFFFFFFFF) + (total >> 32)
    return total


# --------------------------------------------------------------------------
# LUO (luo-v5, kho-v4)

LUO_KHO_ENTRY_NAME = "LUO"
LUO_ABI_COMPATIBLE = "luo-v5"
LUO_SER = struct.Struct("<8sQQQ")                 # 32 bytes
LUO_SESSION_SER = struct.Struct("<64sQQ")         # 80 bytes
LUO_FILE_SER = struct.Struct("<48sQQ")            # 64 bytes
LUO_FLB_HEADER = struct.Struct("<QQ")
LUO_FLB_SER = struct.Struct("<48sQQ")             # 64 bytes


@dataclass
class LuoFile:
    compatible: str
    data: int
    token: int
    memfd: dict | None = None


@dataclass
class LuoSession:
    name: str
    files_pa: int
    count: int
    files: list[LuoFile] = field(default_factory=list)


@dataclass
class Luo:
    compatible: str
    liveupdate_num: int
    sessions_pa: int
    flbs_pa: int
    sessions: list[LuoSession] = field(default_factory=list)
    flbs: list[dict] = field(default_factory=list)


def encode_luo_ser(liveupdate_num: int, sessions_pa: int, flbs_pa: int) -> bytes:
    return LUO_SER.pack(LUO_ABI_COMPATIBLE.encode(), liveupdate_num, sessions_pa, flbs_pa)


def decode_luo(data: bytes, where=None, mem=None) -> Luo:
    if len(data) < LUO_SER.size:
        raise KhoDecodeError("luo_ser", where, f"{len(data)} bytes, expected {LUO_SER.size}")
    comp, num, spa, fpa = LUO_SER.unpack_from(data)
    luo = Luo(cstr(comp), num, spa, fpa)
    if luo.compatible != LUO_ABI_COMPATIBLE:
        raise KhoDecodeError("luo_ser", where, f"compatible {luo.compatible!r}, expected {LUO_ABI_COMPATIBLE!r}",
                             code="luo-compatible")
    if mem is None:
        return luo
    entries, _ = decode_blocks(mem, spa, LUO_SESSION_SER.size, "luo session block")
    chains: set[int] = set()
    for e in entries:
        name, files_pa, count = LUO_SESSION_SER.unpack(e)
        s = LuoSession(cstr(name), files_pa, count)
        if files_pa and files_pa in chains:
            raise KhoDecodeError("luo_session_ser", files_pa,
                                 f"session {s.name!r} shares its file block chain with an earlier session",
                                 code="luo-shared-chain")
        chains.add(files_pa)
        fentries, _ = decode_blocks(mem, files_pa, LUO_FILE_SER.size, f"luo file block of session {s.name!r}")
        if len(fentries) != count:
            raise KhoDecodeError("luo_session_ser", files_pa,
                                 f"session {s.name!r}: {len(fentries)} file records, count says {count}",
                                 code="luo-count")
        for fe in fentries:
            comp, fdata, token = LUO_FILE_SER.unpack(fe)
            f = LuoFile(cstr(comp), fdata, token)
            if f.compatible.startswith("memfd-") and fdata:
                try:
                    f.memfd = decode_memfd(mem, fdata, f.compatible)
                except KhoDecodeError as err:
                    f.memfd = {"error": str(err)}
            s.files.append(f)
        luo.sessions.append(s)
    if fpa:
        hdr = mem.read(fpa, 16, "luo_flb_header_ser")
        pgcnt, count = LUO_FLB_HEADER.unpack(hdr)
        cap = (pgcnt * PAGE_SIZE - 16) // LUO_FLB_SER.size if pgcnt < 1024 else 0
        if count > cap:
            raise KhoDecodeError("luo_flb_header_ser", fpa, f"count {count} exceeds {cap} entries of {pgcnt} pages",
                                 code="luo-count")
        raw = mem.read(fpa + 16, count * LUO_FLB_SER.size, "luo_flb_ser")
        for i in range(count):
            n, d, c = LUO_FLB_SER.unpack_from(raw, i * LUO_FLB_SER.size)
            luo.flbs.append({"name": cstr(n), "data": d, "count": c})
    return luo


# --------------------------------------------------------------------------
# memfd (memfd-v2)

MEMFD_LUO_SER = struct.Struct("<QQIIQ16s")        # 48 bytes
MEMFD_FOLIO_SER = struct.Struct("<QQ")            # 16 bytes
MEMFD_LUO_FOLIO_DIRTY = 1
MEMFD_LUO_FOLIO_UPTODATE = 2


def decode_memfd(mem, phys: int, compatible: str = "memfd-v2", cap: int = 1 << 20) -> dict:
    raw = mem.read(phys, MEMFD_LUO_SER.size, "memfd_luo_ser")
    pos, size, seals, flags, nr, folios = MEMFD_LUO_SER.unpack(raw)
    vm = KhoVmalloc.unpack(folios, phys + 32)
    out = {"pos": pos, "size": size, "seals": seals, "flags": flags, "nr_folios": nr, "folios": []}
    if nr:
        if nr > cap:
            raise KhoDecodeError("memfd_luo_ser", phys, f"nr_folios {nr} over {cap}", code="memfd-count")
        blocks, _ = decode_vmalloc(mem, vm, phys + 32)
        need = nr * MEMFD_FOLIO_SER.size
        arr = read_blocks(mem, blocks, PAGE_SIZE << vm.order, need, "memfd folio array")
        if len(arr) < need:
            raise KhoDecodeError("memfd folio array", vm.first, f"{len(arr)} bytes for {nr} folios",
                                 code="memfd-count")
        for i in range(nr):
            w, index = MEMFD_FOLIO_SER.unpack_from(arr, 16 * i)
            out["folios"].append({"pfn": w & ((1 << 52) - 1), "flags": w >> 52, "index": index})
    return out
