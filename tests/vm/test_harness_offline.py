"""The vmtest harness itself, without a VM (no root, QEMU or kernel build needed):
its RAM analysis on the real 7.2.13 oracle bytes, and its serial-log splitter."""
from __future__ import annotations

import base64
import hashlib
import mmap
import shutil
import tarfile
from pathlib import Path

import pytest

from vmtest import capture, inject, serial

ORACLE_A = Path(__file__).resolve().parents[1] / "data" / "oracle" / "A-selftest"


@pytest.fixture(scope="module")
def oracle_ram(tmp_path_factory):
    """A 1 GiB sparse file holding the oracle's kept pages at their physical addresses."""
    tar = ORACLE_A / "ram-stage1.sparse.tar.xz"
    if not tar.exists():
        pytest.skip(f"no {tar}")
    d = tmp_path_factory.mktemp("oracle-ram")
    with tarfile.open(tar) as t:
        t.extractall(d, filter="data")
    img = d / "ram.bin"
    with open(img, "wb") as f:
        f.truncate(1 << 30)
        for line in (d / "MANIFEST.tsv").read_text().splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name, start, _n = line.split("\t")
            f.seek(int(start, 0))
            f.write((d / name).read_bytes())
    return img


def test_analyse_oracle_ram(oracle_ram, tmp_path):
    stage = tmp_path / "stage1"
    (stage / "debugfs/kho").mkdir(parents=True)
    # debugfs as the oracle captured it (scratch_phys/len, the truncated out/fdt, sub_fdts)
    shutil.copytree(ORACLE_A / "stage1-debugfs/kho/out", stage / "debugfs/kho/out")
    with open(oracle_ram, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        res = capture.analyse_ram(mm, stage)
    assert not res["errors"], res["errors"]
    assert [s["phys"] for s in res["setup_data"]] == [0x212B080]
    assert res["fdt"]["phys"] == 0x317000 and res["fdt"]["compatible"] == "kho-v4"
    assert res["_fdt_bytes"] == (ORACLE_A / "ram-stage1-out-fdt-full.dtb").read_bytes()
    assert res["fdt"]["preserved_memory_map"] == 0x306000
    assert len(res["radix"]["nodes"]) == 44
    # the harness walk equals the next kernel's memblock reservations, in order
    dmesg = (ORACLE_A / "stage2-dmesg.txt").read_text()
    want = []
    for m in serial.MEMBLOCK_KHO.finditer(dmesg):
        a, b = int(m.group(1), 16), int(m.group(2), 16)
        want.append([a, ((b - a + 1) // 4096).bit_length() - 1])
    assert res["radix"]["entries"] == want and len(want) == 24
    assert res["scratch"]["destination"] == 0x3D3F0000
    assert 0x3EA0F000 in res["scratch"]["copies"]
    assert [(s["name"], s["same_as_debugfs"]) for s in res["subnodes"]] == [("kho_test", True),
                                                                           ("kexec-metadata", True)]
    ranges, stats = capture.select_ranges(res, "meta")
    kept = {a for a, _n in ranges}
    assert {0x306000, 0x317000, 0x212B000, 0x3EA0F000} <= kept


def _blob(stage: int, path: str, data: bytes) -> list[str]:
    b64 = base64.encodebytes(data).decode().split()
    return ([f"@@KHO-BLOB-BEGIN stage={stage} path={path} size={len(data)} "
             f"sha256={hashlib.sha256(data).hexdigest()}"] + b64 + [f"@@KHO-BLOB-END stage={stage} path={path}"])


def test_split_serial(tmp_path):
    fdt = bytes(range(256)) * 3
    lines = (["[    0.000000] Linux version 7.2.13 (x) #1", "[    0.100000] boot 1"]
             + ["@@KHO-STAGE-START stage=1 last=2", "@@KHO-TEXT-BEGIN stage=1 name=dmesg",
                "[    0.1] a kernel line", "@@KHO-TEXT-RC stage=1 name=dmesg rc=0",
                "@@KHO-TEXT-END stage=1 name=dmesg"]
             + _blob(1, "/sys/kernel/debug/kho/out/fdt", fdt)
             + ["[    5.000000] interleaved printk", "@@KHO-KEXEC stage=1",
                "[    6.900000] kexec_core: Starting new kernel",
                "[    0.000000] Linux version 7.2.13 (x) #1", "[    0.200000] KHO: found kexec handover data.",
                "@@KHO-STAGE-START stage=2 last=2"]
             + _blob(2, "/sys/kernel/debug/kho/in/fdt", fdt[:100])
             + ["@@KHO-STAGE-END stage=2", "[    9.0] reboot: Restarting system"])
    log = tmp_path / "serial.log"
    log.write_text("\r\n".join(lines) + "\r\n")
    st = serial.split_serial(log, tmp_path / "cap")
    cap = tmp_path / "cap"
    assert st[1]["kexec"] and st[2]["end"] and not st[1]["errors"] and not st[2]["errors"]
    assert (cap / "stage1/debugfs/kho/out/fdt").read_bytes() == fdt
    assert (cap / "stage2/debugfs/kho/in/fdt").read_bytes() == fdt[:100]
    assert (cap / "stage1/dmesg.txt").read_text() == "[    0.1] a kernel line\n"
    assert "boot 1" in (cap / "stage1/console-boot.log").read_text()
    assert (cap / "stage1/console-kexec.log").read_text() == "[    6.900000] kexec_core: Starting new kernel\n"
    assert "KHO: found" in (cap / "stage2/console-boot.log").read_text()
    assert "Restarting" in (cap / "stage2/console-end.log").read_text()


def test_inject_arg_and_phases():
    w = inject.parse_inject_arg("1:fdt+0x40:00ff")
    assert (w.target, w.data, w.stage, w.phase()) == ("fdt+0x40", b"\x00\xff", 1, "jump")
    assert inject.parse_inject_arg("2:scratch+16:zero:8").phase() == "entry"
    assert inject.parse_inject_arg("1:kho_data+24:28").phase() == "entry"
    w = inject.parse_inject_arg("1:entry@0x1000:aa")
    assert (w.target, w.phase()) == (0x1000, "entry")
    assert inject.parse_inject_arg("1:node:3:aa").target == "node:3"
    loc = {"fdt": {"phys": 0x317000, "preserved_memory_map": 0x306000},
           "setup_data": [{"phys": 0x212B080}], "scratch": {"copies": [0x22DD000]},
           "radix": {"nodes": [[0x306000, 5], [0xDFA000, 4]]}, "subnodes": []}
    assert inject.resolve_target("fdt+0x40", loc) == [0x317040]
    assert inject.resolve_target("node:1", loc) == [0xDFA000]
    entry = {"setup_data": 0x3CFFA0D0, "scratch_addr": 0x3CFF0000}
    assert inject.resolve_target("kho_data+24", loc, entry) == [0x3CFFA0D0 + 16 + 24]
    assert inject.resolve_target("scratch+16", loc, entry) == [0x3CFF0010]


def test_package_layout():
    """Every module of the harness documents itself and exports what __all__ names."""
    import importlib

    import vmtest
    for name in ("vmtest", "vmtest.build", "vmtest.qmp", "vmtest.gdb", "vmtest.serial", "vmtest.capture",
                 "vmtest.inject", "vmtest.runner", "vmtest.__main__"):
        mod = importlib.import_module(name)
        assert mod.__doc__ and mod.__all__, name
        assert [n for n in mod.__all__ if not hasattr(mod, n)] == [], name
    assert vmtest.run_chain is vmtest.runner.run_chain and vmtest.Write is inject.Write


def test_cli_split(tmp_path):
    """``python -m vmtest split`` from the repository root, as vmtest/run.py split was."""
    import subprocess
    import sys
    repo = Path(__file__).resolve().parents[2]
    log = tmp_path / "serial.log"
    log.write_text("\n".join(["@@KHO-STAGE-START stage=1 last=1", "@@KHO-TEXT-BEGIN stage=1 name=cmdline",
                              "console=ttyS0", "@@KHO-TEXT-END stage=1 name=cmdline",
                              "@@KHO-STAGE-END stage=1"]) + "\n")
    r = subprocess.run([sys.executable, "-m", "vmtest", "split", str(log), str(tmp_path / "cap")],
                       cwd=repo, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "stage1: started=True kexec=False end=True blobs=0 errors=[]\n"
    assert (tmp_path / "cap/stage1/cmdline.txt").read_text() == "console=ttyS0\n"
