"""pykho on a live kernel: the guest runs pykho itself, before and after a real KHO kexec.

The guest gets the Debian root of vmtest/rootfs.py (python3, drgn, numpy,
kexec-tools) as a read-only virtio-blk disk and the checkout's pykho in its
initramfs (``vmtest.rootfs.live_initrd_extra``); its /init sources
vmtest/guest/live.sh.  In boot 1, right before the jump, ``kho validate
--mem live`` reads the running kernel's outgoing handover (debugfs and
/proc/kcore through drgn: no copy, no dump); boot 2 is the real next kernel,
and what it prints is compared with what boot 1's pykho predicted.  Boot 2
then validates what it received (``/sys/kernel/debug/kho/in`` + live memory).
The go / no-go tests drive the kexec through contrib/kexec-preflight
(``kho preflight``, then kexec-tools' ``kexec -s -l`` and ``kexec -e``).

Everything runs on each vmtest kernel (:data:`KERNELS`: boot 1 and boot 2
the same kernel); the chains are session fixtures keyed by the kernel, shared
by the tests of that kernel.  Each comparison with the real next kernel is a
record (vmtest.records, source ``live``).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import vmtest as vm
from conftest import _run, skip_or_fail
from vmtest import campaign, records, rootfs

pytestmark = pytest.mark.vm

ARCH = "x86_64"
SOURCE = "live"
#: the vmtest kernels the guest boots (build.sh's table), and the generation
#: whose model must judge a handover for each (the profile of its release)
GENERATION = {"7.2.13": ("E", "7.2"), "7.3.4": ("F", "7.3")}
KERNELS = tuple(GENERATION)


@pytest.fixture(scope="session", params=KERNELS)
def live_kernel(request, vm_kernel):
    """The kernel of boot 1 and boot 2 (one session-wide set of chains each)."""
    return vm_kernel(request.param)


@pytest.fixture(scope="session")
def live_image(live_kernel):
    """The cached Debian root image (built here when missing: needs root and mmdebstrap)."""
    r = rootfs.find_rootfs()
    if r is None:
        try:
            r = rootfs.ensure_rootfs()
        except Exception as e:  # noqa: BLE001 - no mmdebstrap, no network: say what is missing
            skip_or_fail(f"no live guest root ({e}); run: python3 -m vmtest.rootfs")
    cfg = (live_kernel.dir / "config").read_text()
    missing = [o for o in ("CONFIG_VIRTIO_BLK=y", "CONFIG_EXT4_FS=y", "CONFIG_PROC_KCORE=y", "CONFIG_DEVTMPFS=y")
               if o not in cfg.splitlines()]
    if missing:
        skip_or_fail(f"kernel {live_kernel.dir.name} lacks {missing} (vmtest/kernel.config): rebuild it")
    return r


@pytest.fixture(scope="session")
def live_extra():
    return rootfs.live_initrd_extra()


def live_opts(image, extra: bytes, words: str) -> vm.Options:
    # TCG: python3 + numpy + drgn start slowly, and the live reads run in the
    # guest; the console is silent meanwhile
    return vm.Options(boots=2, disk=str(image.image), initrd_extra=extra, append=f"vmtest_live=1 {words}",
                      keep="meta", stall_timeout=400, timeout=2400, stall_retries=1)


@pytest.fixture(scope="session")
def live_chain(live_kernel, live_image, live_extra, tmp_path_factory):
    """Boot 1 (test_kho, reserve_mem, a LUO memfd session) validates its own
    outgoing handover live right before the kexec; boot 2 validates what it got."""
    return _run(tmp_path_factory, f"live-{live_kernel.name}",
                live_opts(live_image, live_extra, "vmtest_live_validate=1 vmtest_live_missing=1"), live_kernel)


def stage_json(capture: Path, n: int) -> dict:
    return json.loads((capture / f"stage{n}" / "stage.json").read_text())


def text(capture: Path, n: int, name: str) -> str:
    f = capture / f"stage{n}" / f"{name}.txt"
    assert f.exists(), f"boot {n} printed no {name} block (see {capture}/serial.log)"
    return f.read_text()


def rc(capture: Path, n: int, name: str) -> int:
    return stage_json(capture, n)["rc"][name]


def note(capture: Path, n: int, key: str) -> str | None:
    for x in stage_json(capture, n)["notes"]:
        if x.startswith(key + "="):
            return x.split("=", 1)[1]
    return None


def guest_json(capture: Path, n: int, name: str) -> dict:
    out = text(capture, n, name)
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        raise AssertionError(f"boot {n}: {name} printed no JSON (rc {rc(capture, n, name)}):\n{out[-2000:]}\n"
                             f"stderr: {text(capture, n, name + '_stderr')[-2000:]}") from None


def real_clients(capture: Path, n: int) -> dict[str, str]:
    """Each client's outcome in boot ``n``, in the words pykho's verdict uses,
    from what the kernel and the guest's LUO helper really printed."""
    lines = campaign.boot_lines(capture / f"stage{n}")
    out = {}
    if any(x.startswith("test_kho: KHO restore succeeded") for x in lines):
        out["kho_test"] = "restore succeeded"
    if any(x.startswith("KHO: exec from:") for x in lines):
        out["kexec-metadata"] = "read"
    if any(x.startswith("Revived memory reservation") for x in lines):
        out["memblock"] = "revived"
    luo = capture / f"stage{n}" / "luo_check.txt"
    if luo.exists() and re.search(r"\bok\b", luo.read_text(), re.I):
        out["LUO"] = "sessions restored"
    return out


