"""The profiles of the kernels vmtest builds besides 7.2.13: F (7.3.4) and
the E-unfixed variant, and what the model does with them
(docs/KERNEL-FACTS.md §12; the real boots: tests/vm/test_kernels.py)."""
from __future__ import annotations

import contextlib
import io
import json
import tarfile

import pytest

from helpers import A, ram_file
from pykho import profiles as P
from pykho.abi import root
from pykho.cli import main
from pykho.model import compat
from pykho.model.incoming import is_kdump_kernel
from pykho.model.scenarios import Run

GiB = 1 << 30


def test_names_and_aliases():
    assert P.get_profile("7.3") is P.F and P.F.default_release == "7.3.4"
    assert P.get_profile("7.3.4") is P.F
    assert P.get_profile("7.2") is P.E and P.E.default_release == "7.2.13"
    for name in ("7.2-unfixed", "7.2.13-unfixed", "E-unfixed", "e-unfixed"):
        assert P.get_profile(name) is P.E_UNFIXED
    assert P.E_UNFIXED.default_release == "7.2.13"
    # a variant is not a generation: not in the compat matrix, not guessed from bytes
    assert "E-unfixed" not in P.PROFILES and "F" in P.PROFILES
    assert P.profiles_for_compatible("kho-v4") == [P.E]
    assert P.profiles_for_compatible("kho-v4", same_wire=True) == [P.E, P.F]


def test_unfixed_populate_has_no_map_check():
    assert P.PopulateStep.MEM_MAP in P.E.populate_steps
    assert P.PopulateStep.MEM_MAP not in P.E_UNFIXED.populate_steps
    assert P.E_UNFIXED.populate_steps == P.B_PREFIX.populate_steps
    # everything else is 7.2's
    same = {f for f in P.Profile.__dataclass_fields__ if f not in ("name", "kernels", "populate_steps",
                                                                   "same_wire_as")}
    assert all(getattr(P.E, f) == getattr(P.E_UNFIXED, f) for f in same)


def test_f_differs_from_e_only_where_7_3_does():
    diff = {f for f in P.Profile.__dataclass_fields__ if getattr(P.E, f) != getattr(P.F, f)}
    assert diff == {"name", "kernels", "default_release", "same_wire_as", "kdump_gate", "msg_walker_prop_bad",
                    "early_tree_walk", "scratch_extension_block", "scratch_excludes_hugetlb"}
    assert P.F.msg_walker_prop_bad == "KHO: failed to get preserved memory map"


def test_compat_has_f():
    cells = {(c["old"], c["new"]): c for c in compat.matrix()}
    for pair in (("E", "F"), ("F", "E"), ("F", "F")):
        assert cells[pair]["verdict"] == "restored", cells[pair]
    assert cells[("D", "F")]["verdict"] == "rejected"
    assert "F" in compat.render(list(cells.values())).splitlines()[0].split()


@pytest.mark.parametrize("cmdline,want", [("kho=on", False), ("elfcorehdr=0x1000000 kho=on", True),
                                          ("elfcorehdr=64K@16M", True), ("elfcorehdr=", True),
                                          ("elfcorehdr=junk", True), ("elfcorehdr", False)])
def test_is_kdump_kernel(cmdline, want):
    assert is_kdump_kernel(cmdline) is want


def _cold(profile: str, cmdline: str, ram_end: int = GiB):
    spec = {"machine": {"ram": [[0x100000, ram_end, 0]]}, "kernel": [{"profile": profile, "cmdline": cmdline}],
            "step": []}
    return Run(spec, "cold").run().kernels[0]


@pytest.mark.parametrize("kho", ["kho=on", "kho=off"])
def test_kdump_gate(kho):
    k = _cold("F", f"{kho} elfcorehdr=0x1000000")
    assert "KHO: disabled in the kdump kernel" in k.log
    assert not k.kho_enable and not k.scratch          # no scratch reserved
    e = _cold("E", f"{kho} elfcorehdr=0x1000000")
    assert "KHO: disabled in the kdump kernel" not in e.log
    assert bool(e.scratch) == (kho == "kho=on")
    assert "KHO: disabled in the kdump kernel" not in _cold("F", kho).log


