"""kexec in a modelled kernel: ``kexec_file_load`` (segment placement and the
handover record) and the jump, and how the next kernel's arch code finds the
handover (x86 ``setup_data``, arm64 ``/chosen``).

:class:`Kexec` is a mixin of :class:`~pykho.model.kernel.Kernel`.
"""

from __future__ import annotations

from typing import Any

from ..abi import fdt as _fdt
from ..abi import structs
from ..errors import KhoDecodeError
from ..profiles import PAGE_SIZE, FillKimageGate
from .machine import IntervalSet, _subtract
from .state import KernelState

__all__ = ["Kexec", "Segment", "EADDRNOTAVAIL"]

MiB = 1 << 20
EADDRNOTAVAIL = 99
#: the x86 purgatory segment (text, data, stack), about this size
PURGATORY_SIZE = 0x6000


class Segment:
    """One kexec segment: what, where, how big."""

    def __init__(self, name: str, addr: int, size: int):
        self.name, self.addr, self.size = name, addr, size

    def __repr__(self) -> str:
        return f"Segment({self.name!r}, 0x{self.addr:x}, 0x{self.size:x})"


def _free_in(lo: int, hi: int, used: IntervalSet) -> list[tuple[int, int]]:
    """The parts of [lo, hi) not in ``used``."""
    return _subtract([(lo, hi)], used)


class Kexec(KernelState):
    """``kexec_file_load``, the jump, and the next kernel's handover lookup."""

    def kexec_file_load(self) -> int:
        """Place the segments (all inside scratch, as kho_locate_mem_hole
        makes them) and the handover record; 0 or an errno."""
        self.set_step("kexec_file_load")
        p = self.p
        handover = self.kho_enable and (p.fill_kimage_gate is FillKimageGate.ENABLE or self.finalized)
        segs: list[Segment] = []
        # kho_locate_mem_hole walks the areas in the array's order (lowmem,
        # global, then per node), first fit; every x86 kexec_file buffer is
        # placed top-down inside the area (7.2.13: the array, boot params,
        # kernel and initrd all at the top of the lowmem area)
        pool = [a for a in self.scratch if a.size]
        used = IntervalSet()

        def place(name: str, size: int, align: int, top_down: bool = True) -> int:
            for a in pool:
                cands = _free_in(a.addr, a.end, used)
                for s, e in (reversed(cands) if top_down else cands):
                    x = ((e - size) & ~(align - 1)) if top_down else ((s + align - 1) & ~(align - 1))
                    if s <= x and x + size <= e:
                        used.add(x, x + size)
                        segs.append(Segment(name, x, size))
                        return x
            return 0

        if not self.kho_enable or not pool:
            self.image = None
            return 0 if not self.kho_enable else -EADDRNOTAVAIL
        scratch_seg = 0
        if handover:
            scratch_seg = place("kho scratch array", 16 * len(self.scratch), p.scratch_array_align, True)
        # then bzImage64_load: purgatory, boot params, kernel (initrd: not modelled)
        place("purgatory", PURGATORY_SIZE, PAGE_SIZE)
        boot = place("boot params", PAGE_SIZE, PAGE_SIZE)
        kernel = place("kernel", self.KERNEL_IMAGE_SIZE, 2 * MiB)
        if not kernel or not boot or (handover and not scratch_seg):
            return -EADDRNOTAVAIL
        kd = None
        if handover:
            kd = structs.KhoData(self.out_fdt_phys, PAGE_SIZE, scratch_seg, 16 * len(self.scratch))
        # the boot data the next kernel parses: x86 boot_params' setup_data
        # (setup_kho always writes the record, links it only with a handover),
        # or an arm64 device tree whose /chosen carries linux,kho-fdt/-scratch
        if self.arch == "arm64":
            boot_bytes = structs.encode_chosen(kd.fdt_addr, kd.scratch_addr, kd.scratch_size) if kd else \
                _fdt.build([("#address-cells", b"\0\0\0\2"), ("#size-cells", b"\0\0\0\2")], [("chosen", [])])[0]
        else:
            boot_bytes = structs.encode_setup_data(kd) if kd else b""
        self.image = {"segments": segs, "kho_data": kd, "boot": boot, "boot_bytes": boot_bytes}
        return 0

    def kexec(self, next_profile: Any, cmdline: str | None = None, release: str | None = None,
              name: str = "kernel", **kw: Any) -> Any:
        """The jump: clients' reboot hooks, segments copied, then the next
        kernel boots from them."""
        self.set_step("kexec")
        for c in self.clients:
            c.reboot()
        if self.image is None:
            raise RuntimeError("kexec without a loaded image")
        kd = self.image["kho_data"]
        segs = self.image["segments"]
        # what the new kernel finds: scratch is garbage except the segments
        seg_set = IntervalSet((s.addr, s.addr + s.size) for s in segs)
        for a in self.scratch:
            for s, e in _free_in(a.addr, a.end, seg_set):
                self.m.mem.scramble(s, e - s)
        if kd is not None:
            self.m.mem.write(kd.scratch_addr, structs.encode_scratch(self.scratch))
        boot = self.image["boot"]
        self.m.mem.write(boot, self.image["boot_bytes"].ljust(PAGE_SIZE, b"\0"))
        image = next(s for s in segs if s.name == "kernel")
        nk = self.spawn(next_profile, cmdline if cmdline is not None else self.cmdline, release, name, **kw)
        nk.old = self
        return nk.boot(nk.find_handover(boot), image)

    def handover_from_boot_data(self, data: bytes) -> structs.KhoData | None:
        """The handover the boot data bytes name (arm64: the DT's ``/chosen``,
        x86: a setup_data record at offset 0), or None when the kernel would
        find none."""
        if self.arch == "arm64":
            try:
                got = structs.decode_chosen(data)
            except KhoDecodeError:
                return None
            return structs.KhoData(*got) if got else None
        try:
            from ..memory import SparseMemory
            sm = SparseMemory([(0, len(data))])
            sm.write(0, data)
            _nxt, typ, kd = structs.decode_setup_data(sm, 0)
        except KhoDecodeError:
            return None
        return kd if typ == structs.SETUP_KEXEC_KHO else None

    def find_handover(self, boot: int) -> structs.KhoData | None:
        """What the new kernel's arch code hands to kho_populate, read from
        the boot data bytes: x86 ``parse_setup_data`` -> ``add_kho``, arm64
        ``early_init_dt_check_kho`` (silently nothing when malformed)."""
        if self.arch == "arm64":
            try:
                head = self.m.mem.read(boot, 40)
                got = structs.decode_chosen(self.m.mem.read(boot, _fdt.totalsize(head)))
            except KhoDecodeError:
                return None
            return structs.KhoData(*got) if got else None
        try:
            _nxt, typ, kd = structs.decode_setup_data(self.m.mem, boot)
        except KhoDecodeError:
            return None
        return kd if typ == structs.SETUP_KEXEC_KHO else None
