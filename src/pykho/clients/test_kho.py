"""test_kho (lib/test_kho.c, 6.16+): the KHO selftest client.

On a cold boot it allocates random-order folios up to a memory budget, fills
them, keeps their checksum and preserves them with a small FDT
(``kho-test-v1``: magic, ``/data`` with nr_folios, folios_info, csum); the
next kernel restores every folio and compares the checksum.  6.16/6.17 keep
the folio array in the FDT; 6.18+ in a vmalloc area (``struct kho_vmalloc``).
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass, field
from typing import Any

from ..abi import fdt as _fdt
from ..abi import structs
from ..abi.structs import KHO_VMALLOC, KhoVmalloc, decode_vmalloc
from ..errors import KhoDecodeError
from ..profiles import ENOENT, MAX_PAGE_ORDER, PAGE_SHIFT, PAGE_SIZE, FdtBuiltAt, Profile
from .base import Client
from .common import read_blocks

__all__ = ["KHO_TEST_FDT", "KHO_TEST_COMPAT", "KHO_TEST_MAGIC", "KhoTest", "encode_kho_test", "decode_kho_test",
           "csum_partial", "csum_partial_arm64", "CSUM_PARTIAL", "TestKhoClient"]

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


def decode_kho_test(blob: bytes, where: Any = None, mem: Any = None, inline: bool | None = None) -> KhoTest:
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


def csum_partial_arm64(data: bytes, csum: int = 0) -> int:
    """arm64's ``csum_partial`` (lib/checksum.c over arch/arm64/lib/csum.c
    ``do_csum``): the buffer's 16-bit one's-complement sum, folded to 16 bits,
    added to the running 32-bit sum with its carry.  test_kho's folios are
    page-aligned, so ``do_csum``'s odd-address byte swap never applies."""
    n = len(data) // 2
    total = sum(struct.unpack_from(f"<{n}H", data)) if n else 0
    if len(data) % 2:
        total += data[-1]
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    out = (csum + total) & 0xFFFFFFFF
    return out + 1 if out < csum else out


#: the kernel's ``csum_partial`` per architecture (the checksum test_kho keeps)
CSUM_PARTIAL = {"x86": csum_partial, "arm64": csum_partial_arm64}


