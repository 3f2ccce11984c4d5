"""The benchmark's fast paths agree with the per-block code they stand for.

* ``radix.encode_runs`` writes the bytes ``RadixTree.add`` writes, block by
  block, with nodes allocated in the same order; ``chunks.encode_bitmaps``
  (from ``bitmaps_from_runs``) the bytes ``chunks.encode`` writes from a
  ``ChunkTracker``.
* ``batches()`` yields what ``leaves()`` yields, joined; ``summarize()``
  counts what ``blocks()`` yields and finds exactly the pairs of blocks that
  share memory, with the walk's own problems unchanged.
* bench/walker.c (compiled here when gcc is present) counts the same, from
  an image or a sparse extract directory.
"""

import json
import os
import shutil
import struct
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import Bump
from pykho.abi import bits, chunks, radix
from pykho.errors import KhoDecodeError
from pykho.memory import SparseMemory

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench")
sys.path.insert(0, BENCH)
import cases  # noqa: E402

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RAM = [(0, 1 << 40), (0xF0_0000_0000, 0xF1_0000_0000)]
META = 0xF0_0000_0000


def mem_equal(a: SparseMemory, b: SparseMemory) -> bool:
    z = bytes(4096)
    keys = set(a.pages) | set(b.pages)
    return all(bytes(a.pages.get(k, z)) == bytes(b.pages.get(k, z)) for k in keys)


def expand(runs):
    return [(p + (i << (12 + o)), o) for p, n, o in runs for i in range(n)]


@st.composite
def runs_strategy(draw, max_order=12, top=1 << 38, max_runs=8):
    out = []
    for _ in range(draw(st.integers(0, max_runs))):
        order = draw(st.integers(0, max_order))
        n = draw(st.integers(1, 3000))
        blk = draw(st.integers(0, max(0, (top >> (12 + order)) - n)))
        out.append((blk << (12 + order), n, order))
    return out


# --------------------------------------------------------------------------- encoders

@SETTINGS
@given(runs=runs_strategy())
def test_encode_runs_matches_add(runs):
    m1, m2 = SparseMemory(RAM), SparseMemory(RAM)
    b1, b2 = Bump(META), Bump(META)
    t1 = radix.encode(expand(runs), m1, b1.page)
    t2 = radix.encode_runs(runs, m2, b2.page)
    assert t1.nodes == t2.nodes                 # same allocation order
    assert mem_equal(m1, m2)                    # same bytes


def test_encode_runs_full_leaves_match_add():
    runs = [(0x10000, 70000, 0), (1 << 33, 40000, 1), (0x5000, 3, 0)]
    m1, m2 = SparseMemory(RAM), SparseMemory(RAM)
    t1 = radix.encode(expand(runs), m1, Bump(META).page)
    t2 = radix.encode_runs(runs, m2, Bump(META).page)
    assert t1.nodes == t2.nodes and mem_equal(m1, m2)
    assert sum(1 for pg in m2.pages.values() if bits.is_full(pg)) == 2


def test_encode_runs_adds_to_a_tree_and_fails_like_add():
    mem = SparseMemory(RAM)
    bump = Bump(META)
    tree = radix.RadixTree(mem, bump.page)
    tree.add(0x1000, 0)
    radix.encode_runs([(0x2000, 3, 0), (1 << 30, 1, 9)], mem, bump.page, tree)
    assert radix.walk(mem, tree.root) == [(1 << 30, 9), (0x1000, 0), (0x2000, 0), (0x3000, 0), (0x4000, 0)]
    # node allocation failure: the new branch is freed, the anchor cleared
    pages = iter([META + 0x100000 + i * 4096 for i in range(3)])
    freed = []
    mem2 = SparseMemory(RAM)
    t = radix.RadixTree(mem2, lambda: next(pages, None), freed.append)
    with pytest.raises(MemoryError):
        radix.encode_runs([(0, 1, 0)], mem2, t.alloc_page, t)
    assert len(freed) == 2 and radix.walk(mem2, t.root) == []
    assert mem2.read(t.root, 4096) == bytes(4096)
    with pytest.raises(ValueError):
        radix.encode_runs([((1 << 64) - 4096, 2, 0)], SparseMemory(RAM), bump.page)


