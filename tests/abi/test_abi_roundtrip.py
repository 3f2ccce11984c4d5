"""Encode-then-decode round trips for every codec (hypothesis)."""

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import Bump
from pykho import clients
from pykho import profiles as P
from pykho.abi import chunks, radix, root, structs
from pykho.abi import fdt as F
from pykho.memory import SparseMemory

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RAM_TOP = 1 << 40
META = 0xF0_0000_0000          # encoders' metadata pages: a region kept apart from the blocks


def blocks_strategy(max_order=10, top=1 << 36):
    def mk(t):
        pfn, order = t
        return ((pfn >> order) << order) << 12, order
    return st.lists(st.tuples(st.integers(0, (top >> 12) - 1), st.integers(0, max_order)).map(mk),
                    max_size=60)


def kernel_radix_order(blocks):
    """The order the kernel's walk yields: ascending key (depth first, ascending)."""
    return sorted(set(blocks), key=lambda b: radix.encode_key(*b))


def test_radix_spec_vectors():
    assert radix.encode_key(0x1000, 0) == 0x10000000000001
    assert radix.encode_key(0x200000, 9) == 0x80000000001
    assert radix.encode_key(0x40000000, 10) == 0x40000000100
    k = radix.encode_key(0x123456000, 0)
    assert k == 0x10000000123456
    assert [radix.table_index(k, L) for L in (5, 4, 3, 2, 1)] == [2, 0, 0, 0, 36]
    assert radix.bitmap_index(k) == 13398
    assert radix.table_index(radix.encode_key(0x200000, 9), 4) == 2
    assert radix.bitmap_index(radix.encode_key(0x40000000, 10)) == 256


@SETTINGS
@given(blocks_strategy())
def test_radix_roundtrip(blocks):
    mem = SparseMemory([(0, RAM_TOP)])
    bump = Bump(META)
    tree = radix.encode(blocks, mem, bump.page)
    got = radix.walk(mem, tree.root)
    assert got == kernel_radix_order(blocks)
    for phys, order in got:
        assert radix.decode_key(radix.encode_key(phys, order)) == (phys, order)


@SETTINGS
@given(blocks_strategy(), st.data())
def test_radix_delete(blocks, data):
    mem = SparseMemory([(0, RAM_TOP)])
    bump = Bump(META)
    tree = radix.encode(blocks, mem, bump.page)
    uniq = sorted(set(blocks))
    gone = data.draw(st.lists(st.sampled_from(uniq), unique=True)) if uniq else []
    for b in gone:
        assert tree.delete(*b)
    assert radix.walk(mem, tree.root) == kernel_radix_order(set(uniq) - set(gone))


def test_radix_add_failure_frees_branch():
    mem = SparseMemory([(0, RAM_TOP)])
    pages = iter([0x10000, 0x11000, 0x12000])   # root + 2 nodes, then failure
    freed = []
    tree = radix.RadixTree(mem, lambda: next(pages, None), freed.append)
    assert tree.add(0x1000, 0) == -12
    assert freed == [0x11000, 0x12000]
    assert mem.read(0x10000, 4096) == bytes(4096)   # anchor slot cleared
    assert radix.walk(mem, tree.root) == []


@pytest.mark.parametrize("bits", [512 * 8, 4096 * 8])
@SETTINGS
@given(blocks=blocks_strategy(top=1 << 34))
def test_chunks_roundtrip(bits, blocks):
    mem = SparseMemory([(0, RAM_TOP)])
    bump = Bump(META)
    tr = chunks.ChunkTracker(bits)
    for b in blocks:
        tr.add(*b)
    first, pages = chunks.encode(tr, mem, bump.alloc)
    got = chunks.walk(mem, first, bits)
    assert got == list(tr.blocks())
    assert sorted(got) == sorted(set(blocks))
    w = chunks.ChunkWalk(mem, first, bits, strict=True)
    list(w.blocks())
    orders = [c.order for c in w.chunks]
    assert orders == sorted(orders)                   # a new chunk per order, ascending
    guess = chunks.guess_preserve_bits(mem, first)[0]
    # either detected, or undetectable because both readings agree
    assert guess == bits or chunks.walk(mem, first, guess) == got


