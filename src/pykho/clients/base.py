"""What a KHO client plugin is, and what it may ask of a kernel.

A client owns one sub-node of the root FDT (its ``node`` name).  Its plugin
class carries, in one place:

* the **codec** of its blob (encoders write the bytes its kernel code writes;
  decoders return plain data and raise :class:`~pykho.errors.KhoDecodeError`
  naming the structure and address),
* its **description** for ``kho inspect`` (:meth:`Client.decode` gives the
  JSON form, :meth:`Client.describe` the text lines),
* what the memory given must hold for the model to predict its restore
  (:meth:`Client.predictable`), and its debugfs quirks,
* its **kernel code** in the model: an instance is bound to one modelled
  kernel (:class:`KernelAPI`) and the kernel calls its hooks at the points of
  the boot where the real client runs (``early_param``, ``early_initcall``,
  ``kho_init``, ``initcall``, ``late_initcall``, ``finalize``, ``reboot``),
* the name of its fuzz family.

Clients never import the model: the kernel they run in is the
:class:`KernelAPI` protocol, which :class:`pykho.model.kernel.Kernel`
implements.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from ..profiles import Profile

__all__ = ["Client", "KernelAPI", "KernelPanic", "Quirk"]


class KernelPanic(Exception):
    """The modelled kernel called panic(); its boot stops here."""


@dataclass
class Quirk:
    """A known oddity of the real kernel met while loading a handover."""

    code: str
    message: str


class KernelAPI(Protocol):
    """The kernel services a client's model code uses (the KHO API and a few
    core facilities), as :class:`pykho.model.kernel.Kernel` provides them."""

    p: Profile
    release: str
    #: the architecture (``x86``, ``arm64``): arch-specific rules a client follows
    arch: str
    kho_enable: bool
    kho_in_fdt: bytes | None
    subtrees: dict[str, tuple[int, int]]
    test_kho_max_mem: int
    params: dict[str, str]

    @property
    def mem(self) -> Any: ...
    @property
    def rng(self) -> Any: ...
    @property
    def memblock(self) -> Any: ...
    def printk(self, *lines: str) -> None: ...
    def params_all(self, name: str) -> list[str]: ...
    def is_kho_boot(self) -> bool: ...
    def retrieve_subtree(self, name: str) -> tuple[int, int, int | None]: ...
    def read_preserved(self, phys: int, size: int, what: str) -> bytes: ...
    def check_preserved(self, phys: int, size: int, what: str) -> bool: ...
    def restore_folio(self, phys: int) -> int | None: ...
    def alloc_pages(self, order: int) -> int: ...
    def preserve_folio(self, phys: int, order: int, owner: str = ...) -> int: ...
    def preserve_pages(self, phys: int, nr: int, owner: str = ...) -> int: ...
    def unpreserve_pages(self, phys: int, nr: int) -> int: ...
    def remove_subtree(self, phys: int) -> bool: ...
    def alloc_preserve(self, size: int, owner: str) -> int: ...
    def preserve_vmalloc(self, data_pages: list[int], owner: str) -> Any: ...
    def add_subtree(self, name: str, phys: int, size: int) -> int: ...
    def panic(self, message: str) -> None: ...
    def violation(self, kind: str, start: int, end: int, detail: str) -> None: ...


class Client:
    """Base of every client plugin (see the module docstring)."""

    #: the sub-node name in the root FDT
    node: ClassVar[str] = ""
    #: the ``kind`` of its decoded form in ``kho inspect -j``
    kind: ClassVar[str] = ""
    #: the fuzz family that exercises its decoder, if any
    fuzz_family: ClassVar[str | None] = None
    #: the ``clients=`` name that enables its model code in a kernel
    model_name: ClassVar[str] = ""

    # ---------------------------------------------------------------- decode
    @classmethod
    def decode(cls, blob: bytes, mem: Any, where: Any, profile: Profile | None = None) -> dict[str, Any]:
        """The decoded blob as plain data (``{"kind": ...}``)."""
        return {"kind": "raw", "bytes": len(blob)}

    @classmethod
    def describe(cls, dec: dict[str, Any]) -> list[str]:
        """Text lines for ``kho inspect`` (without the leading ``# ``)."""
        return []

    @classmethod
    def predictable(cls, dec: dict[str, Any], mem: Any) -> str | None:
        """None when ``mem`` holds what this client's restore reads, else why
        its restore cannot be predicted from it."""
        return None

    @classmethod
    def quirks(cls, blob: bytes | None, direction: str, have_memory: bool) -> list[Quirk]:
        """What the real kernel's debugfs shows of this client that needs
        explaining (``direction`` is ``out`` or ``in``)."""
        return []

    @classmethod
    def expected_difference(cls, debugfs_copy: bytes, in_memory: bytes) -> Quirk | None:
        """Why a debugfs copy of this client's blob may differ from memory in
        normal operation (a quirk to report as info), None when it may not."""
        return None

    # ----------------------------------------------------------------- model
    def __init__(self, kernel: KernelAPI):
        self.k = kernel
        #: what happened to this client in this kernel, for the verdict:
        #: None (did not run), or a short phrase ("restore succeeded", ...)
        self.status: str | None = None
        #: why, when the status is a failure (one line, the kernel's terms)
        self.detail: str = ""
        #: restore outcome: True / False, None when nothing was restored
        self.restored: bool | None = None

    def enabled(self) -> bool:
        """Whether this client's code exists in this kernel's generation."""
        return True

    def early_param(self) -> None:
        """setup_arch time, after kho_populate (memblock is up)."""

    def early_initcall(self) -> None:
        """Before kho_init (may raise :class:`KernelPanic`)."""

    def kho_init(self) -> int:
        """Inside kho_init, after the outgoing FDT exists: 0 or -errno (an
        error takes kho_init's error path)."""
        return 0

    def initcall(self) -> None:
        """A device/late initcall after kho_init (restore or save)."""

    def late_initcall(self) -> None:
        """After the ordinary initcalls (publish state for the next kernel)."""

    def after_late(self) -> None:
        """A late initcall linked after every client's ``late_initcall``
        (mm/ after kernel/)."""

    def finalize(self) -> None:
        """6.16-6.18 finalize notifier: publish now."""

    def reboot(self) -> None:
        """kernel_kexec, right before the jump."""