@pytest.mark.parametrize("pbits", [4096, 32768])
@SETTINGS
@given(runs=runs_strategy(max_order=10, top=1 << 36))
def test_encode_bitmaps_matches_tracker(pbits, runs):
    tr = chunks.ChunkTracker(pbits)
    for p, o in expand(runs):
        tr.add(p, o)
    m1, m2 = SparseMemory(RAM), SparseMemory(RAM)
    b1, b2 = Bump(META), Bump(META)
    f1, c1 = chunks.encode(tr, m1, b1.alloc)
    f2, c2 = chunks.encode_bitmaps(chunks.bitmaps_from_runs(runs, pbits), pbits, m2, b2.alloc)
    assert (f1, c1) == (f2, c2)
    assert mem_equal(m1, m2)


def test_bench_cases_shape():
    assert cases.Bump is Bump                       # the benchmark allocates map pages as the tests do
    runs, ram = cases.memfd_vm()
    assert sum(n for _, n, _ in runs) == 526_386 and ram == 64 << 30
    assert sum(n for _, n, o in runs if o == 0 and n == 262144) == 524_288
    spans = sorted((p, p + (n << (12 + o))) for p, n, o in runs)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))     # nothing overlaps
    assert cases.expected(cases.order0(1 << 40)[0])["blocks"] == 268_435_456


# --------------------------------------------------------------------------- walks

