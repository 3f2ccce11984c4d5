"""The map walk's block-by-block memblock reservations (KERNEL-FACTS §13).

Every generation reserves each block it walks with its own memblock_reserve
and memblock_reserved_mark_noinit: blocks that touch merge into one region,
others each add one.  The model counts them, moves memblock.reserved the way
memblock_double_array does (twice the room, top-down in scratch, the old
array freed) and prints what memblock=debug prints; tests/vm/test_differential.py
checks the same moves on the real 7.2.13 and 7.3.4.
"""

import pytest

from pykho import findings
from pykho.model.kernel import Kernel
from pykho.model.machine import Machine, Memblock

PAGE = 4096
MOVED = "memblock: reserved is doubled to "


def cycle(pages, cmdline="kho=on memblock=debug"):
    machine = Machine(ram=[(0x100000, 4 << 30, 0)])
    old = Kernel(machine, "E", "kho=on", name="kernel 1", clients=()).boot()
    for p in pages:
        old.pages.free_set.remove(p, p + PAGE)
        assert old.preserve_folio(p, 0, "test") == 0
    assert old.kexec_file_load() == 0
    return old.kexec("E", cmdline=cmdline, name="kernel 2", clients=())


def moves(k):
    out = []
    for x in k.log:
        if x.startswith(MOVED):
            a, b = (int(v, 16) for v in x.split(" at [")[1].rstrip("]").split("-"))
            out.append((int(x.split()[5]), a, b))
    return out


SCATTERED = [(3 << 30) + 2 * i * PAGE for i in range(3000)]


def test_separate_pages_move_the_reserved_array_into_scratch():
    k = cycle(SCATTERED)
    mb = k.walk_memblock
    assert mb["blocks"] == 3001                       # the pages and the root FDT's
    assert mb["regions_after"] - mb["regions_before"] == 3001
    assert (mb["array_entries"], mb["array_bytes"], mb["failed_to"]) == (4096, 4096 * 24, None)
    got = moves(k)
    assert [n for n, _, _ in got] == [256, 512, 1024, 2048, 4096]
    areas = [(a.addr, a.addr + a.size) for a in k.scratch]
    for n, a, b in got:
        assert b - a + 1 == 24 * n
        assert any(s <= a and b < e for s, e in areas), (hex(a), areas)
    assert mb["array_phys"] == got[-1][1]
    # the array is a kernel reservation; the ones it left are free again
    assert k.memblock.reserved.contains(got[-1][1], got[-1][2] + 1)
    assert k.memblock.reserved_kern.contains(got[-1][1], got[-1][2] + 1)
    assert not any(k.memblock.reserved.overlaps(a, b + 1) for _, a, b in got[:-1])
    assert not k.violations
    assert all(k.restore_folio(p) == 0 for p in SCATTERED)


def test_touching_pages_make_one_region_and_no_move():
    k = cycle([(3 << 30) + i * PAGE for i in range(3000)])
    mb = k.walk_memblock
    assert mb["blocks"] == 3001 and mb["regions_after"] - mb["regions_before"] <= 2
    assert mb["array_entries"] == 128 and mb["array_phys"] is None
    assert moves(k) == []


def test_the_moves_print_only_with_memblock_debug():
    quiet, loud = cycle(SCATTERED, "kho=on"), cycle(SCATTERED)
    assert not [x for x in quiet.log if x.startswith("memblock:")]
    assert quiet.walk_memblock == loud.walk_memblock


def test_no_room_for_the_array_loses_the_later_reservations(monkeypatch):
    """memblock_double_array finds no room: pr_err, the reservation fails
    and kho_preserved_memory_reserve goes on; an error finding."""
    alloc = Memblock.alloc

    def small_only(self, size, *a, **kw):
        return 0 if size >= 4096 * 24 and self.scratch_only else alloc(self, size, *a, **kw)

    monkeypatch.setattr(Memblock, "alloc", small_only)
    k = cycle(SCATTERED)
    assert "memblock: Failed to double reserved array from 2048 to 4096 entries !" in k.log
    assert [n for n, _, _ in moves(k)] == [256, 512, 1024, 2048]
    assert k.walk_memblock["failed_to"] == 4096 and k.walk_memblock["array_entries"] == 2048
    assert [v.kind for v in k.violations] == ["walk-reserve-failed"]
    assert findings.severity_of("model-walk-reserve-failed") == findings.ERROR


@pytest.mark.parametrize("n", [0, 1, 100])
def test_few_regions_stay_in_the_static_array(n):
    k = cycle(SCATTERED[:n])
    assert moves(k) == [] and k.walk_memblock["array_entries"] == 128
