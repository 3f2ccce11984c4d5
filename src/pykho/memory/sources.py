"""File-backed memory sources: raw images, sparse extracts, ELF dumps, drgn.

All of them open files read-only; none has a write method.
"""

from __future__ import annotations

import io
import lzma
import os
import stat
import struct
import tarfile
import zlib
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Self

from ..errors import KhoDecodeError, MemoryFault, UsageError
from .base import PhysMemory

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["XZ_MAGIC", "XZ_MEMLIMIT", "DrgnMemory", "ElfDump", "RawImage", "SparseDir", "file_kind", "open_regular",
           "open_source", "read_regular"]


def file_kind(mode: int) -> str:
    """What a ``st_mode`` is, in words ("a directory", "a FIFO", ...)."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str, what: str) -> IO[bytes]:
    """``path`` opened for reading, if it is a regular file.

    The file is opened without blocking and checked before anything is read,
    so a FIFO, a device or a directory given where a file is needed is a
    :class:`~pykho.errors.UsageError` naming it, never a hang."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise UsageError(f"{path}: cannot open {what}: {e.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UsageError(f"{path}: {what} must be a regular file, not {file_kind(mode)}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str, what: str, cap: int) -> bytes:
    """The bytes of the regular file ``path`` (at most ``cap``; more is a
    :class:`~pykho.errors.UsageError`)."""
    with open_regular(path, what) as f:
        try:
            data = f.read(cap + 1)
        except OSError as e:
            raise UsageError(f"{path}: cannot read {what}: {e.strerror}") from None
    if len(data) > cap:
        raise UsageError(f"{path}: {what} larger than {cap} bytes")
    return data


class _FileBuffer:
    """A regular file read by offset (``os.pread``), sliced like bytes.

    Images are read this way rather than mapped: scanning an 8 GiB image then
    costs one chunk of memory, where a mapping's pages all count as the
    process's resident memory once read."""

    def __init__(self, f: IO[bytes], path: str, what: str) -> None:
        self.f, self.path, self.what = f, path, what
        self.fd = f.fileno()
        self.size = os.fstat(self.fd).st_size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, s: slice) -> bytes:
        start, stop, _ = s.indices(self.size)
        want = max(0, stop - start)
        parts: list[bytes] = []
        at = start
        while want:
            try:
                got = os.pread(self.fd, min(want, 1 << 30), at)
            except OSError as e:
                raise KhoDecodeError(self.what, f"{self.path} offset 0x{at:x}", f"read failed: {e.strerror}") from None
            if not got:
                raise KhoDecodeError(self.what, f"{self.path} offset 0x{at:x}",
                                     "the file ends early (did it shrink while open?)")
            parts.append(got)
            at += len(got)
            want -= len(got)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        self.f.close()


#: what a segment's bytes live in: a file read by offset, or bytes read from an archive
_SegmentBuffer = _FileBuffer | bytes


XZ_MAGIC = b"\xfd7zXZ\x00"
#: memory the xz decoder may use: ``xz -9`` needs 65 MiB to decode
XZ_MEMLIMIT = 128 << 20


def _tar_kind(path: str) -> str | None:
    """How a sparse-extract archive is compressed: "xz", "gz", "bz2", "tar"
    (none) or None (not an archive).  Told by magic bytes, never by trying
    decoders: tarfile's guessing would also run the legacy .lzma decoder,
    whose header sizes its memory."""
    with open(path, "rb") as f:
        head = f.read(6)
    if head == XZ_MAGIC:
        return "xz"
    if head[:2] == b"\x1f\x8b":
        return "gz"
    if head[:3] == b"BZh":
        return "bz2"
    try:
        with tarfile.open(path, "r:"):
            return "tar"
    except (tarfile.TarError, OSError, EOFError, ValueError):
        return None


def _open_tar(f: IO[bytes], kind: str | None) -> tarfile.TarFile:
    """A tar reader on ``f`` for an archive of ``kind`` (see :func:`_tar_kind`)."""
    if kind == "xz":
        # tarfile's own xz reader lets the stream's header choose the
        # decoder's memory (up to 1.5 GiB of dictionary): decode with a cap
        return tarfile.open(fileobj=io.BufferedReader(_XzReader(f), 1 << 16), mode="r|")
    if kind == "gz":
        return tarfile.open(fileobj=f, mode="r:gz")
    if kind == "bz2":
        return tarfile.open(fileobj=f, mode="r:bz2")
    return tarfile.open(fileobj=f, mode="r:")


class _XzReader(io.RawIOBase):
    """An xz stream decoded with a memory cap (``lzma.LZMAError`` beyond it)."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.d = lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=XZ_MEMLIMIT)

    def readable(self) -> bool:
        return True

    def readinto(self, b: WriteableBuffer) -> int:
        view = memoryview(b)
        while not self.d.eof:
            chunk = b""
            if self.d.needs_input:
                chunk = self.f.read(1 << 16)
                if not chunk:
                    raise EOFError("xz stream ends before its end marker")
            out = self.d.decompress(chunk, max_length=len(view))
            if out:
                view[:len(out)] = out
                return len(out)
        return 0


class _Segments(PhysMemory):
    """Memory made of (phys_start, length, reader) segments."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._segs: list[tuple[int, int, _SegmentBuffer, int]] = []  # start, end, buffer, offset
        self._ranges: list[tuple[int, int]] = []
        #: the segment :meth:`page_bytes` found last, with a view of its bytes
        self._page_seg: tuple[int, int, memoryview, int] | None = None

    def _add(self, start: int, length: int, buf: _SegmentBuffer, offset: int = 0) -> None:
        if length > 0:
            self._segs.append((start, start + length, buf, offset))

    def _finish(self) -> None:
        self._segs.sort(key=lambda s: s[0])
        merged: list[tuple[int, int, _SegmentBuffer, int]] = []
        for s in self._segs:
            if merged and s[0] < merged[-1][1]:
                # overlapping segments: keep the first, trim the second
                prev = merged[-1]
                if s[1] <= prev[1]:
                    continue
                cut = prev[1] - s[0]
                s = (prev[1], s[1], s[2], s[3] + cut)
            merged.append(s)
        self._segs = merged
        self._ranges = [(s, e) for s, e, _, _ in merged]
        self._starts_cache = None
        self._page_seg = None

    def ranges(self) -> list[tuple[int, int]]:
        return self._ranges

    def close(self) -> None:
        """Close the files now (an image otherwise stays open until the
        garbage collector finds this object)."""
        for _, _, buf, _ in self._segs:
            if isinstance(buf, _FileBuffer):
                buf.close()
        self._segs, self._ranges, self._starts_cache, self._page_seg = [], [], None, None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self, phys: int, size: int) -> bytes:
        i = self._range_index(phys)
        s, _end, buf, off = self._segs[i]
        o = off + (phys - s)
        return bytes(buf[o:o + size])

    def page_bytes(self, pfn: int) -> memoryview | None:
        """Page ``pfn`` as a read-only view of the bytes held in memory (a
        sparse extract's files), no copy; None when it is not wholly inside
        one such segment (the caller then reads it)."""
        phys = pfn << 12
        last = self._page_seg
        if last is not None and last[0] <= phys and phys + 4096 <= last[1]:
            o = last[3] + (phys - last[0])          # a walk's pages mostly come from one file
            return last[2][o:o + 4096]
        i = self._range_index(phys)
        if i < 0:
            return None
        s, end, buf, off = self._segs[i]
        if phys + 4096 > end or not isinstance(buf, bytes):
            return None
        view = memoryview(buf)
        self._page_seg = (s, end, view, off)
        o = off + (phys - s)
        return view[o:o + 4096]


