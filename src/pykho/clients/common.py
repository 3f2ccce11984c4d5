"""Helpers shared by client codecs."""

from __future__ import annotations

from typing import Any

__all__ = ["read_blocks"]


def read_blocks(mem: Any, blocks: list[int], block_size: int, need: int, structure: str) -> bytes:
    """The first ``need`` bytes of a vmalloc area made of ``blocks``: reads
    stop there, so a descriptor cannot make us read more than the array it
    claims to hold."""
    out, have = [], 0
    for p in blocks:
        if have >= need:
            break
        n = min(block_size, need - have)
        out.append(mem.read(p, n, structure))
        have += n
    return b"".join(out)