def _roundtrip(old: str, new: str, ram_end: int):
    spec = {"machine": {"ram": [[0x100000, ram_end, 0]]},
            "kernel": [{"profile": old, "cmdline": "kho=on"}, {"profile": new, "cmdline": "kho=on"}],
            "step": [{"do": "kexec_file_load"}, {"do": "kexec"}]}
    return Run(spec, f"{old}->{new}").run()


def test_scratch_extension_on_a_4_gib_machine():
    r = _roundtrip("E", "F", 4 * GiB)
    k2 = r.kernels[1]
    assert k2.is_kho_boot() and not r.violations
    ext = k2.scratch_extension
    assert ext, "a 4 GiB machine has free 1 GiB blocks"
    # the extension is whole 1 GiB blocks, none holding a preserved block or a map page
    for s, e in ext:
        assert s % GiB == 0 and (e % GiB == 0 or e == 4 * GiB)
    marked = k2.memblock.scratch_ranges()
    preserved = k2.pages.preserved_set
    for s, e in ext:
        assert marked.overlaps(s, e) == [(s, e)]        # memblock has the whole range as scratch
        assert not preserved.overlaps(s, e)
    # the 1 GiB block with the preserved blocks (test_kho's folios, the FDT, the map) is not extended
    assert any(preserved.overlaps(b, b + GiB) for b in range(0, 4 * GiB, GiB))
    assert sum(e - s for s, e in ext) < 4 * GiB - 0x100000
    # the scratch array handed on is unchanged: still the incoming one
    assert k2.scratch == r.kernels[0].scratch
    # E does not extend; on 1 GiB nothing is free
    assert not hasattr(_roundtrip("E", "E", 4 * GiB).kernels[1], "scratch_extension")
    assert _roundtrip("E", "F", GiB).kernels[1].scratch_extension == []


# ---- the 7.2.13 oracle capture, with bytes changed as the vm tests change them

@pytest.fixture()
def ram(tmp_path):
    d = tmp_path / "ram"
    with tarfile.open(A.dir("ram-stage1.sparse.tar.xz")) as tf:
        tf.extractall(d)
    return d


def _validate(ram, target: str, *extra: str) -> dict:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main(["validate", A.dir("stage1-debugfs", "kho", "out"), "--mem", f"sparse:{ram}", "--target", target,
              "-j", *extra])
    return json.loads(buf.getvalue())


def test_zero_map_stock_vs_unfixed(ram):
    """What tests/vm/test_kernels.py sees on the real kernels: 7.2.13 refuses,
    7.2.13-unfixed accepts, forgets the handover and frees scratch twice."""
    f = ram / ram_file(A.root_fdt)
    pg = bytearray(f.read_bytes())
    off = root.RootFdtPage(P.E, bytearray(pg[:4096])).find_prop_value(0, "preserved-memory-map")
    pg[off:off + 8] = bytes(8)
    f.write_bytes(bytes(pg))
    stock = _validate(ram, "7.2")["verdict"]
    assert stock["populate"] == "rejected" and stock["log"] == ["KHO: disabling KHO revival"]
    assert not stock["model_violations"]
    rep = _validate(ram, "7.2-unfixed")
    v = rep["verdict"]
    assert v["target"] == "E-unfixed" and v["populate"] == "accepted"
    assert v["log"] == ["KHO: found kexec handover data."]
    assert "forgot the handover" in v["outcome"]
    assert "double-free" in {x["kind"] for x in v["model_violations"]}
    codes = {x["code"] for x in rep["findings"] if x["severity"] == "error"}
    assert {"handover-forgotten", "model-double-free"} <= codes


def _last_level1_entry(ram) -> tuple[int, int]:
    """(phys of a level-1 table entry, its offset) that the walk reaches last."""
    import struct

    from pykho.abi import radix as R
    pages = {int(p.stem, 16): p for p in ram.iterdir() if p.suffix == ".bin"}

    def read(phys):
        for base, p in pages.items():
            data = p.read_bytes()
            if base <= phys < base + len(data):
                return data[phys - base:phys - base + 4096]
        raise KeyError(hex(phys))
    node, level = A.map_root, R.KHO_TREE_MAX_DEPTH - 1
    while level > 1:
        words = struct.unpack("<512Q", read(node))
        node = [w for w in words if w][-1]
        level -= 1
    words = struct.unpack("<512Q", read(node))
    i = max(i for i, w in enumerate(words) if w)
    return node, 8 * i


