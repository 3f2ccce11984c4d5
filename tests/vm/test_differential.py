"""Differential tests: the real Linux 7.2 kernel against pykho, on the same bytes.

Boot 1 runs to ``machine_kexec``; a hook crafts a handover with pykho's
encoder (or corrupts the real one), writes it into guest RAM, and records
pykho's prediction for exactly those bytes: the model of the 7.2 kernel
booted on the captured RAM with the writes applied (``kho validate``'s
verdict).  Boot 2 is the real kernel.  Its ``KHO:`` lines must equal the
prediction's; ``docs/REAL-KERNEL.md`` holds the table.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from conftest import vmrun

from pykho import profiles as P
from pykho.abi import fdt as F
from pykho.abi import root, structs

pytestmark = pytest.mark.vm

PAGE = 4096


def _page(ctx) -> tuple[int, bytearray]:
    phys = ctx.locate["fdt"]["phys"]
    return phys, bytearray(ctx.read(phys, PAGE))


def _edit(page: bytearray, fn) -> bytes:
    p = root.RootFdtPage(P.E, page)
    assert p.open_into() == 0
    fn(p)
    assert p.pack() == 0
    return bytes(p.buf)


def _strings_rename(page: bytearray, old: bytes, new: bytes) -> bytes:
    h = F.header(bytes(page))
    s = bytes(page)
    i = s.index(old + b"\0", h.off_dt_strings)
    return s[:i] + new + s[i + len(new):]


def _subnode(p, name):
    return p.subnode_offset(0, name)


# each case: (name, what it does, function ctx -> list of (phys, bytes))
def c_zero(ctx):
    phys, _ = _page(ctx)
    return [(phys, bytes(PAGE))]


def c_magic(ctx):
    phys, pg = _page(ctx)
    pg[0] ^= 0xFF
    return [(phys, bytes(pg))]


def c_version(ctx):
    phys, pg = _page(ctx)
    struct.pack_into(">I", pg, 20, 1)            # version 1, last_comp 16
    return [(phys, bytes(pg))]


def c_totalsize(ctx):
    phys, pg = _page(ctx)
    struct.pack_into(">I", pg, 4, 100)           # shorter than its blocks
    return [(phys, bytes(pg))]


def c_compat(ctx):
    phys, pg = _page(ctx)
    off = root.RootFdtPage(P.E, pg).find_prop_value(0, "compatible")
    pg[off:off + 6] = b"kho-v3"
    return [(phys, bytes(pg))]


def c_no_compat(ctx):
    phys, pg = _page(ctx)
    return [(phys, _strings_rename(pg, b"compatible", b"compatiblx"))]


def c_map_zero(ctx):
    phys, pg = _page(ctx)
    return [(phys, _edit(pg, lambda p: p.setprop(0, "preserved-memory-map", F.p64(0))))]


def c_map_missing(ctx):
    phys, pg = _page(ctx)
    return [(phys, _strings_rename(pg, b"preserved-memory-map", b"preserved-memory-mop"))]


def c_map_4_bytes(ctx):
    phys, pg = _page(ctx)
    mm = ctx.locate["fdt"]["preserved_memory_map"]
    return [(phys, _edit(pg, lambda p: p.setprop(0, "preserved-memory-map", F.p32(mm))))]


def c_no_blob_size(ctx):
    phys, pg = _page(ctx)

    def f(p):
        import libfdt
        off = _subnode(p, "kho_test")
        assert libfdt.fdt_delprop(p.buf, off, "blob-size") == 0
    return [(phys, _edit(pg, f))]


def c_metadata_version(ctx):
    st = [s for s in ctx.locate["subnodes"] if s["name"] == "kexec-metadata"][0]
    return [(st["preserved_data"], struct.pack("<I", 2))]


def c_metadata_small(ctx):
    phys, pg = _page(ctx)
    return [(phys, _edit(pg, lambda p: p.setprop(_subnode(p, "kexec-metadata"), "blob-size", F.p64(3))))]


def c_metadata_short_v1(ctx):
    phys, pg = _page(ctx)
    return [(phys, _edit(pg, lambda p: p.setprop(_subnode(p, "kexec-metadata"), "blob-size", F.p64(72))))]


def c_metadata_count(ctx):
    st = [s for s in ctx.locate["subnodes"] if s["name"] == "kexec-metadata"][0]
    return [(st["preserved_data"] + 69, struct.pack("<I", 41))]


def c_metadata_release(ctx):
    st = [s for s in ctx.locate["subnodes"] if s["name"] == "kexec-metadata"][0]
    return [(st["preserved_data"] + 4, b"pykho-differential\0")]


def c_reencoded(ctx):
    """The whole root FDT rebuilt by pykho's encoder from the decoded values."""
    phys, pg = _page(ctx)
    r = root.decode_root(bytes(pg[:F.totalsize(bytes(pg))]))
    page = root.build_root_at_boot(P.E, r.mem_map)
    for st in reversed(r.subtrees):           # oldest first: FDT order is newest first
        assert page.add_subtree(st.name, st.phys, st.size) == 0
    return [(phys, bytes(page.buf))]


def c_extra_subtree(ctx):
    """A valid extra sub-node added with pykho's encoder (no client claims it)."""
    phys, pg = _page(ctx)
    st = [s for s in ctx.locate["subnodes"] if s["name"] == "kexec-metadata"][0]
    return [(phys, _edit(pg, lambda p: (p.add_subnode(0, "pykho-extra"),
                                        p.setprop(_subnode(p, "pykho-extra"), "blob-size", F.p64(8)),
                                        p.setprop(_subnode(p, "pykho-extra"), "preserved-data",
                                                  F.p64(st["preserved_data"])))))]


