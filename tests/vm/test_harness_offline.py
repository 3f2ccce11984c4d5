"""The vmtest harness itself, without a VM (no root, QEMU or kernel build needed):
its RAM analysis on the real 7.2.13 oracle bytes, and its serial-log splitter."""
from __future__ import annotations

import argparse
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


def test_cmdline_per_boot():
    from vmtest import runner
    from vmtest.__main__ import parse_cmdline_stage
    # without per-boot lines nothing changes: one line, handed to QEMU as it always was
    o = runner.Options(boots=3)
    assert o.boot_cmdlines() == {}
    assert o.cmdline() == (runner.BASE_CMDLINE + " reserve_mem=4M:4K:vmtest_rmem test_kho.max_mem=1048576"
                           " vmtest_stage=1 vmtest_last=3 vmtest_luo=1")
    o = runner.Options(boots=3, append="a=1", cmdlines={2: "kho=off  memblock=debug"})
    lines = o.boot_cmdlines()
    assert sorted(lines) == [1, 2, 3]
    assert len({len(x) for x in lines.values()}) == 1           # padded to one length
    for n, x in lines.items():
        words = x.split()
        assert f"vmtest_stage={n}" in words and words[-1].startswith(runner.PAD_WORD)
        assert ("kho=off" in words) == (n == 2) and ("a=1" in words) == (n != 2)
        assert "  " not in x
    # the guest's /init hands boot N+1 its own line with vmtest_stage bumped: each
    # next line must fit in that room (write_cmdline refuses anything longer)
    for n in (1, 2):
        room = " ".join(w if not w.startswith("vmtest_stage=") else f"vmtest_stage={n + 1}"
                        for w in lines[n].split())
        assert len(lines[n + 1]) <= len(room)
    with pytest.raises(ValueError):
        runner.Options(boots=2, cmdlines={3: "x"}).boot_cmdlines()
    with pytest.raises(ValueError):
        runner.Options(boots=2, cmdlines={2: "x" * 2000}).boot_cmdlines()
    assert parse_cmdline_stage("2=kho=off a") == (2, "kho=off a")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_cmdline_stage("kho=off")


class FakeGdb:
    """Guest-physical memory and registers as a stopped kernel entry shows them."""

    def __init__(self, mem: bytearray, regs: dict):
        self.mem, self.regs = mem, regs

    def read_reg(self, num):
        return self.regs[num]

    def read_phys(self, addr, length):
        return bytes(self.mem[addr:addr + length])

    def write_phys(self, addr, data):
        self.mem[addr:addr + len(data)] = data


def test_entry_cmdline_rewrite(tmp_path):
    import struct
    mem = bytearray(0x10000)
    old = b"console=ttyS0 vmtest_stage=2 vmtest.pad=xxxxxxxx"
    struct.pack_into("<I", mem, 0x1000 + 0x228, 0x3000)          # boot_params.hdr.cmd_line_ptr
    mem[0x3000:0x3000 + len(old) + 1] = old + b"\0"
    gdb = FakeGdb(mem, {5: 0x1000})
    stop: dict = {}
    msgs: list[str] = []
    # no writes: the command line alone, no setup_data needed (hdr.setup_data is 0 here)
    inject.entry_writes(1, tmp_path, gdb, stop, [], {}, msgs.append, "console=ttyS0 kho=off")
    assert mem[0x3000:0x3000 + 22] == b"console=ttyS0 kho=off\0"
    assert stop["next_cmdline"] == {"phys": "0x3000", "before": old.decode(), "written": "console=ttyS0 kho=off",
                                    "verified": True}
    assert "entry" not in stop and "boot 2's command line" in msgs[0]
    with pytest.raises(ValueError):                             # longer than the room there
        inject.write_cmdline(gdb, 0x1000, "y" * 60)
    # with writes, the SETUP_KEXEC_KHO record must be reachable, as before
    with pytest.raises(RuntimeError, match="no SETUP_KEXEC_KHO"):
        inject.entry_writes(1, tmp_path, gdb, {}, [inject.Write("scratch", b"\0", 1)], {}, msgs.append)
    struct.pack_into("<Q", mem, 0x1000 + 0x250, 0x4000)          # hdr.setup_data -> a KHO record
    struct.pack_into("<QII4Q", mem, 0x4000, 0, capture.SETUP_KEXEC_KHO, 32, 0x5000, 0x1000, 0x6000, 0x20)
    (tmp_path / "ram").mkdir()
    stop = {}
    inject.entry_writes(1, tmp_path, gdb, stop, [inject.Write("scratch+8", b"\xab", 1)], {}, msgs.append,
                        "console=ttyS0")
    assert mem[0x6008] == 0xAB and stop["entry"]["scratch_addr"] == "0x6000"
    assert stop["injected"][0]["when"] == "entry" and stop["next_cmdline"]["written"] == "console=ttyS0"


def test_numa_guest_shape():
    """A two-node guest: one memory backend and one socket per node; the RAM
    layout of QEMU's pc machine puts what is above 3 GiB of a 4 GiB guest
    from 4 GiB up (the PCI hole below)."""
    from vmtest import runner
    assert runner.numa_argv(runner.Options()) == ["-smp", "2"]
    argv = runner.numa_argv(runner.Options(memory="4G", numa_nodes=2))
    assert argv[:2] == ["-smp", "2,sockets=2,cores=1,threads=1"]
    assert "memory-backend-ram,id=ram1,size=2048M" in argv and "node,nodeid=1,memdev=ram1" in argv
    assert "cpu,node-id=1,socket-id=1" in argv
    with pytest.raises(ValueError):
        runner.numa_argv(runner.Options(memory="4G", numa_nodes=3, smp=2))
    assert capture.qemu_ram_ranges(1 << 30) == [(0, 1 << 30)]
    assert capture.qemu_ram_ranges(0xDFF00000) == [(0, 0xDFF00000)]
    assert capture.qemu_ram_ranges(4 << 30) == [(0, 3 << 30), (4 << 30, 5 << 30)]


def test_ram_above_the_hole(tmp_path):
    """pmemsave of a guest with RAM above 4 GiB: one file, offset = physical
    address, the hole a hole, the part file gone."""
    class FakeQmp:
        def execute(self, cmd, val, size, filename):
            assert cmd == "pmemsave"
            # each byte of a page tells the page's physical address (scaled down)
            with open(filename, "wb") as f:
                for at in range(val, val + size, 1 << 20):
                    f.write(bytes([(at >> 20) % 251]) * (1 << 20))
    dest = tmp_path / "ram.bin"
    real = capture.qemu_ram_ranges
    capture.qemu_ram_ranges = lambda n: [(0, 8 << 20), (16 << 20, 20 << 20)]   # a small pc-like layout
    try:
        capture.pmemsave(FakeQmp(), dest, "12M")
    finally:
        capture.qemu_ram_ranges = real
    data = dest.read_bytes()
    assert len(data) == 20 << 20
    for mib in (0, 7, 16, 19):
        assert data[mib << 20] == mib % 251 and data[((mib + 1) << 20) - 1] == mib % 251
    assert data[8 << 20:16 << 20] == bytes(8 << 20)
    assert [p.name for p in tmp_path.iterdir()] == ["ram.bin"]