def test_chunk_boundaries_and_mismatched_bitmap_size():
    """256 bitmaps of one order need two chunks; reading 512-byte bitmaps
    as 4 KiB ones (6.17 -> 6.18) yields blocks that were never preserved."""
    mem = SparseMemory([(0, RAM_TOP)])
    bump = Bump(META)
    tr = chunks.ChunkTracker(4096)
    for i in range(256):
        tr.add(i * (4096 << 12), 0)
    tr.add(0x5000, 3)
    first, pages = chunks.encode(tr, mem, bump.alloc)
    w = chunks.ChunkWalk(mem, first, 4096, strict=True)
    got = list(w.blocks())
    assert [(c.order, c.num_elms) for c in w.chunks] == [(0, 255), (0, 1), (3, 1)]
    assert got == list(tr.blocks())
    assert chunks.guess_preserve_bits(mem, first)[0] == 4096
    # 6.18 reads each 512-byte bitmap as 4 KiB: the next 3584 bytes are other
    # bitmaps, so their bits become blocks 16 MiB further on
    wrong = chunks.walk(mem, first, 32768, strict=False)
    assert set(got) < set(wrong)


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)), max_size=20),
       st.integers(0, 15))
def test_scratch_roundtrip(areas, tail):
    objs = [structs.KhoScratch(a, s) for a, s in areas]
    data = structs.encode_scratch(objs) + b"\x01" * tail
    got, left = structs.decode_scratch(data)
    assert got == objs and left == tail
    assert structs.parse_debugfs_scratch(structs.format_debugfs_scratch([a.addr for a in objs]), "x") == \
        [a.addr for a in objs]


U64 = st.integers(0, 2**64 - 1)


@SETTINGS
@given(U64, U64, U64, U64, U64)
def test_setup_data_roundtrip(a, b, c, d, nxt):
    mem = SparseMemory([(0, 1 << 30)])
    kd = structs.KhoData(a, b, c, d)
    mem.write(0x1000, structs.encode_setup_data(kd, nxt))
    assert structs.decode_setup_data(mem, 0x1000) == (nxt, 10, kd)


@st.composite
def chosen_range(draw, ac, sc, size=None):
    """(addr, size) as fdt_appendprop_addrrange accepts them: each in its
    cells (32 bits per cell); with one address cell the range also ends at
    or below 4 GiB."""
    if size is None:
        size = draw(st.integers(0, min(2**(32 * sc) - 1, 2**32 if ac == 1 else 2**64)))
    if ac == 1:
        return draw(st.integers(0, min(2**32 - 1, 2**32 - size))), size
    return draw(st.integers(0, 2**64 - 1)), size


@SETTINGS
@given(st.sampled_from([1, 2]), st.sampled_from([1, 2]), st.data())
def test_chosen_roundtrip(ac, sc, data):
    """/chosen's linux,kho-fdt and linux,kho-scratch are (address, size) in
    the root's #address-cells and #size-cells: one cell holds 32 bits, two
    hold 64, big-endian.  Every range such cells hold comes back exactly."""
    fdt_phys, fdt_size = data.draw(chosen_range(ac, sc, data.draw(st.sampled_from([4096, 2**32 - 1]))
                                                if sc == 1 else None))
    sphys, slen = data.draw(chosen_range(ac, sc))
    blob = structs.encode_chosen(fdt_phys, sphys, slen, ac, sc, fdt_size)
    assert structs.decode_chosen(blob) == (fdt_phys, fdt_size, sphys, slen)
    chosen = F.parse(blob, "chosen").child("chosen")
    assert chosen.props["linux,kho-fdt"] == fdt_phys.to_bytes(4 * ac, "big") + fdt_size.to_bytes(4 * sc, "big")
    assert chosen.props["linux,kho-scratch"] == sphys.to_bytes(4 * ac, "big") + slen.to_bytes(4 * sc, "big")