def predicted_side(rep: dict, cmdline: str) -> dict:
    """The guest's report in the campaign's terms (vmtest.campaign.compare)."""
    v = rep["verdict"]
    lines = [x for x in v["log"] if x.startswith(campaign.RELEVANT)]
    return {"lines": lines, "reserved": [list(b) for b in rep.get("preserved", [])], "oops": v.get("oops"),
            "fate": "panic" if any(x.startswith("Kernel panic") for x in lines) else "ok", "cmdline": cmdline}


# ------------------------------------------------------------ boot 1: before the jump

def uname_release(capture: Path, n: int) -> str:
    f = capture / f"stage{n}" / "uname.txt"
    return f.read_text().split()[2] if f.exists() else ""


def test_live_chain_boots(live_chain, live_kernel):
    capture, summary = live_chain
    # both boots run the kernel under test
    assert uname_release(capture, 1) == uname_release(capture, 2) == live_kernel.release, live_kernel.release
    assert summary["exit"] == "qemu-exited", summary
    assert summary["completed"], summary
    assert len(summary["stops"]) == 1, summary["stops"]
    assert note(capture, 1, "live_root"), "boot 1 did not mount the Debian root disk"
    versions = text(capture, 1, "live_versions")
    assert re.search(r"Python 3\.\d+", versions) and "drgn " in versions, versions


def test_live_validate_predicts_next_boot(live_chain, live_kernel):
    """``kho validate --mem live`` in boot 1, right before ``kexec -e``: its
    predicted lines, reservations and client results against boot 2's."""
    capture, summary = live_chain
    assert rc(capture, 1, "live_validate_out") in (0, 1), text(capture, 1, "live_validate_out_stderr")
    rep = guest_json(capture, 1, "live_validate_out")
    v = rep["verdict"]
    # it found the outgoing handover itself: the root FDT in memory, not a file
    assert rep["source"] == "/sys/kernel/debug/kho/out", rep["source"]
    real = campaign.observe(capture, summary, 2)
    boot2_line = real["cmdline"]
    pred = predicted_side(rep, boot2_line)
    agree, diffs = campaign.compare(real, pred)
    rclients, pclients = real_clients(capture, 2), dict(v.get("clients", {}))
    cdiff = {k: (rclients.get(k), pclients.get(k)) for k in set(rclients) | set(pclients)
             if rclients.get(k) != pclients.get(k)}
    if cdiff:
        diffs.append(f"clients (real, predicted): {cdiff}")
    ms = note(capture, 1, "live_validate_out_ms")
    records.record(kernel=live_kernel.name, next_kernel=live_kernel.name, arch=ARCH, source=SOURCE,
                   case="live-validate-before-kexec",
                   change="none: boot 1's own handover (test_kho, reserve_mem, a LUO memfd session) read live "
                          "by kho validate --mem live in the guest right before the kexec",
                   real={**campaign.summarise(real), "clients": rclients},
                   predicted={**campaign.summarise(pred), "clients": pclients, "populate": v["populate"],
                              "target": v["target"]},
                   agree=agree and not cdiff and v["target"] == GENERATION[live_kernel.name][0],
                   note=(f"guest validation took {int(ms) / 1000:.1f} s under TCG; " if ms else "")
                   + "; ".join(diffs))
    # judged by the model of the image about to be loaded (--target-image),
    # not by the newest generation writing kho-v4
    assert v["target"] == GENERATION[live_kernel.name][0], (v["target"], live_kernel.name)
    assert v["populate"] == "accepted", v
    assert real["found"], real["lines"]
    assert agree and not cdiff, "\n".join(diffs)
    assert pred["reserved"], "pykho listed no preserved block"