def _model(ram, target: str) -> dict:
    """The verdict with the model's reservations (validate(want_reserved=True))."""
    from pykho.handover import load
    from pykho.memory.sources import open_source
    from pykho.reports.validate import validate
    ho = load(A.dir("stage1-debugfs", "kho", "out"), open_source(f"sparse:{ram}"))
    return validate(ho, P.get_profile(target), want_reserved=True)["verdict"]


def test_node_outside_ram_faults_before_any_reservation_on_7_3(ram):
    """A pointer outside RAM in the last level-1 entry: 7.2 reserves the
    blocks of every leaf before it, then oopses; 7.3's early walk oopses at
    the same address with nothing reserved (KERNEL-FACTS §12 F-4)."""
    node, off = _last_level1_entry(ram)
    for p in ram.iterdir():
        if p.suffix == ".bin":
            base = int(p.stem, 16)
            data = bytearray(p.read_bytes())
            if base <= node < base + len(data):
                data[node - base + off:node - base + off + 8] = (0x7FFF0000000).to_bytes(8, "little")
                p.write_bytes(bytes(data))
    e, f = _model(ram, "7.2"), _model(ram, "7.3")
    for v in (e, f):
        assert v["populate"] == "accepted" and v["oops"]["address_range"][0] == "ffff907ff0000000"
        assert v["log"][-2:] == ["BUG: unable to handle page fault for address: ffff907ff0000000",
                                 "Kernel panic - not syncing: Fatal exception"]
    assert e["reserved"], "7.2 reserves the blocks walked before the bad entry"
    assert f["reserved"] == []


def test_7_3_revives_reserve_mem_after_its_early_walk():
    """7.3's early walk (mm_core_init_early) runs before the boot parameters
    are parsed: reserve_mem= still revives its region from the handover."""
    from pykho.model.kernel import Kernel
    from pykho.model.machine import Machine
    for gen in ("E", "F"):
        old = Kernel(Machine(ram=[(0x100000, 1 << 30, 0)]), gen, "kho=on reserve_mem=4M:4K:vmtest_rmem").boot()
        assert old.kexec_file_load() == 0
        new = old.kexec(gen, name="kernel 2")
        assert "Revived memory reservation 'vmtest_rmem' from KHO" in new.log, (gen, new.log)



@pytest.mark.parametrize("target", ["7.2", "7.3"])
def test_numa_kernel_dies_on_a_scratch_area_no_node_covers(target):
    """An inherited scratch area moved to 128 GiB (no RAM): kho_populate's
    memblock_add keeps it, NUMA=n makes it nid 0 and boots; on a NUMA=y
    kernel no node covers it and free_area_init (mm_core_init_early) faults
    before any map reservation (7.2.13 and 7.3.4 in the random campaign,
    seeds 205387516996838 and 98121751692616)."""
    from pykho.abi import structs
    from pykho.handover import load
    from pykho.memory.iomem import parse_iomem
    from pykho.memory.sources import open_source
    from pykho.reports.validate import validate
    out = {}
    for numa in (False, True):
        with open_source(A.mem) as mem:
            ho = load(A.out, mem)
            # area 2 (the scratch array is not in the capture yet: the model
            # stages the debugfs values where kexec puts it)
            ho.scratch[2] = structs.KhoScratch(128 << 30, ho.scratch[2].size)
            iomem = parse_iomem(open(A.dir("stage1-iomem.txt")).read())
            out[numa] = validate(ho, P.get_profile(target), iomem=iomem, want_reserved=True, numa=numa)["verdict"]
    assert out[False]["reserved"] and not any(x.startswith("BUG: kernel NULL") for x in out[False]["log"])
    v = out[True]
    assert v["log"][-2:] == ["BUG: kernel NULL pointer dereference, address: 0000000000000098",
                             "Kernel panic - not syncing: Fatal exception"], v["log"]
    assert v["reserved"] == [] and not any(x.startswith("Revived memory reservation") for x in v["log"])
