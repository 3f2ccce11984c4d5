"""The live guest: a Debian root with python3, drgn and numpy, and pykho on top.

``python3 -m vmtest.rootfs`` (or :func:`ensure_rootfs`) builds, once, a
Debian root of the machine's own release with ``mmdebstrap --variant=minbase``
holding :data:`PACKAGES`, and makes it a read-only ext4 image
(``mkfs.ext4 -d``, no journal):

    $VMTEST_CACHE/rootfs-<release>-<key>/root.ext4
        key = sha256(release, packages, recipe)[:12]
        packages.txt (name and version of every package in it), build-info.env

The runner attaches it as a virtio-blk disk (``Options.disk``).  pykho itself
is not in the image: :func:`live_payload` packs the checkout's ``src/pykho``
(byte-compiled by this machine's python3, the guest's version), the
``kexec-preflight`` wrapper, a ``kho`` launcher, the guest's ``/init`` and
``guest/live.sh`` into a cpio that the runner appends to the initramfs
(``Options.initrd_extra``): a change to pykho never rebuilds the image, and the
guest's /init hands the payload on to every later boot with the rest of its
rootfs.  With ``vmtest_live=1`` on the command line, /init mounts the disk
read-only at /live (tmpfs for /tmp; /proc, /sys, /dev bound in) and runs
``guest/live.sh`` at two points of every boot (see that file).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .build import HERE, REPO, cache_dir, log

__all__ = ["PACKAGES", "RECIPE", "Rootfs", "cpio_newc", "ensure_rootfs", "find_rootfs", "live_initrd_extra",
           "live_payload", "release"]

#: what the guest's userspace needs: pykho's interpreter and its libraries
#: (pylibfdt, numpy; drgn for --mem live), kexec-tools for the wrapper
PACKAGES = ("python3", "python3-libfdt", "python3-numpy", "python3-drgn", "kexec-tools")
#: bump when the way the image is made changes (part of the key)
RECIPE = "minbase;nodocs;nolocales;noapt-lists;ext4-nojournal;mnt=live,pykho;v1"
#: dpkg never unpacks these (docs, man pages, locales): a smaller image
EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*",
            "/usr/share/lintian/*", "/usr/share/linda/*")


class Rootfs:
    def __init__(self, path: Path) -> None:
        self.dir = path

    @property
    def image(self) -> Path:
        return self.dir / "root.ext4"

    def info(self) -> dict[str, str]:
        out = {}
        f = self.dir / "build-info.env"
        if f.exists():
            for line in f.read_text().splitlines():
                k, _, v = line.partition("=")
                if k:
                    out[k] = v
        return out


def release() -> str:
    """This machine's Debian release (VERSION_CODENAME), the guest's."""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "bookworm"


def key(suite: str | None = None, packages: tuple[str, ...] = PACKAGES) -> str:
    text = "\n".join([suite or release(), *sorted(packages), RECIPE])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def folder(suite: str | None = None) -> Path:
    suite = suite or release()
    return cache_dir() / f"rootfs-{suite}-{key(suite)}"


def find_rootfs() -> Rootfs | None:
    """The cached image, or None when it has not been built."""
    d = folder()
    return Rootfs(d) if (d / ".complete").exists() and (d / "root.ext4").exists() else None


def _mirror() -> str:
    return os.environ.get("VMTEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def ensure_rootfs(force: bool = False) -> Rootfs:
    """Build the image unless it is cached; returns it.  Needs root (mmdebstrap's
    root mode) and mmdebstrap + e2fsprogs (``vmtest/setup.sh`` installs them)."""
    d = folder()
    if not force:
        r = find_rootfs()
        if r:
            return r
    for tool in ("mmdebstrap", "mkfs.ext4"):
        if not shutil.which(tool):
            raise RuntimeError(f"{tool} not found: run vmtest/setup.sh (apt-get install mmdebstrap e2fsprogs)")
    if os.geteuid() != 0:
        raise RuntimeError("building the guest root needs root (mmdebstrap --mode=root)")
    suite = release()
    t0 = time.time()
    d.mkdir(parents=True, exist_ok=True)
    (d / ".complete").unlink(missing_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="rootfs-", dir=d))
    root = tmp / "root"
    try:
        argv = ["mmdebstrap", "--variant=minbase", "--mode=root", "--quiet",
                "--include=" + ",".join(PACKAGES),
                *(f"--dpkgopt=path-exclude={p}" for p in EXCLUDES),
                # the apt lists and caches are of no use on a read-only root
                "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/* "
                "\"$1\"/var/cache/debconf/*-old \"$1\"/var/log/*",
                "--customize-hook=chroot \"$1\" dpkg-query -W -f '${Package}\\t${Version}\\n' > \"$1\"/packages.txt",
                # mount points: the disk itself (/live in the initramfs), pykho's payload
                "--customize-hook=mkdir -p \"$1\"/pykho",
                suite, str(root), _mirror()]
        log(f"rootfs: mmdebstrap {suite} ({', '.join(PACKAGES)}) into {root}")
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
        t_deb = time.time() - t0
        shutil.move(str(root / "packages.txt"), d / "packages.txt")
        used = int(subprocess.run(["du", "-sk", str(root)], check=True, capture_output=True,
                                  text=True).stdout.split()[0])
        size_k = used + used // 5 + 16384
        img = tmp / "root.ext4"
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "pykho-live", "-O", "^has_journal", "-m", "0",
                        "-E", "root_owner=0:0", "-d", str(root), str(img), f"{size_k}k"],
                       check=True, stdin=subprocess.DEVNULL)
        img.replace(d / "root.ext4")
        secs = time.time() - t0
        (d / "build-info.env").write_text(
            f"ROOTFS_SUITE={suite}\nROOTFS_PACKAGES={' '.join(PACKAGES)}\nROOTFS_RECIPE={RECIPE}\n"
            f"ROOTFS_KEY={key(suite)}\nROOTFS_USED_KIB={used}\nROOTFS_IMAGE_BYTES={(d / 'root.ext4').stat().st_size}\n"
            f"ROOTFS_MMDEBSTRAP_SECONDS={t_deb:.0f}\nROOTFS_BUILD_SECONDS={secs:.0f}\n")
        (d / ".complete").touch()
        log(f"rootfs: {d / 'root.ext4'} ({used >> 10} MiB used) built in {secs:.0f} s "
            f"(mmdebstrap {t_deb:.0f} s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Rootfs(d)


def _compiled_pykho(dest: Path) -> Path:
    """A copy of the checkout's src/pykho with .pyc files made by this
    machine's /usr/bin/python3 (the guest's version: the same Debian release),
    so that the guest does not compile it under TCG at every start."""
    src = REPO / "src" / "pykho"
    out = dest / "pykho"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    py = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    subprocess.run([py, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
                    "-d", "/mnt/pykho/src/pykho", str(out)], check=True, stdout=subprocess.DEVNULL)
    return out


KHO_LAUNCHER = """#!/bin/sh
# kho, from the pykho checkout the host packed into this guest
PYTHONPATH=/mnt/pykho/src${PYTHONPATH:+:$PYTHONPATH} exec python3 -c \
'import sys; from pykho.cli import main; sys.exit(main())' "$@"
"""

KEXEC_MARKED = """#!/bin/sh
# kexec-tools' kexec for contrib/kexec-preflight in the vmtest guest.  Before
# 'kexec -e' it prints what the wrapper said so far (its output goes to
# files: a text block open across the jump would swallow the next boot's
# first marker) and the marker the host splits the serial log at, then lets
# the kernel's last words reach the console.
case " $* " in
*" -e "*)
    s=${VMTEST_STAGE:-0}
    {
        for n in live_preflight live_preflight_stderr; do
            f=/tmp/.$n
            echo "@@KHO-TEXT-BEGIN stage=$s name=$n"
            cat "$f" 2>/dev/null
            echo "@@KHO-TEXT-RC stage=$s name=$n rc=0"
            echo "@@KHO-TEXT-END stage=$s name=$n"
        done
        echo "@@KHO-KEXEC stage=$s"
    } > /dev/console
    dmesg -n 8 ;;
