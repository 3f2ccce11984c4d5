"""The arm64 parts of the model, offline: the layout (linear map, vmemmap),
the boot DT's /chosen and memory nodes, arm64's csum_partial, the verdict
given the next kernel's DT.  The addresses below were printed by the real
7.2.13-arm64 kernel (tests/vm/test_arm64.py, docs/REAL-KERNEL.md)."""
from __future__ import annotations

import random
import struct

from pykho.abi import fdt as F
from pykho.abi import structs
from pykho.clients.test_kho import csum_partial, csum_partial_arm64
from pykho.model.incoming import ARCH_LAYOUTS, BusAbort, BusMemory

RAM = 0x40000000


def test_arm64_linear_map_fault_address_seen_on_the_real_kernel():
    # radix root entry -> 0x7FFF0000000: "Unable to handle kernel paging request at
    # virtual address ffff07ffb0000000"
    lay = ARCH_LAYOUTS["arm64"]
    assert lay.linear(0x7FFF0000000, RAM) == 0xFFFF07FFB0000000
    assert lay.fault_line.format(v=lay.linear(0x7FFF0000000, RAM)).endswith("ffff07ffb0000000")
    # the start of RAM is PAGE_OFFSET
    assert lay.linear(RAM, RAM) == lay.page_offset


def test_arm64_struct_page_of_a_block_below_ram():
    # the radix cycle (the run of docs/real-kernel.json): a fault at fffffdffbf4c0028,
    # page->private (+0x28) of pfn 0x13000
    lay = ARCH_LAYOUTS["arm64"]
    sp = lay.struct_page(0x13000000, RAM)
    assert sp <= 0xFFFFFDFFBF4C0028 < sp + 64


def test_x86_layout_is_unchanged():
    lay = ARCH_LAYOUTS["x86"]
    assert lay.linear(0x7FFF0000000) == 0xFFFF907FF0000000       # the x86 BUG line of the same case
    assert lay.struct_page(0x83000000) == 0xFFFFEA00020C0000     # pfn 0x83000
    assert not lay.unbacked_read_aborts and lay.gp_noncanonical


def _dt(ac: int, sc: int, chosen: list, mem: bytes) -> bytes:
    blob, err = F.build([("#address-cells", struct.pack(">I", ac)), ("#size-cells", struct.pack(">I", sc))],
                        [("chosen", chosen), ("memory@40000000", [("device_type", b"memory\0"), ("reg", mem)])])
    assert not err
    return blob


def test_decode_chosen_takes_exactly_one_entry():
    good = _dt(2, 2, [("linux,kho-fdt", struct.pack(">QQ", 0x409AC000, 4096)),
                      ("linux,kho-scratch", struct.pack(">QQ", 0x7D3F0000, 48))], struct.pack(">QQ", RAM, RAM))
    assert structs.decode_chosen(good) == (0x409AC000, 4096, 0x7D3F0000, 48)
    two = _dt(2, 2, [("linux,kho-fdt", struct.pack(">QQ", 0x409AC000, 4096)),
                     ("linux,kho-scratch", struct.pack(">QQQQ", 1, 2, 3, 4))], struct.pack(">QQ", RAM, RAM))
    assert structs.decode_chosen(two) is None
    short = _dt(2, 2, [("linux,kho-fdt", struct.pack(">QI", 0x409AC000, 4096)),
                       ("linux,kho-scratch", struct.pack(">QQ", 0x7D3F0000, 48))], struct.pack(">QQ", RAM, RAM))
    assert structs.decode_chosen(short) is None


def test_decode_dt_memory_follows_the_root_cells():
    mem = struct.pack(">QQ", RAM, RAM)
    assert structs.decode_dt_memory(_dt(2, 2, [], mem)) == [(RAM, RAM)]
    # #address-cells 1: one entry of 1 + 2 cells, the last cell left over
    assert structs.decode_dt_memory(_dt(1, 2, [], mem)) == [(0, RAM << 32)]


def _ones_complement_16(data: bytes) -> int:
    s = 0
    for (w,) in struct.iter_unpack("<H", data):
        s += w
        s = (s & 0xFFFF) + (s >> 16)
    return s


def test_csum_partial_arm64_is_a_16_bit_fold_added_with_carry():
    rng = random.Random(7)
    csum = 0
    for _ in range(20):
        page = rng.randbytes(4096)
        prev = csum
        csum = csum_partial_arm64(page, csum)
        want = prev + _ones_complement_16(page)
        want = (want & 0xFFFFFFFF) + (want >> 32)
        assert csum == want
    # and not x86's 32-bit sum
    page = rng.randbytes(4096)
    assert csum_partial_arm64(page) != csum_partial(page)


def test_bus_memory_aborts_only_where_asked():
    class Zero:
        def read(self, phys, n, what=""):
            return bytes(n)
    ram = [(RAM, 2 * RAM, 0)]
    assert BusMemory(Zero(), ram).read(0x80000000, 8) == bytes(8)
    try:
        BusMemory(Zero(), ram, aborts=True).read(0x80000000, 8, "handover FDT")
    except BusAbort as e:
        assert e.phys == 0x80000000
    else:
        raise AssertionError("no abort")
