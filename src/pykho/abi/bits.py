"""Bit scanning of little-endian ``unsigned long`` bitmaps and u64 tables.

numpy (optional, ``pip install 'pykho[all]'``) makes scans vectorised; the
pure-Python fallback gives the same results.  Arrays returned are numpy
``uint64``/``int64`` arrays with numpy, lists without.
"""

from __future__ import annotations

try:  # pragma: no cover - exercised both ways in tests
    import numpy as np
except ImportError:  # pragma: no cover
    np = None

MASK64 = (1 << 64) - 1
HAVE_NUMPY = np is not None


def nonzero_u64(page: bytes) -> list[tuple[int, int]]:
    """(index, value) of every non-zero little-endian u64 of ``page``."""
    if np is not None:
        a = np.frombuffer(page, dtype="<u8", count=len(page) // 8)
        idx = np.flatnonzero(a)
        return list(zip(idx.tolist(), a[idx].tolist()))
    out = []
    mv = memoryview(page).cast("Q") if len(page) % 8 == 0 else None
    if mv is not None:
        for i, v in enumerate(mv):
            if v:
                out.append((i, v))
    return out


def set_bits(bitmap: bytes):
    """Indices of set bits in ascending order (LE bit order: byte i>>3, bit i&7)."""
    if np is not None:
        a = np.frombuffer(bitmap, dtype=np.uint8)
        nz = np.flatnonzero(a)
        if len(nz) == 0:
            return np.empty(0, dtype=np.int64)
        bitsarr = np.unpackbits(a[nz], bitorder="little").reshape(-1, 8)
        rows, cols = np.nonzero(bitsarr)
        return (nz[rows].astype(np.int64) << 3) | cols
    v = int.from_bytes(bitmap, "little")
    out = []
    while v:
        low = v & -v
        out.append(low.bit_length() - 1)
        v ^= low
    return out


def count(bitmap: bytes) -> int:
    if np is not None:
        return int(np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8)).sum())
    return int.from_bytes(bitmap, "little").bit_count()


def phys_of(bit_idx, key: int, shift: int):
    """``((key | bit) << shift) mod 2**64`` for every bit index."""
    if np is not None:
        b = np.asarray(bit_idx, dtype=np.uint64)
        return np.left_shift(b | np.uint64(key), np.uint64(shift))
    return [((key | b) << shift) & MASK64 for b in bit_idx]


def offsets(bit_idx, base: int, shift: int):
    """``base + (bit << shift)`` (mod 2**64) for every bit index."""
    if np is not None:
        b = np.asarray(bit_idx, dtype=np.uint64)
        return np.left_shift(b, np.uint64(shift)) + np.uint64(base & MASK64)
    return [(base + (b << shift)) & MASK64 for b in bit_idx]


def tolist(arr) -> list[int]:
    return arr.tolist() if hasattr(arr, "tolist") else list(arr)


def array(values):
    if np is not None:
        return np.asarray(values, dtype=np.uint64)
    return list(values)


def length(arr) -> int:
    return len(arr)