esac
exec kexec "$@"
"""


def live_payload() -> dict[str, tuple[bytes, int]]:
    """{path: (bytes, mode)}: what the runner appends to the initramfs for a
    live guest: /init (the checkout's), /bin/live.sh, /pykho/bin/kho,
    /pykho/bin/kexec-preflight and /pykho/src/pykho/**."""
    files: dict[str, tuple[bytes, int]] = {
        "init": ((HERE / "guest" / "init").read_bytes(), 0o755),
        "bin/live.sh": ((HERE / "guest" / "live.sh").read_bytes(), 0o755),
        "pykho/bin/kho": (KHO_LAUNCHER.encode(), 0o755),
        "pykho/bin/kexec-preflight": ((REPO / "contrib" / "kexec-preflight").read_bytes(), 0o755),
        "pykho/bin/kexec-marked": (KEXEC_MARKED.encode(), 0o755),
    }
    with tempfile.TemporaryDirectory(prefix="pykho-payload-") as t:
        top = _compiled_pykho(Path(t))
        for p in sorted(top.rglob("*")):
            if p.is_file():
                files["pykho/src/" + str(p.relative_to(top.parent))] = (p.read_bytes(), 0o644)
    return files


def cpio_newc(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A newc cpio archive of ``files`` ({path: (bytes, mode)}, owned by root),
    with an entry for every folder on their paths (the kernel's unpacker does
    not make them), and its trailer."""
    out = bytearray()
    dirs = sorted({"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)})
    ino = 0x9000

    def entry(name: str, data: bytes, mode: int) -> None:
        nonlocal ino
        ino += 1
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0))
        out.extend(hdr.encode() + nb)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))
    for d in dirs:
        entry(d, b"", 0o040755)
    for name, (data, mode) in sorted(files.items()):
        entry(name, data, 0o100000 | mode)
    entry("TRAILER!!!", b"", 0)
    return bytes(out)


def live_initrd_extra() -> bytes:
    """The payload as the gzip cpio the runner appends to boot 1's initramfs
    (``Options.initrd_extra``): the kernel unpacks concatenated archives in
    order, so its /init replaces the cached initramfs' one."""
    import gzip
    return gzip.compress(cpio_newc(live_payload()), 6, mtime=0)


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python3 -m vmtest.rootfs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="build again even when cached")
    ap.add_argument("--print-dir", action="store_true", help="only print the folder (built or not)")
    a = ap.parse_args(argv)
    if a.print_dir:
        print(folder())
        return 0
    try:
        r = ensure_rootfs(a.force)
    except (RuntimeError, subprocess.CalledProcessError) as e:
        print(f"[vmtest] rootfs: {e}", file=sys.stderr)
        return 1
    for k, v in r.info().items():
        print(f"{k}={v}", file=sys.stderr)
    print(r.image)
    return 0


if __name__ == "__main__":
    sys.exit(main())
