"""kexec-metadata (7.1+): the release and kexec count of the previous kernel.

The codec is :mod:`pykho.abi.structs` (``struct kho_kexec_metadata``); this
plugin is the client: kho_init reads the incoming record (``KHO: exec from:``)
and writes its own for the next kernel.
"""

from __future__ import annotations

from typing import Any

from ..abi import structs
from ..errors import KhoDecodeError
from ..profiles import ENOMEM, Profile
from .base import Client

__all__ = ["KexecMetadataClient"]


class KexecMetadataClient(Client):
    node = structs.KHO_METADATA_NODE_NAME
    kind = "kexec-metadata"
    fuzz_family = "kexec_metadata"
    model_name = "kexec-metadata"

    @classmethod
    def decode(cls, blob: bytes, mem: Any, where: Any, profile: Profile | None = None) -> dict[str, Any]:
        md = structs.decode_kexec_metadata(blob, where)
        return {"kind": cls.kind, "version": md.version, "previous_release": md.previous_release,
                "kexec_count": md.kexec_count}

    @classmethod
    def describe(cls, dec: dict[str, Any]) -> list[str]:
        return [f"kexec-metadata v{dec['version']}: previous release {dec['previous_release']!r}, "
                f"kexec count {dec['kexec_count']}"]

    def __init__(self, kernel: Any):
        super().__init__(kernel)
        self.kexec_count_in = 0

    def enabled(self) -> bool:
        return self.k.p.kexec_metadata

    def read_incoming(self) -> structs.KexecMetadata | None:
        """``kho_in_kexec_metadata``: the record and the line printed.  The
        kernel dereferences the address it finds; a record the memory given
        does not hold cannot be predicted (the verdict says so)."""
        err, phys, size = self.k.retrieve_subtree(self.node)
        if err:
            return None
        try:
            data = self.k.read_preserved(phys, min(size or 0, 4096), "kexec-metadata") if size else b""
            md = structs.decode_kexec_metadata(data, phys)
        except KhoDecodeError as e:
            if e.code.startswith("metadata"):
                self.k.printk("KHO: " + e.message)
            else:
                self.status, self.detail = "unknown", f"record at 0x{phys:x} is not in the memory given"
            return None
        self.k.printk(f"KHO: exec from: {md.previous_release} (count {md.kexec_count})")
        return md

    def kho_init(self) -> int:
        k = self.k
        if k.is_kho_boot():
            md = self.read_incoming()
            self.kexec_count_in = md.kexec_count if md else 0
            if self.status is None:
                self.status = "read" if md else "not read"
        meta = structs.KexecMetadata(1, k.release, self.kexec_count_in + 1).pack()
        mphys = k.alloc_preserve(len(meta), "kexec-metadata")
        err = -ENOMEM if not mphys else 0
        if not err:
            k.mem.write(mphys, meta)
            err = k.add_subtree(self.node, mphys, len(meta))
        if err:
            k.printk(f"KHO: failed to initialize kexec-metadata subtree: {err}")
        return err
