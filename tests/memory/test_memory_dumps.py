"""Handovers encoded by pykho, placed in a real QEMU guest's RAM with
``-device loader``, dumped by QEMU (``dump-guest-memory`` ELF and
``pmemsave`` raw), then validated from the dump."""

import json
import os
import re
import shutil
import socket
import subprocess
import time

import pytest

from pykho import profiles as P
from pykho.abi import radix, root, structs
from pykho.cli import main
from pykho.memory import ElfDump, RawImage, SparseMemory

QEMU = shutil.which("qemu-system-x86_64")
MiB = 1 << 20


def need_qemu():
    if QEMU is None:
        msg = "qemu-system-x86_64 not installed (apt-get install qemu-system-x86)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg + ": CI must install it (.ci/run)")
        pytest.skip(msg)


def build_handover(tmp_path, corrupt=None):
    """A 7.2 handover in a 64 MiB machine: root FDT, radix tree, kexec-metadata,
    blocks, scratch array; plus a debugfs-style directory describing it."""
    mem = SparseMemory([(0, 64 * MiB)])
    nxt = [0x300000]

    def page():
        p = nxt[0]
        nxt[0] += 4096
        return p
    blocks = [(0x800000, 9), (0x1000000, 10), (0x2345000, 0), (0x2346000, 1), (0x200000, 0), (0x201000, 0)]
    tree = radix.encode(blocks, mem, page)
    fdt_page = root.build_root_at_boot(P.E, tree.root)
    md = structs.KexecMetadata(1, "7.2.13", 3).pack()
    mem.write(0x201000, md)
    assert fdt_page.add_subtree("kexec-metadata", 0x201000, len(md)) == 0
    mem.write(0x200000, bytes(fdt_page.buf))
    scratch = [structs.KhoScratch(0x3000000, 8 * MiB), structs.KhoScratch(0x3800000, 0),
               structs.KhoScratch(0x2800000, 8 * MiB)]
    if corrupt == "scratch-overlap":
        scratch[2] = structs.KhoScratch(0x1000000, 8 * MiB)
    mem.write(0x3FF0000, structs.encode_scratch(scratch))
    mem.write(0x100000, structs.encode_setup_data(structs.KhoData(0x200000, 4096, 0x3FF0000, 48)))
    if corrupt == "outside":
        mem.write_u64(tree.root + 8 * 2, 0x7F000000)     # an L4 node beyond RAM
    d = tmp_path / "kho" / "out"
    d.mkdir(parents=True)
    (d / "fdt").write_bytes(fdt_page.blob())
    (d / "scratch_phys").write_text(structs.format_debugfs_scratch(a.addr for a in scratch))
    (d / "scratch_len").write_text(structs.format_debugfs_scratch(a.size for a in scratch))
    return mem, d, sorted(set(blocks), key=lambda b: radix.encode_key(*b))


def qmp(sock_path, *cmds):
    s = socket.socket(socket.AF_UNIX)
    for _ in range(100):
        try:
            s.connect(str(sock_path))
            break
        except OSError:
            time.sleep(0.1)
    f = s.makefile("rw")
    json.loads(f.readline())
    out = []
    for c in ({"execute": "qmp_capabilities"},) + cmds:
        f.write(json.dumps(c) + "\n")
        f.flush()
        while True:
            msg = json.loads(f.readline())
            if "return" in msg or "error" in msg:
                out.append(msg)
                break
    s.close()
    return out


