"""validate on maps built with pykho's encoders: what the bytes are (overlap
warnings) against what the target kernel does with them (the model's run)."""

from __future__ import annotations

import pytest

from pykho import profiles as P
from pykho.abi import radix, root, structs
from pykho.handover import Handover
from pykho.memory import Bump, SparseMemory
from pykho.reports.validate import validate

GiB = 1 << 30


def handover(blocks: list[tuple[int, int]], ram: int = 4 * GiB) -> Handover:
    mem = SparseMemory([(0, ram)])
    bump = Bump(ram - 64 * (1 << 20))
    tree = radix.RadixTree(mem, bump.page)
    for p, o in blocks:
        assert tree.add(p, o) == 0
    fdt = bump.page()
    assert tree.add(fdt, 0) == 0              # 7.2 preserves its root FDT page
    page = root.build_root_at_boot(P.E, tree.root)
    mem.write(fdt, bytes(page.buf))
    arr = bump.page()
    sc = [structs.KhoScratch(ram - 512 * (1 << 20), 256 * (1 << 20))]
    mem.write(arr, structs.encode_scratch(sc))
    return Handover(source="encoded", root_blob=page.blob(), root_phys=fdt, scratch=sc, scratch_phys=arr,
                    scratch_len=16, mem=mem)


def test_overlapping_blocks_are_a_warning_and_the_kernel_reserves_both():
    big = 0x40000000
    rep = validate(handover([(big, 9), (big + 0x3000, 0)]), P.E, want_reserved=True)
    codes = {f["code"]: f["severity"] for f in rep["findings"]}
    assert codes.get("map-overlap") == "warning"
    assert rep["verdict"]["populate"] == "accepted" and "oops" not in rep["verdict"]
    got = sorted(tuple(b) for b in rep["verdict"]["reserved"])
    assert [b for b in got if big <= b[0] < big + (2 << 20)] == [(big, 9), (big + 0x3000, 0)] and len(got) == 3


def test_an_order_above_max_page_order_is_normal_on_7_2():
    """kho_preserve_pages splits a range by alignment only: an 8 MiB aligned
    reserve_mem region is one order-11 block, and 7.2 takes it."""
    rep = validate(handover([(0x40000000, 11)]), P.E)
    assert [f for f in rep["findings"] if f["severity"] == "error"] == []
    assert rep["summary"]["by_order"] == {"0": 1, "11": 1}


def test_a_full_leaf_reserves_as_one_run():
    """32768 order-0 pages from 1 GiB up: one full radix leaf (the fast path)."""
    rep = validate(handover([(GiB + (i << 12), 0) for i in range(32768)]), P.E, want_reserved=True)
    assert rep["summary"]["blocks"] == 32768 + 1
    got = [b for b in rep["verdict"]["reserved"] if b[0] >= GiB and b[0] < 2 * GiB]
    assert len(got) == 32768 and got[0] == [GiB, 0] and got[-1] == [GiB + (32767 << 12), 0]


def test_map_coarsening_finds_the_doubling_quantum_in_one_pass():
    """kho map joins runs closer than a quantum when an order has more runs
    than a picture tells apart; the quantum comes from the gaps at once and
    must be the one doubling from a page, pass after pass, stops at: at most
    ``keep`` runs left, more than ``keep`` at half of it."""
    np = pytest.importorskip("numpy")
    from pykho.reports import mapplot
    rng = np.random.default_rng(7)
    for _ in range(200):
        n = int(rng.integers(3, 2000))
        lens = rng.integers(1, 64, n) * 4096
        gaps = rng.integers(1, 1 << int(rng.integers(2, 28)), n) * 4096
        s = (np.cumsum(gaps + lens) - lens).astype(np.int64)
        e = s + lens
        keep = int(rng.integers(1, n // 2 + 1))
        q = mapplot._coarse_quantum(s[1:] - e[:-1], keep)
        assert q >= 2 * 4096 and q & (q - 1) == 0
        js, je = mapplot._join_arrays(s, e, q)
        assert len(js) <= keep and js[0] == s[0] and je[-1] == e[-1]
        assert int((je - js).sum()) >= int((e - s).sum())
        if q > 2 * 4096:
            assert len(mapplot._join_arrays(s, e, q // 2)[0]) > keep
