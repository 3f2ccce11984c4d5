"""The state every part of a modelled kernel shares, declared once.

:class:`~pykho.model.kernel.Kernel` is assembled from mixins (the outgoing
KHO API in :mod:`~pykho.model.outgoing`, kexec in :mod:`~pykho.model.kexec`);
they all derive from :class:`KernelState`, which names the attributes and
services they use, so no mixin imports the kernel module.
"""

from __future__ import annotations

import random
from typing import Any

from .. import profiles as P
from ..abi import chunks as _chunks
from ..abi import radix, structs
from ..abi import root as _root
from ..clients import Client
from .machine import IntervalSet, Machine, Memblock, PageAllocator, RunBatch, Violation

__all__ = ["KernelState"]


class KernelState:
    """Attributes and services of one modelled kernel (set by ``Kernel.__init__``)."""

    KERNEL_IMAGE_SIZE: int
    m: Machine
    p: P.Profile
    cmdline: str
    params: dict[str, str]
    release: str
    name: str
    arch: str
    kho_debug: bool
    numa: bool
    violations: list[Violation]
    log: list[str]
    kern_reserved: int
    test_kho_max_mem: int
    pages: PageAllocator
    step: str
    kho_enable: bool
    scratch: list[structs.KhoScratch]
    out_fdt: _root.RootFdtPage | None
    out_fdt_phys: int
    radix_tree: radix.RadixTree | None
    tracker: _chunks.ChunkTracker | None
    chunk_pages: list[int]
    finalized: bool
    subtrees: dict[str, tuple[int, int]]
    notifier_subtrees: list[tuple[str, int]]
    preserved: Any
    image: dict[str, Any] | None
    clients: list[Client]
    kho_in_fdt: bytes | None
    kho_in_fdt_phys: int
    kho_in_scratch_phys: int
    populate: Any
    reserved_log: list[tuple[int, int]] | None
    scratch_cfg: tuple[Any, ...]
    scratch_phys: int
    _memmap: Any
    _leaf_runs: dict[int, RunBatch]
    _slab: list[int] | None
    _scratch_key: tuple[structs.KhoScratch, ...] | None
    _scratch_iv: IntervalSet

    @property
    def rng(self) -> random.Random:
        raise NotImplementedError

    @property
    def memblock(self) -> Memblock:
        raise NotImplementedError

    def set_step(self, step: str) -> None:
        raise NotImplementedError

    def printk(self, *lines: str) -> None:
        raise NotImplementedError

    def violation(self, kind: str, start: int, end: int, detail: str) -> None:
        raise NotImplementedError

    def is_kho_boot(self) -> bool:
        raise NotImplementedError

    def panic(self, message: str) -> None:
        raise NotImplementedError

    def spawn(self, profile: Any, cmdline: str, release: str | None, name: str, **kw: Any) -> Any:
        """A new kernel on the same machine (the one kexec boots)."""
        raise NotImplementedError
