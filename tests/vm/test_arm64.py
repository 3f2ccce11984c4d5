"""The real arm64 Linux 7.2.13 kernel (QEMU virt, -cpu max, TCG) against pykho.

Boot 1 preserves (test_kho, reserve_mem, a LUO memfd session) and kexecs
boot 2 with kexec_file_load.  vmtest.arm64 stops at boot 2's first
instruction, where the DT kexec_file_load wrote for it is in x0 and every
byte boot 2 will read is in place.  pykho finds the handover the way boot 2
does, from that DT's /chosen (``linux,kho-fdt``, ``linux,kho-scratch``),
decodes the root FDT, the scratch array and the map, and its model of the
7.2 kernel (arch arm64) predicts boot 2's KHO and client lines, the blocks
memblock-reserved from the map (``memblock=debug``) and the fault line of an
oops.  The differential cases change the DT or the handover at that stop;
real kernel and prediction must agree (vmtest.campaign.compare), and every
case is recorded in docs/real-kernel.json (arch ``arm64``).
"""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

import vmtest.inject as inject

pytestmark = pytest.mark.vm

PAGE = 4096


@pytest.fixture(scope="module")
def arm64_build():
    import os

    import vmtest.arm64 as a
    why = None
    if os.geteuid() != 0:
        why = "not root"
    elif not a.qemu_binary():
        why = "no qemu-system-aarch64 (run vmtest/setup.sh)"
    b = a.find_arm64_build() if why is None else None
    if why is None and b is None:
        why = "no arm64 kernel build (run vmtest/build.sh --kernel 7.2-arm64)"
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"arm64 vm tests cannot run under CI: {why}")
        pytest.skip(why)
    pytest.importorskip("pykho")
    return b


# ------------------------------------------------------------------ DT edits

def _dt_edit(ctx, fn) -> list[tuple[int, bytes]]:
    """The next kernel's DT re-encoded with libfdt after ``fn(buf, chosen)``,
    written back where it is (the DT segment has room to grow a little)."""
    import libfdt
    dt = ctx.locate["dtb"]
    buf = bytearray(ctx.read(dt["phys"], dt["size"]))
    room = len(buf) + 512
    buf += bytes(512)
    assert libfdt.fdt_open_into(buf, buf, room) == 0
    chosen = libfdt.fdt_path_offset(buf, "/chosen")
    assert chosen >= 0
    fn(libfdt, buf, chosen)
    assert libfdt.fdt_pack(buf) == 0
    n = struct.unpack(">I", bytes(buf[4:8]))[0]
    return [(dt["phys"], bytes(buf[:max(n, dt["size"])].ljust(dt["size"], b"\0")))]


def _setprop(name: str, value: bytes):
    def f(lib, buf, chosen):
        assert lib.fdt_setprop(buf, chosen, name, value, len(value)) == 0
    return f


def _cells2(*vals: int) -> bytes:
    return b"".join(struct.pack(">Q", v) for v in vals)


def c_unmodified(ctx):
    return []


def c_no_kho_fdt(ctx):
    return _dt_edit(ctx, lambda lib, buf, ch: lib.fdt_delprop(buf, ch, "linux,kho-fdt"))


def c_no_kho_scratch(ctx):
    return _dt_edit(ctx, lambda lib, buf, ch: lib.fdt_delprop(buf, ch, "linux,kho-scratch"))


def c_kho_fdt_12_bytes(ctx):
    """linux,kho-fdt one cell short for the root's 2+2 cells."""
    a, n = ctx.locate["chosen"]["kho_fdt"]
    return _dt_edit(ctx, _setprop("linux,kho-fdt", _cells2(a) + struct.pack(">I", n)))


def c_kho_scratch_two_entries(ctx):
    """linux,kho-scratch with two address/size entries (32 bytes)."""
    a, n = ctx.locate["chosen"]["kho_scratch"]
    return _dt_edit(ctx, _setprop("linux,kho-scratch", _cells2(a, n, a, n)))