def test_chosen_cells_hold_high_addresses_only_with_two_cells():
    """The model's arm64 kexec writes 2+2 cells: a handover above 4 GiB
    survives; read with 1+1 cells the same properties are the wrong length,
    and the kernel ignores them (decode_chosen: None)."""
    hi = (0x8_8000_0000, 0x8_9000_0000, 48)
    blob = structs.encode_chosen(*hi)
    assert structs.decode_chosen(blob) == (hi[0], 4096, hi[1], hi[2])
    chosen = list(F.parse(blob, "x").child("chosen").props.items())
    narrow, err = F.build([("#address-cells", b"\0\0\0\1"), ("#size-cells", b"\0\0\0\1")], [("chosen", chosen)])
    assert err == 0 and structs.decode_chosen(narrow) is None
    # no #address-cells / #size-cells: the defaults are 2 and 1, so 2+2 cells do not fit either
    bare, err = F.build([], [("chosen", chosen)])
    assert err == 0 and structs.decode_chosen(bare) is None


@pytest.mark.xfail(strict=True, raises=pytest.fail.Exception,
                   reason="encode_chosen writes what fdt_appendprop_addrrange refuses with -FDT_ERR_BADVALUE: "
                          "a value wider than its cells (the low 32 bits are kept), a 1-cell range past 4 GiB")
@pytest.mark.parametrize("args", [(2**32, 0x1000, 48, 1, 2), (0x1000, 0x1000, 2**32, 2, 1),
                                  (0xFFFF_F800, 0x1000, 48, 1, 1)])       # the last: the FDT page ends past 4 GiB
def test_chosen_refuses_what_the_cells_cannot_hold(args):
    with pytest.raises(ValueError):
        structs.encode_chosen(*args)


@SETTINGS
@given(st.lists(st.integers(1, 2**40).map(lambda x: x << 12), max_size=1100), st.integers(0, 3))
def test_vmalloc_roundtrip(blocks, order):
    mem = SparseMemory([(0, RAM_TOP)])
    bump = Bump(META)
    desc, chunk_pages = structs.encode_vmalloc_chunks(mem, bump.page, blocks, order)
    got, pages = structs.decode_vmalloc(mem, structs.KhoVmalloc.unpack(desc.pack()))
    assert got == blocks and pages == chunk_pages
    assert len(chunk_pages) == len(blocks) // structs.KHO_VMALLOC_SIZE + 1


@SETTINGS
@given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=64), st.integers(0, 2**32 - 1))
def test_kexec_metadata_roundtrip(rel, count):
    md = structs.KexecMetadata(1, rel, count)
    data = md.pack()
    assert len(data) == 73
    assert structs.decode_kexec_metadata(data) == md


def test_kexec_metadata_kernel_messages():
    with pytest.raises(Exception, match=r"kexec-metadata blob too small \(3 bytes\)"):
        structs.decode_kexec_metadata(b"\x01\0\0")
    with pytest.raises(Exception, match=r"kexec-metadata version 2 not supported \(expected 1\)"):
        structs.decode_kexec_metadata(struct.pack("<I", 2) + bytes(69))
    with pytest.raises(Exception, match=r"too small for v1 \(72 < 73\)"):
        structs.decode_kexec_metadata(struct.pack("<I", 1) + bytes(68))


@SETTINGS
@given(st.lists(st.binary(min_size=1, max_size=80), max_size=200), st.sampled_from([16, 64, 80]))
def test_blocks_roundtrip(entries, size):
    mem = SparseMemory([(0, RAM_TOP)])
    bump = Bump(META)
    entries = [e[:size].ljust(size, b"\0") for e in entries]
    head, pages = structs.encode_blocks(mem, bump.page, entries, size)
    got, gpages = structs.decode_blocks(mem, head, size)
    assert got == entries and gpages == pages


