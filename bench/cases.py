"""Benchmark cases: preserved-memory layouts as runs of ``(phys, count, order)``.

Every case is deterministic (seeded).  Map pages (radix nodes, chunks,
bitmaps) are allocated from a region above the preserved memory, as the old
kernel allocates them from memory it does not preserve.
"""

from __future__ import annotations

import struct

import numpy as np

from pykho.abi import chunks, radix
from pykho.memory import Bump, SparseMemory

GiB = 1 << 30
TiB = 1 << 40
PAGE = 4096


def order0(size: int):
    """``size`` bytes fully preserved as order-0 pages from 0 up."""
    return [(0, size // PAGE, 0)], size


def mix(size: int, seed: int = 6):
    """``size`` bytes fully preserved as a mix of orders: every 4 MiB unit is
    either 1024 order-0 pages (50%), two order-9 THPs (30%) or one order-10
    block (20%), units drawn at random (a host whose guests are backed by
    4 KiB pages, 2 MiB THPs and 4 MiB blocks)."""
    unit = 4 << 20
    n = size // unit
    kinds = np.random.default_rng(seed).choice(3, size=n, p=[0.5, 0.3, 0.2])
    # run-length encode consecutive units of one kind
    edges = np.flatnonzero(np.diff(kinds)) + 1
    starts = np.concatenate(([0], edges))
    ends = np.concatenate((edges, [n]))
    per_unit = {0: (1024, 0), 1: (2, 9), 2: (1, 10)}
    runs = []
    for s, e, k in zip(starts.tolist(), ends.tolist(), kinds[starts].tolist()):
        cnt, order = per_unit[k]
        runs.append((s * unit, (e - s) * cnt, order))
    return runs, size


MEMFD_OTHERS = 2098


def memfd_vm(seed: int = 7):
    """The kernel developers' 526,386-preservation map: a 64 GiB VM with two
    1 GiB memfds preserved in 4 KiB pages (two contiguous 1 GiB ranges,
    524,288 order-0 pages) plus 2,098 other small preservations: 2,048
    scattered order-0 pages (the memfds' folio descriptor arrays, vmalloc'd:
    2 x 4 MiB) and 50 blocks of orders 0-4 (FDTs, LUO session and file
    blocks, reserve_mem)."""
    rng = np.random.default_rng(seed)
    ram = 64 * GiB
    memfds = [(8 * GiB, GiB), (40 * GiB, GiB)]
    runs = [(s, n // PAGE, 0) for s, n in memfds]
    # 64 KiB slots for the others (so none overlaps another), outside the memfds
    # and below 62 GiB (the top 2 GiB hold the map's own pages)
    slots = rng.choice((62 * GiB) // (64 << 10), size=4 * MEMFD_OTHERS, replace=False)
    slots = [s << 16 for s in slots.tolist() if not any(a <= s << 16 < a + n for a, n in memfds)]
    slots = slots[:MEMFD_OTHERS]
    orders = [0] * 2048 + rng.choice([0, 1, 2, 3, 4], size=MEMFD_OTHERS - 2048).tolist()
    runs += [(p, 1, o) for p, o in zip(slots, orders)]
    return runs, ram


CASES = {
    "order0-1G": lambda: order0(GiB),
    "order0-64G": lambda: order0(64 * GiB),
    "order0-1T": lambda: order0(TiB),
    "mix-1G": lambda: mix(GiB),
    "mix-64G": lambda: mix(64 * GiB),
    "mix-1T": lambda: mix(TiB),
    "memfd-64G": memfd_vm,
}


def memory_for(case: str, runs, ram: int):
    """(SparseMemory, Bump) for a case: RAM holding the runs, and where the
    map's own pages come from (the top 2 GiB of the 64 GiB VM; above the
    preserved memory otherwise)."""
    top = max(ram, max(p + (n << (12 + o)) for p, n, o in runs))
    if case.startswith("memfd"):
        return SparseMemory([(0, top)]), Bump(62 * GiB)
    meta = (top + GiB - 1) // GiB * GiB
    return SparseMemory([(0, meta + 4 * GiB)]), Bump(meta)


def encode(fmt: str, runs, mem, bump: Bump, preserve_bits: int = 32768) -> int:
    """Write the map with pykho's bulk encoders; returns the radix root or first chunk."""
    if fmt == "radix":
        return radix.encode_runs(runs, mem, bump.page).root
    first, _ = chunks.encode_bitmaps(chunks.bitmaps_from_runs(runs, preserve_bits), preserve_bits, mem, bump.alloc)
    return first


def build(case: str, fmt: str, preserve_bits: int = 32768):
    """(memory, map address, runs) with the map written by the bulk encoders."""
    runs, ram = CASES[case]()
    mem, bump = memory_for(case, runs, ram)
    return mem, encode(fmt, runs, mem, bump, preserve_bits), runs


def expected(runs):
    """blocks, bytes, by_order and sum of phys (mod 2**64) of the runs."""
    blocks = nbytes = physsum = 0
    by_order: dict[int, int] = {}
    for p, n, o in runs:
        sz = 1 << (12 + o)
        blocks += n
        nbytes += n * sz
        by_order[o] = by_order.get(o, 0) + n
        physsum += n * p + sz * n * (n - 1) // 2
    return {"blocks": blocks, "bytes": nbytes, "by_order": {str(k): v for k, v in sorted(by_order.items())},
            "physsum": physsum % (1 << 64)}


def dump_image(mem: SparseMemory, path: str) -> int:
    """Write the pages ever written as a KHOIMG1 image for walker.c; returns its size."""
    pfns = sorted(mem.pages)
    with open(path, "wb") as f:
        f.write(b"KHOIMG1\0" + struct.pack("<Q", len(pfns)))
        f.write(np.asarray(pfns, dtype="<u8").tobytes())
        for i in range(0, len(pfns), 4096):
            f.write(b"".join(mem.pages[p] for p in pfns[i:i + 4096]))
    return 16 + len(pfns) * (8 + PAGE)
