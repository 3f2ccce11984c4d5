"""A guest of 4 GiB with two NUMA nodes (QEMU memory backends, ACPI SRAT),
RAM above the PCI hole, on Linux 7.2.13 and 7.3.4 built with NUMA=y.

* boot 1 (a cold boot) sizes one scratch area per node: scale x the kernel
  reservations that carry that node's id (those made before NUMA init, and
  allocations that asked for the node: mm/memblock.c:1561-1562, 1842-1844;
  mm/numa_memblks.c:355-361).  pykho's kernel, given what boot 1's own log
  says was reserved before NUMA init, must size every node's area as the
  real one did;
* boot 2 against pykho's verdict (lines, map reservations, fate), and where
  its early allocations land: 7.2 keeps them inside the handed-over scratch,
  7.3 extends scratch over the 1 GiB blocks the tree leaves free
  (kho_extend_scratch) and allocates there, inside what pykho predicts;
* a radix node pointer into the PCI hole (no RAM, not in the direct map):
  7.3 faults in its early walk before any reservation, 7.2 after reserving
  what it walked first.
"""
from __future__ import annotations

import json
import re
import struct

import pytest

import vmtest.campaign as camp
import vmtest.records as records
from vmtest import coldboot

pytestmark = pytest.mark.vm

KERNELS = ["7.2.13", "7.3.4"]
SHAPE = {"memory": "4G", "numa_nodes": 2}
HOLE = 0xD0000000        # inside the PCI hole of QEMU's pc machine (RAM: 0-3 GiB, 4-5 GiB)
_ALLOC = re.compile(r"__memblock_reserve: \[(0x[0-9a-f]+)-(0x[0-9a-f]+)\] nid=(-?\d+) flags=([0-9a-f]+)")


def predicted_node_scratch(facts: dict, numa: bool, target) -> set[tuple[int, ...]]:
    """The per-node scratch sizes pykho's kernel gives boot 1, for every total
    of early reservations it might have (those carry no node on NUMA=y, so
    the answer should be one)."""
    from pykho.model.kernel import Kernel
    from pykho.model.machine import Machine
    got = set()
    for k in range(64 << 20, 320 << 20, 8 << 20):
        kern = Kernel(Machine(ram=facts["ram"]), target, facts["cmdline"], numa=numa,
                      image_size=facts["image"][1], early_kern=tuple(facts["early_kern"]), kern_reserved=k).boot()
        got.add(tuple(a.size for a in kern.scratch[2:]))
    return got


def outside_scratch_allocs(out) -> list[tuple[int, int]]:
    """Boot 2's memblock allocations above 1 MiB outside the scratch areas
    boot 1 handed over."""
    loc = json.loads((out / "ram" / "locate-stage1.json").read_text())
    areas = [(a, a + n) for a, n in loc["scratch"]["entries"]]
    got = []
    for x in (out / "stage2" / "dmesg.txt").read_text(errors="replace").splitlines():
        m = _ALLOC.search(x)
        if m and int(m.group(4), 16) & coldboot.MEMBLOCK_RSRV_KERN:
            a, b = int(m.group(1), 16), int(m.group(2), 16) + 1
            if a >= 1 << 20 and not any(s <= a < e for s, e in areas):
                got.append((a, b))
    return got


@pytest.mark.parametrize("name", KERNELS)
def test_two_node_guest(name, vm_kernel, tmp_path):
    from pykho import profiles as P
    build = vm_kernel(name)
    target = P.get_profile(build.series)
    case = camp.Case("numa2-4g-unmodified", "the real handover, untouched", lambda ctx: camp.Change(),
                     keep=True, **SHAPE)
    res = camp.run_case(case, tmp_path, build=build)
    assert res["pred"] is not None, res["diffs"]
    assert res["agree"], "\n".join(res["diffs"])
    assert res["real"]["found"] and res["real"]["fate"] == "ok"

    # boot 1: one scratch area per node, sized from that node's reservations
    facts = coldboot.early_facts(tmp_path / "stage1")
    numa = coldboot.build_has_numa(build.dir)
    assert numa and sorted({n for _, _, n in facts["ram"]}) == [0, 1]
    assert any(s >= 1 << 32 for s, _, _ in facts["ram"]), "RAM above the PCI hole"
    real_nodes = tuple(facts["scratch_len"][2:])
    pred_nodes = predicted_node_scratch(facts, numa, target)
    agree = pred_nodes == {real_nodes}
    records.record(kernel=build.release, next_kernel=build.release, arch="x86_64", source="crafted",
                   case="numa2-4g-per-node-scratch",
                   change="boot 1 (cold, kho=on) on a 4 GiB guest with two NUMA nodes: its per-node scratch sizes",
                   real={"scratch_len": facts["scratch_len"]},
                   predicted={"per_node": sorted(pred_nodes)}, agree=agree,
                   note="lowmem and global are not compared: where the allocations without a node land "
                        "(swiotlb below 4 GiB) is not modelled")
    assert len(real_nodes) == 2 and real_nodes[0] != real_nodes[1]
    assert agree, ([hex(x) for x in real_nodes], pred_nodes)

    # boot 2: where its early allocations go
    outside = outside_scratch_allocs(tmp_path)
    ext = [tuple(x) for x in res["pred"].get("scratch_extension") or []]
    inside = all(any(s <= a and b <= e for s, e in ext) for a, b in outside)
    agree = (bool(outside) == bool(ext)) and inside
    records.record(kernel=build.release, next_kernel=build.release, arch="x86_64", source="crafted",
                   case="numa2-4g-scratch-extension",
                   change="boot 2 on a 4 GiB two-node guest: its allocations outside the handed-over scratch",
                   real={"outside_scratch": [[a, b] for a, b in outside][:8], "count": len(outside)},
                   predicted={"scratch_extension": [list(x) for x in ext]}, agree=agree,
                   note="7.3: kho_extend_scratch makes free 1 GiB blocks scratch" if ext else
                   "7.2: scratch-only until memblock_free_all")
    if build.series == "7.3":
        assert outside and ext, "7.3 allocates outside the handed-over scratch on a 4 GiB guest"
    else:
        assert not outside and not ext
    assert inside, ([(hex(a), hex(b)) for a, b in outside], ext)


def _node_into_hole(ctx):
    """The root table's first entry points into the PCI hole."""
    r = ctx.locate["radix"]["root"]
    words = struct.unpack("<512Q", ctx.read(r, 4096))
    i = next(i for i, w in enumerate(words) if w)
    return camp.Change(jump=[(r + 8 * i, struct.pack("<Q", HOLE))])


@pytest.mark.parametrize("name", KERNELS)
def test_node_pointer_into_the_pci_hole(name, vm_kernel, tmp_path):
    build = vm_kernel(name)
    case = camp.Case("numa2-4g-radix-node-in-pci-hole", "radix root entry points into the PCI hole (no RAM)",
                     _node_into_hole, earlyprintk=True, retries=0, stall_timeout=30, **SHAPE)
    res = camp.run_case(case, tmp_path, build=build)
    assert res["pred"] is not None, res["diffs"]
    assert res["agree"], "\n".join(res["diffs"])
    assert res["real"]["oops"] and res["pred"]["oops"]
    if build.series == "7.3":
        assert res["real"]["reserved"] == [], "7.3 faults in its early walk, before any reservation"
