"""Real Linux kernel under QEMU: KHO round trip, 3-boot chain, fault injection.

Run with:  pytest -m vm tests/vm        (as root, after vmtest/setup.sh + build.sh)
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import vmtest as vm

pytestmark = pytest.mark.vm


def dmesg(stage_dir: Path) -> list[str]:
    return [vm.strip_ts(x) for x in vm.dmesg_lines(stage_dir)]


def kho_lines(stage_dir: Path) -> list[str]:
    """The KHO / client log lines of a boot, without timestamps."""
    return [x for x in dmesg(stage_dir)
            if re.match(r"(KHO|test_kho|luo|liveupdate|reserve_mem)\b|Revived memory reservation", x)]


def locate(capture: Path, stage: int) -> dict:
    return json.loads((capture / "ram" / f"locate-stage{stage}.json").read_text())


def assert_completed(summary: dict, boots: int):
    assert summary["exit"] == "qemu-exited", summary
    assert summary["stages_reached"] == boots, summary
    assert summary["completed"], f"last stage did not finish: {summary}"
    assert len(summary["stops"]) == boots - 1, summary["stops"]
    for stop in summary["stops"]:
        assert stop["rip"] and int(stop["rip"], 16) == int(summary["machine_kexec"], 16), stop
        assert not stop["errors"], stop


# ------------------------------------------------------------ round trip (2 boots)

def test_roundtrip_boots(roundtrip):
    capture, summary = roundtrip
    assert_completed(summary, 2)
    for n in (1, 2):
        st = json.loads((capture / f"stage{n}" / "stage.json").read_text())
        assert not st["errors"], st["errors"]          # every debugfs blob arrived intact


def test_roundtrip_stage1_is_a_cold_boot(roundtrip):
    capture, _ = roundtrip
    lines = kho_lines(capture / "stage1")
    assert "KHO: found kexec handover data." not in lines
    assert not any(x.startswith("KHO: exec from:") for x in lines)
    assert not (capture / "stage1/debugfs/kho/in").exists()
    assert (capture / "stage1/debugfs/kho/out/sub_fdts/kexec-metadata").exists()


def test_roundtrip_stage2_restores(roundtrip, vm_build):
    capture, _ = roundtrip
    lines = kho_lines(capture / "stage2")
    assert "KHO: found kexec handover data." in lines
    assert f"KHO: exec from: {vm_build.release} (count 1)" in lines
    assert "test_kho: KHO restore succeeded" in lines
    assert "Revived memory reservation 'vmtest_rmem' from KHO" in lines
    assert "luo: Retrieved live update data, liveupdate number: 1" in lines
    assert (capture / "stage2/debugfs/kho/in/fdt").exists()


def test_roundtrip_luo_memfd_content(roundtrip):
    capture, _ = roundtrip
    pres = (capture / "stage1/luo_preserve.txt").read_text()
    check = (capture / "stage2/luo_check.txt").read_text()
    assert "luo-memfd: preserved session=vmtest-memfd-1" in pres, pres
    assert "content OK" in check and "FAIL" not in check, check
    # the same bytes on both sides
    assert re.search(r"fnv1a=(0x[0-9a-f]+)", pres).group(1) == re.search(r"fnv1a=(0x[0-9a-f]+)", check).group(1)


def test_roundtrip_ram_full_fdt_is_next_in_fdt(roundtrip):
    """The root FDT read from RAM at machine_kexec is byte-identical to boot 2's in/fdt."""
    capture, _ = roundtrip
    full = (capture / "ram/ram-stage1-out-fdt-full.dtb").read_bytes()
    assert full == (capture / "stage2/debugfs/kho/in/fdt").read_bytes()


def test_roundtrip_harness_walk_matches_kernel(roundtrip):
    """The harness' own radix walk (no pykho) equals boot 2's memblock reservations, in order."""
    capture, _ = roundtrip
    loc = locate(capture, 1)
    assert loc["fdt"]["compatible"].startswith("kho-v")
    reserved = vm.kho_reserved(capture / "stage2")
    assert reserved, "no kho_preserved_memory_reserve lines in boot 2 (memblock=debug missing?)"
    assert loc["radix"]["entries"] == reserved
    assert not loc["radix"]["errors"]


# ------------------------------------------------------------ 3-boot chain

@pytest.mark.multistop
def test_chain3_counts(chain3, vm_build):
    capture, summary = chain3
    assert_completed(summary, 3)
    s2, s3 = kho_lines(capture / "stage2"), kho_lines(capture / "stage3")
    assert f"KHO: exec from: {vm_build.release} (count 1)" in s2
    assert f"KHO: exec from: {vm_build.release} (count 2)" in s3
    assert "KHO: found kexec handover data." in s3
    assert "luo: Retrieved live update data, liveupdate number: 2" in s3
    assert "Revived memory reservation 'vmtest_rmem' from KHO" in s3
    assert "content OK" in (capture / "stage3/luo_check.txt").read_text()


@pytest.mark.multistop
def test_chain3_harness_walk_matches_kernel(chain3):
    capture, _ = chain3
    for stop in (1, 2):
        loc = locate(capture, stop)
        assert loc["radix"]["entries"] == vm.kho_reserved(capture / f"stage{stop + 1}"), f"stop {stop}"


