"""``setup_data``: the x86 ``setup_data`` chain and its ``kho_data`` record.

Seeds: scenario A's real chain and chains of kho and other records in one
or two RAM ranges.  Inputs: next pointers, types, lengths and payloads
mutated, and a random first record; the decoder, the chain walk and the
scan for kho records all run on each.
"""

from __future__ import annotations

import struct

from ...abi import structs as _structs
from ...errors import KhoDecodeError
from ...memory import SparseMemory
from ..corpus import ORACLE_A_SETUP_DATA, oracle_memory
from ..mutation import PAGE, clone, geo, i32, i64, mutate_memory, pointer, poke, poke64
from .base import Family

__all__ = ["SetupDataFamily"]


class SetupDataFamily(Family):
    name = "setup_data"

    def corpus(self, rng):
        out = []
        om = oracle_memory()
        if om is not None:
            out.append({"mem": om, "first": ORACLE_A_SETUP_DATA, "recs": [ORACLE_A_SETUP_DATA]})
        for _ in range(12):
            ram = [(0, 0x40000)] if rng.random() < 0.6 else [(0, 0x20000), (0x30000, 0x48000)]
            mem = SparseMemory(ram=ram)
            recs = sorted({rng.randrange(0, 0x1FF00) & ~15 for _ in range(rng.randrange(1, 5))})
            rng.shuffle(recs)
            for k, at in enumerate(recs):
                nxt = recs[k + 1] if k + 1 < len(recs) else 0
                if k == 0 or rng.random() < 0.4:
                    kd = _structs.KhoData(rng.randrange(1 << 32) & ~0xFFF, PAGE, rng.randrange(1 << 32), 48)
                    mem.write(at, _structs.encode_setup_data(kd, nxt))
                else:
                    ln = rng.randrange(0, 64)
                    mem.write(at, _structs.SETUP_DATA_HDR.pack(nxt, rng.randrange(1, 12), ln) + bytes(ln))
            out.append({"mem": mem, "first": recs[0], "recs": recs})
        return out

    def generate(self, rng, corpus):
        base = rng.choice(corpus)
        mem = clone(base["mem"])
        first = base["first"]
        if rng.random() > 0.1:
            log = []
            for _ in range(geo(rng)):
                at = rng.choice(base["recs"])
                f = rng.randrange(6)
                if f == 0:
                    poke64(mem, at, pointer(rng, mem, base["recs"], at))
                elif f == 1:
                    poke(mem, at + 8, struct.pack("<I", rng.choice((10, 10, 0, 1, i32(rng)))))
                elif f == 2:
                    poke(mem, at + 12, struct.pack("<I", i32(rng)))
                elif f == 3:
                    poke64(mem, at + 16 + 8 * rng.randrange(4), i64(rng))
                elif f == 4:
                    first = pointer(rng, mem, base["recs"])
                else:
                    log += mutate_memory(rng, mem, [at], 1)
            return {"mem": mem, "first": first}
        return {"mem": mem, "first": first}

    def run(self, case):
        mem, first = case["mem"], case["first"]
        try:
            _structs.decode_setup_data(mem, first)
        except KhoDecodeError:
            pass
        list(_structs.walk_setup_data(mem, first))
        for _ in _structs.find_setup_data(mem):
            pass
        return "ok"
