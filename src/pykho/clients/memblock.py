"""memblock ``reserve_mem`` (6.16+): named boot-time regions kept across kexec.

``reserve_mem=SIZE:ALIGN:NAME`` reserves a region at boot; with KHO the
region's pages and a small FDT (``memblock-v1`` with one ``reserve-mem-v1``
child per region) are preserved, and the next kernel, given the same
``reserve_mem=`` option, revives the region from KHO instead of allocating a
new one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..abi import fdt as _fdt
from ..abi.cmdline import memparse
from ..errors import KhoDecodeError
from ..profiles import PAGE_SHIFT, PAGE_SIZE, FdtBuiltAt, Profile
from .base import Client

__all__ = ["MEMBLOCK_KHO_FDT", "MEMBLOCK_COMPATIBLE", "RESERVE_MEM_COMPATIBLE", "ReserveMem", "encode_memblock",
           "decode_memblock", "MemblockClient"]

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


def decode_memblock(blob: bytes, where: Any = None) -> list[ReserveMem]:
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


def parse_reserve_mem(spec: str) -> tuple[int, int, str] | None:
    """``reserve_mem=SIZE:ALIGN:NAME`` as (size, align, name), None when malformed."""
    try:
        size_s, align_s, name = spec.split(":", 2)
    except ValueError:
        return None
    size, _ = memparse(size_s)
    align, _ = memparse(align_s)
    return size, align, name


class MemblockClient(Client):
    node = MEMBLOCK_KHO_FDT
    kind = "memblock"
    fuzz_family = "memblock"
    model_name = "memblock"

    @classmethod
    def decode(cls, blob: bytes, mem: Any, where: Any, profile: Profile | None = None) -> dict[str, Any]:
        return {"kind": cls.kind, "reserve_mem": [r.__dict__ for r in decode_memblock(blob, where)]}

    @classmethod
    def describe(cls, dec: dict[str, Any]) -> list[str]:
        return [f"reserve_mem {r['name']}: 0x{r['start']:x}+0x{r['size']:x}" for r in dec["reserve_mem"]]

    def __init__(self, kernel: Any):
        super().__init__(kernel)
        self.regions: list[ReserveMem] = []

    def early_param(self) -> None:
        for spec in self.k.params_all("reserve_mem"):
            self._reserve_mem(spec)

    def _reserve_mem(self, spec: str) -> None:
        k = self.k
        got = parse_reserve_mem(spec)
        if got is None:
            return
        size, align, name = got
        # reserve_mem_kho_revive: only while the incoming handover is kept
        if k.kho_in_fdt is not None:
            err, phys, bsize = k.retrieve_subtree(self.node)
            if not err:
                try:
                    regions = decode_memblock(k.read_preserved(phys, bsize or PAGE_SIZE, "memblock FDT"))
                except KhoDecodeError:
                    regions = []
                for r in regions:
                    if r.name == name:
                        if r.start % max(align, 1):
                            k.printk(f"KHO reserve-mem '{name}' has wrong alignment (0x{r.start:x}, 0x{align:x})")
                            break
                        if r.size != size:
                            k.printk(f"KHO reserve-mem '{name}' has wrong size (0x{r.size:x} != 0x{size:x})")
                            break
                        k.memblock.reserve(r.start, r.size)
                        self.regions.append(r)
                        k.printk(f"Revived memory reservation '{name}' from KHO")
                        self.status, self.restored = "revived", True
                        return
        addr = k.memblock.alloc(size, max(align, PAGE_SIZE))
        if addr:
            self.regions.append(ReserveMem(name, addr, size))

    def late_initcall(self) -> None:
        if self.k.kho_enable and self.regions and self.k.p.fdt_built_at is FdtBuiltAt.BOOT:
            self.publish()

    def finalize(self) -> None:
        self.publish()

    def publish(self) -> None:
        k = self.k
        if not self.regions or self.node in k.subtrees:
            return
        fdt_phys = k.alloc_pages(0)
        k.preserve_folio(fdt_phys, 0, "memblock FDT")
        for r in self.regions:
            k.preserve_pages(r.start, r.size >> PAGE_SHIFT, f"reserve_mem {r.name}")
        blob, err = encode_memblock(self.regions)
        if err:
            k.printk(f"failed to prepare memblock FDT for KHO: {err}")
            return
        k.mem.write(fdt_phys, blob)
        k.add_subtree(self.node, fdt_phys, len(blob))
