"""What several test files share: the page allocator and the addresses of
the real Linux 7.2.13 captures.

The captures are tests/data/oracle/<name>/ (taken by vmtest/ from a QEMU
guest) and src/pykho/data/linux-7.2-luo (the bundled default handover of
``kho inspect``; the same bytes as B-luo-memblock-chain).  Every address
below names the capture file it was read from;
tests/reports/test_reports_validate.py::test_oracle_table_is_what_the_captures_hold
checks each one against those files, without pykho's decoders.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from pykho.memory import Bump

__all__ = ["BUNDLED", "BUNDLED_DIR", "CAPTURES", "A", "B", "Bump", "Capture", "ram_file"]

HERE = os.path.dirname(os.path.abspath(__file__))
ORACLE = os.path.join(HERE, "data", "oracle")
BUNDLED_DIR = os.path.join(HERE, "..", "src", "pykho", "data", "linux-7.2-luo")


@dataclass(frozen=True)
class Capture:
    """Where the stage-1 (old) kernel of one capture put its handover.

    Sources, all under tests/data/oracle/<name>/:

    * ``decode-stage1.json`` (the host-side decode written when the capture
      was taken): ``setup_data_kho[0]`` gives ``setup_data`` (setup_data_at),
      ``root_fdt`` (fdt_addr, also ``root_fdt_phys_candidates``) and
      ``scratch_array`` (scratch_addr: where kexec puts the array for the
      next kernel; zero bytes at stage 1); ``preserved_memory_map`` gives
      ``map_root``; ``subnodes`` gives ``subtrees`` (preserved-data,
      blob-size); ``scratch.array_bytes_found_at`` gives
      ``scratch_array_copies``;
    * ``stage1-debugfs/kho/out/scratch_phys`` and ``scratch_len``:
      ``scratch`` (the old kernel's areas: lowmem, global, one per node);
    * ``ram-stage1.sparse.tar.xz``: the RAM extract holds one file per kept
      range, named by its physical address (:func:`ram_file`);
    * ``stage2-dmesg.txt``: ``__memblock_reserve ... kho_preserved_memory_reserve``
      lines for ``extra`` blocks the new kernel reserved from the map.
    """

    name: str
    root_fdt: int
    map_root: int
    setup_data: int
    scratch_array: int
    scratch_array_copies: tuple[int, ...]
    scratch: tuple[tuple[int, int], ...]
    #: name -> (phys, size), in the order kho_add_subtree ran
    subtrees: dict[str, tuple[int, int]]
    #: other addresses the tests use, with their own source in the comment
    extra: dict[str, int] = field(default_factory=dict)

    def dir(self, *parts: str) -> str:
        return os.path.join(ORACLE, self.name, *parts)

    @property
    def out(self) -> str:
        """The stage-1 debugfs kho/out directory."""
        return self.dir("stage1-debugfs", "kho", "out")

    @property
    def mem(self) -> str:
        """The --mem argument for the stage-1 RAM extract."""
        return "sparse:" + self.dir("ram-stage1.sparse.tar.xz")


def ram_file(phys: int) -> str:
    """The name a kept range starting at ``phys`` has in a sparse RAM extract."""
    return f"{phys:012x}.bin"


#: CONFIG_TEST_KHO alone (kexec-metadata and kho_test), one kexec
A = Capture(
    name="A-selftest",
    root_fdt=0x317000,
    map_root=0x306000,
    setup_data=0x212B080,
    scratch_array=0x3D3F0000,
    scratch_array_copies=(0x22DD000, 0x3EA0F000),
    scratch=((0x36C00000, 0x6800000), (0x3D400000, 0), (0x23400000, 0x13800000)),
    subtrees={"kexec-metadata": (0x320000, 73), "kho_test": (0x37E000, 240)},
)

#: LUO with a memfd session, reserve_mem and test_kho (kho_scratch=16M,96M,32M)
B = Capture(
    name="B-luo-memblock-chain",
    root_fdt=0x2D5000,
    map_root=0x29A000,
    setup_data=0x9DB0F0,
    scratch_array=0x3CFF0000,
    scratch_array_copies=(0xA3C000, 0x3EA0F000),
    scratch=((0x3C000000, 0x1000000), (0x36000000, 0x6000000), (0x34000000, 0x2000000)),
    subtrees={"kexec-metadata": (0x2DB000, 73), "kho_test": (0x3DC000, 240),
              "LUO": (0x87F000, 32), "memblock": (0x881000, 214)},
    extra={
        # decode-stage1.json subnodes /kho_test decoded folios_info.first; stage2-dmesg.txt
        # reserves [0x3e7000-0x3e7fff] (order 0)
        "kho_test_folios_info": 0x3E7000,
        # stage1-dmesg.txt: reserve_mem's __memblock_reserve [0x3d400000-0x3d7fffff];
        # stage1-cmdline.txt reserve_mem=4M:4K:oracle_rmem
        "oracle_rmem": 0x3D400000,
    },
)

#: the bundled default handover of ``kho inspect``: B's stage 1, file for file
BUNDLED = B

CAPTURES = {c.name: c for c in (A, B)}