def test_blocks_cycle_and_count_checks():
    mem = SparseMemory([(0, RAM_TOP)])
    mem.write(0x1000, struct.pack("<QQ", 0x2000, 1))
    mem.write(0x2000, struct.pack("<QQ", 0x1000, 1))
    with pytest.raises(Exception, match="Block set is corrupted"):
        structs.decode_blocks(mem, 0x1000, 64)
    mem.write(0x3000, struct.pack("<QQ", 0, 0))
    with pytest.raises(Exception, match="Block contains invalid entry count: 0"):
        structs.decode_blocks(mem, 0x3000, 64)


NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-0123456789", min_size=1, max_size=20)


@pytest.mark.parametrize("prof", list(P.PROFILES.values()), ids=lambda p: p.name)
@SETTINGS
@given(mm=U64, subs=st.lists(st.tuples(NAMES, U64, st.integers(0, 2**32)), max_size=12, unique_by=lambda t: t[0]))
def test_root_fdt_roundtrip(prof, mm, subs):
    if prof.fdt_built_at == "finalize":
        blob, err = root.build_root_at_finalize(prof, mm, [(n, p) for n, p, _ in subs])
        assert err == 0
        order = [n for n, _, _ in subs]
        assert F.header(blob).off_mem_rsvmap == 48
    else:
        page = root.build_root_at_boot(prof, mm)
        for n, p, s in subs:
            assert page.add_subtree(n, p, s) == 0
        blob = page.blob()
        order = [n for n, _, _ in reversed(subs)]         # newest first
        assert F.header(blob).off_mem_rsvmap == (40 if subs else 48)
    r = root.decode_root(blob)
    assert r.compatible == prof.compatible and r.mem_map == mm
    assert [s.name for s in r.subtrees] == order
    want = {n: (p, s) for n, p, s in subs}
    for s in r.subtrees:
        assert s.prop == prof.subtree_prop and s.phys == want[s.name][0]
        assert s.size == (want[s.name][1] if prof.size_prop else None)


def test_spec_worked_vector_fresh_and_edited_root():
    page = root.build_root_at_boot(P.B, 0)
    blob = page.blob()
    assert len(blob) == 152
    assert blob[:40].hex() == ("d00dfeed00000098000000400000007800000030000000110000001000000000000000200000"
                               "003800000000")[:80]
    assert blob[-32:] == b"preserved-memory-map\0compatible\0"
    assert page.add_subtree("kho_test", 0x1234000) == 0
    blob = page.blob()
    assert len(blob) == 188
    assert blob[:40].hex() == "d00dfeed000000bc0000003800000098000000280000001100000010000000000000002400000060"
    assert blob.endswith(b"preserved-memory-map\0compatible\0fdt\0")
    assert bytes.fromhex("0040230100000000") in blob


def test_add_subtree_errors():
    page = root.build_root_at_boot(P.E, 0x1000)
    assert page.add_subtree("a", 0x2000, 1) == 0
    assert page.add_subtree("a", 0x3000, 1) == -P.EEXIST
    n = 0
    while True:                                   # fill the page
        rc = page.add_subtree(f"n{n:04d}" + "x" * 40, 0x4000 + n, 8)
        if rc:
            break
        n += 1
    assert rc == -P.ENOMEM and n > 10
    r = root.decode_root(page.blob())              # still a valid FDT, no half node
    assert all(s.phys is not None and s.size is not None for s in r.subtrees)
    assert page.remove_subtree(0x2000)
    assert root.decode_root(page.blob()).subtree("a") is None


@SETTINGS
@given(st.lists(st.tuples(NAMES, U64, U64), max_size=8, unique_by=lambda t: t[0]))
def test_memblock_roundtrip(regions):
    rs = [clients.ReserveMem(*r) for r in regions]
    blob, err = clients.encode_memblock(rs)
    assert err == 0 and clients.decode_memblock(blob) == rs


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), U64, st.integers(0, 2**32 - 1))
def test_kho_test_roundtrip(nr, csum, first, pages):
    desc = structs.KhoVmalloc(first, pages, 1, 0)
    blob, err = clients.encode_kho_test(nr, csum, desc)
    assert err == 0
    t = clients.decode_kho_test(blob)
    assert (t.nr_folios, t.csum, t.folios_info) == (nr, csum, desc)


