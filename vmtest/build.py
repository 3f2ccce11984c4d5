"""The cached kernel build the harness boots.

``vmtest/setup.sh`` and ``vmtest/build.sh`` make it (they stay shell scripts);
this module only finds and reads a finished build folder: ``bzImage``,
``initramfs.cpio.gz``, ``System.map`` and ``build-info.env`` (release,
``machine_kexec`` address, the source's ``KHO_FDT_COMPATIBLE``).
"""
from __future__ import annotations

import bisect
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["HERE", "REPO", "Build", "cache_dir", "find_build", "log", "read_env"]

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


def read_env(path: Path) -> dict:
    out = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def find_build(build_dir: str | os.PathLike | None = None) -> Build | None:
    """The kernel build to use: ``build_dir``, $VMTEST_BUILD, or the one that
    ``build.sh --print-dir`` names for the current source and kernel.config."""
    cand = build_dir or os.environ.get("VMTEST_BUILD")
    if not cand:
        try:
            cand = subprocess.run(["bash", str(HERE / "build.sh"), "--print-dir"], check=True,
                                  capture_output=True, text=True).stdout.strip().splitlines()[-1]
        except (subprocess.CalledProcessError, IndexError):
            return None
    d = Path(cand)
    need = [d / "bzImage", d / "initramfs.cpio.gz", d / "build-info.env", d / ".kernel-complete"]
    if not all(p.exists() for p in need):
        return None
    return Build(d, read_env(d / "build-info.env"))

