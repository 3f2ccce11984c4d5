"""``blocks``: a KHO block list (the LUO sessions/files arrays), entries of a fixed size.

Seeds: block lists of 0..600 entries of several entry sizes.  Inputs: next
pointers, counts and pages mutated, a random head, and long chains of
one-entry blocks.

Oracle: an unmutated list decodes to exactly the encoded entries.
"""

from __future__ import annotations

import struct

from ...abi import structs as _structs
from ...memory import Bump
from ..generators import new_mem
from ..mutation import clone, geo, i64, mutate_memory, pointer, poke, poke64
from .base import Family, Lie

__all__ = ["BlocksFamily"]


class BlocksFamily(Family):
    name = "blocks"
    SIZES = (80, 64, 16, 48, 8, 1, 24, 2040, 4080)

    def corpus(self, rng):
        out = []
        for _ in range(12):
            mem = new_mem(rng, 36)
            alloc = Bump(rng=rng)
            es = rng.choice(self.SIZES)
            entries = [bytes(rng.randrange(256) for _ in range(min(es, 16))).ljust(es, b"\0")
                       for _ in range(rng.choice((0, 1, 3, 50, 51, 52, 200, rng.randrange(0, 600))))]
            head, pages = _structs.encode_blocks(mem, alloc.page, entries, es)
            out.append({"mem": mem, "head": head, "es": es, "pages": pages, "expect": entries})
        return out

    def generate(self, rng, corpus):
        base = rng.choice(corpus)
        mem = clone(base["mem"])
        head = base["head"]
        if rng.random() < 0.1:
            return {"mem": mem, "head": head, "es": base["es"], "expect": base["expect"]}
        pages = base["pages"] or [head or 0x10000]
        for _ in range(geo(rng)):
            r = rng.random()
            p = rng.choice(pages)
            if r < 0.35:
                poke64(mem, p, pointer(rng, mem, pages, p))
            elif r < 0.6:
                poke64(mem, p + 8, rng.choice((0, 1, 50, 51, 52, 255, 256, i64(rng))))
            elif r < 0.65:
                head = pointer(rng, mem, pages)
            else:
                mutate_memory(rng, mem, [p], 1)
        if rng.random() < 0.01:
            # a long chain: 2000..12000 blocks of 16 bytes each (next, count=1) in a few pages
            n = rng.choice((2000, 9999, 10001, 12000))
            at = (rng.randrange(0x100, 0x1000) << 12)
            chain = b"".join(struct.pack("<QQ", at + 16 * (k + 1) if k + 1 < n else 0, 1) for k in range(n))
            poke(mem, at, chain)
            head = at
        return {"mem": mem, "head": head, "es": base["es"]}

    def run(self, case):
        entries, _pages = _structs.decode_blocks(case["mem"], case["head"], case["es"])
        if "expect" in case and entries != list(case["expect"]):
            raise Lie(f"blocks: {len(entries)} entries decoded, {len(case['expect'])} encoded")
        return "ok"