@SETTINGS
@given(U64, U64, U64)
def test_luo_ser_roundtrip(num, spa, fpa):
    luo = clients.decode_luo(clients.encode_luo_ser(num, spa, fpa))
    assert (luo.compatible, luo.liveupdate_num, luo.sessions_pa, luo.flbs_pa) == ("luo-v5", num, spa, fpa)


# --------------------------------------------------------------------------- the layers under the codecs

def _run_python(code: str) -> str:
    import os
    import subprocess
    import sys

    import pykho
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(pykho.__file__)))
    return subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                          text=True).stdout


def test_abi_and_errors_import_no_higher_layer():
    out = _run_python(
        "import sys\n"
        "import pykho.errors\n"
        "print(sorted(m for m in sys.modules if m.startswith('pykho')))\n"
        "import pykho.abi.bits, pykho.abi.chunks, pykho.abi.fdt, pykho.abi.mem, pykho.abi.radix\n"
        "import pykho.abi.root, pykho.abi.structs\n"
        "print(sorted(m for m in sys.modules if m.startswith('pykho')))\n")
    alone, abi = out.splitlines()
    layer0 = {"errors", "findings", "_version"}
    assert "pykho.errors" in eval(alone) and {m.split(".")[1] for m in eval(alone) if "." in m} <= layer0
    assert {m.split(".")[1] for m in eval(abi) if "." in m} <= layer0 | {"abi"}


class ProtocolMemory:
    """Memory with the methods of pykho.abi.mem's protocols and nothing else
    (not a pykho.memory class, no page fast path)."""

    def __init__(self, inner):
        self.inner = inner

    def read(self, phys, size, structure="memory"):
        return self.inner.read(phys, size, structure)

    def contains(self, phys, size=1):
        return self.inner.contains(phys, size)

    def ranges(self):
        return self.inner.ranges()

    def write(self, phys, data):
        self.inner.write(phys, data)


class ReadsElsewhere(SparseMemory):
    """A SparseMemory subclass that reads elsewhere and never ran
    SparseMemory.__init__ (as validate's overlays once did): it has no pages
    of its own, so it must not get the page fast paths."""

    def __init__(self, inner):
        self.inner = inner
        self.name = "layered"

    def ranges(self):
        return self.inner.ranges()

    def contains(self, phys, size=1):
        return self.inner.contains(phys, size)

    def read(self, phys, size, structure="memory"):
        return self.inner.read(phys, size, structure)


MIXED_RUNS = [(0x40000000, 70000, 0), (0x200000, 3, 9), (0x100000000, 1, 18), (0x100000000, 5, 0),
              (1 << 50, 1, 38), (0x7000, 1, 0), (0x7000, 1, 0)]


def _walk_views(w):
    s = w.summarize()
    return (list(w.blocks()), [(o, radix.bits.tolist(a)) for o, a in w.leaves()],
            [p for _, a in w.batches() for p in radix.bits.tolist(a)], s.as_dict(), s.unchecked)


def test_decoders_read_any_protocol_memory_alike():
    """The fast path (a SparseMemory's stored pages) and the plain ``read``
    path (any object with the protocol's methods) decode the same."""
    from pykho.abi.mem import page_buffer_of, page_bytes_of
    from pykho.memory import CowMemory, LayeredMemory, StrictCowMemory

    mem = SparseMemory([(0, RAM_TOP)])
    rt = radix.encode_runs(MIXED_RUNS, mem, Bump(META).page).root
    ch, _ = chunks.encode_bitmaps(chunks.bitmaps_from_runs(MIXED_RUNS[:4], 4096), 4096, mem,
                                  Bump(0xF8_0000_0000).alloc)
    top = SparseMemory([(0x7F00_0000, 0x8000_0000)])
    views = [mem, ProtocolMemory(mem), ReadsElsewhere(mem), LayeredMemory(mem, top, 0x7F00_0000, 1 << 24),
             CowMemory(mem, [(0, RAM_TOP)]), StrictCowMemory(mem, [(0, RAM_TOP)])]
    assert [page_bytes_of(v) is not None for v in views] == [True, False, False, False, True, True]
    assert [page_buffer_of(v) is not None for v in views] == [True, False, False, False, True, True]
    want_r = _walk_views(radix.RadixWalk(mem, rt))
    want_c = _walk_views(chunks.ChunkWalk(mem, ch, 4096))
    # the map merges the repeated block; the 1 GiB block holds 5 order-0 pages
    assert want_r[3]["duplicates"] == 0 and want_r[3]["overlaps"] == 5 and len(want_r[0]) == 70011
    for v in views[1:]:
        assert _walk_views(radix.RadixWalk(v, rt)) == want_r
        assert _walk_views(chunks.ChunkWalk(v, ch, 4096)) == want_c