def test_live_validate_is_bounded(live_chain):
    """A live validation reads only what it needs: it finishes well inside the
    scan's own time bound (plus the interpreter's start under TCG)."""
    capture, _ = live_chain
    ms = note(capture, 1, "live_validate_out_ms")
    assert ms is not None
    start = note(capture, 1, "live_startup_ms")
    print(f"live validation in the TCG guest: {int(ms) / 1000:.1f} s (python3 + pykho's CLI start alone: "
          f"{int(start) / 1000 if start else float('nan'):.1f} s)")
    assert int(ms) < 240_000, f"kho validate --mem live took {int(ms) / 1000:.0f} s in the guest"


@pytest.mark.parametrize("what,word", [("drgn", "drgn"), ("kcore", "kcore")])
def test_live_without_drgn_or_kcore(live_chain, what, word):
    """No drgn, or no usable /proc/kcore: one line naming it, exit 2, no traceback."""
    capture, _ = live_chain
    name = f"live_missing_{what}"
    assert rc(capture, 1, name) == 2, (text(capture, 1, name), text(capture, 1, name + "_stderr"))
    err = text(capture, 1, name + "_stderr").strip().splitlines()
    assert len(err) == 1, err
    assert word in err[0] and "Traceback" not in err[0], err


# ------------------------------------------------------------ boot 2: what arrived

def test_live_validate_received(live_chain, live_kernel):
    """``kho validate /sys/kernel/debug/kho/in --mem live`` in boot 2: the running
    kernel received this handover and consumed its map at boot (the map's
    pages are its free memory now), so pykho reports the debugfs copies and
    says why it reads no memory.  What it reports is what boot 1 sent: the
    same generation, scratch areas and sub-nodes, accepted as boot 2 did."""
    capture, _ = live_chain
    err = text(capture, 2, "live_validate_in_stderr")
    assert rc(capture, 2, "live_validate_in") == 0, err
    rin = guest_json(capture, 2, "live_validate_in")
    rout = guest_json(capture, 1, "live_validate_out")
    assert rin["source"] == "/sys/kernel/debug/kho/in"
    codes = {f["code"]: f["severity"] for f in rin["findings"]}
    assert "live-in-consumed" in codes, codes
    assert "error" not in codes.values(), rin["findings"]
    # the wire generation: 7.3 writes 7.2's kho-v4 (KERNEL-FACTS F-1); the
    # verdict is the running kernel's, the one that received it
    assert rin["generation"] == rout["generation"] == "E", (rin["generation"], rout["generation"])
    assert rin["verdict"]["target"] == GENERATION[live_kernel.name][0], rin["verdict"]["target"]
    # the scratch areas boot 1's live report listed are the ones boot 2 runs with
    d = capture / "stage2/debugfs/kho/out"
    used = [{"addr": int(a, 0), "size": int(n, 0)}
            for a, n in zip((d / "scratch_phys").read_text().split(), (d / "scratch_len").read_text().split())]
    assert rout["scratch"] == used, (rout["scratch"], used)
    sub = capture / "stage2/debugfs/kho/in/sub_fdts"
    names = sorted(p.name for p in sub.iterdir()) if sub.is_dir() else []
    assert names, "boot 2 has no in/sub_fdts"
    assert sorted(rin["verdict"]["clients"]) == names == sorted(rout["verdict"]["clients"])
    real = campaign.relevant_lines(campaign.boot_lines(capture / "stage2"))
    said = [x for x in rin["verdict"]["log"] if x.startswith(campaign.RELEVANT)]
    assert rin["verdict"]["populate"] == "accepted" and said and all(x in real for x in said), (said, real)
    records.record(kernel=live_kernel.name, next_kernel=live_kernel.name, arch=ARCH, source=SOURCE,
                   case="live-validate-received",
                   change="none: boot 2 validates live what it received (debugfs in/; memory not read: the map "
                          "was consumed at boot)",
                   real={"populate": "accepted" if "KHO: found kexec handover data." in real else "refused",
                         "sub_fdts": names, "scratch": used},
                   predicted={"target": rin["verdict"]["target"], "populate": rin["verdict"]["populate"],
                              "sub_fdts": sorted(rin["verdict"]["clients"]),
                              "scratch": rout["scratch"], "lines": said},
                   agree=True, note=f"guest validation took {int(note(capture, 2, 'live_validate_in_ms')) / 1000:.1f} "
                                    "s under TCG")


