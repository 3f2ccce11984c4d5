#!/usr/bin/env python3
"""Handover directories as users have them, for the process benchmark.

A case is a machine: System RAM, KHO scratch areas, and the memory a 7.2
kernel (kho-v4, radix map) has preserved.  :func:`generate` writes it the
way a user has it after copying debugfs and dumping the memory the handover
uses::

    DIR/debugfs/kho/out/fdt            the root FDT (compatible kho-v4, a bare root)
    DIR/debugfs/kho/out/scratch_phys   the scratch areas, as the kernel prints them
    DIR/debugfs/kho/out/scratch_len
    DIR/debugfs/kho/out/sub_fdts/      (empty: no client sub-trees)
    DIR/ram/MANIFEST.tsv               a sparse extract (pykho.memory.SparseDir):
    DIR/ram/<phys:012x>.bin            root FDT page, setup_data, scratch array, radix pages
    DIR/iomem.txt                      the System RAM ranges, as /proc/iomem
    DIR/case.json                      what was preserved: counts by order, sum of addresses

so that ``kho validate DIR/debugfs/kho/out --mem sparse:DIR/ram --iomem
DIR/iomem.txt`` sees what it would see on the real machine.  The root FDT
page is preserved (order 0), as 7.2 preserves it; the radix pages, the root
FDT, the setup_data record (``SETUP_KEXEC_KHO``, as a capture taken at the
jump holds it) and everything preserved lie in RAM and outside scratch; the
scratch array lies at the end of the lowmem scratch area, where kexec loads
it.  ``case.json`` is written last: a directory without it is incomplete and
is regenerated.

Preserved memory is built as one packed bitmap per order (numpy), checked to
be disjoint and inside RAM outside scratch and map pages, and written as
radix leaves through :func:`pykho.abi.radix.encode_runs` (which allocates
the tree's path for each leaf), so nothing here is per block.

    python bench/gen.py host-1T            # writes bench/out/handovers/host-1T-g2/
    python bench/gen.py --list
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))
sys.path.insert(0, HERE)

from pykho import profiles  # noqa: E402
from pykho.abi import radix, structs  # noqa: E402
from pykho.abi import root as abi_root  # noqa: E402
from pykho.memory import Bump, SparseMemory  # noqa: E402

#: bump when the bytes a case generates change: cached directories carry it
GEN_VERSION = 3
OUT = os.path.join(HERE, "out", "handovers")

PAGE = 4096
MiB, GiB, TiB = 1 << 20, 1 << 30, 1 << 40
UNIT = 2 * MiB                      # a 2 MiB folio; host shapes are laid out in these
LEAF_BITS = radix.LEAF_BITS         # 32768 blocks per radix leaf
LEAF_WORDS = LEAF_BITS // 64
ONES = np.uint64(0xFFFF_FFFF_FFFF_FFFF)

#: x86 shape: System RAM below the 32-bit PCI hole and from 4 GiB up
LOW = (1 * MiB, 3 * GiB)
HIGH = 4 * GiB
#: where the root FDT, setup_data and radix pages go on the x86-shaped hosts
META = (256 * MiB, 1 * GiB)
#: scratch of the x86-shaped hosts: lowmem, global (pernode areas are per case)
LOWMEM_SCRATCH = (2 * GiB, 64 * MiB)
GLOBAL_SCRATCH = (1 * GiB, 512 * MiB)
NODE_SCRATCH = 256 * MiB


# --------------------------------------------------------------------------- preserved memory

class Preserved:
    """Preserved blocks as one packed bitmap per order over block indices
    (block index = phys >> (12 + order)), little-endian bit order, a whole
    number of radix leaves long."""

    def __init__(self, top: int):
        self.top = top
        self.words: dict[int, np.ndarray] = {}

    def nwords(self, order: int) -> int:
        """Length in 64-bit words of the bitmap of ``order``: whole leaves up to ``top``."""
        nblocks = -(-self.top // (PAGE << order))
        return -(-nblocks // LEAF_BITS) * LEAF_WORDS

    def bitmap(self, order: int) -> np.ndarray:
        w = self.words.get(order)
        if w is None:
            w = self.words[order] = np.zeros(self.nwords(order), np.uint64)
        return w

    def add_run(self, phys: int, count: int, order: int) -> None:
        """``count`` consecutive blocks of ``order`` from ``phys``."""
        if count <= 0:
            return
        if phys % (PAGE << order):
            raise ValueError(f"0x{phys:x} is not aligned to order {order}")
        w = self.bitmap(order)
        a = phys >> (12 + order)
        b = a + count
        wa, wb = a >> 6, b >> 6
        lo, hi = a & 63, b & 63
        if wa == wb:
            w[wa] |= np.uint64(((1 << (hi - lo)) - 1) << lo)
            return
        w[wa] |= np.uint64(((1 << (64 - lo)) - 1) << lo)
        w[wa + 1:wb] = ONES
        if hi:
            w[wb] |= np.uint64((1 << hi) - 1)

    def add_blocks(self, order: int, blocks: np.ndarray) -> None:
        """Blocks of ``order`` by block index (any order, no repeats needed)."""
        w = self.bitmap(order)
        blocks = np.asarray(blocks, np.uint64)
        np.bitwise_or.at(w, (blocks >> np.uint64(6)).astype(np.int64), np.uint64(1) << (blocks & np.uint64(63)))

    def add_words(self, order: int, index: np.ndarray, values: np.ndarray | np.uint64) -> None:
        """OR ``values`` into the bitmap's 64-bit words ``index`` (64 blocks each)."""
        w = self.bitmap(order)
        np.bitwise_or.at(w, np.asarray(index, np.int64), np.broadcast_to(np.asarray(values, np.uint64),
                                                                          np.shape(index)))

    # ---- what it holds
    def counts(self) -> dict[int, int]:
        return {o: int(np.bitwise_count(w).sum()) for o, w in sorted(self.words.items())
                if int(np.bitwise_count(w).sum())}

    def physsum(self) -> int:
        """Sum of every block's address, mod 2**64 (what walker.c adds up)."""
        total = 0
        for o, w in self.words.items():
            nz = np.flatnonzero(w)
            for s in range(0, len(nz), 1 << 20):
                idx = nz[s:s + (1 << 20)]
                bits = np.unpackbits(w[idx].view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")
                pos = np.nonzero(bits)
                blocks = idx[pos[0]].astype(np.uint64) * np.uint64(64) + pos[1].astype(np.uint64)
                total += int((blocks << np.uint64(12 + o)).sum(dtype=np.uint64))
        return total % (1 << 64)

    def leaves(self):
        """(order, leaf index, 512 words) of every non-empty leaf, by order then address."""
        for o in sorted(self.words):
            w2 = self.words[o].reshape(-1, LEAF_WORDS)
            for leaf in np.flatnonzero(w2.any(axis=1)).tolist():
                yield o, leaf, w2[leaf]

    def blocks(self, order: int) -> np.ndarray:
        """Every block's address of ``order``, ascending (small cases: tests)."""
        w = self.words.get(order)
        if w is None:
            return np.zeros(0, np.uint64)
        bits = np.unpackbits(w.view(np.uint8), bitorder="little")
        return np.flatnonzero(bits).astype(np.uint64) << np.uint64(12 + order)

    def coverage(self, order: int) -> np.ndarray:
        """The bitmap of ``order`` spread to order-0 words (one bit per 4 KiB page)."""
        w = self.words[order]
        if order == 0:
            return w
        n0 = self.nwords(0)
        out = np.zeros(n0, np.uint64)
        if order >= 6:
            per = 1 << (order - 6)                  # order-0 words per block
            nz = np.flatnonzero(w)
            bits = np.unpackbits(w[nz].view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")
            r, c = np.nonzero(bits)
            blk = nz[r] * 64 + c
            for k in range(per):
                idx = blk * per + k
                out[idx[idx < n0]] = ONES
            return out
        blocks = (np.flatnonzero(np.unpackbits(w.view(np.uint8), bitorder="little")) << order)
        pages = (blocks[:, None] + np.arange(1 << order)).ravel()
        np.bitwise_or.at(out, pages >> 6, np.uint64(1) << (pages & 63).astype(np.uint64))
        return out


def _range_words(ranges, n0: int) -> np.ndarray:
    """Order-0 coverage words of byte ranges (page aligned)."""
    out = np.zeros(n0, np.uint64)
    tmp = Preserved(n0 * 64 * PAGE)
    tmp.words[0] = out
    for s, e in ranges:
        s, e = max(0, s), min(e, n0 * 64 * PAGE)
        if e > s:
            tmp.add_run(s, (e - s) // PAGE, 0)
    return out


# --------------------------------------------------------------------------- cases

@dataclass
class Host:
    """A machine and what it preserved (built by a case function)."""
    name: str
    title: str
    ram: list[tuple[int, int]]              # System RAM, half-open
    scratch: list[tuple[int, int]]          # (addr, size): lowmem, global, node 0, node 1, ...
    meta: tuple[int, int]                   # where the root FDT, setup_data and radix pages are allocated
    preserved: Preserved
    describe: dict = field(default_factory=dict)
    #: the runs the case was made of, when it is made of runs (tests compare the walk with them)
    runs: list[tuple[int, int, int]] | None = None


def _x86_ram(high_bytes: int) -> list[tuple[int, int]]:
    return [LOW, (HIGH, HIGH + high_bytes)]


def _x86_scratch(node_starts: list[int], global_area: tuple[int, int] = GLOBAL_SCRATCH) -> list[tuple[int, int]]:
    return [(LOWMEM_SCRATCH[0], LOWMEM_SCRATCH[1]), global_area] + [(s, NODE_SCRATCH) for s in node_starts]


def memmap_scratch(ram_bytes: int) -> int:
    """A global scratch area big enough for a KHO boot of ``ram_bytes`` of RAM:
    twice its memmap (64 bytes per 4 KiB page), in 2 MiB units.  A KHO boot
    allocates the whole memmap from scratch; less and the kernel panics early
    (the model says so)."""
    need = 2 * (ram_bytes // 64)
    return max(GLOBAL_SCRATCH[1], (need + UNIT - 1) // UNIT * UNIT)


def fully_preserved(name: str, size: int) -> Host:
    """``size`` bytes from 4 GiB up, all of it preserved in order-0 pages
    (scratch, the FDT and the map below 3 GiB)."""
    runs = [(HIGH, size // PAGE, 0)]
    g = memmap_scratch(size + 3 * GiB)
    ram = _x86_ram(size + g)                    # the global scratch area above what is preserved
    p = Preserved(ram[-1][1])
    for r in runs:
        p.add_run(*r)
    return Host(name, f"{_sz(size)} fully preserved in order-0 pages", ram,
                _x86_scratch([1536 * MiB], (HIGH + size, g)), META, p,
                {"preserved": f"[4 GiB, 4 GiB + {_sz(size)}) in {size // PAGE:,} order-0 pages"}, runs)


def host_shape(name: str, high: int, guest: int, memfd: int, n1g: int, nodes: int, seed: int) -> Host:
    """A hypervisor host: System RAM below 3 GiB and ``high`` bytes from
    4 GiB up, in ``nodes`` NUMA nodes of equal size, each with a pernode
    scratch area at its start (node 0's below 3 GiB).  Preserved, placed at
    random (seeded) in 2 MiB units of high memory:

    * ``n1g`` 1 GiB blocks (order 18; 1 GiB aligned): hugetlb-backed guests;
    * ``guest`` bytes of guest memory in 2 MiB folios (order 9), one unit each;
    * ``memfd`` bytes of memfd pages in 4 KiB pages (order 0), in units
      preserved half each (256 of 512 pages): three 256 KiB runs of 64 pages
      and 64 pages scattered one by one over the rest of the unit.
    """
    rng = np.random.default_rng(seed)
    ram = _x86_ram(high)
    top = ram[-1][1]
    nunits = high // UNIT
    node_len = high // nodes
    node_starts = [HIGH + i * node_len for i in range(1, nodes)]
    used = np.zeros(nunits, bool)
    for s in node_starts:                                   # pernode scratch
        u = (s - HIGH) // UNIT
        used[u:u + NODE_SCRATCH // UNIT] = True
    g = memmap_scratch(high + 3 * GiB)                      # global scratch at the top of RAM
    global_area = (HIGH + high - g, g)
    used[(high - g) // UNIT:] = True
    p = Preserved(top)
    # 1 GiB blocks: free 1 GiB slots
    per_g = GiB // UNIT
    slots = np.flatnonzero(~used[: nunits // per_g * per_g].reshape(-1, per_g).any(axis=1))
    g = np.sort(rng.choice(slots, size=n1g, replace=False))
    for s in g.tolist():
        used[s * per_g:(s + 1) * per_g] = True
    p.add_blocks(18, (HIGH >> 30) + g.astype(np.uint64))
    # 2 MiB units for the guests' folios and the memfd pages
    free = rng.permutation(np.flatnonzero(~used))
    n_thp, n_mf = guest // UNIT, memfd // (UNIT // 2)
    if n_thp + n_mf > len(free):
        raise ValueError(f"{name}: {n_thp + n_mf} units wanted, {len(free)} free")
    thp = free[:n_thp]
    p.add_blocks(9, (HIGH >> 21) + thp.astype(np.uint64))
    mf = np.sort(free[n_thp:n_thp + n_mf])
    base = (HIGH >> 18) + mf.astype(np.int64) * 8           # order-0 word of the unit's first page
    for s in range(0, len(mf), 1 << 14):
        b = base[s:s + (1 << 14)]
        chunks = rng.random((len(b), 8)).argsort(axis=1)     # 8 chunks of 64 pages
        full = chunks[:, :3]
        p.add_words(0, (b[:, None] + full).ravel(), ONES)
        rest = chunks[:, 3:]                                 # 5 chunks, 320 pages: 64 of them
        pick = rng.random((len(b), 320)).argpartition(64, axis=1)[:, :64]
        word = b[:, None] + np.take_along_axis(rest, pick // 64, axis=1)
        p.add_words(0, word.ravel(), (np.uint64(1) << (pick % 64).astype(np.uint64)).ravel())
    return Host(name, f"{_sz(high + 3 * GiB)} host ({nodes} nodes): {_sz(guest)} guest memory in 2 MiB folios, "
                f"{_sz(memfd)} memfd in 4 KiB pages, {n1g} x 1 GiB", ram,
                _x86_scratch([1536 * MiB] + node_starts, global_area),
                META, p,
                {"guest_2M_folios": n_thp, "memfd_4K_pages": n_mf * 256, "blocks_1G": n1g, "nodes": nodes,
                 "memfd_units": n_mf, "free_units": int(len(free) - n_thp - n_mf)})


def memfd_vm(name: str) -> Host:
    """bench/cases.py's 526,386-preservation map (the kernel developers' 64 GiB
    VM with two 1 GiB memfds in 4 KiB pages) as a handover: RAM [1 MiB, 64 GiB),
    map pages, FDT and setup_data from 62 GiB (as cases.memory_for), global and
    pernode scratch above them, global scratch (twice the memmap) above the 64 GiB, lowmem scratch
    in the first 16 MiB gap
    below 4 GiB that nothing preserved touches."""
    import cases
    runs, ram_size = cases.memfd_vm()
    g = memmap_scratch(ram_size + 2 * GiB)
    ram = [(MiB, ram_size + g)]                 # scratch for the memmap above the VM's 64 GiB
    spans = sorted((q, q + (n << (12 + o))) for q, n, o in runs)
    low, at = None, 16 * MiB
    for s, e in spans:
        if s - at >= 16 * MiB:
            low = at
            break
        at = max(at, (e + 16 * MiB - 1) // (16 * MiB) * (16 * MiB))
    if low is None or low + 16 * MiB > 4 * GiB:
        raise ValueError("no 16 MiB gap below 4 GiB")
    scratch = [(low, 16 * MiB), (ram_size, g), (63 * GiB + 256 * MiB, 128 * MiB)]
    p = Preserved(ram_size)
    for r in runs:
        p.add_run(*r)
    return Host(name, "the 526,386-preservation map: 64 GiB VM, two 1 GiB memfds in 4 KiB pages", ram, scratch,
                (62 * GiB, 63 * GiB), p, {"preserved": "bench/cases.py memfd_vm()"}, list(runs))


def _sz(n: int) -> str:
    for u, s in (("TiB", 40), ("GiB", 30), ("MiB", 20)):
        if n >= 1 << s and n % (1 << s) == 0:
            return f"{n >> s} {u}"
    return f"{n} B"


#: name -> (builder, what it is)
CASES = {
    "order0-1G": lambda: fully_preserved("order0-1G", GiB),
    "order0-64G": lambda: fully_preserved("order0-64G", 64 * GiB),
    "order0-1T": lambda: fully_preserved("order0-1T", TiB),
    "memfd-64G": lambda: memfd_vm("memfd-64G"),
    "host-8G": lambda: host_shape("host-8G", 5 * GiB, 2 * GiB, 256 * MiB, 2, 1, seed=11),
    "host-1T": lambda: host_shape("host-1T", TiB - 3 * GiB, 768 * GiB, 64 * GiB, 16, 2, seed=12),
    "host-4T": lambda: host_shape("host-4T", 4 * TiB - 3 * GiB, 3 * TiB, 256 * GiB, 64, 4, seed=13),
}


# --------------------------------------------------------------------------- checks and writing

def check_layout(h: Host, map_pages: list[int], fixed_pages: list[int]) -> None:
    """Raise unless everything preserved is disjoint, in RAM and outside
    scratch, and map pages and the FDT / setup_data pages are in RAM,
    outside scratch and not preserved."""
    p = h.preserved
    n0 = p.nwords(0)
    cov = np.zeros(n0, np.uint64)
    for o in sorted(p.words):
        c = p.coverage(o)
        if (cov[:len(c)] & c).any():
            raise AssertionError(f"{h.name}: order-{o} blocks overlap other preserved blocks")
        cov[:len(c)] |= c
    top = n0 * 64 * PAGE
    not_ram = [(0, h.ram[0][0])] + [(a[1], b[0]) for a, b in zip(h.ram, h.ram[1:])] + [(h.ram[-1][1], top)]
    bad = _range_words(not_ram + [(a, a + s) for a, s in h.scratch], n0)
    if (cov & bad).any():
        raise AssertionError(f"{h.name}: preserved memory outside RAM or in scratch")
    meta = _range_words([(q, q + PAGE) for q in map_pages], n0)
    if (bad & meta).any() or (cov & meta).any():
        raise AssertionError(f"{h.name}: a map page is preserved, outside RAM or in scratch")
    fixed = _range_words([(q, q + PAGE) for q in fixed_pages], n0)
    if (bad & fixed).any():
        raise AssertionError(f"{h.name}: the root FDT or setup_data is outside RAM or in scratch")


def _leaf_of(mem: SparseMemory, root: int, prefix: int) -> int:
    node = root
    for level in range(radix.KHO_TREE_MAX_DEPTH - 1, 0, -1):
        node = mem.read_u64(node + 8 * radix.table_index(prefix, level))
    return node


def build(h: Host) -> tuple[SparseMemory, dict]:
    """The memory a handover of ``h`` uses, and what to write beside it."""
    mem = SparseMemory(h.ram)
    bump = Bump(h.meta[0])
    fdt_phys = bump.page()
    setup_phys = bump.page()
    h.preserved.add_run(fdt_phys, 1, 0)                  # 7.2 preserves the root FDT page
    if h.runs is not None:
        h.runs.append((fdt_phys, 1, 0))
    tree = radix.RadixTree(mem, bump.page)
    for order, leaf, words in h.preserved.leaves():
        nz = np.flatnonzero(words)[0]
        first = leaf * LEAF_BITS + int(nz) * 64 + (int(words[nz]) & -int(words[nz])).bit_length() - 1
        radix.encode_runs([(first << (12 + order), 1, order)], mem, bump.page, tree)
        prefix = radix.encode_key(first << (12 + order), order) & ~(LEAF_BITS - 1)
        mem.write(_leaf_of(mem, tree.root, prefix), words.tobytes())
    if bump.next > h.meta[1]:
        raise AssertionError(f"{h.name}: the map needs more than the metadata region")
    map_pages = list(tree.nodes)
    page = abi_root.build_root_at_boot(profiles.E, tree.root)
    mem.write(fdt_phys, bytes(page.buf))
    lowmem = h.scratch[0]
    arr = structs.encode_scratch([structs.KhoScratch(a, s) for a, s in h.scratch])
    arr_phys = lowmem[0] + lowmem[1] - 0x10000
    mem.write(arr_phys, arr.ljust(PAGE, b"\0"))
    setup = structs.encode_setup_data(structs.KhoData(fdt_phys, PAGE, arr_phys, len(arr)))
    mem.write(setup_phys + 0xF0, setup)
    check_layout(h, map_pages, [fdt_phys, setup_phys])
    return mem, {"fdt": page.blob(), "fdt_phys": fdt_phys, "map_root": tree.root, "map_pages": len(map_pages),
                 "setup_data_phys": setup_phys + 0xF0, "scratch_array_phys": arr_phys}


def case_dir(name: str, out: str = OUT) -> str:
    return os.path.join(out, f"{name}-g{GEN_VERSION}")


def _iomem(ram) -> str:
    lines = ["00000000-00000fff : Reserved"] if ram[0][0] else []
    prev = None
    for s, e in ram:
        if prev is not None and s > prev:
            lines.append(f"{prev:08x}-{s - 1:08x} : PCI Bus 0000:00" if s <= 4 * GiB else
                         f"{prev:08x}-{s - 1:08x} : Reserved")
        lines.append(f"{s:08x}-{e - 1:08x} : System RAM")
        prev = e
    return "\n".join(lines) + "\n"


def write(h: Host, d: str) -> dict:
    """Write the handover of ``h`` into directory ``d`` (replaced); returns case.json's content."""
    t0 = time.perf_counter()
    mem, info = build(h)
    if os.path.exists(d):
        shutil.rmtree(d)
    out = os.path.join(d, "debugfs", "kho", "out")
    os.makedirs(os.path.join(out, "sub_fdts"))
    with open(os.path.join(out, "fdt"), "wb") as f:
        f.write(info["fdt"])
    with open(os.path.join(out, "scratch_phys"), "w") as f:
        f.write(structs.format_debugfs_scratch([a for a, _ in h.scratch]))
    with open(os.path.join(out, "scratch_len"), "w") as f:
        f.write(structs.format_debugfs_scratch([s for _, s in h.scratch]))
    ramdir = os.path.join(d, "ram")
    os.makedirs(ramdir)
    pfns = sorted(mem.pages)
    segs: list[list[int]] = []
    for pfn in pfns:
        if segs and segs[-1][-1] == pfn - 1:
            segs[-1].append(pfn)
        else:
            segs.append([pfn])
    lines = ["# file\tphys_start\tlength"]
    for seg in segs:
        phys = seg[0] * PAGE
        name = f"{phys:012x}.bin"
        with open(os.path.join(ramdir, name), "wb") as f:
            for pfn in seg:
                f.write(mem.pages[pfn])
        lines.append(f"{name}\t0x{phys:x}\t0x{len(seg) * PAGE:x}")
    with open(os.path.join(ramdir, "MANIFEST.tsv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(d, "iomem.txt"), "w") as f:
        f.write(_iomem(h.ram))
    by_order = h.preserved.counts()
    doc = {
        "case": h.name, "title": h.title, "gen_version": GEN_VERSION, "describe": h.describe,
        "ram": [[s, e] for s, e in h.ram], "ram_bytes": sum(e - s for s, e in h.ram),
        "scratch": [[a, s] for a, s in h.scratch],
        "fdt_phys": info["fdt_phys"], "map_root": info["map_root"], "map_pages": info["map_pages"],
        "setup_data_phys": info["setup_data_phys"], "scratch_array_phys": info["scratch_array_phys"],
        "ram_dir_bytes": len(pfns) * PAGE, "ram_files": len(segs),
        "expected": {"blocks": sum(by_order.values()),
                     "bytes": sum(n << (12 + o) for o, n in by_order.items()),
                     "by_order": {str(o): n for o, n in by_order.items()},
                     "physsum": h.preserved.physsum()},
        "generate_s": round(time.perf_counter() - t0, 3),
    }
    if h.runs is not None:
        doc["runs"] = [list(r) for r in h.runs]
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(doc, f, indent=1)
    return doc


def ensure(name: str, out: str = OUT, force: bool = False) -> tuple[str, dict]:
    """(directory, case.json) of case ``name``, generated unless cached."""
    d = case_dir(name, out)
    meta = os.path.join(d, "case.json")
    if not force and os.path.isfile(meta):
        with open(meta) as f:
            doc = json.load(f)
        if doc.get("gen_version") == GEN_VERSION:
            return d, doc
    t0 = time.perf_counter()
    h = CASES[name]()
    doc = write(h, d)
    doc["generate_s"] = round(time.perf_counter() - t0, 3)
    with open(meta, "w") as f:
        json.dump(doc, f, indent=1)
    return d, doc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cases", nargs="*")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--force", action="store_true", help="regenerate even when cached")
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args(argv)
    if a.list or not a.cases:
        for n in CASES:
            print(n)
        return 0
    for n in a.cases:
        if n not in CASES:
            ap.error(f"unknown case {n!r}")
        d, doc = ensure(n, a.out, a.force)
        e = doc["expected"]
        print(f"{n}: {d}: {e['blocks']:,} blocks, by order {e['by_order']}, {doc['map_pages']} map pages, "
              f"{doc['ram_dir_bytes'] >> 20} MiB in ram/, {doc['generate_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
