"""The seed corpus: small real artifacts shipped with the package.

The files under ``pykho/fuzz/seeds/`` are pieces of real Linux 7.2.13
handovers (root FDTs, sub-FDTs, debugfs text, scenario A's RAM extract) and
a few hand-made pages.  They are package data, so an installed pykho fuzzes
the same seeds as a checkout; ``PYKHO_FUZZ_DATA`` points the fuzzer at
another directory.  The families mix these seeds with encoder output.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..memory import SparseMemory
from ..memory import sources as _sources

__all__ = [
    "ORACLE_A_BLOCKS",
    "ORACLE_A_MAP",
    "ORACLE_A_ROOT_FDT",
    "ORACLE_A_SETUP_DATA",
    "ORACLE_B_MEMBLOCK",
    "SEEDS_DIR",
    "blob_corpus",
    "data_dir",
    "oracle_memory",
    "seed_files",
]

#: the seed files shipped in the package
SEEDS_DIR = Path(__file__).resolve().parent / "seeds"

#: scenario A (``A-ram.sparse.tar.xz``): the radix tree root, the root FDT
#: and the kho setup_data record
ORACLE_A_MAP = 0x306000
ORACLE_A_ROOT_FDT = 0x317000
ORACLE_A_SETUP_DATA = 0x212B080
#: the (phys, order) blocks scenario A preserved, sorted: what the real
#: 7.2.13 kernel that booted from this handover reserved (its memblock
#: debug lines for the preserved-memory reservations), not what pykho's
#: walker reads -- the radix family's oracle for the unmutated tree
ORACLE_A_BLOCKS = (
    (0x2EC000, 2), (0x2F0000, 2), (0x317000, 0), (0x320000, 0), (0x333000, 0), (0x334000, 0), (0x378000, 1),
    (0x37A000, 1), (0x37C000, 1), (0x37E000, 1), (0x390000, 4), (0x3C0000, 3), (0x3C8000, 3), (0x3E0000, 4),
    (0x3F0000, 4), (0x400000, 10), (0x800000, 9), (0xDF8000, 0), (0xDF9000, 0), (0xE00000, 5), (0xE20000, 4),
    (0xE40000, 6), (0xE80000, 6), (0xF00000, 8))
#: the reserve_mem region in scenario B's memblock sub-FDT
#: (``B-sub-memblock``): the name and size its command line asked for
#: (``reserve_mem=4M:4K:oracle_rmem``) at the address its memblock debug
#: line shows the kernel allocated -- the memblock family's oracle for that seed
ORACLE_B_MEMBLOCK = (("oracle_rmem", 0x3D400000, 0x400000),)


def data_dir() -> Path | None:
    """``$PYKHO_FUZZ_DATA`` when set and a directory, else the packaged seeds."""
    env = os.environ.get("PYKHO_FUZZ_DATA")
    for c in ([Path(env)] if env else []) + [SEEDS_DIR]:
        if c.is_dir():
            return c
    return None


_SEEDS: dict[str, bytes] | None = None


def seed_files() -> dict[str, bytes]:
    """The seed files (name -> bytes, in name order, at most 1 MiB each);
    empty when no directory is found (the campaign then runs on encoder
    output only)."""
    global _SEEDS
    if _SEEDS is None:
        _SEEDS = {}
        d = data_dir()
        if d is not None:
            for p in sorted(d.iterdir()):
                if p.is_file() and p.stat().st_size <= 1 << 20:
                    _SEEDS[p.name] = p.read_bytes()
    return _SEEDS


_ORACLE_MEM: list[SparseMemory | None] = []


def oracle_memory() -> SparseMemory | None:
    """Scenario A's RAM extract (radix tree at 0x306000, kho_test, setup_data)
    as a writable SparseMemory holding exactly the extracted ranges (loaded
    once; None when the seed file is missing)."""
    if not _ORACLE_MEM:
        m = None
        d = data_dir()
        p = d / "A-ram.sparse.tar.xz" if d else None
        if p is not None and p.is_file():
            src = _sources.SparseDir(str(p))
            m = SparseMemory(ram=list(src.ranges()), name="oracle A RAM")
            for s, e in src.ranges():
                m.write(s, src.read(s, e - s))
        _ORACLE_MEM.append(m)
    return _ORACLE_MEM[0]


def blob_corpus(names, extra) -> list[bytes]:
    """The seed files among ``names`` (those present) followed by ``extra``; empty blobs dropped."""
    seeds = seed_files()
    out = [seeds[n] for n in names if n in seeds]
    out += extra
    return [b for b in out if b]
