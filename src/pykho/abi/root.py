"""The KHO root FDT: ``compatible``, ``preserved-memory-map``, one sub-node per client.

Encoding follows each generation's call sequence exactly:

* A (6.16-6.18): built once at finalize in sequential-write mode:
  ``compatible``, a placeholder ``preserved-memory-map`` (filled last), then
  one sub-node per client in notifier order, each with ``fdt`` = u64 phys.
* B+ (6.19 on): built at ``kho_init`` in sequential-write mode with the map
  property already present (``0`` in B until finalize, the radix root from
  C on); sub-nodes are then added and removed in place in the same page
  (:class:`RootFdtPage`): ``fdt_open_into`` / ``fdt_add_subnode`` (the new
  node goes first) / ``fdt_setprop`` (a new property goes first, so D+'s
  ``blob-size`` precedes ``preserved-data``) / ``fdt_pack``.

Decoding (:func:`decode_root`) is generation-neutral: it reports what is
there; :mod:`pykho.validate` and the model judge it against a profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..errors import EEXIST, ENOMEM, FdtError, KhoDecodeError
from . import fdt as _fdt
from .mem import PhysMemory

__all__ = ["ADDRESS_PROPS", "MEMORY_MAP_PROP", "SIZE_PROP", "RootFdt", "RootFdtPage", "RootWireFormat", "Subtree",
           "build_root_at_boot", "build_root_at_finalize", "decode_root", "read_root_from_memory"]

MEMORY_MAP_PROP = "preserved-memory-map"
PAGE_SIZE = 4096


class RootWireFormat(Protocol):
    """What the encoders of this module need to know of a kernel generation
    (:class:`pykho.profiles.Profile` has it all)."""

    @property
    def compatible(self) -> str:
        """The root node's ``compatible`` string (``kho-v1`` ..)."""

    @property
    def subtree_prop(self) -> str:
        """The sub-node property holding a blob's physical address."""

    @property
    def size_prop(self) -> str | None:
        """The sub-node property holding a blob's size (D+), else None; with
        one, a failed ``kho_add_subtree`` deletes its half-made node."""


def build_root_at_finalize(profile: RootWireFormat, mem_map: int,
                           subtrees: list[tuple[str, int]]) -> tuple[bytes, int]:
    """Generation A's ``kho_finalize`` FDT: (blob, libfdt status)."""
    sw = _fdt.FdtSw(PAGE_SIZE)
    sw.finish_reservemap()
    sw.begin_node("")
    sw.property_string("compatible", profile.compatible)
    sw.property(MEMORY_MAP_PROP, _fdt.p64(0))  # fdt_property_placeholder, filled below
    for name, phys in subtrees:
        sw.begin_node(name)
        sw.property(profile.subtree_prop, _fdt.p64(phys))
        sw.end_node()
    sw.end_node()
    sw.finish()
    if sw.err:
        return b"", sw.err
    page = RootFdtPage(profile, sw.buf)
    page.set_mem_map(mem_map)
    return page.blob(), 0


def build_root_at_boot(profile: RootWireFormat, mem_map: int) -> RootFdtPage:
    """``kho_out_fdt_setup`` (B+): a fresh page with compatible and map."""
    sw = _fdt.FdtSw(PAGE_SIZE)
    sw.finish_reservemap()
    sw.begin_node("")
    sw.property_string("compatible", profile.compatible)
    sw.property(MEMORY_MAP_PROP, _fdt.p64(mem_map))
    sw.end_node()
    sw.finish()
    if sw.err:
        raise FdtError("root FDT", None, sw.err, "kho_out_fdt_setup")
    return RootFdtPage(profile, sw.buf)