def brute(blocks):
    """(duplicates, overlaps): pairs of identical blocks, pairs of different
    blocks sharing memory (aligned blocks: one inside the other), over the
    walk's list with multiplicity - by hashing, not by bitmaps."""
    cnt = Counter(blocks)
    dup = sum(c * (c - 1) // 2 for c in cnt.values())
    orders = sorted({o for _, o in cnt})
    ovl = 0
    for (p, o), c in cnt.items():
        for o2 in orders:
            if o2 > o:
                ovl += c * cnt.get(((p >> (12 + o2)) << (12 + o2), o2), 0)
    return dup, ovl


CHECK_CODES = {"map-overlap", "map-duplicate", "chunk-unaligned-start"}


def check_walk(w):
    leaves = [(o, bits.tolist(a)) for o, a in w.leaves()]
    probs = [(p.code, str(p)) for p in w.problems]
    nodes = list(getattr(w, "nodes", getattr(w, "chunks", [])))
    flat = [(p, o) for o, a in leaves for p in a]
    joined = [(p, o) for o, a in w.batches(max_blocks=1 << 15) for p in bits.tolist(a)]
    assert joined == flat
    assert [(p.code, str(p)) for p in w.problems] == probs
    s = w.summarize()
    assert list(getattr(w, "nodes", getattr(w, "chunks", []))) == nodes
    assert [(p.code, str(p)) for p in s.problems if p.code not in CHECK_CODES] == probs
    assert s.blocks == len(flat)
    assert s.bytes == sum(1 << (12 + o) for _, o in flat)
    by = {}
    for _, o in flat:
        by[o] = by.get(o, 0) + 1
    assert s.by_order == by
    return s, flat


@SETTINGS
@given(blocks=st.lists(st.tuples(st.integers(0, (1 << 30) - 1), st.sampled_from([0, 0, 1, 3, 9, 10, 20, 40, 52])),
                       max_size=40))
def test_radix_summarize_and_batches(blocks):
    blocks = [(((pfn >> o) << o) << 12 if o < 52 else 0, o) for pfn, o in blocks]
    mem = SparseMemory([(0, 1 << 52)])
    bump = Bump(1 << 51)
    tree = radix.encode(blocks, mem, bump.page)
    s, flat = check_walk(radix.RadixWalk(mem, tree.root))
    assert (s.duplicates, s.overlaps) == brute(flat)
    assert bool(s.overlaps) == any(p.code == "map-overlap" for p in s.problems)


def write_chunk_list(mem, alloc, elements, pbits):
    """A hand-made chunk list: ``elements`` of (order, phys_start, bitmap int),
    in the order given, a new chunk when the order changes or 255 are full."""
    first = cur = cur_order = None
    nelm = 0
    for order, start, v in elements:
        if cur is None or nelm == 255 or order != cur_order:
            new = alloc(4096)
            mem.write(new + 8, struct.pack("<II", order, 0))
            if cur is None:
                first = new
            else:
                mem.write_u64(cur, new)
            cur, cur_order, nelm = new, order, 0
        bm = alloc(pbits // 8)
        mem.write(bm, v.to_bytes(pbits // 8, "little"))
        mem.write(cur + 16 + 16 * nelm, struct.pack("<QQ", start, bm))
        nelm += 1
        mem.write(cur + 12, struct.pack("<I", nelm))
    return first or 0


@pytest.mark.parametrize("pbits", [4096, 32768])
@SETTINGS
@given(data=st.data())
def test_chunk_summarize_and_batches(pbits, data):
    """Elements may repeat a bitmap index (duplicates), overlap across
    orders, or start at a block that is not a multiple of the bitmap size."""
    n = data.draw(st.integers(0, 8))
    elements = []
    for _ in range(n):
        order = data.draw(st.sampled_from([0, 0, 1, 4, 9, 10]))
        start_blk = data.draw(st.integers(0, 3 * pbits)) if data.draw(st.booleans()) else \
            data.draw(st.integers(0, 3)) * pbits
        nset = data.draw(st.integers(0, 12))
        v = 0
        for _ in range(nset):
            v |= 1 << data.draw(st.integers(0, pbits - 1))
        if data.draw(st.booleans()):
            lo = data.draw(st.integers(0, pbits - 1))
            v |= ((1 << data.draw(st.integers(1, min(pbits - lo, 3000)))) - 1) << lo
        elements.append((order, start_blk << (12 + order), v))
    mem = SparseMemory(RAM)
    bump = Bump(META)
    first = write_chunk_list(mem, bump.alloc, elements, pbits)
    s, flat = check_walk(chunks.ChunkWalk(mem, first, pbits))
    assert (s.duplicates, s.overlaps) == brute(flat)


def test_batches_of_full_leaves_and_bitmaps():
    """Full leaves and bitmaps take the no-scan path: consecutive, apart, at
    the top of the address space, and past it (chunk offsets wrap mod 2**64)."""
    top = 1 << 64
    runs = [(0, 3 * 32768, 0), (5 << 27, 32768 + 7, 0), (top - 2 * (32768 << 12), 2 * 32768, 0),
            (1 << 40, 32768, 9), (top - (32768 << 22), 32768, 10)]
    mem = SparseMemory([(0, 1 << 52)])
    tree = radix.encode_runs(runs, mem, Bump(1 << 51).page)
    _, flat = check_walk(radix.RadixWalk(mem, tree.root))
    assert flat == sorted(expand(runs), key=lambda b: radix.encode_key(*b))
    full = (1 << 32768) - 1
    elements = [(0, 0, full), (0, 32768 << 12, full), (0, 5 * (32768 << 12), full), (0, top - (32768 << 12), full),
                (3, top - (100 << 15), full), (3, top - (100 << 15), full)]
    mem = SparseMemory(RAM)
    first = write_chunk_list(mem, Bump(META).alloc, elements, 32768)
    s, flat = check_walk(chunks.ChunkWalk(mem, first, 32768))
    assert s.blocks == 6 * 32768 and s.duplicates == 32768


def test_chunk_unaligned_start_is_reported_and_left_out():
    mem = SparseMemory(RAM)
    bump = Bump(META)
    first = write_chunk_list(mem, bump.alloc, [(9, 0x1000, 0b11), (0, 0, 0b1110)], 4096)
    w = chunks.ChunkWalk(mem, first, 4096)
    s = w.summarize()
    assert s.blocks == 5 and s.unchecked == 2 and s.overlaps == 0
    assert [p.code for p in s.problems] == ["chunk-unaligned-start"]
    with pytest.raises(KhoDecodeError):
        chunks.ChunkWalk(mem, first, 4096, strict=True).summarize()


def test_radix_hostile_problems_kept():
    """A shared leaf and a pointer outside memory: summarize() reports what
    leaves() reports, counts the leaf once, and strict raises the same."""
    mem = SparseMemory([(0, 1 << 40)])
    bump = Bump(1 << 39)
    tree = radix.encode([(0x1000, 0), (0x8000000, 0)], mem, bump.page)
    w = radix.RadixWalk(mem, tree.root)
    list(w.leaves())
    leaves = [n for n in w.nodes if n.level == 0]
    parent = [n for n in w.nodes if n.level == 1][0].phys
    mem.write_u64(parent + 8, leaves[0].phys)          # entry 1 -> the leaf of entry 0
    mem.write_u64(parent + 16, 1 << 45)                 # entry 2 -> outside memory
    w = radix.RadixWalk(mem, tree.root)
    list(w.leaves())
    codes = [p.code for p in w.problems]
    assert codes == ["radix-shared-node", "radix-pointer-outside"]
    s = w.summarize()
    assert [p.code for p in s.problems] == codes and s.blocks == 1
    with pytest.raises(Exception) as e1:
        list(radix.RadixWalk(mem, tree.root, strict=True).leaves())
    with pytest.raises(Exception) as e2:
        radix.RadixWalk(mem, tree.root, strict=True).summarize()
    assert str(e1.value) == str(e2.value)


def test_radix_overlap_reported():
    mem = SparseMemory([(0, 1 << 40)])
    bump = Bump(1 << 39)
    tree = radix.encode([(0x200000, 9), (0x201000, 0), (0x3FF000, 0), (0x400000, 0), (0, 10)], mem, bump.page)
    s = radix.RadixWalk(mem, tree.root).summarize()
    # order 0 at 0x201000 and 0x3ff000 lie in the 2 MiB block at 0x200000 and in the 4 MiB block at 0;
    # 0x400000 lies in neither; the order-9 block lies in the order-10 one
    assert (s.duplicates, s.overlaps) == (0, 5)
    assert {p.code for p in s.problems} == {"map-overlap"}


# --------------------------------------------------------------------------- the C walker

@pytest.fixture(scope="module")
def walker(tmp_path_factory):
    gcc = shutil.which("gcc")
    if not gcc:
        if os.environ.get("CI") == "true":
            pytest.fail("no gcc: CI must install it")
        pytest.skip("no gcc")
    exe = str(tmp_path_factory.mktemp("walker") / "walker")
    subprocess.run([gcc, "-O2", "-Wall", "-Werror", "-o", exe, os.path.join(BENCH, "walker.c")], check=True)
    return exe


def run_c(walker, mem, fmt, where, pbits, tmp_path, *extra):
    img = str(tmp_path / "img")
    cases.dump_image(mem, img)
    args = [walker, img, fmt, hex(where)] + ([str(pbits)] if fmt == "chunks" else []) + list(extra)
    return json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)


@pytest.mark.parametrize("case", ["mix-1G", "memfd-64G"])
@pytest.mark.parametrize("fmt", ["radix", "chunks"])
def test_c_walker_agrees_on_bench_cases(walker, tmp_path, case, fmt):
    mem, where, runs = cases.build(case, fmt)
    exp = cases.expected(runs)
    w = radix.RadixWalk(mem, where) if fmt == "radix" else chunks.ChunkWalk(mem, where, 32768)
    s = w.summarize()
    physsum = sum(int(a.sum()) for _, a in w.batches()) % (1 << 64)
    for extra in ((), ("--popcount",)):
        c = run_c(walker, mem, fmt, where, 32768, tmp_path, *extra)
        assert (c["blocks"], int(c["bytes"]), c["by_order"]) == (exp["blocks"], exp["bytes"], exp["by_order"])
        assert (c["duplicates"], c["overlaps"], c["problems"]) == (0, 0, 0)
        if not extra:
            assert c["physsum"] == physsum == exp["physsum"]
    assert (s.blocks, s.bytes) == (exp["blocks"], exp["bytes"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_c_walker_counts_overlaps_like_summarize(walker, tmp_path, data):
    pbits = 4096
    elements = []
    for _ in range(data.draw(st.integers(1, 6))):
        order = data.draw(st.sampled_from([0, 3, 9, 10]))
        v = 0
        for _ in range(data.draw(st.integers(1, 10))):
            v |= 1 << data.draw(st.integers(0, pbits - 1))
        elements.append((order, data.draw(st.integers(0, 2 * pbits)) << (12 + order), v))
    mem = SparseMemory(RAM)
    bump = Bump(META)
    first = write_chunk_list(mem, bump.alloc, elements, pbits)
    s = chunks.ChunkWalk(mem, first, pbits).summarize()
    c = run_c(walker, mem, "chunks", first, pbits, tmp_path)
    assert (c["blocks"], c["duplicates"], c["overlaps"]) == (s.blocks, s.duplicates, s.overlaps)
    # and the radix tree of the same blocks
    blocks = sorted({(p, o) for o, a in chunks.ChunkWalk(mem, first, pbits).leaves() for p in bits.tolist(a)})
    m2 = SparseMemory([(0, 1 << 45)])
    tree = radix.encode(blocks, m2, Bump(1 << 44).page)
    s2 = radix.RadixWalk(m2, tree.root).summarize()
    c2 = run_c(walker, m2, "radix", tree.root, pbits, tmp_path)
    assert (c2["blocks"], c2["duplicates"], c2["overlaps"]) == (s2.blocks, s2.duplicates, s2.overlaps)


def write_sparse_dir(mem, d, piece=5000, skip=()):
    """``mem``'s written pages as a sparse extract: ranges cut every ``piece``
    bytes (not page aligned), listed in reverse order; pages in ``skip`` left out."""
    os.makedirs(d)
    pfns = [p for p in sorted(mem.pages) if p not in skip]
    segs = []
    for p in pfns:
        if segs and segs[-1][-1] == p - 1:
            segs[-1].append(p)
        else:
            segs.append([p])
    lines = []
    for seg in segs:
        data = b"".join(bytes(mem.pages[p]) for p in seg)
        for off in range(0, len(data), piece):
            name = f"{(seg[0] << 12) + off:012x}.bin"
            with open(os.path.join(d, name), "wb") as f:
                f.write(data[off:off + piece])
            lines.append(f"{name}\t0x{(seg[0] << 12) + off:x}\t0x{len(data[off:off + piece]):x}")
    with open(os.path.join(d, "MANIFEST.tsv"), "w") as f:
        f.write("# file\tphys_start\tlength\n" + "\n".join(reversed(lines)) + "\n")


def test_c_walker_reads_sparse_dirs(walker, tmp_path):
    """A sparse extract directory gives the counts the image gives, however
    its ranges are cut; a pointer to memory the extract does not hold is a
    problem there (an image reads it as zeros)."""
    mem, where, runs = cases.build("mix-1G", "radix")
    img = run_c(walker, mem, "radix", where, 32768, tmp_path)
    d = str(tmp_path / "ram")
    write_sparse_dir(mem, d)
    c = json.loads(subprocess.run([walker, d, "radix", hex(where)], check=True, capture_output=True,
                                  text=True).stdout)
    keys = ("blocks", "bytes", "by_order", "physsum", "problems", "duplicates", "overlaps")
    assert {k: c[k] for k in keys} == {k: img[k] for k in keys}
    assert c["problems"] == 0 and c["blocks"] == cases.expected(runs)["blocks"]
    w = radix.RadixWalk(mem, where)
    list(w.leaves())
    leaf = next(n.phys for n in w.nodes if n.level == 0)
    d2 = str(tmp_path / "ram2")
    write_sparse_dir(mem, d2, piece=1 << 20, skip={leaf >> 12})
    c2 = json.loads(subprocess.run([walker, d2, "radix", hex(where)], check=True, capture_output=True,
                                   text=True).stdout)
    assert c2["problems"] == 1 and c2["blocks"] < c["blocks"]