@pytest.mark.multistop
def test_chain_survives_a_reset_gdbstub_link(vm_build, tmp_path):
    """QEMU 7.2's gdbstub link was seen reset at the second stop of some
    chains; the runner connects again, arms its breakpoints again and goes
    on.  Here the link is reset on purpose while waiting for stop 2."""
    summary = vm.run_chain(tmp_path, vm.Options(boots=3, luo=False, gdb_drop_before_stop=2))
    assert_completed(summary, 3)
    assert summary.get("gdb_reconnects") == 1, summary
    assert [s["stage"] for s in summary["stops"]] == [1, 2]
    assert "(count 2)" in " ".join(kho_lines(tmp_path / "stage3"))


@pytest.mark.multistop
def test_chain_per_boot_cmdline(vm_build, tmp_path):
    """Each boot can get its own command line: boot 2's is written over the one
    boot 1's /init handed to kexec_file_load, at boot 2's x86_64_start_kernel,
    and boot 3 gets the default words back.  The kernels themselves parse the
    new lines (their "Kernel command line:"), and the handover still goes through."""
    summary = vm.run_chain(tmp_path, vm.Options(boots=3, luo=False, stall_retries=1, append="vmtest_word=default"),
                           cmdlines={2: "vmtest_word=two"})
    assert_completed(summary, 3)
    assert not summary.get("problems"), summary["problems"]
    for n, word in ((1, "default"), (2, "two"), (3, "default")):
        line = (tmp_path / f"stage{n}/cmdline.txt").read_text().strip()
        assert line == summary["cmdlines"][str(n)]
        assert f"vmtest_word={word}" in line.split() and f"vmtest_stage={n}" in line.split()
        assert any(x == f"Kernel command line: {line}" for x in dmesg(tmp_path / f"stage{n}")), n
    assert [s["next_cmdline"]["verified"] for s in summary["stops"]] == [True, True]
    assert "(count 2)" in " ".join(kho_lines(tmp_path / "stage3"))


# ------------------------------------------------------------ fault injection

def test_injection_zeroed_root_fdt(vm_build, tmp_path):
    """Zero the outgoing root FDT page at machine_kexec: the next kernel rejects the
    handover (bad FDT magic, -FDT_ERR_BADMAGIC) and boots as if cold."""
    opts = vm.Options(boots=2, luo=False, stall_retries=1,
                         writes=[vm.Write("fdt", bytes(4096), stage=1)])
    summary = vm.run_chain(tmp_path, opts)
    assert summary["exit"] == "qemu-exited" and summary["completed"], summary
    inj = summary["stops"][0]["injected"]
    assert len(inj) == 1 and inj[0]["verified"] and inj[0]["before"].startswith("d00dfeed")
    fdt = int(inj[0]["phys"], 16)
    lines = kho_lines(tmp_path / "stage2")
    assert f"KHO: setup: handover FDT ({fdt:#x}) is invalid: -9" in lines, lines
    assert any(x.startswith("KHO: disabling KHO revival") for x in lines), lines
    assert not any(x.startswith("KHO: exec from:") for x in lines)
    # differential: pykho's model of the 7.2 kho_populate on the same bytes
    # prints exactly the real kernel's KHO lines
    from pykho import profiles
    from pykho.memory import SparseMemory
    from pykho.model.incoming import kho_populate
    mem = SparseMemory([(0, 1 << 30)])
    mem.write(fdt, bytes(4096))
    pred = kho_populate(profiles.E, mem, fdt, 4096, 0x3000000, 48)
    assert not pred.accepted
    assert pred.lines == [x for x in lines if x.startswith("KHO: setup:") or x.startswith("KHO: disabling")]


@pytest.mark.multistop
def test_injection_kexec_segments_at_entry(vm_build, tmp_path):
    """setup_data and the scratch array are kexec segments: they are patched at the
    next kernel's entry (after purgatory's sha256 check).  The next kernel must see
    the patched scratch array: scratch_size 0x28 gives 2 entries (40 // 16), and
    entry 1's address is the one written."""
    opts = vm.Options(boots=2, luo=False, stall_retries=1, writes=[
        vm.Write("scratch+16", (0x3D800000).to_bytes(8, "little"), stage=1),
        vm.Write("kho_data+24", (0x28).to_bytes(8, "little"), stage=1)])
    summary = vm.run_chain(tmp_path, opts)
    assert summary["completed"], summary
    inj = summary["stops"][0]["injected"]
    assert [x["when"] for x in inj] == ["entry", "entry"] and all(x["verified"] for x in inj)
    phys = (tmp_path / "stage2/scratch_phys.txt").read_text().split()
    lens = (tmp_path / "stage2/scratch_len.txt").read_text().split()
    assert len(phys) == len(lens) == 2
    assert int(phys[1], 16) == 0x3D800000
    assert "KHO: found kexec handover data." in kho_lines(tmp_path / "stage2")


# ------------------------------------------------------------ pykho against the kernel