class RootFdtPage(_fdt.FdtPage):
    """The outgoing root FDT page of a B+ kernel, edited in place."""

    def __init__(self, profile: RootWireFormat, page: bytes | bytearray) -> None:
        super().__init__(page, PAGE_SIZE)
        self.profile = profile

    def add_subtree(self, name: str, phys: int, size: int | None = None) -> int:
        """``kho_add_subtree``: 0, -EEXIST, -ENOMEM, or (B, C) the raw libfdt
        code of a failed ``fdt_setprop`` with the empty node left behind."""
        p = self.profile
        if self.open_into() < 0:
            return -ENOMEM
        off = self.add_subnode(0, name)
        if off < 0:
            err = -EEXIST if off == -_fdt.FDT_ERR_EXISTS else -ENOMEM
            self.pack()
            return err
        rc = self.setprop(off, p.subtree_prop, _fdt.p64(phys))
        if rc >= 0 and p.size_prop:
            rc = self.setprop(off, p.size_prop, _fdt.p64(size or 0))
        if rc < 0:
            if p.size_prop:          # D+: delete the half-made node, -ENOMEM
                self.del_node(off)
                self.pack()
                return -ENOMEM
            self.pack()              # B, C: node stays, raw libfdt code
            return rc
        self.pack()
        return 0

    def remove_subtree(self, phys: int) -> bool:
        """``kho_remove_subtree``: delete the first child whose address
        property equals ``phys``; True when one was deleted."""
        if self.open_into() < 0:
            return False
        done = False
        for off, _name in list(self.subnodes(0)):
            v, ln = self.getprop(off, self.profile.subtree_prop)
            if v is not None and ln == 8 and _fdt.u64(v) == phys:
                self.del_node(off)
                done = True
                break
        self.pack()
        return done

    def set_mem_map(self, value: int) -> int:
        """Replace the 8-byte map value in place (B's ``kho_update_memory_map``)."""
        return self.setprop_inplace(0, MEMORY_MAP_PROP, _fdt.p64(value))

    def mem_map(self) -> int | None:
        v, ln = self.getprop(0, MEMORY_MAP_PROP)
        return _fdt.u64(v) if v is not None and ln == 8 else None


@dataclass
class Subtree:
    name: str
    phys: int | None           # None: property missing or not 8 bytes
    size: int | None           # blob-size (D+), None when absent or bad
    prop: str | None           # which address property was found
    props: dict[str, bytes] = field(default_factory=dict)

    def as_dict(self) -> dict[str, str | int | None]:
        return {"name": self.name, "phys": self.phys, "size": self.size}


@dataclass
class RootFdt:
    blob: bytes
    header: _fdt.FdtHeader
    compatible: str | None
    compatible_raw: bytes | None
    mem_map: int | None          # None when missing or not 8 bytes
    mem_map_len: int             # length of the property, -1 when missing
    subtrees: list[Subtree]
    tree: _fdt.FdtNode

    def subtree(self, name: str) -> Subtree | None:
        for s in self.subtrees:
            if s.name == name:
                return s
        return None


ADDRESS_PROPS = ("preserved-data", "fdt")
SIZE_PROP = "blob-size"


def decode_root(blob: bytes | bytearray, where: int | str | None = None) -> RootFdt:
    """Decode a root FDT (``fdt_check_full`` first).  Raises FdtError."""
    tree = _fdt.parse(blob, "KHO root FDT", where)
    compat_raw = tree.props.get("compatible")
    mm = tree.props.get(MEMORY_MAP_PROP)
    subs: list[Subtree] = []
    for child in tree.children:
        phys: int | None = None
        prop: str | None = None
        for name in ADDRESS_PROPS:
            v = child.props.get(name)
            if v is not None:
                prop = name
                phys = _fdt.u64(v) if len(v) == 8 else None
                break
        sz = child.props.get(SIZE_PROP)
        subs.append(Subtree(child.name, phys, _fdt.u64(sz) if sz is not None and len(sz) == 8 else None,
                            prop, dict(child.props)))
    return RootFdt(
        blob=bytes(blob[:_fdt.totalsize(blob)]), header=_fdt.FdtHeader.unpack(blob),  # parse checked 40+ bytes
        compatible=tree.prop_str("compatible"), compatible_raw=compat_raw,
        mem_map=_fdt.u64(mm) if mm is not None and len(mm) == 8 else None,
        mem_map_len=len(mm) if mm is not None else -1,
        subtrees=subs, tree=tree)


def read_root_from_memory(mem: PhysMemory, phys: int) -> bytes:
    """The root FDT bytes at ``phys``: the header, then ``totalsize`` bytes
    (capped at one page beyond which the kernel never maps)."""
    head = mem.read(phys, _fdt.FDT_HEADER_SIZE, "KHO root FDT header")
    h = _fdt.header(head)
    if h is None or h.magic != _fdt.FDT_MAGIC:
        return head
    size = min(max(h.totalsize, _fdt.FDT_HEADER_SIZE), _fdt.FDT_READ_CAP)
    try:
        return mem.read(phys, size, "KHO root FDT")
    except KhoDecodeError:
        return mem.read(phys, min(size, PAGE_SIZE), "KHO root FDT")
