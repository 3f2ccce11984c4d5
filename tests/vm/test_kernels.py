"""Several real kernels, and pykho's prediction for each.

The kernels are build.sh's table (``vmtest/build.sh --list``): ``7.2.13``
(Debian sid), ``7.2.13-unfixed`` (7.2.13 with vmtest/patches/7.2-unfixed:
kho_populate without its preserved-memory-map check, and memory debugging
on) and ``7.3.4`` (Debian trixie-backports).  Every comparison of pykho with
a real boot is recorded (vmtest.records) and ends in docs/real-kernel.json.

* The seed bug on a real kernel: the same handover, its preserved-memory-map
  value zeroed at machine_kexec, handed to the stock 7.2.13 (refused:
  ``KHO: disabling KHO revival``) and to 7.2.13-unfixed (accepted, then the
  page allocator is corrupted).  ``kho validate --target 7.2`` /
  ``--target 7.2-unfixed`` must predict each.
* Cross-version chains: 7.2.13 -> 7.3.4 (upgrade) and 7.3.4 -> 7.2.13
  (rollback), with test_kho, a reserve_mem region and a LUO memfd session;
  ``validate --target`` on boot 1's capture against the real boot 2.

Run with:  pytest -m vm tests/vm/test_kernels.py   (as root, after setup.sh + build.sh)
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import vmtest as vm
from vmtest import records

pytestmark = pytest.mark.vm

PAGE = 4096
ARCH = "x86_64"
SOURCE = "tests/vm/test_kernels.py"
MAP_PROP = "preserved-memory-map"


# ------------------------------------------------------------------ helpers

def boot_lines(stage_dir: Path) -> list[str]:
    """A boot's kernel messages without timestamps: its dmesg, or, when it
    never reached user space (a panic), its console."""
    src = stage_dir / "dmesg.txt"
    if not src.exists():
        src = stage_dir / "console-boot.log"
    if not src.exists():
        return []
    return [vm.strip_ts(x) for x in src.read_text(errors="replace").splitlines()]


#: lines that name the kernel's own failure (page state, list debugging, oops, panic)
FAILURE = re.compile(r"BUG: |kernel BUG at |Kernel panic - not syncing|list_(add|del) corruption|"
                     r"general protection fault|Oops: |WARNING: CPU: ")


#: KHO and its clients' lines; the LIVEUPDATE_TEST module's boot line
#: ("liveupdate test: Registered ...", every boot, no KHO state) is left out
KHO_CLIENT = re.compile(r"(KHO|test_kho|luo|reserve_mem)\b|liveupdate\b(?! test:)|Revived memory reservation")


def kho_lines(stage_dir: Path) -> list[str]:
    """The KHO and KHO client lines of a boot."""
    return [x for x in boot_lines(stage_dir) if KHO_CLIENT.match(x)]


def failure_lines(stage_dir: Path) -> list[str]:
    return [x for x in boot_lines(stage_dir) if FAILURE.search(x)]


def predict(ctx, writes, target: str, cmdline: str) -> dict:
    """pykho's verdict (``kho validate --target TARGET --cmdline ...``) on the
    RAM of this stop with ``writes`` applied (copy-on-write)."""
    from pykho import profiles as P
    from pykho.handover import load
    from pykho.memory import CowMemory, RawImage
    from pykho.reports.validate import validate
    with RawImage(str(ctx.ram_file)) as raw:      # the 1 GiB image is unmapped on return
        cow = CowMemory(raw, raw.ranges())
        for phys, data in writes:
            cow.write(phys, data)
        ho = load(str(ctx.stage_dir / "debugfs" / "kho" / "out"), cow, ctx.locate["fdt"]["phys"])
        rep = validate(ho, P.get_profile(target), cmdline=cmdline, want_reserved=True)
    v = rep["verdict"]
    return {"target": v["target"], "populate": v["populate"], "log": v["log"], "outcome": v.get("outcome"),
            "oops": v.get("oops"), "reserved": v.get("reserved"), "clients": v.get("clients"),
            "violations": sorted({x["kind"] for x in v["model_violations"]}),
            "findings": sorted({f["code"] for f in rep["findings"] if f["severity"] == "error"})}


def map_zero_writes(ctx) -> list[tuple[int, bytes]]:
    """8 zero bytes over the value of the root FDT's preserved-memory-map
    (the differential harness's ``--inject 1:fdt+OFF:zero:8``)."""
    from pykho import profiles as P
    from pykho.abi import root
    phys = ctx.locate["fdt"]["phys"]
    off = root.RootFdtPage(P.E, bytearray(ctx.read(phys, PAGE))).find_prop_value(0, MAP_PROP)
    assert off > 0
    return [(phys + off, bytes(8))]


def run_predicted(tmp_path: Path, opts: vm.Options, build, target: str, writes_fn=None,
                  kernels: dict | None = None) -> tuple[dict, dict]:
    """Run a 2-boot chain; at stop 1 apply ``writes_fn(ctx)`` (jump phase)
    and predict boot 2 with ``target``.  Returns (summary, prediction)."""
    got: dict = {}
    cmdline2 = opts.cmdline(2)

    def hook(ctx):
        if ctx.stage != 1:
            return []
        writes = writes_fn(ctx) if writes_fn else []
        got["writes"] = [(p, d.hex()) for p, d in writes]
        got["fdt"] = ctx.locate["fdt"]["phys"]
        got["pred"] = predict(ctx, writes, target, cmdline2)
        return [vm.Write(p, d, stage=1, when="jump") for p, d in writes]

    import dataclasses
    opts = dataclasses.replace(opts, hook=hook)
    summary = vm.run_chain(tmp_path, opts, build, kernels=kernels)
    (tmp_path / "prediction.json").write_text(json.dumps(got, indent=1, default=str) + "\n")
    keep(tmp_path)
    assert "pred" in got, f"the chain never stopped at machine_kexec: {summary}"
    return summary, got["pred"]


def keep(capture: Path) -> None:
    """VMTEST_KEEP_CAPTURES=DIR: copy the capture there (as conftest's chains do)."""
    import os
    import shutil
    dest = os.environ.get("VMTEST_KEEP_CAPTURES")
    if dest:
        d = Path(dest) / capture.name
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(capture, d)


# ------------------------------------------------------------ the seed bug on a real kernel

MAP_ZERO_CASE = "map-zero-at-kexec"
MAP_ZERO_CHANGE = "preserved-memory-map value zeroed at machine_kexec of boot 1 (8 bytes at the property's value)"


@pytest.fixture(scope="module")
def map_zero(vm_kernel, tmp_path_factory):
    """{kernel: (capture, summary, prediction)} for the zeroed map on the stock
    and the unfixed 7.2.13 (each kexecs itself)."""
    out = {}

    def run(name: str, target: str):
        if name not in out:
            build = vm_kernel(name)
            d = tmp_path_factory.mktemp(f"mapzero-{name}")
            # a kernel that corrupts its page allocator may hang rather than die: no retry
            opts = vm.Options(boots=2, luo=False, stall_retries=0, stall_timeout=45, timeout=400)
            summary, pred = run_predicted(d, opts, build, target, map_zero_writes)
            out[name] = (d, summary, pred)
        return out[name]
    return run


def test_map_zero_stock_7_2_refuses(map_zero):
    capture, summary, pred = map_zero("7.2.13", "7.2")
    assert summary["completed"], summary
    inj = summary["stops"][0]["injected"]
    assert len(inj) == 1 and inj[0]["verified"] and inj[0]["written"] == "00" * 8, inj
    real = kho_lines(capture / "stage2")
    real_kho = [x for x in real if x.startswith("KHO:")]
    assert "KHO: found kexec handover data." not in real
    assert any(x.startswith("KHO: disabling KHO revival") for x in real_kho), real
    assert not failure_lines(capture / "stage2"), failure_lines(capture / "stage2")
    # pykho: rejected, the same KHO and client lines, a cold boot
    pred_lines = [x for x in pred["log"] if KHO_CLIENT.match(x)]
    agree = pred["populate"] == "rejected" and pred_lines == real and not pred["violations"]
    records.record(kernel="7.2.13", next_kernel="7.2.13", arch=ARCH, source=SOURCE, case=MAP_ZERO_CASE,
                   change=MAP_ZERO_CHANGE, real={"lines": real, "failure": [], "completed": summary["completed"]},
                   predicted={"target": pred["target"], "populate": pred["populate"], "lines": pred_lines,
                              "outcome": pred["outcome"], "violations": pred["violations"]},
                   agree=agree, note="stock 7.2.13: kho_populate refuses a zero map; cold boot")
    assert pred["populate"] == "rejected", pred
    assert pred_lines == real, (pred_lines, real)
    assert not pred["violations"], pred["violations"]


def test_map_zero_unfixed_corrupts(map_zero):
    capture, summary, pred = map_zero("7.2.13-unfixed", "7.2-unfixed")
    inj = summary["stops"][0]["injected"]
    assert len(inj) == 1 and inj[0]["verified"] and inj[0]["written"] == "00" * 8, inj
    lines = boot_lines(capture / "stage2")
    real = kho_lines(capture / "stage2")
    real_kho = [x for x in real if x.startswith("KHO:")]
    fail = failure_lines(capture / "stage2")
    assert "KHO: found kexec handover data." in real, lines[-40:]
    assert not any(x.startswith("KHO: disabling KHO revival") for x in real_kho)
    # the kernel's own detectors fire after the handover was accepted
    found_at = lines.index("KHO: found kexec handover data.")
    assert fail and lines.index(fail[0]) > found_at, lines[-60:]
    # the handover is forgotten: no kexec-metadata line, nobody restores
    assert not any(x.startswith("KHO: exec from:") for x in real_kho)
    # the page allocator complains while kho_init's cold-boot path hands the
    # adopted scratch back (init_cma_reserved_pageblock): the second free
    trace = [m.group(1) for x in lines[lines.index(fail[0]):]
             if (m := re.match(r"\s*\? (\w+)\+0x", x))][:24]
    double_free_in_kho_init = "init_cma_reserved_pageblock" in trace and "kho_init" in trace
    assert double_free_in_kho_init, trace
    # pykho: accepted, forgotten, kho_init frees scratch a second time; the
    # lines it predicts up to kho_init are the kernel's (the kernel hangs or
    # dies there, the model goes on)
    pred_lines = [x for x in pred["log"] if KHO_CLIENT.match(x)]
    forgotten = "forgot the handover" in (pred["outcome"] or "")
    agree = (pred["populate"] == "accepted" and pred_lines[:len(real)] == real and forgotten
             and "double-free" in pred["violations"] and double_free_in_kho_init)
    records.record(kernel="7.2.13-unfixed", next_kernel="7.2.13-unfixed", arch=ARCH, source=SOURCE,
                   case=MAP_ZERO_CASE, change=MAP_ZERO_CHANGE,
                   real={"lines": real, "failure": fail[:6], "bad_page_lines": sum(
                       x.startswith("BUG: Bad page state") for x in lines), "first_trace": trace[:10],
                         "completed": summary["completed"], "exit": summary["exit"],
                         "hung_at": summary.get("stall_cpus", [])[:1]},
                   predicted={"target": pred["target"], "populate": pred["populate"], "lines": pred_lines,
                              "outcome": pred["outcome"], "violations": pred["violations"]},
                   agree=agree, note="7.2.13 without the populate map check: accepted, then kho_memory_init "
                                     "forgets the handover and kho_init hands the adopted scratch to the page "
                                     "allocator a second time")
    assert pred["populate"] == "accepted", pred
    assert pred_lines[:len(real)] == real, (pred_lines, real)
    assert forgotten, pred["outcome"]
    assert "double-free" in pred["violations"], pred["violations"]


# ------------------------------------------------------------ cross-version chains

#: (boot 1's kernel, boot 2's kernel, pykho's target for boot 2)
CHAINS = {"upgrade": ("7.2.13", "7.3.4", "7.3"), "rollback": ("7.3.4", "7.2.13", "7.2")}
CHAIN_CHANGE = "none: the real handover (test_kho, reserve_mem vmtest_rmem, a LUO memfd session) kexecs another kernel"


@pytest.fixture(scope="module")
def chain(vm_kernel, tmp_path_factory):
    """{which: (capture, summary, prediction, old build, new build)}: a 2-boot
    chain whose boot 2 runs another kernel, the initramfs carrying its image."""
    out = {}

    def run(which: str):
        if which not in out:
            old, new, target = CHAINS[which]
            b1, b2 = vm_kernel(old), vm_kernel(new)
            d = tmp_path_factory.mktemp(f"chain-{which}")
            opts = vm.Options(boots=2, stall_retries=1)
            summary, pred = run_predicted(d, opts, b1, target, kernels={2: b2})
            out[which] = (d, summary, pred, b1, b2)
        return out[which]
    return run


def _real_boot2(capture: Path) -> dict:
    s2 = capture / "stage2"
    return {"kho": kho_lines(s2), "reserved": vm.kho_reserved(s2),
            "luo_check": [x for x in (s2 / "luo_check.txt").read_text().splitlines() if x.startswith("luo-memfd:")]
            if (s2 / "luo_check.txt").exists() else [],
            "uname": (s2 / "uname.txt").read_text().strip() if (s2 / "uname.txt").exists() else ""}


@pytest.mark.parametrize("which", list(CHAINS))
def test_cross_version_chain(which, chain):
    capture, summary, pred, b1, b2 = chain(which)
    assert summary["exit"] == "qemu-exited" and summary["completed"], summary
    assert summary["kernels"]["2"]["name"] == b2.name, summary.get("kernels")
    real = _real_boot2(capture)
    # boot 2 really is the other kernel, and it restored everything
    assert f" {b2.release} " in f" {real['uname']} ", real["uname"]
    assert (capture / "stage1/uname.txt").read_text().split()[2] == b1.release
    assert "KHO: found kexec handover data." in real["kho"]
    assert f"KHO: exec from: {b1.release} (count 1)" in real["kho"]
    assert "test_kho: KHO restore succeeded" in real["kho"]
    assert "Revived memory reservation 'vmtest_rmem' from KHO" in real["kho"]
    assert "luo: Retrieved live update data, liveupdate number: 1" in real["kho"]
    assert any("content OK" in x for x in real["luo_check"]), real["luo_check"]
    assert not any("FAIL" in x for x in real["luo_check"]), real["luo_check"]
    # pykho's prediction for the other kernel, on boot 1's capture
    predicted = [vm.strip_ts(x) for x in pred["log"]]
    missing = [x for x in predicted if x not in real["kho"]]
    in_order = not missing and [real["kho"].index(x) for x in predicted] == sorted(
        real["kho"].index(x) for x in predicted)
    reserved_agree = pred["reserved"] == real["reserved"]
    same_lines = [x for x in predicted if KHO_CLIENT.match(x)] == real["kho"]
    agree = (pred["populate"] == "accepted" and not missing and in_order and same_lines and reserved_agree
             and not pred["violations"])
    records.record(kernel=b1.name, next_kernel=b2.name, arch=ARCH, source=SOURCE, case=f"cross-version-{which}",
                   change=CHAIN_CHANGE,
                   real={"kho": real["kho"], "reserved_blocks": len(real["reserved"]), "luo_check": real["luo_check"]},
                   predicted={"target": pred["target"], "populate": pred["populate"], "log": predicted,
                              "reserved_blocks": len(pred["reserved"] or []), "reserved_agree": reserved_agree,
                              "violations": pred["violations"], "clients": pred["clients"]},
                   agree=agree, note=f"{b1.name} -> {b2.name}: validate --target {CHAINS[which][2]} "
                                     "on boot 1's capture against the real boot 2")
    assert pred["target"] == ("F" if b2.series == "7.3" else "E"), pred["target"]
    assert pred["populate"] == "accepted", pred
    assert not missing, f"pykho predicted lines the kernel did not print: {missing}\nkernel: {real['kho']}"
    assert in_order, (predicted, real["kho"])
    assert same_lines, (predicted, real["kho"])        # every KHO and client line, none missing
    assert reserved_agree, (len(pred["reserved"] or []), len(real["reserved"]))
    assert not pred["violations"], pred["violations"]
    # the harness's own walk agrees with the new kernel's reservations too
    loc = json.loads((capture / "ram/locate-stage1.json").read_text())
    assert loc["radix"]["entries"] == real["reserved"]


@pytest.mark.parametrize("which", list(CHAINS))
def test_cross_version_cli_target(which, chain, kho):
    """``kho validate --target 7.3|7.2`` (the CLI) on the capture gives the
    same verdict: the target's generation and its lines in the kernel's order."""
    capture, summary, pred, b1, b2 = chain(which)
    out = capture / "stage1/debugfs/kho/out"
    args = [str(out), "--mem", f"sparse:{capture}/ram/ram-stage1.sparse", "--target", CHAINS[which][2],
            "--cmdline", (capture / "stage2/cmdline.txt").read_text().strip(), "-j"]
    if not (out / "fdt").exists():
        args += ["--fdt-phys", hex(json.loads((capture / "ram/locate-stage1.json").read_text())["fdt"]["phys"])]
    v = kho("validate", *args)["verdict"]
    assert v["target"] == pred["target"] and v["populate"] == "accepted"
    real = kho_lines(capture / "stage2")
    got = [vm.strip_ts(x) for x in v["log"]]
    assert all(x in real for x in got), (got, real)


# ------------------------------------------------------------ 7.3's early walk and kdump gate

OUTSIDE = 0x7FFF0000000          # 8 TiB: far outside the 1 GiB guest


def last_level1_entry_writes(ctx) -> list[tuple[int, bytes]]:
    """The last non-zero entry of the last level-1 table the walk reaches,
    pointed 8 TiB up: every leaf before it is walked first."""
    import struct
    nodes = [(p, lv) for p, lv in ctx.locate["radix"]["nodes"] if lv == 1]
    table = nodes[-1][0]
    words = struct.unpack("<512Q", ctx.read(table, PAGE))
    i = max(i for i, w in enumerate(words) if w)
    return [(table + 8 * i, struct.pack("<Q", OUTSIDE))]


@pytest.mark.parametrize("name,target", [("7.2.13", "7.2"), ("7.3.4", "7.3")])
def test_node_outside_ram_late_in_the_walk(name, target, vm_kernel, tmp_path):
    """A leaf pointer outside RAM at the end of the walk.  7.2 reserves every
    block walked before it, then faults in __kho_radix_walk_tree; 7.3 faults at
    the same address in its early walk (kho_memory_init_early), with nothing
    memblock-reserved from the map (KERNEL-FACTS §12 F-4)."""
    build = vm_kernel(name)
    # 7.3 panics before the panic= parameter is parsed (a core param, read after
    # setup_arch), so it spins in panic() instead of rebooting: a short stall
    # timeout ends the run, and a hang is no reason to boot it again
    opts = vm.Options(boots=2, luo=False, stall_retries=0, stall_timeout=30, earlyprintk=True)
    summary, pred = run_predicted(tmp_path, opts, build, target, last_level1_entry_writes)
    lines = boot_lines(tmp_path / "stage2")
    bug = [x for x in lines if x.startswith("BUG: unable to handle page fault for address: ")]
    reserved = vm.kho_reserved(tmp_path / "stage2") if (tmp_path / "stage2/dmesg.txt").exists() else [
        [int(m.group(1), 16), ((int(m.group(2), 16) - int(m.group(1), 16) + 1) // PAGE).bit_length() - 1]
        for x in lines if (m := vm.MEMBLOCK_KHO.search(x))]
    rip = [x for x in lines if x.startswith("RIP: ")][:1]
    real = {"bug": bug[:1], "rip": rip, "reserved_blocks": len(reserved),
            "panic": [x for x in lines if x.startswith("Kernel panic")][:1]}
    oops_ok = bool(pred["oops"]) and bool(bug) and pred["oops"]["address_range"][0] == bug[0].rsplit(" ", 1)[1]
    agree = oops_ok and pred["reserved"] == reserved
    records.record(kernel=name, next_kernel=name, arch=ARCH, source=SOURCE, case="radix-leaf-outside-ram-late",
                   change="the last non-zero entry of the last level-1 table points 8 TiB up (outside RAM)",
                   real=real, predicted={"target": pred["target"], "populate": pred["populate"],
                                         "log": pred["log"][-2:], "oops": pred["oops"],
                                         "reserved_blocks": len(pred["reserved"] or [])},
                   agree=agree, note="7.3 walks the tree in kho_memory_init_early before any reservation"
                   if target == "7.3" else "7.2 reserves while it walks")
    assert bug, lines[-30:]
    assert "Kernel panic - not syncing: Fatal exception" in lines
    assert oops_ok, (pred["oops"], bug)
    assert pred["reserved"] == reserved, (len(pred["reserved"] or []), len(reserved))
    if target == "7.3":
        assert reserved == [], "7.3 faults before it reserves anything"
        assert any("kho_memory_init_early" in x or "kho_extend_scratch" in x or "__kho_radix_walk_tree" in x
                   for x in lines), rip
    else:
        assert reserved, "7.2 reserves the blocks walked before the bad entry"


@pytest.mark.parametrize("name", ["7.2.13", "7.3.4"])
def test_kdump_gate_cold_boot(name, vm_kernel, tmp_path):
    """A cold boot with ``elfcorehdr=`` (is_kdump_kernel()): 7.3 prints
    ``KHO: disabled in the kdump kernel`` and reserves no scratch; 7.2 has no
    such gate.  The model's kernel of each generation, booted cold on the same
    command line, says the same (KERNEL-FACTS §12 F-2)."""
    from pykho.model.scenarios import Run
    build = vm_kernel(name)
    opts = vm.Options(boots=1, luo=False, stall_retries=1, append="elfcorehdr=0x100000")
    summary = vm.run_chain(tmp_path, opts, build)
    keep(tmp_path)
    assert summary["completed"], summary
    real = [x for x in kho_lines(tmp_path / "stage1") if x.startswith("KHO:")]
    scratch = (tmp_path / "stage1/scratch_len.txt").read_text().split() if (
        tmp_path / "stage1/scratch_len.txt").exists() else []
    profile = "F" if build.series == "7.3" else "E"
    cmd = (tmp_path / "stage1/cmdline.txt").read_text().strip()
    k = Run({"machine": {"ram": [[0x100000, 1 << 30, 0]]}, "kernel": [{"profile": profile, "cmdline": cmd}],
             "step": []}, "kdump").run().kernels[0]
    pred = [x for x in k.log if x.startswith("KHO:")]
    agree = pred == real and bool(k.scratch) == bool(scratch)
    records.record(kernel=name, next_kernel="", arch=ARCH, source=SOURCE, case="kdump-cold-boot",
                   change="cold boot with elfcorehdr=0x100000 on the command line",
                   real={"kho": real, "scratch_areas": len(scratch)},
                   predicted={"target": profile, "kho": pred, "scratch_areas": len(k.scratch)}, agree=agree,
                   note="the kdump gate is new in 7.3")
    assert pred == real, (pred, real)
    if profile == "F":
        assert "KHO: disabled in the kdump kernel" in real and not scratch
    else:
        assert "KHO: disabled in the kdump kernel" not in real and scratch

# ------------------------------------------------------------ a newer kernel in Debian

@pytest.mark.newer_kernel
def test_no_linux_source_newer_than_the_profiles():
    """Fails, naming it, when sid or trixie-backports carries a linux-source-7.x
    newer than any kernel pykho has a profile for (vmtest/setup.sh lists them in
    $VMTEST_CACHE/available.txt).  Not in the default selection: run it with
    ``pytest -m newer_kernel tests/vm``."""
    from vmtest.build import cache_dir, newer_sources, profiled_series
    if not (cache_dir() / "available.txt").exists():
        pytest.fail(f"no {cache_dir() / 'available.txt'}: run vmtest/setup.sh", pytrace=False)
    top = profiled_series()
    assert top is not None, "pykho is not importable"
    new = newer_sources()
    assert not new, ("newer than pykho's newest profile (" + f"{top[0]}.{top[1]}): "
                     + ", ".join(f"{r['package']} {r['version']} in {r['suite']}" for r in new))
