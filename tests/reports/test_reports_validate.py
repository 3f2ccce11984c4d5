"""kho inspect / validate on real artifacts and on corruptions of them."""

import json
import os
import re
import shutil
import tarfile

import pytest

from conftest import oracle, reserve_lines
from helpers import BUNDLED, BUNDLED_DIR, A, B, ram_file
from pykho.cli import main

A_OUT, A_MEM = A.out, A.mem
B_OUT, B_MEM = B.out, B.mem


def run_json(capsys, *argv):
    rc = main(list(argv) + ["-j"])
    return rc, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("out,mem,name", [(A_OUT, A_MEM, "A-selftest"), (B_OUT, B_MEM, "B-luo-memblock-chain")])
def test_inspect_json_on_real_handovers(capsys, out, mem, name):
    cap = {A.name: A, B.name: B}[name]
    rc, rep = run_json(capsys, "inspect", out, "--mem", mem)
    assert rc == 0
    assert rep["compatible"] == "kho-v4" and rep["generation"] == "E"
    # found in the RAM extract by itself (the debugfs copy has no addresses)
    assert rep["fdt"]["phys"] == cap.root_fdt and rep["memory_map"] == cap.map_root
    assert rep["setup_data"] == {"phys": cap.setup_data, "scratch_addr": cap.scratch_array,
                                 "scratch_size": 16 * len(cap.scratch)}
    assert [(s["name"], s["phys"], s["size"]) for s in rep["subtrees"]] == \
        [(n, p, z) for n, (p, z) in reversed(cap.subtrees.items())]          # newest first, as in the FDT
    assert [(a["addr"], a["size"]) for a in rep["scratch"]] == list(cap.scratch)
    assert "preserved" not in rep                  # blocks are streamed only with --blocks
    assert main(["inspect", out, "--mem", mem, "--blocks", "-j"]) == 0
    first, *rest = capsys.readouterr().out.splitlines()
    assert json.loads(first)["summary"] == rep["summary"]
    assert [tuple(json.loads(x)) for x in rest] == reserve_lines(open(oracle(name, "stage2-dmesg.txt")).read())
    assert {"name", "phys", "size"} <= set(rep["subtrees"][0])
    assert rep["scratch"][0]["size"] > 0
    assert rep["quirks"][0]["code"] == "debugfs-fdt-truncated"


def test_inspect_default_is_bundled_real_handover(capsys):
    assert main(["inspect"]) == 0
    out = capsys.readouterr().out
    assert "kho-v4" in out and "21 blocks" in out and "LUO luo-v5" in out
    rc, rep = run_json(capsys, "inspect")
    assert rc == 0 and rep["fdt"]["phys"] == BUNDLED.root_fdt and rep["memory_map"] == BUNDLED.map_root


def test_bundled_handover_is_capture_b():
    """The bundled default is B's stage 1, byte for byte (so BUNDLED = B)."""
    pairs = [(os.path.join(BUNDLED_DIR, "debugfs", "kho", "out", f), os.path.join(B.out, f))
             for f in ("fdt", "scratch_phys", "scratch_len")]
    pairs.append((os.path.join(BUNDLED_DIR, "ram.sparse.tar.xz"), B.dir("ram-stage1.sparse.tar.xz")))
    for ours, theirs in pairs:
        with open(ours, "rb") as f, open(theirs, "rb") as g:
            assert f.read() == g.read(), ours