def c_scratch_size_40(ctx):
    """linux,kho-scratch's size 40: not a multiple of the 16-byte entry."""
    a, _n = ctx.locate["chosen"]["kho_scratch"]
    return _dt_edit(ctx, _setprop("linux,kho-scratch", _cells2(a, 40)))


def c_scratch_one_entry(ctx):
    """linux,kho-scratch's size 16: only the first of the scratch areas."""
    a, _n = ctx.locate["chosen"]["kho_scratch"]
    return _dt_edit(ctx, _setprop("linux,kho-scratch", _cells2(a, 16)))


def c_fdt_above_ram(ctx):
    """linux,kho-fdt names a page right above the guest's 1 GiB of RAM."""
    _a, n = ctx.locate["chosen"]["kho_fdt"]
    return _dt_edit(ctx, _setprop("linux,kho-fdt", _cells2(0x80000000, n)))


def c_address_cells_1(ctx):
    """The root's #address-cells 1: the 16-byte /chosen properties no longer
    make one entry (4 + 8 bytes)."""
    return _dt_edit(ctx, lambda lib, buf, ch: lib.fdt_setprop(buf, 0, "#address-cells",
                                                              struct.pack(">I", 1), 4))


c_radix_outside = inject.radix_root_entry_outside
c_radix_cycle = inject.radix_level2_to_root


def c_map_zeroed(ctx):
    """preserved-memory-map = 0 in the root FDT (re-encoded with libfdt)."""
    import vmtest.campaign as camp
    from pykho.abi import fdt as F
    return camp.root_edit(ctx, lambda p: p.setprop(0, "preserved-memory-map", F.p64(0)))


CASES = {
    "unmodified": ("the real handover, untouched", c_unmodified),
    "chosen-no-kho-fdt": ("/chosen without linux,kho-fdt", c_no_kho_fdt),
    "chosen-no-kho-scratch": ("/chosen without linux,kho-scratch", c_no_kho_scratch),
    "chosen-kho-fdt-12-bytes": ("linux,kho-fdt 12 bytes long (root cells 2+2)", c_kho_fdt_12_bytes),
    "chosen-kho-scratch-2-entries": ("linux,kho-scratch holds two entries", c_kho_scratch_two_entries),
    "chosen-scratch-size-40": ("linux,kho-scratch size 40, not a multiple of 16", c_scratch_size_40),
    "chosen-scratch-size-16": ("linux,kho-scratch size 16: one scratch area of three", c_scratch_one_entry),
    "chosen-fdt-above-ram": ("linux,kho-fdt at 0x80000000, above RAM", c_fdt_above_ram),
    "root-address-cells-1": ("the DT root's #address-cells set to 1", c_address_cells_1),
    "map-zeroed": ("preserved-memory-map = 0", c_map_zeroed),
    "radix-node-outside-ram": ("radix root entry points 8 TiB up, outside RAM", c_radix_outside),
    "radix-cycle": ("a level-2 table entry points back at the root table", c_radix_cycle),
}


#: cases where boot 2 may die before its console starts: earlycon shows how far it got
EARLYCON = {"chosen-fdt-above-ram", "root-address-cells-1", "radix-node-outside-ram", "radix-cycle"}


def run_case(name: str, tmp_path: Path, **opts) -> dict:
    import vmtest.arm64 as a
    import vmtest.campaign as camp
    from vmtest import records
    what, fn = CASES[name]
    got: dict = {}

    def hook(ctx):
        writes = fn(ctx)
        got["writes"] = writes
        got["pred"] = a.predict(ctx, writes)
        got["locate"] = ctx.locate
        if ctx.locate.get("fdt"):
            got["fdt_bytes"] = ctx.read(ctx.locate["fdt"]["phys"], ctx.locate["fdt"]["totalsize"])
        return writes
    out = tmp_path / name
    if name in EARLYCON:
        opts.setdefault("append", "earlycon")
    summary = a.run_chain(out, a.Arm64Options(hook=hook, luo=True, stall_timeout=45, **opts))
    real = a.observe(out, summary)
    pred = got.get("pred")
    agree, diffs = (a.compare(real, pred) if pred else (False, ["no prediction: the stop never came"]))
    rec = records.record(kernel=summary["kernel_name"], next_kernel=summary["kernel_name"], arch="arm64",
                         source="crafted-arm64", case=name + ("+numa" if opts.get("numa") else ""),
                         change=what, real=camp.summarise(real),
                         predicted=camp.summarise(pred) if pred else None, agree=agree,
                         note="; ".join(diffs))
    (tmp_path / f"{name}.json").write_text(json.dumps(rec, indent=1) + "\n")
    shutil.rmtree(out / "ram", ignore_errors=True)
    return {"summary": summary, "real": real, "pred": pred, "agree": agree, "diffs": diffs, "capture": out,
            **got}


