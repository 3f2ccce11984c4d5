"""Errors pykho raises on bad input.

Every decoder failure is a :class:`KhoDecodeError` naming the structure being
read, where it was read (physical address or offset in a file), and what was
expected.  The CLI turns these into one-line messages and exit code 2; nothing
else may escape a decoder.

This module is the bottom layer: it imports nothing of pykho.  It also holds
the errno numbers that reach the kernel's return values and log lines, and
libfdt's error names (what ``fdt_strerror`` prints).
"""

from __future__ import annotations

__all__ = ["E2BIG", "EBUSY", "EEXIST", "EFAULT", "EINVAL", "ENOENT", "ENOMEM", "EOPNOTSUPP", "FDT_ERR_NAMES",
           "FdtError", "KhoDecodeError", "KhoError", "MemoryFault", "UsageError", "fdt_strerror"]

# errno values that reach the kernel's log lines (Linux numbers, all architectures pykho models)
ENOENT = 2
EFAULT = 14
EEXIST = 17
EINVAL = 22
ENOMEM = 12
EBUSY = 16
E2BIG = 7
EOPNOTSUPP = 95

#: libfdt's names of its error codes: ``FDT_ERR_NAMES[n]`` is the name of ``-n``
FDT_ERR_NAMES = (
    "<no error>", "FDT_ERR_NOTFOUND", "FDT_ERR_EXISTS", "FDT_ERR_NOSPACE", "FDT_ERR_BADOFFSET",
    "FDT_ERR_BADPATH", "FDT_ERR_BADPHANDLE", "FDT_ERR_BADSTATE", "FDT_ERR_TRUNCATED", "FDT_ERR_BADMAGIC",
    "FDT_ERR_BADVERSION", "FDT_ERR_BADSTRUCTURE", "FDT_ERR_BADLAYOUT", "FDT_ERR_INTERNAL", "FDT_ERR_BADNCELLS",
    "FDT_ERR_BADVALUE", "FDT_ERR_BADOVERLAY", "FDT_ERR_NOPHANDLES", "FDT_ERR_BADFLAGS", "FDT_ERR_ALIGNMENT",
)

_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1


def fdt_strerror(err: int) -> str:
    """What libfdt's ``fdt_strerror`` returns for ``err`` (a libfdt result:
    negative codes are errors, non-negative ones offsets or lengths)."""
    if not _INT_MIN <= err <= _INT_MAX:       # not a C int: libfdt could not have returned it
        return f"libfdt error {err}"
    if err > 0:
        return "<valid offset/length>"
    if -err < len(FDT_ERR_NAMES):
        return FDT_ERR_NAMES[-err]
    return "<unknown error>"


class KhoError(Exception):
    """Base class of every error pykho raises on purpose."""


class KhoDecodeError(KhoError):
    """Bytes that do not decode as the structure they should be.

    ``structure`` names the ABI object (``"radix node (level 3)"``,
    ``"root FDT"``, ``"khoser_mem_chunk"``), ``where`` is a physical address
    (int) or a textual location, ``message`` says what was expected.
    """

    def __init__(self, structure: str, where: int | str | None, message: str, code: str = "decode") -> None:
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

    def __init__(self, phys: int, size: int, source: str = "memory", structure: str = "memory") -> None:
        self.phys = phys
        self.size = size
        self.source = source
        super().__init__(structure, phys,
                         f"{size} bytes at 0x{phys:x} are not in {source}",
                         code="memory-fault")


class FdtError(KhoDecodeError):
    """libfdt rejected a blob; ``err`` is the negative libfdt code."""

    def __init__(self, structure: str, where: int | str | None, err: int, detail: str = "") -> None:
        self.err = err
        msg = f"libfdt error {err} ({fdt_strerror(err)})"
        if detail:
            msg = f"{detail}: {msg}"
        super().__init__(structure, where, msg, code="fdt")


class UsageError(KhoError):
    """Bad command-line input (an unknown profile, a malformed --mem spec)."""