@pytest.mark.parametrize("cap", [A, B], ids=lambda c: c.name)
def test_oracle_table_is_what_the_captures_hold(cap):
    """tests/helpers.py's addresses, read again from the capture files
    (the host decode of the capture, debugfs text, the RAM extract, dmesg)."""
    with open(cap.dir("decode-stage1.json")) as f:
        ref = json.load(f)
    [sd] = ref["setup_data_kho"]
    assert (sd["setup_data_at"], sd["fdt_addr"], sd["fdt_size"], sd["scratch_addr"], sd["scratch_size"]) == \
        (cap.setup_data, cap.root_fdt, 4096, cap.scratch_array, 16 * len(cap.scratch))
    assert ref["root_fdt_phys_candidates"] == [cap.root_fdt]
    assert ref["preserved_memory_map"] == cap.map_root
    assert ref["radix_nodes"][0] == {"level": 5, "phys": cap.map_root}
    # the FDT lists sub-trees newest first
    assert [(k.lstrip("/"), v["preserved-data"], v["blob-size"]) for k, v in reversed(ref["subnodes"].items())] == \
        [(n, p, z) for n, (p, z) in cap.subtrees.items()]
    assert ref["scratch"]["array_bytes_found_at"] == list(cap.scratch_array_copies)
    assert [tuple(e) for e in ref["scratch"]["entries"]] == list(cap.scratch)

    def hexes(fname):
        with open(os.path.join(cap.out, fname)) as f:
            return [int(x, 16) for x in f.read().split()]
    assert list(zip(hexes("scratch_phys"), hexes("scratch_len"))) == list(cap.scratch)
    with tarfile.open(cap.dir("ram-stage1.sparse.tar.xz")) as tf:
        kept = {os.path.basename(n) for n in tf.getnames()}
    assert {ram_file(cap.root_fdt), ram_file(cap.map_root)} <= kept
    if cap is B:
        assert ref["subnodes"]["/kho_test"]["decoded"]["folios_info"]["first"] == cap.extra["kho_test_folios_info"]
        with open(cap.dir("stage2-dmesg.txt")) as f:
            reserved = reserve_lines(f.read())
        assert (cap.extra["kho_test_folios_info"], 0) in reserved and (cap.extra["oracle_rmem"], 10) in reserved
        with open(cap.dir("stage1-dmesg.txt")) as f:
            lines = f.read().splitlines()
        i = next(i for i, l in enumerate(lines) if "4194304 bytes" in l and "reserve_mem+" in l)
        assert re.search(r"__memblock_reserve: \[0x0*([0-9a-f]+)-", lines[i + 1]).group(1) == \
            f"{cap.extra['oracle_rmem']:x}"
    else:
        assert cap.extra == {}


@pytest.mark.parametrize("out,mem", [(A_OUT, A_MEM), (B_OUT, B_MEM)])
def test_real_handovers_validate_clean(capsys, out, mem):
    rc, rep = run_json(capsys, "validate", out, "--mem", mem)
    assert rc == 0
    assert rep["verdict"]["populate"] == "accepted"
    log = rep["verdict"]["log"]
    assert log[0] == "KHO: found kexec handover data." and "KHO: exec from: 7.2.13 (count 1)" in log
    assert not [f for f in rep["findings"] if f["severity"] == "error"]
    assert rep["summary"]["blocks"] > 0


def test_stage2_in_fdt_validates(capsys):
    rc, rep = run_json(capsys, "validate", oracle("B-luo-memblock-chain", "stage2-debugfs", "kho", "in", "fdt"))
    assert rc == 0 and rep["verdict"]["populate"] == "accepted"


@pytest.mark.parametrize("case,line", [
    ("C-zero-fdt", "KHO: setup: handover FDT (0x1000) is invalid: -9"),
    ("C-compat-kho-v3", "KHO: setup: handover FDT (0x1000) is incompatible with 'kho-v4': 1"),
    ("C-zero-mem-map", "KHO: disabling KHO revival"),
])
def test_fault_injection_verdicts_match_the_real_kernel(capsys, case, line):
    rc, rep = run_json(capsys, "validate", oracle(case, "fdt-page-after-injection.bin"), "--target", "E")
    assert rc == 1
    assert rep["verdict"]["populate"] == "rejected"
    assert rep["verdict"]["log"][0] == line
    assert rep["verdict"]["log"][-1] == "KHO: disabling KHO revival"
    real = open(oracle(case, "stage2-dmesg_kho.txt")).read()
    assert "disabling KHO revival" in real
    assert line.split("(0x")[0] in real


def _copy(tmp_path, src):
    d = tmp_path / "out"
    shutil.copytree(src, d)
    return d


