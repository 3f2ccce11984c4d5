"""Errors pykho raises on bad input.

Every decoder failure is a :class:`KhoDecodeError` naming the structure being
read, where it was read (physical address or offset in a file), and what was
expected.  The CLI turns these into one-line messages and exit code 2; nothing
else may escape a decoder.
"""

from __future__ import annotations


class KhoError(Exception):
    """Base class of every error pykho raises on purpose."""


class KhoDecodeError(KhoError):
    """Bytes that do not decode as the structure they should be.

    ``structure`` names the ABI object (``"radix node (level 3)"``,
    ``"root FDT"``, ``"khoser_mem_chunk"``), ``where`` is a physical address
    (int) or a textual location, ``message`` says what was expected.
    """

    def __init__(self, structure: str, where: int | str | None, message: str, code: str = "decode"):
        self.structure = structure
        self.where = where
        self.message = message
        self.code = code
        super().__init__(str(self))

    def location(self) -> str:
        if self.where is None:
            return ""
        if isinstance(self.where, int):
            return f" at 0x{self.where:x}"
        return f" at {self.where}"

    def __str__(self) -> str:
        return f"{self.structure}{self.location()}: {self.message}"


class MemoryFault(KhoDecodeError):
    """A read of physical memory that the memory source does not hold."""

    def __init__(self, phys: int, size: int, source: str = "memory", structure: str = "memory"):
        self.phys = phys
        self.size = size
        self.source = source
        super().__init__(structure, phys,
                         f"{size} bytes at 0x{phys:x} are not in {source}",
                         code="memory-fault")


class FdtError(KhoDecodeError):
    """libfdt rejected a blob; ``err`` is the negative libfdt code."""

    def __init__(self, structure: str, where, err: int, detail: str = ""):
        self.err = err
        from .abi.fdt import fdt_strerror
        msg = f"libfdt error {err} ({fdt_strerror(err)})"
        if detail:
            msg = f"{detail}: {msg}"
        super().__init__(structure, where, msg, code="fdt")


class UsageError(KhoError):
    """Bad command-line input (an unknown profile, a malformed --mem spec)."""