def test_arm64_round_trip(arm64_build, tmp_path):
    """Boot 2 restores everything; the harness's own findings (from /chosen)
    match boot 2's debugfs and memblock lines; pykho decodes the capture,
    validates it clean and predicts boot 2's lines and reservations exactly."""
    from pykho.abi import root as R
    res = run_case("unmodified", tmp_path)
    s, real, pred, loc = res["summary"], res["real"], res["pred"], res["locate"]
    assert s["completed"], s
    assert s["stops"][0]["pc"] == f"{arm64_build.machine_kexec:#x}"
    assert real["found"] and real["fate"] == "ok"
    for want in ("KHO: exec from: 7.2.13 (count 1)", "test_kho: KHO restore succeeded",
                 "Revived memory reservation 'vmtest_rmem' from KHO",
                 "luo: Retrieved live update data, liveupdate number: 1"):
        assert want in real["lines"], real["lines"]
    assert "content OK" in (real["luo_check"] or ""), real["luo_check"]
    # /chosen names the root FDT and the scratch array boot 2 used
    ch = loc["chosen"]
    assert ch["address_cells"] == 2 and ch["size_cells"] == 2
    in_dir = res["capture"] / "stage2" / "debugfs" / "kho" / "in"
    assert (in_dir / "fdt").read_bytes() == res["fdt_bytes"]
    assert [st.name for st in R.decode_root(res["fdt_bytes"]).subtrees] == [x["name"] for x in loc["subnodes"]]
    assert loc["fdt"]["phys"] == ch["kho_fdt"][0] and ch["kho_fdt"][1] == PAGE
    assert loc["scratch"]["destination"] == ch["kho_scratch"][0]
    # the harness's radix walk (no pykho) is boot 2's kho_preserved_memory_reserve list
    assert [list(e) for e in loc["radix"]["entries"]] == real["reserved"]
    # pykho: no error finding, the same lines, the same reservations in the same order
    assert pred["populate"] == "accepted"
    assert not pred["findings"], pred["findings"]
    assert pred["lines"] == real["lines"]
    assert pred["reserved"] == real["reserved"]
    assert res["agree"], res["diffs"]


@pytest.mark.parametrize("case", [c for c in CASES if c != "unmodified"])
def test_arm64_agrees_with_pykho(case, arm64_build, tmp_path):
    res = run_case(case, tmp_path)
    assert res["pred"] is not None, res["summary"]
    assert res["agree"], "\n".join(res["diffs"])


def test_arm64_round_trip_two_numa_nodes(arm64_build, tmp_path):
    """QEMU virt with two 512 MiB NUMA nodes (the DT's numa-node-id): boot 2
    restores everything and pykho predicts its lines and reservations."""
    res = run_case("unmodified", tmp_path, numa=True)
    s, real = res["summary"], res["real"]
    assert s["completed"], s
    dmesg = (res["capture"] / "stage2" / "dmesg.txt").read_text()
    assert "NUMA: " in dmesg or "node 1" in dmesg.lower(), "the guest did not see two NUMA nodes"
    assert "test_kho: KHO restore succeeded" in real["lines"]
    assert res["pred"]["reserved"] == real["reserved"]
    assert res["agree"], res["diffs"]
