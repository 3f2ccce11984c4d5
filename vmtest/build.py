"""The cached kernel builds the harness boots.

``vmtest/setup.sh`` and ``vmtest/build.sh`` make them (they stay shell
scripts); this module only finds and reads a finished build folder:
``bzImage``, ``initramfs.cpio.gz``, ``System.map`` and ``build-info.env``
(release, ``machine_kexec`` address, the source's ``KHO_FDT_COMPATIBLE``, the
kernel's name in build.sh's table).

There are several kernels (build.sh's table): ``7.2.13`` (the default),
``7.2.13-unfixed`` and ``7.3.4``; ``find_build("7.3.4")`` (or the series
form ``"7.3"``) finds one, ``find_build()`` the default.
"""
from __future__ import annotations

import bisect
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["HERE", "REPO", "Build", "cache_dir", "find_build", "kernel_table", "log", "newer_sources", "read_env",
           "warn_newer_sources"]

HERE = Path(__file__).resolve().parent   # vmtest/ (build.sh, setup.sh, guest/)
REPO = HERE.parent


def cache_dir() -> Path:
    return Path(os.environ.get("VMTEST_CACHE") or REPO / ".vmcache")


def log(msg: str) -> None:
    print(f"[vmtest] {msg}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Build:
    dir: Path
    info: dict

    @property
    def bzimage(self) -> Path:
        return self.dir / "bzImage"

    @property
    def initramfs(self) -> Path:
        return self.dir / "initramfs.cpio.gz"

    @property
    def machine_kexec(self) -> int:
        return int(self.info["VMTEST_MACHINE_KEXEC"], 16)

    def symbol(self, name: str) -> int:
        """Address of a kernel symbol from the build's System.map."""
        for line in (self.dir / "System.map").read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2] == name:
                return int(parts[0], 16)
        raise KeyError(f"{name} not in {self.dir / 'System.map'}")

    def symbolize(self, addr: int) -> str:
        """'func+0xoff' for a kernel text address (System.map)."""
        if not hasattr(self, "_syms"):
            syms = []
            for line in (self.dir / "System.map").read_text().splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[1] in "tTwW":
                    syms.append((int(parts[0], 16), parts[2]))
            syms.sort()
            self._syms = syms
        i = bisect.bisect_right(self._syms, (addr, "\xff")) - 1
        if i < 0 or addr - self._syms[i][0] > (1 << 20):
            return f"{addr:#x}"
        return f"{self._syms[i][1]}+{addr - self._syms[i][0]:#x}"

    @property
    def release(self) -> str:
        return self.info.get("VMTEST_KERNELRELEASE", "")

    @property
    def name(self) -> str:
        """The kernel's name in build.sh's table (``7.2.13-unfixed``), else its release."""
        return self.info.get("VMTEST_KERNEL_NAME") or self.release

    @property
    def series(self) -> str:
        """``7.2``, ``7.2-unfixed``, ``7.3``: the table's key."""
        return self.info.get("VMTEST_KERNEL_SERIES") or ".".join(self.release.split(".")[:2])


def read_env(path: Path) -> dict:
    out = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def _build_sh(*args: str) -> str | None:
    try:
        out = subprocess.run(["bash", str(HERE / "build.sh"), *args], check=True,
                             capture_output=True, text=True).stdout.strip().splitlines()
    except subprocess.CalledProcessError:
        return None
    return "\n".join(out) if out else None


def kernel_table() -> list[dict]:
    """build.sh's kernels: name, series, folder (None without a source) and
    state (``built``, ``missing``, ``no-source``)."""
    out = _build_sh("--list") or ""
    rows = []
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 4:
            rows.append({"name": parts[0], "series": parts[1], "dir": None if parts[2] == "-" else parts[2],
                         "state": parts[3]})
    return rows


def find_build(build_dir: str | os.PathLike | None = None, *, kernel: str | None = None) -> Build | None:
    """A finished kernel build, or None.

    ``find_build()``: $VMTEST_BUILD, or the default kernel's folder (the one
    ``build.sh --print-dir`` names for the current source and kernel.config).
    ``find_build("7.3.4")`` / ``find_build(kernel="7.2-unfixed")``: that kernel
    of build.sh's table ($VMTEST_BUILD is not consulted).  An argument that is
    an existing folder (or contains a ``/``) is a build folder."""
    cand: str | os.PathLike | None = None
    if build_dir is not None and kernel is None and not (
            isinstance(build_dir, os.PathLike) or "/" in str(build_dir) or Path(build_dir).is_dir()):
        kernel, build_dir = str(build_dir), None
    if kernel is not None:
        out = _build_sh("--print-dir", "--kernel", kernel)
        cand = out.splitlines()[-1] if out else None
    else:
        cand = build_dir or os.environ.get("VMTEST_BUILD")
        if not cand:
            out = _build_sh("--print-dir")
            cand = out.splitlines()[-1] if out else None
    if not cand:
        return None
    d = Path(cand)
    need = [d / "bzImage", d / "initramfs.cpio.gz", d / "build-info.env", d / ".kernel-complete"]
    if not all(p.exists() for p in need):
        return None
    return Build(d, read_env(d / "build-info.env"))


def _series(text: str) -> tuple[int, int] | None:
    import re
    m = re.match(r"(?:linux-source-)?(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def profiled_series() -> tuple[int, int] | None:
    """The newest kernel series pykho has a profile for (its ``kernels`` and
    aliases), or None when pykho is not importable."""
    try:
        from pykho import profiles as P
    except ImportError:
        return None
    import re
    found = [(int(a), int(b)) for p in [*P.PROFILES.values()] for a, b in re.findall(r"(\d+)\.(\d+)", p.kernels)]
    found += [v for k in P.ALIASES if (v := _series(k))]
    return max(found) if found else None


def newer_sources(available: Path | None = None) -> list[dict]:
    """The ``linux-source-7.x`` packages setup.sh saw in sid or trixie-backports
    (``$VMTEST_CACHE/available.txt``) whose series is newer than every kernel
    pykho has a profile for: ``[{"package", "version", "suite"}]``, newest first."""
    f = available or cache_dir() / "available.txt"
    top = profiled_series()
    if top is None or not f.exists():
        return []
    out = []
    for line in f.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and (ser := _series(parts[0])) and ser > top:
            out.append({"package": parts[0], "version": parts[1], "suite": parts[2], "series": ser})
    out.sort(key=lambda r: (r["series"], r["version"]), reverse=True)
    for r in out:
        del r["series"]
    return out


def warn_newer_sources() -> list[str]:
    """Log (and return) one warning per newer source package."""
    top = profiled_series()
    msgs = [f"WARNING: {r['package']} {r['version']} ({r['suite']}) is newer than any kernel pykho has a "
            f"profile for (newest: {top[0]}.{top[1]}): add a profile and a kernel to build.sh's table"
            for r in newer_sources()] if top else []
    for m in msgs:
        log(m)
    return msgs
