"""kho preflight: the go / no-go of a live update, and its fleet metrics."""

from __future__ import annotations

import gzip
import os

import pytest

from pykho.abi.image import kernel_release
from pykho.cli import main
from pykho.profiles import E, profile_for_release

BUNDLED = os.path.join(os.path.dirname(__file__), "..", "..", "src", "pykho", "data", "linux-7.2-luo")
OUT = os.path.join(BUNDLED, "debugfs", "kho", "out")
MEM = "sparse:" + os.path.join(BUNDLED, "ram.sparse.tar.xz")


def bzimage(version: bytes, proto: int = 0x20F) -> bytes:
    """The first 64 KiB of an x86 bzImage: boot protocol header with kernel_version."""
    img = bytearray(0x10000)
    img[0x1FE:0x200] = b"\x55\xaa"
    img[0x202:0x206] = b"HdrS"
    img[0x206:0x208] = proto.to_bytes(2, "little")
    off = 0x3000
    img[0x20E:0x210] = (off - 0x200).to_bytes(2, "little")
    img[off:off + len(version) + 1] = version + b"\0"
    return bytes(img)


def arm64_image(version: bytes) -> bytes:
    img = bytearray(0x4000)
    img[0x38:0x3C] = b"ARM\x64"
    banner = b"Linux version " + version + b" (gcc) #1 SMP\n"
    img[0x2000:0x2000 + len(banner)] = banner
    return bytes(img)


def test_release_from_images():
    r = kernel_release(bzimage(b"7.2.13 (root@vm) #1 SMP PREEMPT"))
    assert (r.arch, r.release) == ("x86_64", "7.2.13")
    assert kernel_release(bzimage(b"x", proto=0x1FF)).release is None
    r = kernel_release(arm64_image(b"7.2.13-arm64"))
    assert (r.arch, r.release) == ("arm64", "7.2.13-arm64")
    r = kernel_release(gzip.compress(arm64_image(b"6.19.2")))
    assert (r.arch, r.release) == ("arm64", "6.19.2")
    r = kernel_release(b"\0" * 4096)
    assert r.release is None and "no header magic" in r.why
    assert profile_for_release("7.2.13") is E
    assert profile_for_release("6.18.3").name == "A1"
    assert profile_for_release("9.9.1") is None


def test_go_for_the_real_handover_and_the_image_it_was_made_for(tmp_path, capsys):
    img = tmp_path / "bzImage"
    img.write_bytes(bzimage(b"7.2.13 (root@vm) #1 SMP PREEMPT"))
    prom = tmp_path / "kho.prom"
    assert main(["preflight", OUT, "--mem", MEM, "--target-image", str(img), "--prometheus", str(prom)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("go: the E kernel (7.2) takes this handover")
    from prometheus_client.parser import text_string_to_metric_families
    fams = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    assert samples[("kho_preserved_bytes", ())] == 5324800
    assert samples[("kho_preserved_blocks", (("order", "10"),))] == 1
    assert samples[("kho_verdict", (("decision", "go"), ("target", "E")))] == 1
    assert samples[("kho_verdict", (("decision", "no-go"), ("target", "E")))] == 0
    assert samples[("kho_scratch_bytes", (("area", "lowmem"),))] == 16 << 20
    assert samples[("kho_findings", (("severity", "error"),))] == 0
    assert fams["kho_pykho_info"].samples[0].labels["version"]


def test_no_go_when_the_next_kernel_refuses_it(capsys):
    assert main(["preflight", OUT, "--mem", MEM, "--target", "6.19", "-j"]) == 1
    import json
    rep = json.loads(capsys.readouterr().out)
    assert rep["decision"] == "no-go" and rep["target"] == "B"
    assert any(r.startswith("handover-rejected: kho_populate refuses the handover at check_compatible")
               for r in rep["reasons"])


def test_cannot_tell(tmp_path, capsys):
    # no memory: the cut debugfs FDT cannot be completed
    assert main(["preflight", OUT, "--target", "7.2"]) == 2
    capsys.readouterr()
    # an image of a release no profile covers
    img = tmp_path / "bzImage"
    img.write_bytes(bzimage(b"9.1.0 (x@y) #1"))
    assert main(["preflight", OUT, "--mem", MEM, "--target-image", str(img)]) == 2
    assert "Linux 9.1.0, a release no pykho profile covers" in capsys.readouterr().err


@pytest.mark.parametrize("argv,needle", [
    (["preflight", OUT, "--target-image", "/nonexistent/bzImage"], "not a regular file"),
    (["preflight", OUT, "--target-image", os.devnull], "not a regular file"),
])
def test_bad_image_is_one_line(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err


def _fake_tools(tmp_path, verdict_rc: int):
    """A fake `kho` answering ``verdict_rc`` and a fake `kexec` logging its calls."""
    log = tmp_path / "kexec.log"
    kho = tmp_path / "kho"
    kho.write_text(f"#!/bin/sh\necho \"kho $*\" >> {log}\nexit {verdict_rc}\n")
    kexec = tmp_path / "kexec"
    kexec.write_text(f"#!/bin/sh\necho \"kexec $*\" >> {log}\n")
    for f in (kho, kexec):
        f.chmod(0o755)
    return {"KHO": str(kho), "KEXEC": str(kexec), "PATH": os.environ["PATH"]}, log


@pytest.mark.parametrize("verdict_rc,expect_rc,loads", [(0, 0, True), (1, 1, False), (2, 2, False)])
def test_kexec_wrapper_stops_a_no_go(tmp_path, verdict_rc, expect_rc, loads):
    import subprocess
    env, log = _fake_tools(tmp_path, verdict_rc)
    wrapper = os.path.join(os.path.dirname(__file__), "..", "..", "contrib", "kexec-preflight")
    r = subprocess.run(["sh", wrapper, "-e", "--cmdline", "kho=on", "/boot/vmlinuz-next"], env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == expect_rc, r.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "kho preflight --target-image /boot/vmlinuz-next --cmdline kho=on"
    if loads:
        assert calls[1:] == ["kexec -s -l /boot/vmlinuz-next --command-line=kho=on", "kexec -e"]
    else:
        assert calls[1:] == [] and "not loading it" in r.stderr


def test_validate_takes_the_target_from_an_image(tmp_path, capsys):
    """``kho validate --target-image``: the image's release picks the generation,
    as for preflight (a 7.3 image: F, though the handover's compatible names E)."""
    import json
    img = tmp_path / "bzImage"
    img.write_bytes(bzimage(b"7.3.4 (root@vm) #1 SMP PREEMPT_DYNAMIC"))
    assert main(["validate", OUT, "--mem", MEM, "--target-image", str(img), "-j"]) == 0
    v = json.loads(capsys.readouterr().out)["verdict"]
    assert v["target"] == "F" and v["populate"] == "accepted"
    assert main(["validate", OUT, "--mem", MEM, "-j"]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"]["target"] == "E"
    img.write_bytes(bzimage(b"9.1.0 (x@y) #1"))
    assert main(["validate", OUT, "--mem", MEM, "--target-image", str(img)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Linux 9.1.0, a release no pykho profile covers" in err
    assert main(["validate", OUT, "--target-image", os.devnull]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a regular file" in err and "Traceback" not in err
