"""``scratch``: the binary array of ``kho_scratch`` areas (address, size).

Oracle, on every input: the decoder accounts for every byte (16 per area
plus a remainder below 16).
"""

from __future__ import annotations

from ...abi import structs as _structs
from ..mutation import i64, mutate_bytes
from .base import Family, Lie

__all__ = ["ScratchFamily"]


class ScratchFamily(Family):
    name = "scratch"

    def corpus(self, rng):
        out = []
        for _ in range(8):
            areas = [_structs.KhoScratch(i64(rng), i64(rng)) for _ in range(rng.randrange(0, 6))]
            out.append(_structs.encode_scratch(areas))
        return out

    def generate(self, rng, corpus):
        b = rng.choice(corpus)
        if rng.random() < 0.9:
            b = mutate_bytes(rng, b, corpus, max_len=1024, fdt_aware=False)
        return {"blob": b}

    def run(self, case):
        areas, rest = _structs.decode_scratch(case["blob"])
        if len(areas) * 16 + rest != len(case["blob"]) or not 0 <= rest < 16:
            raise Lie(f"decode_scratch: {len(areas)} areas + {rest} bytes for {len(case['blob'])}")
        for a in areas:
            _ = a.end
        return "ok"
