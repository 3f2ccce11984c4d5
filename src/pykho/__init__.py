"""pykho: userspace toolkit for Linux Kexec HandOver (KHO).

The supported Python surface is what ``__all__`` lists (docs/API.md shows it
at work)::

    import pykho
    ho = pykho.open()                        # the bundled real Linux 7.2.13 handover
    rep = pykho.inspect(ho)                  # tree, scratch, sub-blobs, clients: a dict
    for phys, order in pykho.blocks(ho):     # preserved blocks, in the kernel's walk order
        ...
    v = pykho.validate(ho, target="7.2")     # findings and the target kernel's verdict

Importing pykho costs nothing beyond this module: every function imports
what it needs when called.  Errors on bad input are :class:`KhoError`
(:class:`KhoDecodeError` for bytes that do not decode, :class:`UsageError`
for an unusable argument), each naming the file or address and what was
wrong.
"""

from __future__ import annotations

from ._version import __version__

#: typing is not imported at run time (it alone would cost more than the rest of ``import pykho``)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from array import array
    from collections.abc import Iterator
    from typing import Any

    from . import profiles as profiles
    from .errors import KhoDecodeError, KhoError, UsageError
    from .handover import Handover
    from .profiles import Profile

__all__ = ["__version__", "Handover", "KhoDecodeError", "KhoError", "UsageError", "block_arrays", "blocks", "inspect",
           "open", "profiles", "simulate", "validate"]

_LAZY = {"Handover": ("handover", "Handover"), "KhoError": ("errors", "KhoError"),
         "KhoDecodeError": ("errors", "KhoDecodeError"), "UsageError": ("errors", "UsageError")}


def __getattr__(name: str) -> Any:
    """``pykho.Handover``, the error classes and ``pykho.profiles`` (the
    generations: ``PROFILES``, ``get_profile``), imported on first use."""
    import importlib
    if name == "profiles":
        return importlib.import_module(".profiles", __name__)
    if name in _LAZY:
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module("." + mod, __name__), attr)
    raise AttributeError(f"module 'pykho' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _bundled() -> tuple[str, str]:
    import os
    d = os.path.join(os.path.dirname(__file__), "data", "linux-7.2-luo")
    return os.path.join(d, "debugfs", "kho", "out"), "sparse:" + os.path.join(d, "ram.sparse.tar.xz")


def _profile(p: str | Profile | None, what: str) -> Profile | None:
    if p is None:
        return None
    from .errors import UsageError
    from .profiles import PROFILES, get_profile
    try:
        return get_profile(p)
    except UsageError:
        raise UsageError(f"{what} {p!r}: unknown kernel generation; known: {', '.join(PROFILES)}") from None


def open(path: str | None = None, mem: Any = None, fdt_phys: int | None = None,
         iomem: list[tuple[int, int]] | None = None) -> Handover:
    """Open a handover.

    ``path`` is a copy of ``/sys/kernel/debug/kho`` (or its ``out/`` or
    ``in/``) or a root FDT file; ``mem`` a memory source spec
    (``"raw:PATH[@0xBASE]"``, ``"sparse:DIR|TAR"``, ``"elf:PATH"``,
    ``"vmcore:PATH"``, ``"live"``) or an object with ``read``/``contains``/
    ``ranges`` (:class:`pykho.abi.mem.PhysMemory`); ``fdt_phys`` the root
    FDT's physical address in ``mem`` (default: found); ``iomem`` System RAM
    ranges, to doubt a root FDT found outside them.  With neither ``path``
    nor ``mem``: the bundled handover of a real Linux 7.2.13 kernel (its
    debugfs copy and RAM extract)."""
    from .handover import load
    if path is None and mem is None:
        path, mem = _bundled()
    if isinstance(mem, str):
        from .memory import open_source
        mem = open_source(mem)
    return load(path, mem, fdt_phys, iomem=iomem)


def inspect(ho: Handover, profile: str | Profile | None = None) -> dict[str, Any]:
    """What ``ho`` holds, as ``kho inspect -j`` prints it: ``compatible``,
    ``generation``, ``fdt``, ``subtrees`` (each with its client's
    ``decoded`` view), ``scratch``, ``summary`` and ``metadata`` of the
    preserved map (with memory), ``needs_memory``, ``quirks``."""
    from .reports.inspect import inspect as _inspect
    return _inspect(ho, _profile(profile, "profile"))


def blocks(ho: Handover, profile: str | Profile | None = None) -> Iterator[tuple[int, int]]:
    """Every preserved block ``(phys, order)`` in the kernel's walk order,
    one map leaf at a time (constant memory).  Nothing without memory."""
    from .reports.inspect import iter_blocks
    return iter_blocks(ho, _profile(profile, "profile"))


def block_arrays(ho: Handover, profile: str | Profile | None = None) -> dict[int, Any]:
    """The preserved blocks as one array of physical addresses per order
    (in walk order): ``numpy.uint64`` arrays when numpy is installed, else
    ``array.array('Q')``."""
    from .handover import detect_generation, map_walker
    prof = _profile(profile, "profile") or detect_generation(ho)[0]
    r = ho.tree
    parts: dict[int, list[Any]] = {}
    if ho.mem is not None and r.mem_map and prof is not None and ho.partial is None:
        for order, physs in map_walker(prof, ho.mem, r.mem_map).leaves():
            parts.setdefault(order, []).append(physs)
    try:
        import numpy as np
    except ImportError:
        return {o: _qarray(ps) for o, ps in sorted(parts.items())}
    return {o: np.concatenate([np.asarray(p, dtype=np.uint64) for p in ps]) for o, ps in sorted(parts.items())}


def _qarray(parts: list[Any]) -> array[int]:
    from array import array
    out = array("Q")
    for p in parts:
        out.extend(int(x) for x in p)
    return out


def validate(ho: Handover, target: str | Profile | None = None, cmdline: str = "kho=on",
             iomem: list[tuple[int, int]] | None = None, blocks: bool = False) -> dict[str, Any]:
    """Findings over ``ho`` and the verdict of the ``target`` kernel's model
    booted on it, as ``kho validate -j`` prints them.  ``target`` is a
    generation (``"E"``, ``"7.2"``, a :class:`~pykho.profiles.Profile`;
    default: the one the handover's compatible names); ``cmdline`` the target
    kernel's command line.  ``verdict.populate`` is ``"unknown"`` when the
    input cannot tell (a cut FDT without memory, memory at a doubtful base)."""
    from .reports import doubted
    from .reports.validate import validate as _validate
    return doubted(ho, _validate(ho, _profile(target, "target"), iomem, want_blocks=blocks, cmdline=cmdline))


def simulate(name: str) -> dict[str, Any]:
    """Run a scenario through the model of both kernels: a built-in name
    (``kho simulate --list``: ``"seed-bug"``, ``"seed-fixed"``, ...) or a
    TOML file.  Returns ``log``, ``violations``, ``kernels``."""
    import os

    from .model.scenarios import BUILTIN
    from .model.scenarios import simulate as _simulate
    if name not in BUILTIN and os.path.lexists(name):
        from .handover import read_scenario_file
        read_scenario_file(name)
    return _simulate(name)
