"""Which kernel a boot image holds: the release string inside it.

* x86 bzImage: the boot protocol header (``HdrS`` at 0x202) has a
  ``kernel_version`` field at 0x20e, an offset (from 0x200) of the version
  string the build wrote, e.g. ``7.2.13 (builder@host) #1 SMP ...``.
* arm64 ``Image`` (magic ``ARM\\x64`` at 0x38) carries no version in its
  header: the ``Linux version `` banner is found in the image itself; a
  gzip-compressed image (Debian's ``vmlinuz`` on arm64) is inflated first,
  bounded.
"""

from __future__ import annotations

import re
import zlib

__all__ = ["ImageRelease", "kernel_release", "MAX_IMAGE_BYTES"]

#: images are read up to this size; inflation stops at four times it
MAX_IMAGE_BYTES = 64 << 20
_BANNER = re.compile(rb"Linux version ([0-9][0-9A-Za-z.+_~-]{0,63}) ")


class ImageRelease:
    """What :func:`kernel_release` found: ``arch``, ``release`` (or None)
    and ``why`` when it found none."""

    def __init__(self, arch: str | None, release: str | None, why: str = ""):
        self.arch, self.release, self.why = arch, release, why

    def __repr__(self) -> str:
        return f"ImageRelease({self.arch!r}, {self.release!r}, {self.why!r})"


def _inflate(data: bytes, limit: int) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = d.decompress(data, limit)
    return out


def kernel_release(data: bytes) -> ImageRelease:
    """The release of the kernel image ``data`` (its first bytes suffice for
    an x86 bzImage; an arm64 image is searched)."""
    if len(data) >= 0x210 and data[0x202:0x206] == b"HdrS":
        proto = int.from_bytes(data[0x206:0x208], "little")
        off = int.from_bytes(data[0x20E:0x210], "little")
        if proto < 0x200 or not off:
            return ImageRelease("x86_64", None, f"boot protocol 0x{proto:x} has no kernel_version field")
        at = 0x200 + off
        s = data[at:at + 256].split(b"\0", 1)[0]
        rel = s.split(b" ", 1)[0].decode("ascii", "replace") if s else ""
        if not rel:
            return ImageRelease("x86_64", None, f"kernel_version at 0x{at:x} is empty")
        return ImageRelease("x86_64", rel)
    arch = "arm64" if len(data) >= 0x3C and data[0x38:0x3C] == b"ARM\x64" else None
    body = data
    if data[:2] == b"\x1f\x8b":
        try:
            body = _inflate(data, 4 * MAX_IMAGE_BYTES)
        except zlib.error as e:
            return ImageRelease(arch, None, f"gzip data does not inflate: {e}")
        if len(body) >= 0x3C and body[0x38:0x3C] == b"ARM\x64":
            arch = "arm64"
    m = _BANNER.search(body)
    if m is None:
        if arch is None:
            return ImageRelease(None, None, "neither an x86 bzImage nor an arm64 Image (no header magic)")
        return ImageRelease(arch, None, "no 'Linux version' banner in the image")
    return ImageRelease(arch, m.group(1).decode("ascii"))
