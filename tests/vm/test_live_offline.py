"""The live guest's pieces without a VM: its initramfs payload, its shell
scripts, and ``--mem live``'s defaults (no root, QEMU or kernel build needed)."""
from __future__ import annotations

import argparse
import gzip
import shutil
import subprocess
from pathlib import Path

import pytest

from vmtest import rootfs

REPO = Path(__file__).resolve().parents[2]


def test_cpio_has_every_folder_and_mode(tmp_path):
    data = rootfs.cpio_newc({"a/b/c.txt": (b"hello", 0o644), "a/x": (b"#!/bin/sh\n", 0o755)})
    if not shutil.which("cpio"):
        pytest.skip("no cpio")
    subprocess.run(["cpio", "-idm", "--quiet"], input=data, cwd=tmp_path, check=True)
    assert (tmp_path / "a/b/c.txt").read_bytes() == b"hello"
    assert (tmp_path / "a/x").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "a/b").is_dir()
    # the kernel's unpacker makes no parent folder: each one has its own entry, before its files
    names = subprocess.run(["cpio", "-t", "--quiet"], input=data, capture_output=True, check=True).stdout.split()
    assert names.index(b"a") < names.index(b"a/b") < names.index(b"a/b/c.txt")


def test_payload_carries_pykho_and_the_scripts():
    files = rootfs.live_payload()
    for want in ("init", "bin/live.sh", "pykho/bin/kho", "pykho/bin/kexec-preflight", "pykho/bin/kexec-marked",
                 "pykho/src/pykho/cli/__init__.py", "pykho/src/pykho/data/linux-7.2-luo/iomem.txt"):
        assert want in files, want
    assert files["init"][0] == (REPO / "vmtest/guest/init").read_bytes()
    # byte-compiled for the guest: it does not compile pykho under TCG
    assert any(p.endswith(".pyc") and "__pycache__" in p for p in files)
    assert gzip.decompress(rootfs.live_initrd_extra()).endswith(b"TRAILER!!!\0\0\0\0")


@pytest.mark.parametrize("script", ["vmtest/guest/init", "vmtest/guest/live.sh", "contrib/kexec-preflight"])
def test_shell_scripts_parse(script):
    sh = shutil.which("busybox") or shutil.which("dash") or "sh"
    argv = [sh, "sh", "-n", str(REPO / script)] if sh.endswith("busybox") else [sh, "-n", str(REPO / script)]
    r = subprocess.run(argv, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_rootfs_key_follows_the_package_list():
    assert rootfs.key("bookworm") == rootfs.key("bookworm")
    assert rootfs.key("bookworm") != rootfs.key("bookworm", rootfs.PACKAGES + ("strace",))
    assert rootfs.key("bookworm") != rootfs.key("trixie")


def test_mem_live_defaults(monkeypatch):
    """``--mem live`` without PATH: the running kernel's outgoing handover (not
    the bundled one); /proc/iomem only as root (its addresses are zeros otherwise)."""
    from pykho.cli import _common
    a = argparse.Namespace(mem="live", path=None, iomem=None)
    monkeypatch.setattr(_common.os, "geteuid", lambda: 1000)
    _common.default_paths(a)
    assert a.path == _common.LIVE_DEBUGFS and a.iomem is None and not a.builtin
    monkeypatch.setattr(_common.os, "geteuid", lambda: 0)
    monkeypatch.setattr(_common.os.path, "exists", lambda p: p == "/proc/iomem")
    b = argparse.Namespace(mem="live", path="/x/in", iomem=None)
    _common.default_paths(b)
    assert b.path == "/x/in" and b.iomem == "/proc/iomem"
    c = argparse.Namespace(mem="raw:/x", path=None, iomem=None)
    _common.default_paths(c)
    assert c.builtin and c.path.endswith("debugfs/kho/out")


def test_live_in_is_not_read_from_the_kernel_that_consumed_it(tmp_path):
    """in/ with the memory of the kernel that received it (``--mem live`` after
    the jump): the map was walked at boot and its pages reused, so pykho says
    so and reports the debugfs copies; no read reaches memory."""
    from pykho.cli._common import DEFAULT_HANDOVER
    from pykho.handover import load
    from pykho.reports.validate import validate
    src = Path(DEFAULT_HANDOVER) / "debugfs" / "kho" / "out"
    shutil.copytree(src, tmp_path / "in")

    class Live:
        live = True
        name = "live kernel (/proc/kcore)"

        def __getattr__(self, what):
            raise AssertionError(f"memory touched: {what}")
    ho = load(str(tmp_path / "in"), Live())
    assert ho.direction == "in" and ho.mem is None
    rep = validate(ho)
    codes = [f["code"] for f in rep["findings"]]
    assert "live-in-consumed" in codes and "no-memory" not in codes, codes


def test_live_in_is_judged_for_the_running_kernel(tmp_path, monkeypatch, capsys):
    """``kho validate IN --mem live`` without --target: the running kernel
    received it, so its release picks the verdict's generation (a 7.3.4 guest:
    F, though kho-v4 alone names E); --target still overrides it."""
    import json

    from pykho.cli import main
    from pykho.cli import validate as cli_validate
    from pykho.cli._common import DEFAULT_HANDOVER

    class Live:
        live = True
        name = "live kernel (/proc/kcore)"

        def __getattr__(self, what):
            raise AssertionError(f"memory touched: {what}")
    from pykho.handover import load
    from pykho.memory import open_source
    src = Path(DEFAULT_HANDOVER) / "debugfs" / "kho" / "out"
    shutil.copytree(src, tmp_path / "in")
    # a received in/fdt is whole (the running kernel's copy of what arrived)
    full = load(str(src), open_source("sparse:" + str(Path(DEFAULT_HANDOVER) / "ram.sparse.tar.xz"))).root_blob
    (tmp_path / "in" / "fdt").write_bytes(full)
    monkeypatch.setattr(cli_validate, "open_mem", lambda spec: Live() if spec == "live" else None)
    iomem = ["--iomem", str(Path(DEFAULT_HANDOVER) / "iomem.txt")]    # the machine's it came from
    for release, gen in (("7.3.4", "F"), ("7.2.13", "E")):
        monkeypatch.setattr(cli_validate.os, "uname", lambda r=release: argparse.Namespace(release=r))
        assert main(["validate", str(tmp_path / "in"), "--mem", "live", "-j", *iomem]) == 0
        assert json.loads(capsys.readouterr().out)["verdict"]["target"] == gen
        assert main(["validate", str(tmp_path / "in"), "--mem", "live", "--target", "D", "-j", *iomem]) == 1
        assert json.loads(capsys.readouterr().out)["verdict"]["target"] == "D"
