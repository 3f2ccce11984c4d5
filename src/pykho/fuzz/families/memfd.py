"""``memfd``: the LUO memfd client's ``memfd_luo_ser`` record and folio array.

Seeds: records of 0..257 folios in a vmalloc'd array.  Inputs: the record's
size, folio pointer, flags, counts and bytes mutated, a random record
address, and the array pages mutated.

Oracle: an unmutated record decodes to as many folios as were encoded.
"""

from __future__ import annotations

import struct

from ... import clients as _clients
from ...memory import Bump
from ..generators import build_memfd, new_mem
from ..mutation import clone, i32, i64, mutate_memory, pointer, poke, poke64
from .base import Family, Lie

__all__ = ["MemfdFamily"]


class MemfdFamily(Family):
    name = "memfd"

    def corpus(self, rng):
        out = []
        for _ in range(12):
            mem = new_mem(rng, 36)
            alloc = Bump(rng=rng)
            rec, targets, nr = build_memfd(rng, mem, alloc)
            out.append({"mem": mem, "phys": rec, "targets": [rec] + targets, "nr": nr})
        return out

    def generate(self, rng, corpus):
        base = rng.choice(corpus)
        mem = clone(base["mem"])
        phys = base["phys"]
        if rng.random() < 0.1:
            return {"mem": mem, "phys": phys, "nr": base["nr"]}
        r = rng.random()
        if r < 0.5:
            f = rng.randrange(6)
            if f == 0:
                poke64(mem, phys + 24, rng.choice((0, 1, 255, 256, 257, 1 << 20, (1 << 20) + 1, i64(rng))))
            elif f == 1:
                poke64(mem, phys + 32, pointer(rng, mem, base["targets"]))
            elif f == 2:
                poke(mem, phys + 40, struct.pack("<I", i32(rng)))
            elif f == 3:
                poke(mem, phys + 44, struct.pack("<HH", rng.getrandbits(16),
                                                 rng.choice((0, 1, 9, 10, 11, 0xFFFF))))
            elif f == 4:
                phys = pointer(rng, mem, base["targets"])
            else:
                poke(mem, phys, bytes(rng.randrange(256) for _ in range(48)))
        if r > 0.3:
            mutate_memory(rng, mem, base["targets"])
        return {"mem": mem, "phys": phys}

    def run(self, case):
        out = _clients.decode_memfd(case["mem"], case["phys"])
        if "nr" in case and len(out["folios"]) != case["nr"]:
            raise Lie(f"memfd: {len(out['folios'])} folios decoded, {case['nr']} encoded")
        return "ok"
