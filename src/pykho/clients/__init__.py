"""KHO clients as plugins: one module per client, one registry.

Every report, the model, handover loading and the fuzzer iterate
:data:`REGISTRY` (in the order the kernel runs its clients' code); nothing
outside this package names a client.  Adding a client is adding a module
with a :class:`~pykho.clients.base.Client` subclass and listing it here.
"""

from __future__ import annotations

from typing import Any

from ..errors import KhoDecodeError
from ..profiles import Profile
from .base import Client, KernelAPI, KernelPanic, Quirk
from .common import read_blocks
from .generic import GenericClient
from .kexec_metadata import KexecMetadataClient
from .luo import (
    LUO_ABI_COMPATIBLE,
    LUO_FILE_SER,
    LUO_FLB_HEADER,
    LUO_FLB_SER,
    LUO_KHO_ENTRY_NAME,
    LUO_SER,
    LUO_SESSION_SER,
    MEMFD_FOLIO_SER,
    MEMFD_LUO_SER,
    Luo,
    LuoClient,
    LuoFile,
    LuoSession,
    decode_luo,
    decode_memfd,
    encode_luo_ser,
)
from .memblock import (
    MEMBLOCK_COMPATIBLE,
    MEMBLOCK_KHO_FDT,
    RESERVE_MEM_COMPATIBLE,
    MemblockClient,
    ReserveMem,
    decode_memblock,
    encode_memblock,
)
from .test_kho import (
    KHO_TEST_COMPAT,
    KHO_TEST_FDT,
    KHO_TEST_MAGIC,
    KhoTest,
    TestKhoClient,
    csum_partial,
    decode_kho_test,
    encode_kho_test,
)
from .vmalloc_test import VmallocTestClient

__all__ = ["Client", "KernelAPI", "KernelPanic", "Quirk", "REGISTRY", "GenericClient", "by_node", "by_model_name",
           "decode_subblob", "DEFAULT_MODEL_CLIENTS", "read_blocks",
           # codecs
           "LUO_ABI_COMPATIBLE", "LUO_FILE_SER", "LUO_FLB_HEADER", "LUO_FLB_SER", "LUO_KHO_ENTRY_NAME", "LUO_SER",
           "LUO_SESSION_SER", "MEMFD_FOLIO_SER", "MEMFD_LUO_SER", "Luo", "LuoFile", "LuoSession", "decode_luo",
           "decode_memfd", "encode_luo_ser", "MEMBLOCK_COMPATIBLE", "MEMBLOCK_KHO_FDT", "RESERVE_MEM_COMPATIBLE",
           "ReserveMem", "decode_memblock", "encode_memblock", "KHO_TEST_COMPAT", "KHO_TEST_FDT", "KHO_TEST_MAGIC",
           "KhoTest", "csum_partial", "decode_kho_test", "encode_kho_test",
           "KexecMetadataClient", "LuoClient", "MemblockClient", "TestKhoClient", "VmallocTestClient"]

#: every known client, in the order a kernel runs their code within a phase
REGISTRY: tuple[type[Client], ...] = (KexecMetadataClient, TestKhoClient, LuoClient, MemblockClient,
                                      VmallocTestClient)

#: the clients a modelled kernel runs unless told otherwise (the vmtest kernel's)
DEFAULT_MODEL_CLIENTS: tuple[str, ...] = ("kexec-metadata", "test_kho", "memblock", "luo", "vmalloc-test")

_BY_NODE = {c.node: c for c in REGISTRY}
_BY_MODEL = {c.model_name: c for c in REGISTRY}


def by_node(name: str) -> type[Client]:
    """The plugin that owns sub-node ``name`` (:class:`GenericClient` if none)."""
    return _BY_NODE.get(name, GenericClient)


def by_model_name(name: str) -> type[Client] | None:
    return _BY_MODEL.get(name)


def decode_subblob(name: str, blob: bytes | None, mem: Any, where: Any,
                   profile: Profile | None = None) -> dict[str, Any]:
    """A sub-blob decoded by its plugin; ``{"error", "code"}`` when it does not decode."""
    if blob is None:
        return {"error": "blob not available", "code": "blob-missing"}
    try:
        return by_node(name).decode(blob, mem, where, profile)
    except KhoDecodeError as e:
        return {"error": str(e), "code": e.code}
