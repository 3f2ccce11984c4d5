"""FDT through libfdt, the library the kernel links.

Two halves:

* **Encoding** with the kernel's own call sequences on a fixed buffer:
  :class:`FdtSw` is libfdt's sequential-write mode (``fdt_create`` ...
  ``fdt_finish``), :class:`FdtPage` is the in-place read-write mode the
  kernel uses on its one-page root FDT (``fdt_open_into`` / edit /
  ``fdt_pack``).  Both return libfdt's negative error codes exactly where the
  kernel would see them (``-FDT_ERR_NOSPACE`` when the page is full).
* **Decoding** with the kernel's acceptance rules: :func:`kernel_check_header`
  is ``fdt_check_header`` (what ``kho_populate`` runs), :func:`parse` runs
  ``fdt_check_full`` before anything else so that no libfdt call ever reads
  past the bytes it was given, then returns a plain :class:`FdtNode` tree.

KHO stores integers little-endian (native), not as big-endian cells; use
:func:`u64` / :func:`u32` on property bytes, never ``as_uint64``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

try:
    import libfdt as _libfdt_module  # untyped (pyproject's mypy override): typed by _LibFdt below
except ImportError as exc:  # pragma: no cover - pylibfdt is a hard dependency
    raise ImportError("pykho needs pylibfdt (pip install pylibfdt)") from exc

from ..errors import FdtError, fdt_strerror

__all__ = [
    "FDT_ERR_BADLAYOUT", "FDT_ERR_BADMAGIC", "FDT_ERR_BADOFFSET", "FDT_ERR_BADPATH", "FDT_ERR_BADPHANDLE",
    "FDT_ERR_BADSTATE", "FDT_ERR_BADSTRUCTURE", "FDT_ERR_BADVERSION", "FDT_ERR_EXISTS", "FDT_ERR_NOSPACE",
    "FDT_ERR_NOTFOUND", "FDT_ERR_TRUNCATED", "FDT_HEADER_SIZE", "FDT_MAGIC", "FDT_READ_CAP", "FDT_V17_HEADER",
    "MAX_DEPTH", "BuildNode", "BuildProp", "FdtHeader", "FdtNode", "FdtPage", "FdtSw", "build", "check_full",
    "fdt_strerror", "getprop", "header", "kernel_check_header", "node_check_compatible", "p32", "p64", "parse",
    "subnode_offset", "totalsize", "u32", "u64",
]

#: pylibfdt's ``[value, ..., length]`` results (a list of mixed types), or a
#: negative error code
_SwigResult = list[Any] | int


class _LibFdt(Protocol):
    """The part of pylibfdt pykho calls, with the types it returns."""

    def fdt_check_header(self, fdt: bytearray) -> int: ...
    def fdt_check_full(self, fdt: bytearray, bufsize: int) -> int: ...
    def fdt_totalsize(self, fdt: bytearray) -> int: ...
    def fdt_off_dt_struct(self, fdt: bytearray) -> int: ...
    def fdt_first_property_offset(self, fdt: bytearray, nodeoffset: int) -> int: ...
    def fdt_next_property_offset(self, fdt: bytearray, offset: int) -> int: ...
    def fdt_get_property_by_offset(self, fdt: bytearray, offset: int) -> _SwigResult: ...
    def fdt_first_subnode(self, fdt: bytearray, offset: int) -> int: ...
    def fdt_next_subnode(self, fdt: bytearray, offset: int) -> int: ...
    def fdt_get_name(self, fdt: bytearray, nodeoffset: int) -> list[Any]: ...
    def fdt_getprop(self, fdt: bytearray, nodeoffset: int, name: str) -> _SwigResult: ...
    def fdt_subnode_offset(self, fdt: bytearray, parentoffset: int, name: str) -> int: ...
    def fdt_node_check_compatible(self, fdt: bytearray, nodeoffset: int, compatible: str) -> int: ...
    def fdt_create(self, buf: bytearray, bufsize: int) -> int: ...
    def fdt_finish_reservemap(self, fdt: bytearray) -> int: ...
    def fdt_begin_node(self, fdt: bytearray, name: str) -> int: ...
    def fdt_property_stub(self, fdt: bytearray, name: str, val: bytes, length: int) -> int: ...
    def fdt_property_string(self, fdt: bytearray, name: str, val: str) -> int: ...
    def fdt_end_node(self, fdt: bytearray) -> int: ...
    def fdt_finish(self, fdt: bytearray) -> int: ...
    def fdt_open_into(self, fdt: bytearray, buf: bytearray, bufsize: int) -> int: ...
    def fdt_add_subnode(self, fdt: bytearray, parentoffset: int, name: str) -> int: ...
    def fdt_setprop(self, fdt: bytearray, nodeoffset: int, name: str, val: bytes, length: int) -> int: ...
    def fdt_del_node(self, fdt: bytearray, nodeoffset: int) -> int: ...
    def fdt_pack(self, fdt: bytearray) -> int: ...


_libfdt: _LibFdt = _libfdt_module

FDT_MAGIC = 0xD00DFEED
FDT_HEADER_SIZE = 40
FDT_V17_HEADER = 40

# libfdt error numbers (positive; functions return them negated)
FDT_ERR_NOTFOUND = 1
FDT_ERR_EXISTS = 2
FDT_ERR_NOSPACE = 3
FDT_ERR_BADOFFSET = 4
FDT_ERR_BADPATH = 5
FDT_ERR_BADPHANDLE = 6
FDT_ERR_BADSTATE = 7
FDT_ERR_TRUNCATED = 8
FDT_ERR_BADMAGIC = 9
FDT_ERR_BADVERSION = 10
FDT_ERR_BADSTRUCTURE = 11
FDT_ERR_BADLAYOUT = 12

#: deepest node nesting parse() follows (it recurses once per level)
MAX_DEPTH = 200

#: never read more than this many bytes of an FDT from untrusted memory
FDT_READ_CAP = 1 << 20


def u64(data: bytes | bytearray | memoryview) -> int:
    v: int = struct.unpack("<Q", bytes(data))[0]
    return v


def u32(data: bytes | bytearray | memoryview) -> int:
    v: int = struct.unpack("<I", bytes(data))[0]
    return v


def p64(value: int) -> bytes:
    return struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF)


def p32(value: int) -> bytes:
    return struct.pack("<I", value & 0xFFFFFFFF)


@dataclass
class FdtHeader:
    magic: int
    totalsize: int
    off_dt_struct: int
    off_dt_strings: int
    off_mem_rsvmap: int
    version: int
    last_comp_version: int
    boot_cpuid_phys: int
    size_dt_strings: int
    size_dt_struct: int

    @classmethod
    def unpack(cls, data: bytes | bytearray) -> FdtHeader:
        return cls(*struct.unpack(">10I", bytes(data[:40])))

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def header(blob: bytes | bytearray) -> FdtHeader | None:
    """The big-endian header fields, or None when fewer than 40 bytes."""
    if len(blob) < FDT_HEADER_SIZE:
        return None
    return FdtHeader.unpack(blob)


def kernel_check_header(blob: bytes | bytearray) -> int:
    """``fdt_check_header()`` as the kernel runs it: 0 or a negative code.

    It only looks at the header (the kernel maps one page and trusts
    ``totalsize``).  Fewer than 40 bytes cannot be checked by libfdt without
    reading past the buffer; the page the kernel maps is always 4 KiB, so a
    shorter input is reported as ``-FDT_ERR_TRUNCATED``.
    """
    if len(blob) < FDT_HEADER_SIZE:
        return -FDT_ERR_TRUNCATED
    return _libfdt.fdt_check_header(bytearray(blob[:FDT_HEADER_SIZE]))


def check_full(blob: bytes | bytearray) -> int:
    """``fdt_check_full(blob, len(blob))``: 0 or a negative libfdt code."""
    if len(blob) < FDT_HEADER_SIZE:
        return -FDT_ERR_TRUNCATED
    buf = bytearray(blob)
    err = _libfdt.fdt_check_header(buf)
    if err:
        return err
    if _libfdt.fdt_totalsize(buf) > len(buf):
        return -FDT_ERR_TRUNCATED
    return _libfdt.fdt_check_full(buf, len(buf))


@dataclass
class FdtNode:
    """One node of a decoded FDT: properties in FDT order, children in FDT order."""

    name: str
    props: dict[str, bytes] = field(default_factory=dict)
    children: list[FdtNode] = field(default_factory=list)
    offset: int = 0

    def child(self, name: str) -> FdtNode | None:
        for c in self.children:
            if c.name == name:
                return c
        return None

    def prop_u64(self, name: str) -> int | None:
        v = self.props.get(name)
        return u64(v) if v is not None and len(v) == 8 else None

    def prop_str(self, name: str) -> str | None:
        v = self.props.get(name)
        if v is None:
            return None
        return v.split(b"\0", 1)[0].decode("utf-8", "replace")

    def walk(self, path: str = "") -> Iterator[tuple[str, FdtNode]]:
        here = path + "/" + self.name if self.name else (path or "/")
        yield here, self
        for c in self.children:
            yield from c.walk(here if here != "/" else "")


def _name(x: str | bytes | bytearray) -> str:
    return x if isinstance(x, str) else bytes(x).decode("utf-8", "replace")


def parse(blob: bytes | bytearray, structure: str = "FDT", where: int | str | None = None,
          max_nodes: int = 100000) -> FdtNode:
    """Decode an untrusted blob into an :class:`FdtNode` tree.

    ``fdt_check_full`` runs first on exactly the bytes given; any failure
    raises :class:`FdtError` with libfdt's code.  Trailing bytes after
    ``totalsize`` are ignored, as libfdt does.
    """
    err = check_full(blob)
    if err:
        raise FdtError(structure, where, err)
    buf = bytearray(blob[:_libfdt.fdt_totalsize(bytearray(blob[:FDT_HEADER_SIZE]))])
    count = [0]

    def node_at(off: int, name: str, depth: int = 0) -> FdtNode:
        count[0] += 1
        if count[0] > max_nodes:
            raise FdtError(structure, where, -FDT_ERR_BADSTRUCTURE, f"more than {max_nodes} nodes")
        if depth > MAX_DEPTH:
            raise FdtError(structure, where, -FDT_ERR_BADSTRUCTURE, f"nodes nested deeper than {MAX_DEPTH}")
        node = FdtNode(name=name, offset=off)
        poff = _libfdt.fdt_first_property_offset(buf, off)
        while poff >= 0:
            try:
                got = _libfdt.fdt_get_property_by_offset(buf, poff)
            except (SystemError, UnicodeDecodeError):
                raise FdtError(structure, where, -FDT_ERR_BADSTRUCTURE,
                               f"property at struct offset {poff} of node {name!r}: name is not UTF-8 text") from None
            if not isinstance(got, list):
                raise FdtError(structure, where, int(got), f"property at struct offset {poff}")
            pname, pval = _name(got[0]), bytes(got[1]) if got[1] is not None else b""
            node.props.setdefault(pname, pval)
            poff = _libfdt.fdt_next_property_offset(buf, poff)
        if poff != -FDT_ERR_NOTFOUND:
            raise FdtError(structure, where, poff, f"properties of node {name!r}")
        coff = _libfdt.fdt_first_subnode(buf, off)
        while coff >= 0:
            try:
                got = _libfdt.fdt_get_name(buf, coff)
            except (SystemError, UnicodeDecodeError):
                raise FdtError(structure, where, -FDT_ERR_BADSTRUCTURE,
                               f"node at struct offset {coff}: name is not UTF-8 text") from None
            cname = _name(got[0]) if isinstance(got, list) else "?"
            node.children.append(node_at(coff, cname, depth + 1))
            coff = _libfdt.fdt_next_subnode(buf, coff)
        if coff != -FDT_ERR_NOTFOUND:
            raise FdtError(structure, where, coff, f"subnodes of node {name!r}")
        return node

    return node_at(0, "")


def node_check_compatible(blob: bytes | bytearray, offset: int, compatible: str) -> int:
    """``fdt_node_check_compatible``: 0 match, 1 no match, <0 error.

    The blob must already have passed :func:`kernel_check_header` and hold
    ``totalsize`` bytes (libfdt bounds its reads by ``totalsize``).
    """
    return _libfdt.fdt_node_check_compatible(bytearray(blob), offset, compatible)


def getprop(blob: bytes | bytearray, offset: int, name: str) -> tuple[bytes | None, int]:
    """``fdt_getprop``: (value, length) or (None, negative error)."""
    got = _libfdt.fdt_getprop(bytearray(blob), offset, name)
    if isinstance(got, list):              # [value, len], or [None, -err] when missing
        return (bytes(got[0]) if got[0] is not None else None), got[1]
    return None, int(got)


def subnode_offset(blob: bytes | bytearray, parent: int, name: str) -> int:
    return _libfdt.fdt_subnode_offset(bytearray(blob), parent, name)


def totalsize(blob: bytes | bytearray) -> int:
    h = header(blob)
    return h.totalsize if h else 0


class FdtSw:
    """libfdt sequential-write mode in a fixed buffer, as the kernel uses it.

    Every method returns libfdt's result (0 or a negative code); the kernel
    ORs them together, and so does :meth:`err`.
    """

    def __init__(self, size: int = 4096) -> None:
        self.buf = bytearray(size)
        self.err = 0
        self._rc(_libfdt.fdt_create(self.buf, size))

    def _rc(self, rc: int) -> int:
        self.err |= rc
        return rc

    def finish_reservemap(self) -> int:
        return self._rc(_libfdt.fdt_finish_reservemap(self.buf))

    def begin_node(self, name: str) -> int:
        return self._rc(_libfdt.fdt_begin_node(self.buf, name))

    def property(self, name: str, value: bytes) -> int:
        return self._rc(_libfdt.fdt_property_stub(self.buf, name, bytes(value), len(value)))

    def property_string(self, name: str, value: str) -> int:
        return self._rc(_libfdt.fdt_property_string(self.buf, name, value))

    def end_node(self) -> int:
        return self._rc(_libfdt.fdt_end_node(self.buf))

    def finish(self) -> int:
        return self._rc(_libfdt.fdt_finish(self.buf))

    def blob(self) -> bytes:
        """The finished FDT (``totalsize`` bytes)."""
        return bytes(self.buf[:_libfdt.fdt_totalsize(self.buf)])


class FdtPage:
    """A root FDT living in a fixed page and edited in place (B+ kernels).

    ``kho_add_subtree`` / ``kho_remove_subtree`` run ``fdt_open_into(fdt,
    fdt, PAGE_SIZE)``, edit, then ``fdt_pack``: after the first edit the
    header area shrinks from 48 to 40 bytes and bytes past ``totalsize``
    keep whatever was there.
    """

    def __init__(self, page: bytes | bytearray, size: int = 4096) -> None:
        self.buf = bytearray(page[:size]) + bytearray(max(0, size - len(page)))
        self.size = size

    def open_into(self) -> int:
        return _libfdt.fdt_open_into(self.buf, self.buf, self.size)

    def add_subnode(self, parent: int, name: str) -> int:
        return _libfdt.fdt_add_subnode(self.buf, parent, name)

    def setprop(self, node: int, name: str, value: bytes) -> int:
        return _libfdt.fdt_setprop(self.buf, node, name, bytes(value), len(value))

    def setprop_inplace(self, node: int, name: str, value: bytes) -> int:
        off = self.find_prop_value(node, name)
        if off < 0:
            return off
        got = _libfdt.fdt_getprop(self.buf, node, name)
        if not isinstance(got, list) or got[1] != len(value):
            return -FDT_ERR_NOSPACE
        self.buf[off:off + len(value)] = value
        return 0

    def find_prop_value(self, node: int, name: str) -> int:
        """Offset in the buffer of a property's value bytes."""
        poff = _libfdt.fdt_first_property_offset(self.buf, node)
        base = _libfdt.fdt_off_dt_struct(self.buf)
        while poff >= 0:
            got = _libfdt.fdt_get_property_by_offset(self.buf, poff)
            if isinstance(got, list) and _name(got[0]) == name:
                return base + poff + 12
            poff = _libfdt.fdt_next_property_offset(self.buf, poff)
        return poff

    def del_node(self, node: int) -> int:
        return _libfdt.fdt_del_node(self.buf, node)

    def pack(self) -> int:
        return _libfdt.fdt_pack(self.buf)

    def subnode_offset(self, parent: int, name: str) -> int:
        return _libfdt.fdt_subnode_offset(self.buf, parent, name)

    def subnodes(self, parent: int = 0) -> Iterator[tuple[int, str]]:
        off = _libfdt.fdt_first_subnode(self.buf, parent)
        while off >= 0:
            try:
                yield off, _name(_libfdt.fdt_get_name(self.buf, off)[0])
            except (SystemError, UnicodeDecodeError):
                yield off, "?"
            off = _libfdt.fdt_next_subnode(self.buf, off)

    def getprop(self, node: int, name: str) -> tuple[bytes | None, int]:
        got = _libfdt.fdt_getprop(self.buf, node, name)
        if isinstance(got, list):
            return (bytes(got[0]) if got[0] is not None else None), got[1]
        return None, int(got)

    def totalsize(self) -> int:
        return _libfdt.fdt_totalsize(self.buf)

    def blob(self) -> bytes:
        return bytes(self.buf[:self.totalsize()])