class TestKhoClient(Client):
    node = KHO_TEST_FDT
    kind = "test_kho"
    fuzz_family = "kho_test"
    model_name = "test_kho"

    @classmethod
    def decode(cls, blob: bytes, mem: Any, where: Any, profile: Profile | None = None) -> dict[str, Any]:
        t = decode_kho_test(blob, where, mem)
        out: dict[str, Any] = {"kind": cls.kind, "nr_folios": t.nr_folios, "csum": t.csum}
        if t.folios_info:
            out["folios_info"] = t.folios_info.__dict__
        if t.folios:
            out["folios"] = [[p, o] for p, o in t.folios]
        return out

    @classmethod
    def describe(cls, dec: dict[str, Any]) -> list[str]:
        return [f"test_kho: {dec['nr_folios']} folios, csum 0x{dec['csum']:x}"]

    @classmethod
    def predictable(cls, dec: dict[str, Any], mem: Any) -> str | None:
        folios = dec.get("folios") or []
        if folios and all(mem.contains(p, PAGE_SIZE << o) for p, o in folios):
            return None
        return "test_kho's folio data is not in the memory given"

    def __init__(self, kernel: Any):
        super().__init__(kernel)
        self.folios: list[tuple[int, int]] = []
        self.csum = 0
        self.pending = False

    # ------------------------------------------------------------ kernel code
    def initcall(self) -> None:
        k = self.k
        if not k.kho_enable:
            return
        err, phys, size = k.retrieve_subtree(self.node)
        if err == 0:
            ok, why = self.restore(phys)
            k.printk("test_kho: KHO restore succeeded" if ok else "test_kho: KHO restore failed")
            self.restored = ok
            self.status = "restore succeeded" if ok else "restore failed"
            self.detail = why
            return
        if err != -ENOENT:
            k.printk(f"test_kho: failed to retrieve kho_test FDT: {err}")
            self.status, self.detail = "restore failed", f"kho_retrieve_subtree returned {err}"
            return
        self.save()

    def save(self) -> None:
        """Cold boot: random folios up to the memory budget, their checksum."""
        k = self.k
        total, csum = 0, 0
        while True:
            order = k.rng.randrange(MAX_PAGE_ORDER + 1)
            size = PAGE_SIZE << order
            if total + size > k.test_kho_max_mem:
                break
            phys = k.alloc_pages(order)
            if not phys:
                break
            data = k.rng.randbytes(min(size, 256)) * (size // min(size, 256))
            k.mem.write(phys, data)
            csum = CSUM_PARTIAL[k.arch](data, csum)
            self.folios.append((phys, order))
            total += size
        self.csum = csum
        self.pending = True
        if k.p.fdt_built_at is FdtBuiltAt.BOOT:
            self.publish()

    def finalize(self) -> None:
        if self.pending:
            self.publish()

    def publish(self) -> None:
        k = self.k
        self.pending = False
        folios = self.folios
        for phys, order in folios:
            k.preserve_folio(phys, order, "test_kho folio")
        nr = len(folios)
        fdt_order = max(0, (nr * 8 + PAGE_SIZE - 1).bit_length() - PAGE_SHIFT)
        fdt_phys = k.alloc_pages(fdt_order)
        if not fdt_phys:
            return
        k.preserve_folio(fdt_phys, fdt_order, "test_kho FDT")
        if k.p.test_kho_vmalloc:
            info = b"".join((p | o).to_bytes(8, "little") for p, o in folios)
            pages = []
            for i in range(0, max(len(info), 1), PAGE_SIZE):
                pg = k.alloc_pages(0)
                if not pg:
                    return
                k.mem.write(pg, info[i:i + PAGE_SIZE])
                pages.append(pg)
            desc = k.preserve_vmalloc(pages, "test_kho folios_info")
            if desc is None:
                return
            blob, err = encode_kho_test(nr, self.csum, desc, size=nr * 8 + PAGE_SIZE)
        else:
            blob, err = encode_kho_test(nr, self.csum, None, [p | o for p, o in folios], size=nr * 8 + PAGE_SIZE)
        k.mem.write(fdt_phys, blob)
        k.add_subtree(self.node, fdt_phys, len(blob))

    def restore(self, phys: int) -> tuple[bool, str]:
        """``kho_test_restore``: (succeeded, why not)."""
        k = self.k
        # the FDT folio is only read through phys_to_virt, never restored
        # (7.2.13 prints "KHO restore succeeded" with it missing from the map)
        try:
            head = k.read_preserved(phys, 40, "test_kho FDT")
            blob = k.read_preserved(phys, max(40, _fdt.totalsize(head)), "test_kho FDT")
            t = decode_kho_test(blob, phys, inline=not k.p.test_kho_vmalloc)
            if t.folios_info is not None:
                # kho_restore_vmalloc computes 1 << order in 32 bits and never
                # checks the order: the CPU masks the shift count to 5 bits
                # (7.2.13 restores a kho_test whose order reads 0xc100 as 0)
                fi = dataclasses.replace(t.folios_info, order=t.folios_info.order & 31)
                blocks, chunk_pages = structs.decode_vmalloc(k.mem, fi, phys)
                for p in blocks + chunk_pages:
                    if k.restore_folio(p) is None:
                        return False, (f"page 0x{p:x} of its folios_info vmalloc area is not a preserved page: "
                                       "kho_restore_vmalloc fails")
                raw = b"".join(k.mem.read(p, PAGE_SIZE) for p in blocks)
                vals = [int.from_bytes(raw[8 * i:8 * i + 8], "little") for i in range(t.nr_folios)]
            else:
                vals = t.folios_inline or []
            csum = 0
            for v in vals:
                p, o = v & ~0xFFF, v & 0xFFF
                got = k.restore_folio(p)
                if got != o:
                    return False, (f"folio 0x{p:x} order {o} is not a preserved page" if got is None else
                                   f"folio 0x{p:x} was preserved with order {got}, not {o}")
                csum = CSUM_PARTIAL[k.arch](k.mem.read(p, PAGE_SIZE << o), csum)
            if csum != t.csum:
                return False, f"checksum 0x{csum:x}, expected 0x{t.csum:x}: folio contents changed"
            return True, ""
        except KhoDecodeError as e:
            return False, str(e)
