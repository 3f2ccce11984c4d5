"""The model's interval sets: the array form (maps with millions of separate
runs) answers every operation as the list form does, and the page
allocator's batched paths record what one call per range records."""

from __future__ import annotations

import random

import numpy as np
import pytest

from pykho.model import machine
from pykho.model.machine import PAGE_SIZE, IntervalSet, PageAllocator, RunBatch, block_run_arrays, block_runs

# a small threshold so that random sets of a few hundred runs take the array form
pytestmark = pytest.mark.usefixtures("small_big")


@pytest.fixture
def small_big(monkeypatch):
    monkeypatch.setattr(machine, "_BIG", 16)


def _runs(rng: random.Random, n: int, span: int = 1 << 24) -> list[tuple[int, int]]:
    out = []
    for _ in range(n):
        s = rng.randrange(0, span) & ~0xFFF
        out.append((s, s + rng.choice([1, 2, 3, 64]) * PAGE_SIZE))
    return out


def _pair(rng: random.Random, n: int) -> tuple[IntervalSet, IntervalSet]:
    runs = _runs(rng, n)
    ref = IntervalSet()
    for s, e in runs:
        ref.add(s, e)
    big = IntervalSet()
    big.update_arrays(np.array([s for s, _ in runs]), np.array([e for _, e in runs]))
    return ref, big


@pytest.mark.parametrize("seed", range(6))
def test_array_form_answers_as_lists_do(seed):
    rng = random.Random(seed)
    ref, big = _pair(rng, 300)
    assert big.big and not ref.big
    assert list(big) == list(ref) and big.total() == ref.total()
    for _ in range(300):
        s = rng.randrange(0, 1 << 24)
        e = s + rng.randrange(1, 1 << 18)
        assert big.overlaps(s, e) == ref.overlaps(s, e)
        assert big.contains(s, e) == ref.contains(s, e)
        assert big.complement(s, e) == ref.complement(s, e)
        assert list(big.gaps_desc(s, e)) == list(reversed(ref.complement(s, e)))
        size = rng.choice([PAGE_SIZE, 8 * PAGE_SIZE, 64 * PAGE_SIZE])
        assert list(big.fitting(size, chunk=7)) == [r for r in ref if r[1] - r[0] >= size]
        assert list(big.fitting(size, reverse=True, chunk=7)) == [r for r in reversed(list(ref))
                                                                   if r[1] - r[0] >= size]
        op = rng.randrange(3)
        if op == 0:
            ref.add(s, e)
            big.add(s, e)
        elif op == 1:
            ref.remove(s, e)
            big.remove(s, e)
        assert list(big) == list(ref)


@pytest.mark.parametrize("seed", range(6))
def test_bulk_union_difference_and_overlap_queries(seed):
    rng = random.Random(100 + seed)
    ref, big = _pair(rng, 200)
    other = IntervalSet(_runs(rng, 150))
    os_, oe = (np.array([s for s, _ in other], dtype=np.int64), np.array([e for _, e in other], dtype=np.int64))
    hits = big.overlapping(os_, oe).tolist()
    assert hits == [k for k, (s, e) in enumerate(other) if ref.overlaps(s, e)]
    u_ref, u_big = ref.copy(), big.copy()
    u_ref.update(list(other))
    u_big.update_arrays(os_, oe, merged=True)
    assert list(u_big) == list(u_ref)
    d_ref, d_big = ref.copy(), big.copy()
    for s, e in other:
        d_ref.remove(s, e)
    d_big.subtract_arrays(os_, oe)
    assert list(d_big) == list(d_ref)


def test_leaf_runs_joined_across_leaves_as_merge_runs_does():
    rng = random.Random(7)
    physs = sorted({rng.randrange(0, 1 << 14) * PAGE_SIZE for _ in range(3000)})
    leaves = [np.array(physs[i:i + 97], dtype=np.uint64) for i in range(0, len(physs), 97)]
    batch = RunBatch()
    batch.GATHER = 3
    for i, leaf in enumerate(leaves):
        if i % 5 == 4:                     # a full leaf, as the walk reports it
            batch.append((int(leaf[0]), int(leaf[0]) + PAGE_SIZE))
            batch.add_arrays(*block_run_arrays(0, leaf[1:]))
        else:
            batch.add_arrays(*block_run_arrays(0, leaf))
    got = batch.merged()
    got = got if isinstance(got, list) else list(zip(got[0].tolist(), got[1].tolist()))
    assert got == machine.merge_runs(block_runs(0, physs))
    # out of order: still merged
    batch = RunBatch()
    for leaf in reversed(leaves):
        batch.add_arrays(*block_run_arrays(0, leaf))
    got = batch.merged()
    got = got if isinstance(got, list) else list(zip(got[0].tolist(), got[1].tolist()))
    assert got == machine.merge_runs(block_runs(0, physs))


def test_free_many_records_what_single_frees_record():
    rng = random.Random(3)
    pieces = IntervalSet(_runs(rng, 120))
    ps = np.array([s for s, _ in pieces], dtype=np.int64)
    pe = np.array([e for _, e in pieces], dtype=np.int64)
    made = []
    for batched in (False, True):
        v: list = []
        pa = PageAllocator("k", v)
        for s, e in _runs(random.Random(4), 40):
            pa.free_set.add(s, e)
        for s, _e in _runs(random.Random(5), 40):
            pa.reserve_preserved(s, 0)
        if batched:
            pa.free_many(ps, pe, "test")
        else:
            for s, e in pieces:
                pa.free(s, e, "test")
        made.append(([x.as_dict() for x in v], list(pa.free_set)))
    assert made[0][0], "the case overlaps both sets"
    assert made[0] == made[1]


@pytest.mark.parametrize("seed", range(4))
def test_unions_and_splits_in_place_keep_the_sets_exact(seed):
    """A union that adds a few runs to arrays with room at their end writes
    them in place (each run moved once), and a split of one interval of a
    big set moves the tail in place: both give the set a plain union or
    ``add``/``remove`` of lists gives, and neither writes into the other
    operand's arrays."""
    rng = random.Random(seed)
    runs = machine.merge_runs(sorted(_runs(rng, 400)))
    few = machine.merge_runs(sorted(_runs(rng, 12)))
    want = IntervalSet(runs)
    for s, e in few:
        want.add(s, e)
    n = len(runs)
    a_s = np.empty(n + 40, dtype=np.int64)[:n]
    a_e = np.empty(n + 40, dtype=np.int64)[:n]
    a_s[:] = [s for s, _ in runs]
    a_e[:] = [e for _, e in runs]
    b_s = np.array([s for s, _ in few], dtype=np.int64)
    b_e = np.array([e for _, e in few], dtype=np.int64)
    b_copy = (b_s.copy(), b_e.copy())
    s, e = machine.union_sorted(a_s, a_e, b_s, b_e, own="a")
    assert list(zip(s.tolist(), e.tolist())) == list(want)
    assert np.shares_memory(s, a_s)                    # written in place
    assert np.array_equal(b_s, b_copy[0]) and np.array_equal(b_e, b_copy[1])
    big = IntervalSet()
    big.update_arrays(s, e, merged=True, own=True)
    ref = IntervalSet(list(want))
    assert big.big
    for _ in range(200):                               # splits, joins and cuts, in place or not
        x = rng.randrange(0, 1 << 24)
        y = x + rng.randrange(1, 1 << 14)
        if rng.random() < 0.5:
            big.remove(x, y)
            ref.remove(x, y)
        else:
            big.add(x, y)
            ref.add(x, y)
        assert list(big) == list(ref)