def test_corruptions_give_findings(capsys, tmp_path):
    import tarfile

    from pykho.abi import root
    ram = tmp_path / "ram"
    with tarfile.open(oracle("A-selftest", "ram-stage1.sparse.tar.xz")) as tf:
        tf.extractall(ram)
    fdt_file = ram / ram_file(A.root_fdt)
    page = bytearray(fdt_file.read_bytes())
    # radix root entry pointing outside the memory given
    rootnode = ram / ram_file(A.map_root)
    orig = rootnode.read_bytes()
    bad = bytearray(orig)
    bad[0:8] = (0x7FFF0000000).to_bytes(8, "little")
    rootnode.write_bytes(bytes(bad))
    rc, rep = run_json(capsys, "validate", A_OUT, "--mem", f"sparse:{ram}")
    assert rc == 1 and any(f["code"] == "radix-pointer-outside" for f in rep["findings"])
    # a cycle: a table entry pointing back at the root
    bad = bytearray(orig)
    bad[8:16] = A.map_root.to_bytes(8, "little")
    rootnode.write_bytes(bytes(bad))
    rc, rep = run_json(capsys, "validate", A_OUT, "--mem", f"sparse:{ram}")
    assert rc == 1 and any(f["code"] == "radix-shared-node" for f in rep["findings"])
    rootnode.write_bytes(orig)
    # the debugfs scratch list moved so that node 0's 312 MiB area starts at 3 MiB, over preserved
    # blocks.  At machine_kexec the array's own segment is still zero (kexec copies it during the
    # jump), so the list is the kernel's array: the model's kernel finds preserved blocks in scratch
    d = _copy(tmp_path, A_OUT)
    moved = (A.scratch[0][0], A.scratch[1][0], 0x300000)
    (d / "scratch_phys").write_text("".join(f"0x{a:x}\n" for a in moved))
    rc, rep = run_json(capsys, "validate", str(d), "--mem", f"sparse:{ram}")
    bad = [f for f in rep["findings"] if f["code"] == "model-preserved-overlaps-scratch"]
    assert rc == 1 and bad and bad[0]["severity"] == "error"
    assert not [f for f in rep["findings"] if f["code"] == "sources-disagree"]
    # once memory holds the array the kernel will read (the real areas, at the segment's address),
    # the moved debugfs list is a disagreement and the verdict follows memory: a clean KHO boot
    page_at = A.scratch_array & ~0xFFF
    arr_file = ram / ram_file(page_at)
    assert not arr_file.exists()
    arr = bytearray(4096)
    at = A.scratch_array & 0xFFF
    arr[at:at + 48] = b"".join(a.to_bytes(8, "little") + s_.to_bytes(8, "little") for a, s_ in A.scratch)
    arr_file.write_bytes(bytes(arr))
    manifest = ram / "MANIFEST.tsv"
    orig_manifest = manifest.read_text()
    manifest.write_text(orig_manifest + f"{arr_file.name}\t0x{page_at:x}\t0x1000\n")
    rc, rep = run_json(capsys, "validate", str(d), "--mem", f"sparse:{ram}")
    manifest.write_text(orig_manifest)
    arr_file.unlink()
    dis = [f for f in rep["findings"] if f["code"] == "sources-disagree"]
    assert [f["where"] for f in dis] == ["scratch array"] and dis[0]["severity"] == "warning"
    assert "0x300000+" in dis[0]["message"] and f"0x{A.scratch_array:x}" in dis[0]["message"]
    assert rc == 0 and rep["verdict"]["outcome"].startswith("KHO boot:")
    # compatible changed
    p = root.RootFdtPage(__import__("pykho.profiles").profiles.E, page)
    off = p.find_prop_value(0, "compatible")
    p.buf[off:off + 6] = b"kho-v3"
    fdt_file.write_bytes(bytes(p.buf))
    rc, rep = run_json(capsys, "validate", A_OUT, "--mem", f"sparse:{ram}", "--fdt-phys", hex(A.root_fdt),
                       "--target", "7.2")
    assert rc == 1 and rep["verdict"]["log"][0].endswith("is incompatible with 'kho-v4': 1")
    rej = [f for f in rep["findings"] if f["code"] == "handover-rejected"]
    assert len(rej) == 1 and "check_compatible" in rej[0]["message"] and rej[0]["severity"] == "error"