def test_sparse_memory_walks_take_no_copies():
    """A map held in a SparseMemory is walked from its stored pages: ``read``
    is never called (the benchmark's fast path)."""
    mem = SparseMemory([(0, RAM_TOP)])
    rt = radix.encode_runs(MIXED_RUNS, mem, Bump(META).page).root
    ch, _ = chunks.encode_bitmaps(chunks.bitmaps_from_runs(MIXED_RUNS[:4], 32768), 32768, mem,
                                  Bump(0xF8_0000_0000).alloc)

    def no_read(*a, **k):
        raise AssertionError("read() called")
    mem.read = no_read
    assert radix.RadixWalk(mem, rt).summarize().blocks == 70011
    assert sum(len(a) for _, a in chunks.ChunkWalk(mem, ch).batches()) == 70009


def test_encoders_write_alike_through_the_protocol():
    """The radix encoder edits a SparseMemory's pages in place and anything
    else through read/write: the same bytes either way."""
    blocks = [(p + (i << (12 + o)), o) for p, n, o in MIXED_RUNS if n < 100 for i in range(n)]
    a = SparseMemory([(0, RAM_TOP)])
    b = SparseMemory([(0, RAM_TOP)])
    ta = radix.encode(blocks, a, Bump(META).page)
    tb = radix.encode(blocks, ProtocolMemory(b), Bump(META).page)
    assert ta.nodes == tb.nodes and a.pages.keys() == b.pages.keys()
    assert all(a.pages[k] == b.pages[k] for k in a.pages)
    for blk in blocks[:5]:
        assert ta.delete(*blk) and tb.delete(*blk)
    assert all(a.pages[k] == b.pages[k] for k in a.pages)


@pytest.mark.parametrize("prof", list(P.PROFILES.values()), ids=lambda p: p.name)
def test_root_encoders_need_only_the_wire_format(prof):
    """abi/root.py reads three attributes of a profile; any object with them
    (here a plain class) makes the same bytes as the Profile."""
    class Wire:
        compatible = prof.compatible
        subtree_prop = prof.subtree_prop
        size_prop = prof.size_prop

    subs = [("kho_test", 0x1234000), ("memblock", 0x5678000), ("kho_test", 0x1000)]
    assert root.build_root_at_finalize(Wire(), 0x9000, subs[:2]) == root.build_root_at_finalize(prof, 0x9000, subs[:2])
    pw, pp = root.build_root_at_boot(Wire(), 0x9000), root.build_root_at_boot(prof, 0x9000)
    for name, phys in subs:
        assert pw.add_subtree(name, phys, 77) == pp.add_subtree(name, phys, 77)
    assert pw.remove_subtree(0x1234000) == pp.remove_subtree(0x1234000)
    assert pw.blob() == pp.blob()