# ------------------------------------------------------------ go / no-go through the wrapper

@pytest.fixture(scope="session")
def wrapper_nogo(live_kernel, live_image, live_extra, tmp_path_factory):
    """The wrapper asked to check against generation D (7.1, which reads kho-v3 only)."""
    return _run(tmp_path_factory, f"live-nogo-{live_kernel.name}",
                live_opts(live_image, live_extra, "vmtest_live_kexec=wrapper vmtest_live_target=D"), live_kernel)


@pytest.fixture(scope="session")
def wrapper_go(live_kernel, live_image, live_extra, tmp_path_factory):
    """The wrapper with the image it loads (its release picks the generation)."""
    return _run(tmp_path_factory, f"live-go-{live_kernel.name}",
                live_opts(live_image, live_extra, "vmtest_live_kexec=wrapper"), live_kernel)


def test_wrapper_nogo_stops_the_kexec(wrapper_nogo):
    """A no-go stops the kexec before anything is loaded: the handover (kho-v4)
    would be refused by a kho-v3 kernel and everything preserved lost."""
    capture, summary = wrapper_nogo
    out = text(capture, 1, "live_preflight")
    assert rc(capture, 1, "live_preflight") == 1, (out, text(capture, 1, "live_preflight_stderr"))
    assert out.startswith("no-go:"), out
    assert "handover-rejected" in out and "lost" in out, out
    assert "not loading it" in text(capture, 1, "live_preflight_stderr")
    assert text(capture, 1, "live_kexec_loaded").strip() == "0", "the wrapper loaded the kernel anyway"
    assert "kexec_refused" in stage_json(capture, 1)["notes"]
    assert summary["stops"] == [], "the guest reached machine_kexec"
    assert summary["stages_reached"] == 1 and summary["exit"] == "qemu-exited", summary


def test_wrapper_go_lets_it_through(wrapper_go, live_kernel):
    """A go: the wrapper loads the image with kexec-tools (kexec_file_load),
    jumps, and boot 2 restores everything (test_kho, reserve_mem, LUO memfd)."""
    capture, summary = wrapper_go
    out = text(capture, 1, "live_preflight")
    assert out.startswith("go:"), (out, text(capture, 1, "live_preflight_stderr"))
    gen, series = GENERATION[live_kernel.name]
    assert rc(capture, 1, "live_preflight") == 0
    # the wrapper loaded the image itself (kexec-tools, kexec_file_load): kx was never run
    assert not (capture / "stage1" / "kexec_load.txt").exists()
    assert len(summary["stops"]) == 1 and summary["completed"], summary
    assert uname_release(capture, 2) == live_kernel.release
    real = campaign.observe(capture, summary, 2)
    clients = real_clients(capture, 2)
    m = re.search(r"(\d+) preserved blocks reserved, (\d+) restored", out)
    records.record(kernel=live_kernel.name, next_kernel=live_kernel.name, arch=ARCH, source=SOURCE,
                   case="live-preflight-go",
                   change="none: contrib/kexec-preflight in the guest (kho preflight --target-image, then "
                          "kexec -s -l and kexec -e of kexec-tools)",
                   real={"found": real["found"], "reserved_blocks": len(real["reserved"]), "clients": clients,
                         "fate": real["fate"]},
                   predicted={"decision": "go", "target": out.split()[2],
                              "reserved_blocks": int(m.group(1)) if m else None},
                   agree=bool(out.split()[2] == gen and real["found"] and m
                              and int(m.group(1)) == len(real["reserved"]) and len(clients) == 4
                              and real["fate"] == "ok"))
    # the image's own release picked the generation (kho preflight --target-image)
    assert out.startswith(f"go: the {gen} kernel ({series}) "), out
    assert real["found"] and real["fate"] == "ok", real
    assert m and int(m.group(1)) == len(real["reserved"]), (out, len(real["reserved"]))
    assert set(clients) == {"kho_test", "kexec-metadata", "memblock", "LUO"}, clients

