"""The guest's serial console: splitting it into per-stage folders, and
reading the kernel log lines the tests compare.

The guest's ``/init`` (vmtest/guest/init) prints ``@@KHO-*`` marker lines:
text blocks (``TEXT-BEGIN``/``TEXT-END``), every KHO debugfs file in base64
with its size and sha256 (``BLOB-BEGIN``/``BLOB-END``), notes, and the stage
boundaries (``STAGE-START``, ``KEXEC``, ``STAGE-END``).  :func:`split_serial`
turns a log (ours or the oracle's) into ``stageN/`` folders.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

from .capture import PAGE

__all__ = ["KHO_DEBUGFS", "KHO_LINE", "MARK", "MEMBLOCK_KHO", "dmesg_lines", "kho_reserved",
           "split_serial", "strip_ts"]

KHO_DEBUGFS = "/sys/kernel/debug/kho"

MARK = re.compile(r"^@@KHO-(STAGE-START|STAGE-END|TEXT-BEGIN|TEXT-END|TEXT-RC|BLOB-BEGIN|BLOB-END|NOTE|KEXEC)\s+(.*)$")


def _kv(s: str) -> dict:
    out = {}
    for w in s.split():
        if "=" in w:
            k, v = w.split("=", 1)
            out[k] = v
    return out


def split_serial(serial: Path, out: Path) -> dict:
    """Split a vmtest (or oracle) serial log into stageN/ folders.

    Returns {stage: {"texts": [...], "blobs": {path: ok}, "notes": [...],
    "kexec": bool, "end": bool, "errors": [...]}}.
    """
    raw = serial.read_bytes().decode("utf-8", "replace").replace("\r", "")
    lines = raw.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    banner = re.compile(r"^\[\s*\d+\.\d+\] Linux version \d")
    stages: dict[int, dict] = {}
    stage = 1               # the stage whose lines we are reading
    kexec_stage = 0         # the stage that last announced a kexec
    console: list[str] = []  # console lines outside the /init dumps
    cur_text: tuple[str, list[str]] | None = None
    cur_blob: tuple[str, dict, list[str]] | None = None
    phase = "boot"          # boot -> init -> (kexec -> boot ...) | end

    def st(n: int) -> dict:
        return stages.setdefault(n, {"texts": [], "blobs": {}, "notes": [], "kexec": False,
                                     "end": False, "errors": [], "started": False})

    def sdir(n: int) -> Path:
        d = out / f"stage{n}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def flush(n: int, name: str):
        nonlocal console
        if console and n > 0:
            (sdir(n) / name).write_text("\n".join(console) + "\n")
            st(n)
        console = []

    for line in lines:
        m = MARK.match(line)
        if cur_blob is not None and not (m and m.group(1) == "BLOB-END"):
            if re.fullmatch(r"[A-Za-z0-9+/=]+", line.strip() or "-"):
                cur_blob[2].append(line.strip())
            continue
        if cur_text is not None and not (m and m.group(1) in ("TEXT-END", "TEXT-RC")):
            cur_text[1].append(line)
            continue
        if not m:
            if phase == "kexec" and banner.match(line):
                flush(kexec_stage, "console-kexec.log")   # the old kernel's last words
                phase = "boot"
            console.append(line)
            continue
        kind, rest = m.group(1), m.group(2)
        kv = _kv(rest)
        n = int(kv.get("stage", stage))
        if kind == "STAGE-START":
            if phase == "kexec":
                flush(kexec_stage, "console-kexec.log")
            stage = n
            s = st(stage)
            s["started"] = True
            s["last"] = int(kv["last"]) if "last" in kv else None
            flush(stage, "console-boot.log")
            phase = "init"
        elif kind == "TEXT-BEGIN":
            cur_text = (kv.get("name", "text"), [])
        elif kind == "TEXT-RC":
            if cur_text is not None:
                st(n).setdefault("rc", {})[cur_text[0]] = int(kv.get("rc", "0"))
        elif kind == "TEXT-END":
            if cur_text is not None:
                name, buf = cur_text
                (sdir(n) / f"{name}.txt").write_text("\n".join(buf) + ("\n" if buf else ""))
                st(n)["texts"].append(name)
            cur_text = None
        elif kind == "BLOB-BEGIN":
            cur_blob = (kv.get("path", ""), kv, [])
        elif kind == "BLOB-END":
            if cur_blob is not None:
                path, meta, b64 = cur_blob
                data = base64.b64decode("".join(b64))
                ok = (str(len(data)) == meta.get("size")
                      and hashlib.sha256(data).hexdigest() == meta.get("sha256"))
                if path.startswith(KHO_DEBUGFS + "/"):
                    rel = Path("debugfs/kho") / path[len(KHO_DEBUGFS) + 1:]
                else:
                    rel = Path("blobs") / path.lstrip("/")
                dest = sdir(n) / rel
                if path in st(n)["blobs"]:   # dumped twice: keep both
                    dest = dest.with_name(dest.name + ".again")
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
                st(n)["blobs"][path] = ok
                if not ok:
                    st(n)["errors"].append(f"blob {path}: size/sha256 mismatch")
            cur_blob = None
        elif kind == "NOTE":
            st(n)["notes"].append(rest.split(None, 1)[1] if " " in rest else "")
        elif kind == "KEXEC":
            st(n)["kexec"] = True
            flush(n, "console-init.log")
            phase = "kexec"
            kexec_stage = n
            stage = n + 1
        elif kind == "STAGE-END":
            st(n)["end"] = True
            flush(n, "console-init.log")
            phase = "end"
    # whatever is left: the last words of a kexec whose next kernel never printed,
    # the boot log of a kernel that never reached /init, or the final shutdown
    if phase == "kexec":
        flush(kexec_stage, "console-kexec.log")
    elif phase == "boot":
        flush(stage, "console-boot.log")
    elif phase == "end":
        flush(stage, "console-end.log")
    else:
        flush(stage, "console-init.log")
    for n, s in stages.items():
        (sdir(n) / "stage.json").write_text(json.dumps(s, indent=1, sort_keys=True) + "\n")
    return stages


# the kernel log of one boot (stageN/dmesg.txt)

KHO_LINE = re.compile(r"KHO|test_kho|luo|liveupdate|reserve_mem|Revived memory", re.IGNORECASE)
MEMBLOCK_KHO = re.compile(r"__memblock_reserve: \[(0x[0-9a-f]+)-(0x[0-9a-f]+)\].*kho_preserved_memory_reserve")


def dmesg_lines(stage_dir: Path) -> list[str]:
    f = Path(stage_dir) / "dmesg.txt"
    return f.read_text(errors="replace").splitlines() if f.exists() else []


def strip_ts(line: str) -> str:
    return re.sub(r"^\[\s*\d+\.\d+\]\s?", "", line)


def kho_reserved(stage_dir: Path) -> list[list[int]]:
    """[[phys, order], ...] from the kho_preserved_memory_reserve lines of a boot's dmesg."""
    out = []
    for line in dmesg_lines(stage_dir):
        m = MEMBLOCK_KHO.search(line)
        if m:
            a, b = int(m.group(1), 16), int(m.group(2), 16)
            size = b - a + 1
            out.append([a, (size // PAGE).bit_length() - 1])
    return out