def c_test_kho_magic(ctx):
    st = [s for s in ctx.locate["subnodes"] if s["name"] == "kho_test"][0]
    blob = ctx.read(st["preserved_data"], PAGE)
    i = blob.index(struct.pack("<I", 0x4B484F21))
    return [(st["preserved_data"] + i, struct.pack("<I", 0x4B484F22))]


def c_subnode_fdt_prop(ctx):
    """kho-v1's property name on a kho-v4 sub-node: preserved-data missing."""
    phys, pg = _page(ctx)
    return [(phys, _strings_rename(pg, b"preserved-data", b"preserved-dat\x61".replace(b"a", b"x")))]


def c_valid(ctx):
    return []


CASES = {
    "unmodified": ("the real handover, untouched", c_valid),
    "root-fdt-zeroed": ("root FDT page zeroed", c_zero),
    "bad-magic": ("FDT magic byte flipped", c_magic),
    "bad-version": ("FDT version 1", c_version),
    "totalsize-short": ("totalsize 100, shorter than its blocks", c_totalsize),
    "compatible-kho-v3": ("compatible patched to kho-v3", c_compat),
    "no-compatible": ("compatible property renamed", c_no_compat),
    "map-zeroed": ("preserved-memory-map = 0 (re-encoded with libfdt)", c_map_zero),
    "map-missing": ("preserved-memory-map renamed", c_map_missing),
    "map-4-bytes": ("preserved-memory-map 4 bytes long", c_map_4_bytes),
    "no-blob-size": ("kho_test sub-node without blob-size", c_no_blob_size),
    "metadata-version-2": ("kexec-metadata version 2", c_metadata_version),
    "metadata-size-3": ("kexec-metadata blob-size 3", c_metadata_small),
    "metadata-size-72": ("kexec-metadata blob-size 72 (< 73)", c_metadata_short_v1),
    "metadata-count-41": ("kexec-metadata kexec_count 41", c_metadata_count),
    "metadata-release": ("kexec-metadata previous_release rewritten", c_metadata_release),
    "pykho-reencoded": ("root FDT rebuilt entirely by pykho's encoder", c_reencoded),
    "pykho-extra-subtree": ("extra valid sub-node added by pykho's encoder", c_extra_subtree),
    "test-kho-magic": ("kho_test sub-FDT magic changed", c_test_kho_magic),
    "subnode-no-preserved-data": ("sub-nodes' preserved-data property renamed (LUO's too)", c_subnode_fdt_prop),
}


def predict(ctx, writes) -> dict:
    """pykho's verdict for the bytes the next kernel will find."""
    from pykho.handover import load
    from pykho.memory import CowMemory, RawImage
    from pykho.validate import validate
    raw = RawImage(str(ctx.ram_file))
    cow = CowMemory(raw, raw.ranges())
    for phys, data in writes:
        cow.write(phys, data)
    ho = load(str(ctx.stage_dir / "debugfs" / "kho" / "out"), cow, ctx.locate["fdt"]["phys"])
    rep = validate(ho, P.E)
    return {"populate": rep["verdict"]["populate"], "log": rep["verdict"]["log"],
            "findings": sorted({f["code"] for f in rep["findings"] if f["severity"] == "error"})}


def kho_lines(stage_dir: Path) -> list[str]:
    """KHO, test_kho, luo and panic lines of a boot: its dmesg, or its console
    when it never reached user space (a panic)."""
    src = stage_dir / "dmesg.txt"
    if not src.exists():
        src = stage_dir / "console-boot.log"
    if not src.exists():
        return []
    out = []
    for line in src.read_text(errors="replace").splitlines():
        msg = line.split("] ", 1)[-1]
        if msg.startswith(("KHO:", "test_kho:", "luo:", "Kernel panic")):
            out.append(msg)
    return out


RESULTS = Path(os.environ.get("PYKHO_DIFF_RESULTS", "/tmp/pykho-differential.jsonl"))


@pytest.mark.parametrize("case", list(CASES))
def test_real_kernel_agrees_with_pykho(case, vm_build, tmp_path):
    what, fn = CASES[case]
    got = {}

    def hook(ctx):
        if ctx.stage != 1:
            return []
        writes = fn(ctx)
        got["pred"] = predict(ctx, writes)
        got["fdt"] = ctx.locate["fdt"]["phys"]
        return [vmrun.Write(phys, data, stage=1, when="jump") for phys, data in writes]

    opts = vmrun.Options(boots=2, luo=False, stall_retries=1, hook=hook)
    summary = vmrun.run_chain(tmp_path, opts)
    assert "pred" in got, summary
    real = kho_lines(tmp_path / "stage2")
    pred = got["pred"]
    real_kho = [x for x in real if x.startswith("KHO:")]
    pred_kho = [x for x in pred["log"] if x.startswith("KHO:")]
    agree = real_kho == pred_kho
    real_found = "KHO: found kexec handover data." in real
    with RESULTS.open("a") as f:
        f.write(json.dumps({"case": case, "what": what, "real": real, "pred": pred, "agree": agree,
                            "completed": summary.get("completed")}) + "\n")
    panics = any(x.startswith("Kernel panic") for x in pred["log"])
    assert summary.get("completed") or panics, summary
    for x in pred["log"]:
        if x.startswith(("luo:", "Kernel panic")):
            assert x in real, (x, real)
    assert (pred["populate"] == "accepted") == real_found
    assert agree, f"real {real_kho}\npykho {pred_kho}"
    # test_kho: when pykho predicts its line, the kernel printed it
    for x in pred["log"]:
        if x.startswith("test_kho:"):
            assert x in real