def qemu_dump(tmp_path, mem):
    """Load every written page range with -device loader, dump ELF and raw."""
    args = [QEMU, "-M", "q35", "-m", "64M", "-S", "-nodefaults", "-display", "none", "-accel", "tcg",
            "-qmp", f"unix:{tmp_path}/q.sock,server=on,wait=off"]
    for i, (s, e) in enumerate(mem.written_ranges()):
        f = tmp_path / f"r{i}.bin"
        f.write_bytes(mem.read(s, e - s))
        args += ["-device", f"loader,file={f},addr=0x{s:x},force-raw=on"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        res = qmp(tmp_path / "q.sock",
                  {"execute": "dump-guest-memory",
                   "arguments": {"paging": False, "protocol": f"file:{tmp_path}/d.elf"}},
                  {"execute": "pmemsave", "arguments": {"val": 0, "size": 64 * MiB, "filename": f"{tmp_path}/d.raw"}},
                  {"execute": "quit"})
        assert all("return" in r for r in res[:3]), res
    finally:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return tmp_path / "d.elf", tmp_path / "d.raw"


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    need_qemu()
    tmp = tmp_path_factory.mktemp("qemu")
    mem, d, blocks = build_handover(tmp)
    elf, raw = qemu_dump(tmp, mem)
    yield mem, d, blocks, elf, raw
    for f in (elf, raw):
        f.unlink(missing_ok=True)


def test_qemu_elf_and_raw_dumps_read_back(dumps):
    mem, d, blocks, elf, raw = dumps
    e, r = ElfDump(str(elf)), RawImage(str(raw))
    for s, end in mem.written_ranges():
        assert e.read(s, end - s) == mem.read(s, end - s) == r.read(s, end - s)
    # QEMU writes one PT_LOAD per RAM block: the guest RAM above 1 MiB (after
    # the legacy ROM window) is one segment, holding the setup_data page
    assert (0x100000, 64 * MiB) in e.ranges()
    assert e.contains(0x100000, 4096) and all(e.contains(s, end - s) for s, end in mem.written_ranges())
    assert not e.contains(64 * MiB, 4096) and not e.contains(64 * MiB - 4096, 8192)   # past the 64 MiB of RAM
    # our PT_LOAD reader agrees with pyelftools
    from elftools.elf.elffile import ELFFile
    with open(elf, "rb") as f:
        segs = sorted((sg["p_paddr"], sg["p_paddr"] + sg["p_filesz"]) for sg in ELFFile(f).iter_segments()
                      if sg["p_type"] == "PT_LOAD" and sg["p_filesz"])
    assert e.ranges() == segs


@pytest.mark.parametrize("kind", ["elf", "raw"])
def test_validate_qemu_dump(dumps, capsys, kind):
    mem, d, blocks, elf, raw = dumps
    src = f"elf:{elf}" if kind == "elf" else f"raw:{raw}"
    rc = main(["validate", str(d), "--mem", src, "--blocks", "-j"])
    rep = json.loads(capsys.readouterr().out)
    assert rc == 0, rep["findings"]
    assert [tuple(b) for b in rep["preserved"]] == blocks
    assert rep["verdict"]["populate"] == "accepted"
    assert rep["verdict"]["log"] == ["KHO: found kexec handover data.", "KHO: exec from: 7.2.13 (count 3)"]
    # the root FDT and the setup_data record were found in the dump by themselves
    rc = main(["inspect", str(d), "--mem", src, "-j"])
    rep = json.loads(capsys.readouterr().out)
    assert rep["fdt"]["phys"] == 0x200000 and rep["setup_data"]["phys"] == 0x100000


@pytest.mark.parametrize("corrupt,code", [("outside", "radix-pointer-outside"),
                                          ("scratch-overlap", "model-preserved-overlaps-scratch")])
def test_validate_corrupted_qemu_dump(tmp_path, capsys, corrupt, code):
    need_qemu()
    mem, d, blocks = build_handover(tmp_path, corrupt)
    elf, raw = qemu_dump(tmp_path, mem)
    try:
        rc = main(["validate", str(d), "--mem", f"elf:{elf}", "-j"])
        rep = json.loads(capsys.readouterr().out)
    finally:
        elf.unlink()
        raw.unlink()
    assert rc == 1
    assert code in [f["code"] for f in rep["findings"]]


def test_map_svg_and_png(tmp_path, capsys):
    mem, d, blocks = build_handover(tmp_path)
    memdir = tmp_path / "sparse"
    memdir.mkdir()
    lines = ["# file\tphys_start\tlength"]
    for s, e in mem.written_ranges():
        (memdir / f"{s:012x}.bin").write_bytes(mem.read(s, e - s))
        lines.append(f"{s:012x}.bin\t0x{s:x}\t0x{e - s:x}")
    (memdir / "MANIFEST.tsv").write_text("\n".join(lines) + "\n")
    svg = tmp_path / "m.svg"
    assert main(["map", str(d), "--mem", f"sparse:{memdir}", "--out", str(svg)]) == 0
    text = svg.read_text()
    assert text.startswith("<svg")
    # preserved blocks drawn as coalesced runs per order (titled with their range), together the blocks
    runs = set(re.findall(r"preserved 0x([0-9a-f]+)-0x([0-9a-f]+) order (\d+)", text))
    drawn = sorted((p, int(o)) for s, e, o in runs for p in range(int(s, 16), int(e, 16), 4096 << int(o)))
    assert drawn == sorted(blocks)
    assert len(runs) < len(blocks)          # 0x200000 and 0x201000 (order 0) are one run
    pytest.importorskip("matplotlib")
    png = tmp_path / "m.png"
    assert main(["map", str(d), "--mem", f"sparse:{memdir}", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_vmcore_through_drgn(tmp_path, capsys):
    """An ELF vmcore with VMCOREINFO (as kdump writes) read through drgn."""
    pytest.importorskip("drgn")
    kdumpling = pytest.importorskip("kdumpling")
    mem, d, blocks = build_handover(tmp_path)
    b = kdumpling.KdumpBuilder(arch="x86_64")
    b.set_vmcoreinfo("OSRELEASE=7.2.13\nPAGESIZE=4096\nKERNELOFFSET=0\n"
                     "SYMBOL(swapper_pg_dir)=ffffffff82a0c000\n")
    for s, e in mem.written_ranges():
        b.add_memory_segment(phys_addr=s, data=mem.read(s, e - s))
    core = tmp_path / "vmcore"
    b.write(str(core))
    rc = main(["validate", str(d), "--mem", f"vmcore:{core}", "--blocks", "-j"])
    rep = json.loads(capsys.readouterr().out)
    assert rc == 0 and [tuple(x) for x in rep["preserved"]] == blocks