#: a property of :func:`build`: string values are written with
#: ``fdt_property_string``, bytes with ``fdt_property``
BuildProp = tuple[str, bytes | str]
#: a node of :func:`build`: ``(name, props)`` or ``(name, props, children)``
BuildNode = tuple[str, Sequence[BuildProp]] | tuple[str, Sequence[BuildProp], Sequence[Any]]


def build(root_props: Sequence[BuildProp], children: Sequence[BuildNode] = (),
          size: int = 4096) -> tuple[bytes, int]:
    """Sequential-write an FDT: properties of ``/`` then child nodes.

    ``children`` is a list of ``(name, props, [grandchildren])`` or
    ``(name, props)``; string values are written with ``fdt_property_string``
    and bytes with ``fdt_property``, in the order given.  Returns the blob and
    the ORed libfdt status.
    """
    sw = FdtSw(size)
    sw.finish_reservemap()
    sw.begin_node("")

    def props(items: Sequence[BuildProp]) -> None:
        for name, value in items:
            if isinstance(value, str):
                sw.property_string(name, value)
            else:
                sw.property(name, value)

    def nodes(items: Sequence[BuildNode]) -> None:
        for item in items:
            name, p = item[0], item[1]
            sw.begin_node(name)
            props(p)
            if len(item) > 2:
                nodes(item[2])
            sw.end_node()

    props(root_props)
    nodes(children)
    sw.end_node()
    sw.finish()
    return (sw.blob() if sw.err == 0 else b""), sw.err