def test_seed_bug_handover_verdicts_differ_by_target(capsys):
    """A B-era handover with preserved-memory-map = 0: 6.19 before the fix
    accepts it (and double-frees scratch), after the fix rejects it with -2."""
    from pykho import profiles as P
    from pykho.abi import root
    page = root.build_root_at_boot(P.B, 0)
    import os
    import tempfile
    with tempfile.NamedTemporaryFile(suffix=".dtb", delete=False) as f:
        f.write(page.blob())
    try:
        rc, pre = run_json(capsys, "validate", f.name, "--target", "B-prefix")
        rc2, post = run_json(capsys, "validate", f.name, "--target", "B")
    finally:
        os.unlink(f.name)
    assert pre["verdict"]["populate"] == "accepted"
    assert post["verdict"]["log"] == ["KHO: disabling KHO revival: -2"]
    assert rc == 1 and rc2 == 1


def test_errors_are_one_line(capsys, tmp_path):
    assert main(["inspect", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err
    junk = tmp_path / "junk.dtb"
    junk.write_bytes(b"\xd0\x0d\xfe\xed" + b"\xff" * 60)
    assert main(["inspect", str(junk)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kho inspect: KHO root FDT") and err.count("\n") == 1
    assert main(["inspect", A_OUT, "--mem", "bogus:x"]) == 2


def test_every_real_debugfs_copy(capsys):
    """stage 1 out/ (truncated FDT): A is completed byte-exact, B cannot be;
    stage 2 in/: accepted; a KHO-booted out/ without fdt: a clear error."""
    from pykho.handover import load
    a = load(oracle("A-selftest", "stage1-debugfs", "kho"))
    assert a.root_blob == open(oracle("A-selftest", "ram-stage1-out-fdt-full.dtb"), "rb").read()
    rc, rep = run_json(capsys, "validate", oracle("A-selftest", "stage1-debugfs", "kho"))
    assert rc == 0 and rep["verdict"]["populate"] == "accepted"
    rc, rep = run_json(capsys, "validate", oracle("B-luo-memblock-chain", "stage1-debugfs", "kho"))
    assert rc == 2 and rep["verdict"]["populate"] == "unknown"
    assert {"debugfs-fdt-truncated", "debugfs-luo-not-serialized"} <= {f["code"] for f in rep["findings"]}
    for name in ("A-selftest", "B-luo-memblock-chain"):
        rc, rep = run_json(capsys, "validate", oracle(name, "stage2-debugfs", "kho", "in"))
        assert rc == 0 and rep["verdict"]["log"] == ["KHO: found kexec handover data."]
    rc, rep = run_json(capsys, "validate", oracle("B-luo-memblock-chain", "stage2-debugfs", "kho", "in"))
    assert "debugfs-luo-freed" in {f["code"] for f in rep["findings"]}
    assert main(["validate", oracle("A-selftest", "stage2-debugfs", "kho", "out")]) == 2
    assert "booted through KHO" in capsys.readouterr().err


def test_verdict_is_the_model_booted_on_the_capture(capsys):
    """The target kernel's model, booted on the real 7.2 capture, prints the
    real boot-2 KHO lines (test_kho included: B's capture holds its folios)."""
    import re
    rc, rep = run_json(capsys, "validate", B_OUT, "--mem", B_MEM)
    real = [re.sub(r"^\[[ 0-9.]+\] ", "", l) for l in
            open(oracle("B-luo-memblock-chain", "stage2-dmesg.txt")).read().splitlines()
            if l.split("] ", 1)[-1].startswith(("KHO: found", "KHO: exec from", "test_kho:", "luo: Retrieved"))]
    assert rep["verdict"]["log"] == real
    assert rep["verdict"]["clients"]["kho_test"] == "restore succeeded"
    assert rep["verdict"]["model_violations"] == []
    # A's capture has no folio data: the verdict says it cannot predict test_kho
    rc, rep = run_json(capsys, "validate", A_OUT, "--mem", A_MEM)
    assert rep["verdict"]["clients"]["kho_test"].startswith("not predicted")


def test_unpreserved_subblob_and_vmalloc_and_truncated_fdt(capsys, tmp_path):
    """Clear the map bits of the kho_test FDT page and of its vmalloc chunk:
    both are reported; a root FDT file cut short is an error finding."""
    import tarfile

    from pykho.abi import radix
    from pykho.memory import SparseDir
    ram = tmp_path / "ram"
    with tarfile.open(oracle("B-luo-memblock-chain", "ram-stage1.sparse.tar.xz")) as tf:
        tf.extractall(ram)
    src = SparseDir(str(ram))
    manifest = {int(l.split("\t")[1], 16): l.split("\t")[0] for l in (ram / "MANIFEST.tsv").read_text().splitlines()
                if not l.startswith("#")}

    def clear(phys, order):
        # find the leaf bit through the real tree and clear it in the extract files
        key = radix.encode_key(phys, order)
        node = B.map_root
        for level in range(5, 0, -1):
            node = src.read_u64(node + 8 * radix.table_index(key, level))
        bit = radix.bitmap_index(key)
        byte = node + (bit >> 3)
        base = max(b for b in manifest if b <= byte)
        f = ram / manifest[base]
        data = bytearray(f.read_bytes())
        data[byte - base] &= ~(1 << (bit & 7)) & 0xFF
        f.write_bytes(bytes(data))
    def failed() -> tuple[int, list[dict]]:
        rc, rep = run_json(capsys, "validate", B_OUT, "--mem", f"sparse:{ram}")
        assert rep["verdict"]["clients"]["kho_test"] == "restore failed"
        return rc, [f for f in rep["findings"] if f["code"] == "client-restore-failed"]

    import shutil
    pristine = tmp_path / "pristine"
    shutil.copytree(ram, pristine)
    clear(B.extra["kho_test_folios_info"], 0)   # the folios_info vmalloc chunk page
    rc, f = failed()
    assert rc == 1 and len(f) == 1 and f[0]["severity"] == "error"
    assert "vmalloc area is not a preserved page: kho_restore_vmalloc fails" in f[0]["message"]
    shutil.rmtree(ram)
    shutil.copytree(pristine, ram)
    clear(B.subtrees["kho_test"][0], 1)         # the kho_test sub-FDT folio (order 1: nr_folios * 8 + 4096 bytes)
    # test_kho never restores its FDT folio, it reads it through phys_to_virt
    # at its initcall; outside the map the page allocator has had the page
    # back by then (7.2.13 prints "KHO restore failed", tests/vm/test_leads.py)
    rc, rep = run_json(capsys, "validate", B_OUT, "--mem", f"sparse:{ram}")
    assert rep["verdict"]["clients"]["kho_test"] == "restore failed"
    f = [f for f in rep["findings"] if f["code"] == "model-client-data-not-preserved"]
    assert rc == 1 and len(f) == 1 and f"test_kho FDT at 0x{B.subtrees['kho_test'][0]:x}" in f[0]["message"]
    full = open(oracle("A-selftest", "ram-stage1-out-fdt-full.dtb"), "rb").read()
    # a copy cut short cannot be judged: exit 2, verdict unknown
    cut = tmp_path / "cut.dtb"
    cut.write_bytes(full[:100])
    rc, rep = run_json(capsys, "validate", str(cut), "--target", "E")
    assert rc == 2 and rep["verdict"]["populate"] == "unknown"
    # an FDT whose header says it is shorter than its blocks: the kernel's fdt_check_header fails
    import struct
    bad = bytearray(full)
    struct.pack_into(">I", bad, 4, 100)
    cut.write_bytes(bytes(bad))
    rc, rep = run_json(capsys, "validate", str(cut), "--target", "E")
    assert rc == 1 and "fdt-header" in {f["code"] for f in rep["findings"]}
    assert rep["verdict"]["log"] == ["KHO: setup: handover FDT (0x1000) is invalid: -8", "KHO: disabling KHO revival"]


def _a_capture():
    """The A-selftest handover with its RAM extract in a writable copy."""
    from pykho.handover import load
    from pykho.memory import CowMemory, open_source
    src = open_source(A_MEM)
    mem = CowMemory(src, [(0, 1 << 30)])
    return load(A_OUT, mem), mem


def _radix_nodes(ho, mem):
    from pykho.abi import radix
    w = radix.RadixWalk(mem, ho.root.mem_map)
    blocks = list(w.blocks())
    return w.nodes, blocks


def test_verdict_walks_the_map_as_the_kernel_does():
    """The verdict's kernel follows the map blindly, as 7.2's
    __kho_radix_walk_tree does, and faults where the real kernel faulted
    (tests/vm/test_differential.py: radix-node-outside-ram, radix-cycle)."""
    from pykho import profiles as P
    from pykho.reports.validate import validate
    ho, mem = _a_capture()
    nodes, blocks = _radix_nodes(ho, mem)
    clean = validate(ho, P.E, want_reserved=True)["verdict"]
    assert "oops" not in clean and clean["reserved"] == [list(b) for b in blocks]
    rootp = ho.root.mem_map
    orig = mem.read(rootp, 4096)
    first = next(i for i in range(512) if orig[8 * i:8 * i + 8] != bytes(8))
    # a root entry 8 TiB up: the read of that "node" through the direct map faults
    mem.write(rootp + 8 * first, (0x7FFF0000000).to_bytes(8, "little"))
    v = validate(ho, P.E, want_reserved=True)["verdict"]
    assert v["log"][-2:] == ["BUG: unable to handle page fault for address: ffff907ff0000000",
                             "Kernel panic - not syncing: Fatal exception"]
    assert v["oops"]["function"] == "__kho_radix_walk_tree" and v["reserved"] == []
    # a level-2 entry pointing back at the root: the root's entries are read
    # as leaf bitmaps, whose blocks have no struct pages
    mem.write(rootp, orig)
    l2 = next(n.phys for n in nodes if n.level == 2)
    t = mem.read(l2, 4096)
    i2 = next(i for i in range(512) if t[8 * i:8 * i + 8] != bytes(8))
    mem.write(l2 + 8 * i2, rootp.to_bytes(8, "little"))
    rep = validate(ho, P.E, want_reserved=True)
    v = rep["verdict"]
    assert v["oops"]["function"] == "kho_preserved_memory_reserve" and v["oops"]["access"] == "write"
    assert v["log"][-1] == "Kernel panic - not syncing: Fatal exception"
    codes = {f["code"] for f in rep["findings"]}
    assert {"radix-shared-node", "model-oops"} <= codes


def test_map_page_in_scratch_is_an_error():
    from pykho import profiles as P
    from pykho.reports.validate import validate
    ho, mem = _a_capture()
    nodes, _ = _radix_nodes(ho, mem)
    assert "model-map-page-in-scratch" not in {f["code"] for f in validate(ho, P.E)["findings"]}
    l1 = next(n.phys for n in nodes if n.level == 1)
    t = mem.read(l1, 4096)
    i = next(k for k in range(512) if t[8 * k:8 * k + 8] != bytes(8))
    leaf = int.from_bytes(t[8 * i:8 * i + 8], "little")
    area = max(ho.scratch, key=lambda a: a.size)
    dest = area.addr + area.size // 2
    mem.write(dest, mem.read(leaf, 4096))
    mem.write(l1 + 8 * i, dest.to_bytes(8, "little"))
    rep = validate(ho, P.E)
    f = [x for x in rep["findings"] if x["code"] == "model-map-page-in-scratch"]
    assert f and f[0]["severity"] == "error" and f[0]["where"] == f"0x{dest:x}-0x{dest + 4096:x}"
    assert rep["verdict"]["populate"] == "accepted" and "oops" not in rep["verdict"]


def test_verdict_is_the_same_leaf_by_leaf_and_in_leaf_groups():
    """Without ``want_reserved`` the verdict's kernel reserves leaves in
    groups, as runs from their bitmaps; it must reach the same verdict as
    the leaf-by-leaf walk that lists every block, also when a leaf's blocks
    have no struct pages (the group is then walked leaf by leaf and faults
    at the same block)."""
    from pykho import profiles as P
    from pykho.reports.validate import validate
    ho, mem = _a_capture()
    nodes, _ = _radix_nodes(ho, mem)

    def both():
        full = validate(ho, P.E, want_reserved=True)["verdict"]
        full.pop("reserved")
        return full, validate(ho, P.E)["verdict"]
    a, b = both()
    assert a == b and "oops" not in b
    rootp = ho.root.mem_map
    l2 = next(n.phys for n in nodes if n.level == 2)
    t = mem.read(l2, 4096)
    i2 = next(i for i in range(512) if t[8 * i:8 * i + 8] != bytes(8))
    mem.write(l2 + 8 * i2, rootp.to_bytes(8, "little"))     # the root's entries read as leaf bitmaps
    a, b = both()
    assert a == b and b["oops"]["function"] == "kho_preserved_memory_reserve", b.get("oops")