NO_NUMPY_WALK = """
import json, sys
if sys.argv[1] == "off":
    sys.modules["numpy"] = None          # import numpy fails
from pykho.abi import bits, chunks, radix
from pykho.memory import Bump, SparseMemory
runs = %r
mem = SparseMemory([(0, 1 << 52)])
rt = radix.encode_runs(runs, mem, Bump(0xF0_0000_0000).page).root
out = {"numpy": bits.HAVE_NUMPY}
for name, w in (("radix", lambda: radix.RadixWalk(mem, rt)),):
    s = w().summarize()
    out[name] = [list(w().blocks()), [(o, bits.tolist(a)) for o, a in w().leaves()],
                 [(p, o) for o, a in w().batches() for p in bits.tolist(a)], s.as_dict()]
for pb in (4096, 32768):
    ch, _ = chunks.encode_bitmaps(chunks.bitmaps_from_runs(runs[:4], pb), pb, mem, Bump(0xF8_0000_0000 + pb).alloc)
    w = lambda: chunks.ChunkWalk(mem, ch, pb)
    s = w().summarize()
    out[str(pb)] = [list(w().blocks()), [(o, bits.tolist(a)) for o, a in w().leaves()],
                    [(p, o) for o, a in w().batches() for p in bits.tolist(a)], s.as_dict()]
out["set_bits"] = [bits.tolist(bits.set_bits(b)) for b in (b"", b"\\x81", bytes(8), b"\\xff" * 16, b"\\x01\\x00\\x80")]
out["counts"] = bits.batch_counts([b"\\x00" * 8, b"\\x10" + b"\\x00" * 6 + b"\\x80"])
print(json.dumps(out, sort_keys=True))
"""


def test_decoders_without_numpy_give_the_same_results():
    """numpy is optional: the pure-Python paths of abi/bits.py (every walk,
    batch, summary and overlap check) agree with the numpy ones."""
    import json
    code = NO_NUMPY_WALK % (MIXED_RUNS,)
    on = json.loads(_run_python(code.replace("sys.argv[1]", "'on'")))
    off = json.loads(_run_python(code.replace("sys.argv[1]", "'off'")))
    assert on.pop("numpy") is True and off.pop("numpy") is False
    assert on == off
    assert len(on["radix"][0]) == 70011 and on["radix"][3]["overlaps"] == 5


_LEAF_KIND = st.sampled_from(["empty", "full", "one run", "random"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_LEAF_KIND, st.integers(0, 32767), st.integers(1, 40000), st.integers(0, 2**32 - 1),
                          st.integers(1, 2)), min_size=1, max_size=4),
       st.integers(0, 9), st.integers(0, 1 << 20))
def test_radix_leaf_runs_are_the_leaf_blocks(leaves, order, k0):
    """The model's batched leaf reservation takes a group of leaves as runs
    of memory straight from their bit edges: the blocks those runs cover,
    in order, are exactly the leaves' set bits decoded one by one
    (`radix_batch_phys`), runs are maximal (none touches the next, also
    across neighbouring leaves) and ascending."""
    np = pytest.importorskip("numpy")
    from pykho.abi import bits
    keys, pages, k = [], [], (k0 << 15) | (1 << (radix.KHO_ORDER_0_LOG2 - order))
    for kind, at, n, seed, step in leaves:
        keys.append(k)
        k += step << 15
        b = np.zeros(32768, np.uint8)
        if kind == "full":
            b[:] = 1
        elif kind == "one run":
            b[at:at + n] = 1
        elif kind == "random":
            b = (np.random.default_rng(seed).random(32768) < (seed % 97) / 97).astype(np.uint8)
        pages.append(np.packbits(b, bitorder="little").tobytes())
    shift = 12 + order
    want = bits.radix_batch_phys(pages, keys, shift).astype(np.int64)
    runs = bits.radix_batch_runs(pages, keys, shift)
    assert runs is not None
    s, e = runs
    got = np.concatenate([np.arange(a, b, 1 << shift) for a, b in zip(s.tolist(), e.tolist())] or
                         [np.zeros(0, np.int64)])
    assert np.array_equal(got, want)
    assert bool(np.all(e > s)) and bool(np.all(s[1:] > e[:-1]))


_BITMAP = st.sampled_from(["sparse", "dense", "full", "one"])