def _stage_args(capture: Path, stop: int) -> list[str]:
    """kho arguments for the handover that boot ``stop`` passed on."""
    out = capture / f"stage{stop}/debugfs/kho/out"
    args = [str(out), "--mem", f"sparse:{capture}/ram/ram-stage{stop}.sparse"]
    if not (out / "fdt").exists():
        # a KHO-booted kernel has no out/fdt in debugfs (7.2): tell pykho where the
        # root FDT is (the harness found it through the staged setup_data)
        args += ["--fdt-phys", hex(locate(capture, stop)["fdt"]["phys"])]
    return args


@pytest.mark.parametrize("which,stop", [("roundtrip", 1), pytest.param("chain3", 1, marks=pytest.mark.multistop),
                                        pytest.param("chain3", 2, marks=pytest.mark.multistop)])
def test_pykho_inspect_matches_kernel(which, stop, request, kho, vm_build):
    capture, summary = request.getfixturevalue(which)
    assert summary["completed"], summary
    rep = kho("inspect", *_stage_args(capture, stop), "-j")
    loc = locate(capture, stop)
    # a generation pykho does not know must fail loudly
    assert rep["compatible"] == vm_build.info["VMTEST_KHO_COMPATIBLE"] == loc["fdt"]["compatible"]
    assert rep["generation"], (f"pykho does not know KHO generation {rep['compatible']!r} of "
                               f"{vm_build.info['VMTEST_KSRC_PKG']} {vm_build.info['VMTEST_KSRC_DEBVER']}: "
                               f"a new ABI, teach pykho")
    assert rep["memory_map"] == loc["fdt"]["preserved_memory_map"]
    names = [s["name"] for s in rep["subtrees"]] if isinstance(rep["subtrees"], list) else list(rep["subtrees"])
    assert names == [s["name"] for s in loc["subnodes"]]
    assert [[s["addr"], s["size"]] for s in rep["scratch"]] == loc["scratch"]["entries"]
    reserved = vm.kho_reserved(capture / f"stage{stop + 1}")
    # the blocks in walk order (inspect streams them only with --blocks; validate lists them)
    blocks = kho("validate", *_stage_args(capture, stop), "--blocks", "-j")["preserved"]
    assert [list(x) for x in blocks] == reserved


@pytest.mark.parametrize("which,stop", [("roundtrip", 1), pytest.param("chain3", 2, marks=pytest.mark.multistop)])
def test_pykho_validate_predicts_next_boot(which, stop, request, kho):
    capture, _ = request.getfixturevalue(which)
    rep = kho("validate", *_stage_args(capture, stop), "-j")
    verdict = rep["verdict"]
    assert verdict["populate"] == "accepted", verdict
    actual = kho_lines(capture / f"stage{stop + 1}")
    predicted = [vm.strip_ts(x) for x in verdict["log"]]
    missing = [x for x in predicted if x not in actual]
    assert not missing, f"pykho predicted lines the kernel did not print: {missing}\nkernel: {actual}"
    # and in the kernel's order
    pos = [actual.index(x) for x in predicted]
    assert pos == sorted(pos), (predicted, actual)


def fnv1a(data: bytes) -> int:
    h = 2166136261
    for b in data:
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


@pytest.mark.parametrize("which,stop", [("roundtrip", 1), pytest.param("chain3", 2, marks=pytest.mark.multistop)])
def test_pykho_decodes_clients(which, stop, request, kho):
    """pykho's client decoders against the real bytes: kexec-metadata, reserve_mem,
    and the LUO session whose memfd content is rebuilt from the preserved folios."""
    capture, _ = request.getfixturevalue(which)
    rep = kho("inspect", *_stage_args(capture, stop), "-j")
    sub = {s["name"]: s.get("decoded") or {} for s in rep["subtrees"]}
    assert sub["kexec-metadata"]["kexec_count"] == stop
    assert sub["memblock"]["reserve_mem"][0]["name"] == "vmtest_rmem"
    assert sub["memblock"]["reserve_mem"][0]["size"] == 4 << 20
    luo = sub["LUO"]
    assert luo["compatible"].startswith("luo-v") and luo["liveupdate_num"] == stop
    pres = (capture / f"stage{stop}/luo_preserve.txt").read_text()
    m = re.search(r"session=(\S+) token=(0x[0-9a-f]+) size=(\d+) fnv1a=(0x[0-9a-f]+)", pres)
    name, token, size, want = m.group(1), int(m.group(2), 16), int(m.group(3)), int(m.group(4), 16)
    sessions = {s["name"]: s for s in luo["sessions"]}
    assert list(sessions) == [name], sessions
    (f,) = sessions[name]["files"]
    assert f["token"] == token and f["compatible"].startswith("memfd-")
    memfd = f["memfd"]
    assert memfd["size"] == size
    pages = {fo["index"]: vm.read_sparse(capture / f"ram/ram-stage{stop}.sparse", fo["pfn"] << 12, 4096)
             for fo in memfd["folios"]}
    content = b"".join(pages[i] for i in sorted(pages))[:size]
    assert fnv1a(content) == want, "memfd content rebuilt from pykho's folio list differs"
