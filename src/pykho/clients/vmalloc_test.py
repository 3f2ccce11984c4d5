"""``vmalloc-test``: a vmalloc area preserved with ``kho_preserve_vmalloc``.

Not a kernel module: the client the model's scenarios use to exercise the
vmalloc preservation API (6.18+).  Its sub-node's blob is the 16-byte
``struct kho_vmalloc``; each data page starts with a marker and its index.
"""

from __future__ import annotations

import struct
from typing import Any

from ..abi import structs
from ..errors import KhoDecodeError
from ..profiles import ENOMEM, Profile
from .base import Client

__all__ = ["VMALLOC_TEST_NODE", "VmallocTestClient"]

VMALLOC_TEST_NODE = "vmalloc-test"
_MARK = 0x564D414C4C4F4321


class VmallocTestClient(Client):
    node = VMALLOC_TEST_NODE
    kind = "vmalloc"
    fuzz_family = "vmalloc"
    model_name = "vmalloc-test"

    @classmethod
    def decode(cls, blob: bytes, mem: Any, where: Any, profile: Profile | None = None) -> dict[str, Any]:
        desc = structs.KhoVmalloc.unpack(blob[:16], where)
        out: dict[str, Any] = {"kind": cls.kind, "vmalloc": desc.__dict__}
        if mem is not None:
            blocks, chunks = structs.decode_vmalloc(mem, desc, where)
            out["pages"], out["chunk_pages"] = len(blocks), len(chunks)
        return out

    @classmethod
    def describe(cls, dec: dict[str, Any]) -> list[str]:
        v = dec["vmalloc"]
        return [f"vmalloc area: {v.get('total_pages', '?')} pages, order {v.get('order', '?')}"]

    def preserve(self, n: int) -> int:
        """Allocate ``n`` marked pages, preserve them as a vmalloc area, and
        publish its descriptor under ``vmalloc-test``: 0 or -errno."""
        k = self.k
        pages = []
        for i in range(n):
            pg = k.alloc_pages(0)
            if not pg:
                return -ENOMEM
            k.mem.write(pg, struct.pack("<QQ", _MARK, i))
            pages.append(pg)
        desc = k.preserve_vmalloc(pages, "vmalloc area")
        blob_phys = k.alloc_preserve(16, "vmalloc descriptor") if desc else 0
        if not blob_phys:
            return -ENOMEM
        k.mem.write(blob_phys, desc.pack())
        return k.add_subtree(self.node, blob_phys, 16)

    def restore(self) -> bool:
        """``kho_restore_vmalloc`` and a check of every page's marker."""
        k = self.k
        err, phys, size = k.retrieve_subtree(self.node)
        ok = False
        if not err and k.restore_folio(phys) is not None:
            try:
                desc = structs.KhoVmalloc.unpack(k.mem.read(phys, 16))
                blocks, chunks = structs.decode_vmalloc(k.mem, desc)
            except KhoDecodeError as e:      # kho_restore_vmalloc fails on what it finds
                k.printk(f"vmalloc-test: kho_restore_vmalloc fails: {e.message}")
                blocks, chunks = [], []
                self.detail = e.message
            else:
                ok = all(k.restore_folio(p) is not None for p in blocks + chunks) and all(
                    k.mem.read(p, 16) == struct.pack("<QQ", _MARK, i) for i, p in enumerate(blocks))
        k.printk(f"vmalloc-test: restore {'succeeded' if ok else 'failed'}")
        self.restored = ok
        self.status = "restore succeeded" if ok else "restore failed"
        return ok
