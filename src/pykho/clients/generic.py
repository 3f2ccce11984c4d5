"""A sub-node no plugin knows: its blob is shown by size (or as an FDT)."""

from __future__ import annotations

from typing import Any

from ..abi import fdt as _fdt
from ..profiles import Profile
from .base import Client

__all__ = ["GenericClient"]


class GenericClient(Client):
    node = ""
    kind = "raw"

    @classmethod
    def decode(cls, blob: bytes, mem: Any, where: Any, profile: Profile | None = None) -> dict[str, Any]:
        if blob[:4] == b"\xd0\x0d\xfe\xed":
            tree = _fdt.parse(blob, "sub-FDT", where)
            return {"kind": "fdt", "compatible": tree.prop_str("compatible")}
        return {"kind": "raw", "bytes": len(blob)}

    @classmethod
    def describe(cls, dec: dict[str, Any]) -> list[str]:
        return [dec["kind"] + (f" {dec['compatible']}" if dec.get("compatible") else "")]