def _bitmap_page(kind, seed):
    """A 4096-byte bitmap of one of the kinds of ``_BITMAP``, from ``seed``."""
    import numpy as np
    v = np.zeros(32768, np.uint8)
    if kind == "full":
        v[:] = 1
    elif kind == "one":
        v[seed % 32768] = 1
    else:
        v = (np.random.default_rng(seed).random(32768) < (0.002 if kind == "sparse" else 0.5)).astype(np.uint8)
    return np.packbits(v, bitorder="little").tobytes()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([0, 1, 3, 6, 9, 10, 16, 18, 24]), st.integers(0, 3),
                          st.integers(0, 40000), _BITMAP, st.integers(0, 2**31), st.booleans()),
                min_size=2, max_size=10))
def test_overlap_filter_keeps_every_report(recs):
    """BlockSets drops candidate bitmap pairs that share no block with a
    vectorised test before the exact check: every duplicate and overlap it
    reported without that filter it still reports, with the same words,
    for leaves at aligned starts (radix) and bitmaps at odd starts (kho-v1)."""
    pytest.importorskip("numpy")
    from pykho.abi import bits

    def build():
        sets, summ = bits.BlockSets(), bits.MapSummary()
        for order, slot, shift, kind, seed, aligned in recs:
            # aligned: a radix leaf of this order at phys slot << 40, where every
            # order's leaf begins (their spans meet); else a bitmap at an odd start
            first = ((slot << 28) >> order) & ~32767 if aligned else (slot << 15) + shift
            page = _bitmap_page(kind, seed)
            (n, lo, hi), = bits.batch_counts([page])
            if n:
                sets.add_bitmap(order, first, page, lo, hi, 0x1000 * (seed % 97))
        return sets, summ

    def reports(filtered):
        sets, summ = build()
        got = []
        if not filtered:
            orig, orig_leaf = bits._may_share, bits._leaf_pairs
            bits._may_share = lambda cands: [True] * len(cands)
            bits._leaf_pairs = lambda recs: None
        try:
            sets.check(summ, got.append)
        finally:
            if not filtered:
                bits._may_share, bits._leaf_pairs = orig, orig_leaf
        return [str(e) for e in got], summ.duplicates, summ.overlaps
    assert reports(True) == reports(False)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.tuples(st.sampled_from([0, 1, 3, 6, 9, 10, 15, 16, 18, 24]), st.integers(0, 3)),
                       st.tuples(_BITMAP, st.integers(0, 2**31)), min_size=2, max_size=10))
def test_radix_leaves_are_paired_without_the_sweep(leaves):
    """Whole radix leaves (aligned, one per place and order) are paired by
    arithmetic, each order against each larger one, with no sweep over
    spans: the same reports, in the same order, as every pair the sweep
    meets checked one by one."""
    pytest.importorskip("numpy")
    from pykho.abi import bits

    def build():
        sets = bits.BlockSets()
        for (order, slot), (kind, seed) in sorted(leaves.items()):
            first = slot << 15              # leaf ``slot`` of its order: leaves 0.. of every order meet at 0
            page = _bitmap_page(kind, seed)
            (n, lo, hi), = bits.batch_counts([page])
            (n2,), occupied = bits.leaf_counts([page])
            assert n2 == n and len(occupied) == 64
            if n and seed % 2:
                # as summarize adds them: the whole leaf, with its words' occupancy
                sets.add_leaf(order, first, page, occupied, 0x1000 * (seed % 97))
            elif n:
                sets.add_bitmap(order, first, page, lo, hi, 0x1000 * (seed % 97))
        return sets

    sets = build()
    assert bits._leaf_pairs(sorted(sets.recs, key=bits._start)) is not None
    fast, summ = [], bits.MapSummary()
    sets.check(summ, fast.append)
    orig, orig_leaf = bits._may_share, bits._leaf_pairs
    bits._may_share, bits._leaf_pairs = (lambda cands: [True] * len(cands)), (lambda recs: None)
    try:
        slow, summ2 = [], bits.MapSummary()
        build().check(summ2, slow.append)
    finally:
        bits._may_share, bits._leaf_pairs = orig, orig_leaf
    assert [str(e) for e in fast] == [str(e) for e in slow]
    assert (summ.duplicates, summ.overlaps) == (summ2.duplicates, summ2.overlaps)
