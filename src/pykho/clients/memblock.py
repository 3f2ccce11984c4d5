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
from ..profiles import ENOENT, ENOMEM, PAGE_SHIFT, PAGE_SIZE, FdtBuiltAt, Profile
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
    nodes: list[Any] = [(r.name, [("compatible", RESERVE_MEM_COMPATIBLE), ("start", _fdt.p64(r.start)),
                                  ("size", _fdt.p64(r.size))]) for r in regions]
    return _fdt.build([("compatible", MEMBLOCK_COMPATIBLE)], nodes)


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


#: x86-64 and arm64 L1 cache line: reserve_mem raises a smaller alignment to it
SMP_CACHE_BYTES = 64
RESERVE_MEM_NAME_SIZE = 16
RESERVE_MEM_MAX_ENTRIES = 8


def parse_reserve_mem(spec: str) -> tuple[int, int, str] | None:
    """``reserve_mem=SIZE:ALIGN:NAME`` as (size, align, name), None when the
    sizes do not parse (memparse must consume up to each colon)."""
    size, rest = memparse(spec)
    if rest == spec or not rest.startswith(":"):
        return None
    align, rest2 = memparse(rest[1:])
    if not rest2.startswith(":"):
        return None
    return size, align, rest2[1:]


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
        self._fdt: bytes | None = None

    def early_param(self) -> None:
        for spec in self.k.params_all("reserve_mem"):
            self.reserve_mem(spec)

    def _retrieve_fdt(self) -> bytes | None:
        """``reserve_mem_kho_retrieve_fdt``: the memblock FDT, kept once found
        (a failure is retried, and warned about, for every ``reserve_mem=``)."""
        if self._fdt is not None:
            return self._fdt
        k = self.k
        err, phys, bsize = k.retrieve_subtree(self.node)
        if err:
            if err != -ENOENT:
                k.printk(f"failed to retrieve FDT '{self.node}' from KHO: {err}")
            return None
        try:
            head = k.read_preserved(phys, 40, "memblock FDT")
            blob = k.read_preserved(phys, max(40, min(_fdt.totalsize(head), 1 << 20)), "memblock FDT")
        except KhoDecodeError:
            return None
        rc = _fdt.node_check_compatible(blob, 0, MEMBLOCK_COMPATIBLE)
        if rc:
            k.printk(f"FDT '{self.node}' is incompatible with '{MEMBLOCK_COMPATIBLE}': {rc}")
            return None
        self._fdt = blob
        return blob

    def _revive(self, name: str, size: int, align: int) -> bool:
        """``reserve_mem_kho_revive``: the region is only recorded; what keeps
        its pages is the preserved map alone (no memblock_reserve)."""
        k = self.k
        fdt = self._retrieve_fdt()
        if fdt is None:
            return False
        off = _fdt.subnode_offset(fdt, 0, name)
        if off < 0:
            k.printk(f"FDT '{self.node}' has no child '{name}': {off}")
            return False
        rc = _fdt.node_check_compatible(fdt, off, RESERVE_MEM_COMPATIBLE)
        if rc:
            k.printk(f"Node '{name}' is incompatible with '{RESERVE_MEM_COMPATIBLE}': {rc}")
            return False
        v_start, l_start = _fdt.getprop(fdt, off, "start")
        v_size, l_size = _fdt.getprop(fdt, off, "size")
        if v_start is None or l_start != 8 or v_size is None or l_size != 8:
            return False
        start, rsize = _fdt.u64(v_start), _fdt.u64(v_size)
        if start & (align - 1):
            k.printk(f"KHO reserve-mem '{name}' has wrong alignment (0x{align:x}, 0x{start:x})")
            return False
        if rsize != size:
            k.printk(f"KHO reserve-mem '{name}' has wrong size (0x{rsize:x} != 0x{size:x})")
            return False
        self.regions.append(ReserveMem(name, start, size))
        k.printk(f"Revived memory reservation '{name}' from KHO")
        self.status, self.restored = "revived", True
        return True

    def reserve_mem(self, spec: str) -> None:
        """The ``reserve_mem=`` early parameter."""
        k = self.k
        got = parse_reserve_mem(spec)
        if got is None or not got[0] or not got[2].strip() or len(got[2]) >= RESERVE_MEM_NAME_SIZE:
            k.printk("reserve_mem: empty or malformed parameter")
            return
        size, align, name = got
        if len(self.regions) >= RESERVE_MEM_MAX_ENTRIES:
            k.printk("reserve_mem: no more room for reserved memory")
            return
        if any(r.name == name for r in self.regions):
            k.printk(f'reserve_mem: name "{name}" was already used')
            return
        align = max(align, SMP_CACHE_BYTES)
        if k.kho_in_fdt is not None and self._revive(name, size, align):
            return
        addr = k.memblock.alloc(size, max(align, PAGE_SIZE))
        if not addr:
            k.printk("reserve_mem: memblock allocation failed")
            return
        self.regions.append(ReserveMem(name, addr, size))

    def initcall(self) -> None:
        """A revived region is used by its owner (pstore, tracing) once the
        system runs: only the preserved map kept its pages."""
        if self.status == "revived":
            for r in self.regions:
                if not self.k.check_preserved(r.start, r.size, f"reserve_mem region '{r.name}'"):
                    self.status, self.restored = "revived, but its memory was not preserved", False
                    self.detail = (f"region '{r.name}' 0x{r.start:x}+0x{r.size:x} is not covered by the map: "
                                   "memblock_free_all gave its pages to the page allocator")

    def late_initcall(self) -> None:
        if self.k.kho_enable and self.regions and self.k.p.fdt_built_at is FdtBuiltAt.BOOT:
            self.publish()

    def finalize(self) -> None:
        self.publish()

    def publish(self) -> None:
        """``prepare_kho_fdt``: the FDT page preserved, the FDT built and
        added, then every region preserved; any failure undoes it all and
        prints one line (so no region is handed over).  A region allocated
        on a KHO boot (a reserve_mem= name the old kernel did not have) lies
        in scratch: with KEXEC_HANDOVER_DEBUG its preservation fails
        (-EINVAL, seen on 7.2.13), without it the next kernel gets a region
        inside its own scratch."""
        k = self.k
        if not self.regions or self.node in k.subtrees:
            return

        def fail(err: int) -> None:
            k.printk(f"failed to prepare memblock FDT for KHO: {err}")
        fdt_phys = k.alloc_pages(0)
        if not fdt_phys:
            return fail(-ENOMEM)
        err = k.preserve_pages(fdt_phys, 1, "memblock FDT")
        if err:
            return fail(err)
        blob, err = encode_memblock(self.regions)
        if not err:
            k.mem.write(fdt_phys, blob)
            err = k.add_subtree(self.node, fdt_phys, len(blob))
        if err:
            k.unpreserve_pages(fdt_phys, 1)
            return fail(err)
        done: list[ReserveMem] = []
        for r in self.regions:
            err = k.preserve_pages(r.start, r.size >> PAGE_SHIFT, f"reserve_mem {r.name}")
            if err:
                for d in done:
                    k.unpreserve_pages(d.start, d.size >> PAGE_SHIFT)
                k.remove_subtree(fdt_phys)
                k.unpreserve_pages(fdt_phys, 1)
                return fail(err)
            done.append(r)