def _map_file(path: str, what: str) -> _FileBuffer:
    """A regular file, read by offset (see :class:`_FileBuffer`)."""
    return _FileBuffer(open_regular(path, what), path, what)


class RawImage(_Segments):
    """A raw physical memory image (QEMU ``pmemsave``): file offset 0 is ``base``."""

    def __init__(self, path: str, base: int = 0) -> None:
        super().__init__(f"raw image {path}" + (f"@0x{base:x}" if base else ""))
        buf = _map_file(path, "raw memory image")
        self._add(base, len(buf), buf)
        self._finish()


class SparseDir(_Segments):
    """The sparse extract format: ``MANIFEST.tsv`` (file, phys_start, length)
    plus one file per range, as a directory or a ``.tar``/``.tar.xz`` archive."""

    def __init__(self, path: str) -> None:
        super().__init__(f"sparse extract {path}")
        if os.path.isdir(path):
            def read_file(n: str) -> bytes:
                p = os.path.join(path, n)
                if not os.path.lexists(p):
                    raise FileNotFoundError(p)
                with open_regular(p, "sparse extract file") as f:
                    return f.read()
            self._load(read_file, path)
        elif not os.path.exists(path):
            raise UsageError(f"{path}: no such file or directory")
        elif os.path.isfile(path) and _tar_kind(path):
            try:
                self._load_tar(path)
            except (tarfile.TarError, EOFError, OSError, ValueError, lzma.LZMAError, zlib.error) as e:
                raise KhoDecodeError("sparse extract archive", path, f"unreadable archive: {e}") from None
        else:
            raise UsageError(f"{path}: not a sparse extract directory or tar archive")
        self._finish()

    def _load_tar(self, path: str) -> None:
        members: dict[str, bytes] = {}
        kind = _tar_kind(path)
        with open(path, "rb") as f, _open_tar(f, kind) as tf:
            for m in tf:
                if not m.isfile():
                    continue
                if m.size > 1 << 32:
                    raise KhoDecodeError("sparse extract", f"{path}:{m.name}", "member larger than 4 GiB")
                member = tf.extractfile(m)
                if member is None:       # pragma: no cover - isfile() members always have data
                    continue
                members[os.path.normpath(m.name)] = member.read()

        def get(n: str) -> bytes:
            data = members.get(os.path.normpath(n))
            if data is None:
                raise FileNotFoundError(n)
            return data
        self._load(get, path)

    def _load(self, get: Callable[[str], bytes], path: str) -> None:
        try:
            manifest = get("MANIFEST.tsv").decode("utf-8", "replace")
        except (FileNotFoundError, OSError):
            raise UsageError(f"{path}: no MANIFEST.tsv (expected lines: file<TAB>phys_start<TAB>length)") from None
        for lineno, line in enumerate(manifest.splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split("\t")
            try:
                fname, start, length = parts[0], int(parts[1], 0), int(parts[2], 0)
            except (IndexError, ValueError):
                raise KhoDecodeError("MANIFEST.tsv", f"{path} line {lineno}",
                                     "expected file<TAB>phys_start<TAB>length") from None
            if os.path.isabs(fname) or ".." in fname.split("/") or "\0" in fname:
                raise KhoDecodeError("MANIFEST.tsv", f"{path} line {lineno}", f"unsafe file name {fname!r}")
            try:
                data = get(fname)
            except (FileNotFoundError, OSError):
                raise KhoDecodeError("MANIFEST.tsv", f"{path} line {lineno}", f"missing file {fname!r}") from None
            if len(data) < length:
                raise KhoDecodeError("sparse extract", f"{path}/{fname}",
                                     f"file has {len(data)} bytes, manifest says {length}")
            self._add(start, length, data)


ELF_MAGIC = b"\x7fELF"
PT_LOAD = 1


class ElfDump(_Segments):
    """An ELF core file (QEMU ``dump-guest-memory``, kdump ELF vmcores):
    every ``PT_LOAD`` segment at its ``p_paddr``."""

    def __init__(self, path: str) -> None:
        super().__init__(f"ELF dump {path}")
        buf = _map_file(path, "ELF dump")
        head = buf[0:64]
        if len(head) < 64 or head[:4] != ELF_MAGIC:
            raise KhoDecodeError("ELF header", f"{path} offset 0", "not an ELF file (bad magic)")
        if head[4] != 2 or head[5] != 1:
            raise KhoDecodeError("ELF header", f"{path} offset 4", "expected ELFCLASS64 little-endian")
        (_type, _machine, _v, _entry, e_phoff, _shoff, _flags, _ehsize, e_phentsize,
         e_phnum) = struct.unpack_from("<HHIQQQIHHH", head, 16)
        if e_phentsize != 56:
            raise KhoDecodeError("ELF header", f"{path} offset 54", f"program header size {e_phentsize}, expected 56")
        if e_phnum > 65535 or e_phoff + e_phnum * 56 > len(buf):
            raise KhoDecodeError("ELF program headers", f"{path} offset 0x{e_phoff:x}", "past the end of the file")
        phdrs = buf[e_phoff:e_phoff + e_phnum * 56]
        for i in range(e_phnum):
            p_type, _fl, p_offset, _va, p_paddr, p_filesz, _memsz, _al = struct.unpack_from(
                "<IIQQQQQQ", phdrs, i * 56)
            if p_type != PT_LOAD or p_filesz == 0:
                continue
            if p_offset + p_filesz > len(buf):
                raise KhoDecodeError("ELF PT_LOAD", f"{path} phdr {i}",
                                     f"segment 0x{p_offset:x}+0x{p_filesz:x} past the end of the file")
            self._add(p_paddr, p_filesz, buf, p_offset)
        self._finish()


class DrgnMemory(PhysMemory):
    """Physical memory of a running kernel (``/proc/kcore``) or a vmcore, via drgn."""

    def __init__(self, vmcore: str | None = None) -> None:
        try:
            import drgn  # type: ignore[import-not-found, unused-ignore]  # optional, untyped here
        except ImportError:
            raise UsageError("--mem live/vmcore needs drgn: pip install 'pykho[live]' (or pip install drgn)") from None
        prog = drgn.Program()
        try:
            if vmcore:
                prog.set_core_dump(vmcore)
            else:
                prog.set_kernel()
        except Exception as e:  # noqa: BLE001 - drgn raises OSError/ValueError/FaultError
            raise UsageError(f"{vmcore or '/proc/kcore'}: drgn cannot open it: {e}") from None
        self.prog = prog
        self._drgn = drgn
        #: the running kernel's own memory (not a dump of a past moment)
        self.live = vmcore is None
        self.name = f"vmcore {vmcore}" if vmcore else "live kernel (/proc/kcore)"
        self._ranges = self._find_ranges(vmcore)
        self._starts_cache = None

    @staticmethod
    def _find_ranges(vmcore: str | None) -> list[tuple[int, int]]:
        """RAM ranges: the PT_LOAD segments of an ELF vmcore, System RAM of
        /proc/iomem for the live kernel, else everything (reads still fault)."""
        try:
            if vmcore:
                return ElfDump(vmcore).ranges()
            with open("/proc/iomem") as f:
                out: list[tuple[int, int]] = []
                for line in f:
                    if not line.startswith(" ") and line.rstrip().endswith(": System RAM"):
                        a, b = line.split(":")[0].strip().split("-")
                        out.append((int(a, 16), int(b, 16) + 1))
                if out and out[-1][1] > 1:
                    return out
        except Exception:  # noqa: BLE001 - no ranges known: everything (reads still fault)
            return [(0, 1 << 52)]
        return [(0, 1 << 52)]

    def kho_out_fdt_phys(self) -> int | None:
        """The running kernel's outgoing root FDT (needs vmlinux debug info)."""
        try:
            from drgn.helpers.linux.mm import virt_to_phys
            fdt = self.prog["kho_out"].fdt
            return int(virt_to_phys(fdt).value_()) if fdt.value_() else None
        except Exception:  # noqa: BLE001 - no debug info, symbol missing, fault: not known
            return None

    def ranges(self) -> list[tuple[int, int]]:
        return self._ranges

    def read(self, phys: int, size: int, structure: str = "memory") -> bytes:
        try:
            return bytes(self.prog.read(phys, size, True))
        except self._drgn.FaultError:
            raise MemoryFault(phys, size, self.name, structure) from None

    def _read(self, phys: int, size: int) -> bytes:
        return self.read(phys, size)


def open_source(spec: str) -> PhysMemory:
    """Open ``raw:PATH[@0xBASE]``, ``sparse:DIR|TAR``, ``elf:PATH``,
    ``vmcore:PATH`` or ``live``."""
    kind, _, rest = spec.partition(":")
    if kind == "live" and not rest:
        return DrgnMemory(None)
    if not rest:
        raise UsageError(f"--mem {spec!r}: expected raw:PATH[@0xBASE], sparse:DIR, elf:PATH, vmcore:PATH or live")
    if kind == "raw":
        path, base = rest, 0
        if "@" in rest:
            path, _, b = rest.rpartition("@")
            try:
                base = int(b, 0)
            except ValueError:
                raise UsageError(f"--mem {spec!r}: base {b!r} is not a number (decimal or 0x hex)") from None
            if base < 0:
                raise UsageError(f"--mem {spec!r}: base {b!r} is negative (a physical address is 0 or more)")
            if base >= 1 << 64:
                raise UsageError(f"--mem {spec!r}: base {b!r} is beyond 64-bit physical addresses")
        if not path:
            raise UsageError(f"--mem {spec!r}: no file name before '@'")
        img = RawImage(path, base)
        if img.ranges() and img.ranges()[-1][1] > 1 << 64:
            raise UsageError(f"--mem {spec!r}: the image at base 0x{base:x} ends beyond 64-bit physical addresses")
        return img
    if kind == "sparse":
        return SparseDir(rest)
    if kind == "elf":
        return ElfDump(rest)
    if kind == "vmcore":
        return DrgnMemory(rest)
    raise UsageError(f"--mem {spec!r}: unknown source kind {kind!r}")
