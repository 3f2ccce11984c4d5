"""``kho_test``: lib/test_kho's sub-FDT and its folio array (inline in the
FDT on 6.16/6.17, vmalloc'd on 6.18+).

Seeds: the real 7.2.13 blobs (scenario A's with its RAM) and encoded blobs
of 0..512 folios both ways.  Inputs: the blob mutated byte-wise and the
array pages mutated.

Oracle: an unmutated blob decodes to as many folios as were encoded.
"""

from __future__ import annotations

import struct

from ... import clients as _clients
from ...memory import Bump
from ..corpus import oracle_memory, seed_files
from ..generators import build_vmalloc, new_mem
from ..mutation import PAGE, clone, mutate_bytes, mutate_memory
from .base import Family, Lie

__all__ = ["KhoTestFamily"]


class KhoTestFamily(Family):
    name = "kho_test"

    def corpus(self, rng):
        out = []
        seeds = seed_files()
        om = oracle_memory()
        for n in ("A-sub-kho_test", "B-sub-kho_test"):
            if n in seeds:
                out.append({"blob": seeds[n], "mem": om if (om is not None and n.startswith("A")) else None,
                            "targets": [0xDF9000, 0xDF8000] if n.startswith("A") else []})
        for _ in range(12):
            mem = new_mem(rng, 36)
            alloc = Bump(rng=rng)
            nr = rng.choice((0, 1, 19, 512, rng.randrange(0, 100)))
            folios = [((rng.randrange(1 << 30) << 12) | rng.randrange(0, 11)) for _ in range(nr)]
            if rng.random() < 0.3:
                blob, _err = _clients.encode_kho_test(nr, rng.getrandbits(32), inline=folios)
                targets = []
            else:
                arr = b"".join(struct.pack("<Q", v) for v in folios)
                order = rng.choice((0, 0, 1))
                npg = max(1, (len(arr) + (PAGE << order) - 1) // (PAGE << order))
                desc, chunks, physs = build_vmalloc(rng, mem, alloc, npg, order)
                for k, p in enumerate(physs):
                    mem.write(p, arr[k * (PAGE << order):(k + 1) * (PAGE << order)])
                blob, _err = _clients.encode_kho_test(nr, rng.getrandbits(32), folios_info=desc)
                targets = chunks + physs
            if blob:
                out.append({"blob": blob, "mem": mem, "targets": targets, "nr": nr})
        return out

    def generate(self, rng, corpus):
        base = rng.choice(corpus)
        mem = clone(base["mem"]) if base["mem"] is not None else None
        blob = base["blob"]
        if rng.random() < 0.1:
            return {"blob": blob, "mem": mem, "nr": base.get("nr")}
        r = rng.random()
        if r < 0.6:
            blob = mutate_bytes(rng, blob, [c["blob"] for c in corpus[:4]], max_len=2 * PAGE)
        if mem is not None and base["targets"] and r > 0.4:
            mutate_memory(rng, mem, base["targets"])
        return {"blob": blob, "mem": mem}

    def run(self, case):
        _clients.decode_kho_test(case["blob"])
        t = _clients.decode_kho_test(case["blob"], mem=case["mem"])
        if case.get("nr") is not None and len(t.folios) != case["nr"]:
            raise Lie(f"kho_test: {len(t.folios)} folios decoded, {case['nr']} encoded")
        return "ok"
