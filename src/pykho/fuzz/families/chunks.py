"""``chunks``: the kho-v1 preserved-memory chunk list (per-order bitmaps).

Seeds: chunk lists encoded from random trackers (two long enough for
several chunks), 4096- and 32768-bit bitmaps.  Inputs: chunk headers,
element pointers and bitmaps mutated, a random first chunk, the other
bitmap size, and a chunk whose 255 elements share one full bitmap.

Oracle: an unmutated list walks to exactly the tracker's blocks, with no
problems.
"""

from __future__ import annotations

import struct

from ...abi import chunks as _chunks
from ...memory import Bump
from ..generators import new_mem
from ..mutation import clone, mutate_memory, pointer, poke
from .base import Family, Lie, count_leaves

__all__ = ["ChunksFamily"]


class ChunksFamily(Family):
    name = "chunks"

    def corpus(self, rng):
        out = []
        for k in range(12):
            pb = rng.choice((4096, 32768))
            mem = new_mem(rng, 40)
            alloc = Bump(rng=rng)
            tr = _chunks.ChunkTracker(pb)
            # two lists long enough for several chunks (255 elements each);
            # the rest small, so that inputs stay cheap
            n = rng.randrange(300, 600) if k < 2 else rng.choice((1, 2, 5, 20, 50, rng.randrange(1, 120)))
            for _ in range(n):
                order = rng.choice((0, 0, 1, 2, 9, 10, rng.randrange(0, 11)))
                phys = (rng.randrange(0, 1 << 38) >> (12 + order)) << (12 + order)
                tr.add(phys, order)
            if rng.random() < 0.2 and tr.orders:
                o = rng.choice(sorted(tr.orders))
                for idx in tr.orders[o]:
                    tr.orders[o][idx].clear()
            first, chunk_pages = _chunks.encode(tr, mem, alloc.alloc)
            w = _chunks.ChunkWalk(mem, first, pb)
            list(w.leaves())
            out.append({"mem": mem, "first": first, "pb": pb, "chunks": chunk_pages,
                        "bitmaps": list(w.bitmaps), "expect": sorted(tr.blocks())})
        return out

    def generate(self, rng, corpus):
        base = rng.choice(corpus)
        mem = clone(base["mem"])
        if rng.random() < 0.1:
            return {"mem": mem, "first": base["first"], "pb": base["pb"], "expect": base["expect"]}
        targets = list(base["chunks"]) + list(base["bitmaps"][:64])
        log = mutate_memory(rng, mem, targets, extra_ptrs=base["bitmaps"][:16])
        first = base["first"]
        if rng.random() < 0.1:
            first = pointer(rng, mem, targets)
        pb = base["pb"] if rng.random() < 0.9 else 4096 + 32768 - base["pb"]
        if rng.random() < 0.005 and base["chunks"]:
            # amplification probe: 255 elements sharing one full bitmap
            c = rng.choice(base["chunks"])
            bm = rng.choice(base["bitmaps"]) if base["bitmaps"] else c
            poke(mem, bm, b"\xff" * (pb // 8))
            poke(mem, c, struct.pack("<QII", 0, rng.randrange(0, 11), 255) + struct.pack("<QQ", 0, bm) * 255)
            log.append(f"amplify 0x{c:x}")
        return {"mem": mem, "first": first, "pb": pb, "ops": log}

    def run(self, case):
        mem, first, pb = case["mem"], case["first"], case["pb"]
        w = _chunks.ChunkWalk(mem, first, pb)
        got = list(w.blocks()) if "expect" in case else count_leaves(w)
        if "expect" in case and (sorted(got) != [tuple(x) for x in case["expect"]] or w.problems):
            raise Lie(f"chunk walk returned {len(got)} blocks, {len(case['expect'])} were encoded")
        _chunks.guess_preserve_bits(mem, first)
        count_leaves(_chunks.ChunkWalk(mem, first, pb, strict=True))
        return "ok"
