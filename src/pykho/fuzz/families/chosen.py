"""``chosen``: the ``/chosen`` node's ``linux,kho-fdt`` / ``linux,kho-scratch``
properties (the arm64/riscv handoff), with every cell count.

Seeds: encoded /chosen nodes with 1- and 2-cell addresses and sizes, and
nodes with odd ``#address-cells``/``#size-cells`` and property lengths.
"""

from __future__ import annotations

import struct

from ...abi import fdt as _fdt
from ...abi import structs as _structs
from ..mutation import PAGE, i32, mutate_bytes
from .base import Family

__all__ = ["ChosenFamily"]


class ChosenFamily(Family):
    name = "chosen"

    def corpus(self, rng):
        out = []
        for _ in range(16):
            ac, sc = rng.choice((1, 2)), rng.choice((1, 2))
            out.append(_structs.encode_chosen(rng.randrange(0, 1 << (32 * ac)), rng.randrange(0, 1 << (32 * ac)),
                                              rng.randrange(0, 1 << (32 * sc)), ac, sc,
                                              rng.randrange(0, 1 << (32 * sc))))
        for _ in range(8):   # odd cell counts and property lengths
            def cells():
                return struct.pack(">I", i32(rng))
            blob, _err = _fdt.build(
                [("#address-cells", cells()), ("#size-cells", cells())],
                [("chosen", [("linux,kho-fdt", b"".join(cells() for _ in range(rng.randrange(0, 6)))),
                             ("linux,kho-scratch", b"".join(cells() for _ in range(rng.randrange(0, 6))))])])
            if blob:
                out.append(blob)
        return out

    def generate(self, rng, corpus):
        b = rng.choice(corpus)
        if rng.random() < 0.85:
            b = mutate_bytes(rng, b, corpus, max_len=2 * PAGE)
        return {"blob": b}

    def run(self, case):
        got = _structs.decode_chosen(case["blob"])
        return "ok" if got is not None else "ignored"
