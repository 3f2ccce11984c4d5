"""``memblock``: the memblock client's sub-FDT (``reserve_mem`` regions).

Seeds: the real 7.2.13 memblock sub-FDT and encoded region lists with odd
names, starts and sizes; inputs are those mutated byte-wise.

Oracle: an unmutated seed decodes to exactly the regions that were encoded
(for the real sub-FDT, the region the kernel was asked for and allocated:
:data:`~pykho.fuzz.corpus.ORACLE_B_MEMBLOCK`).
"""

from __future__ import annotations

from ... import clients as _clients
from ..corpus import ORACLE_B_MEMBLOCK, seed_files
from ..generators import rand_name
from ..mutation import PAGE, i64, mutate_bytes
from .base import Family, Lie

__all__ = ["MemblockFamily"]


class MemblockFamily(Family):
    name = "memblock"

    def corpus(self, rng):
        """``{"blob", "regions"}``: a sub-FDT and the (name, start, size) it holds."""
        out = []
        seed = seed_files().get("B-sub-memblock")
        if seed:
            out.append({"blob": seed, "regions": [list(r) for r in ORACLE_B_MEMBLOCK]})
        for _ in range(16):
            regs = [_clients.ReserveMem(rand_name(rng) or "r", i64(rng), i64(rng))
                    for _ in range(rng.randrange(0, 5))]
            try:
                blob, _err = _clients.encode_memblock(regs)
            except Exception:  # noqa: BLE001, S112 - an encoder refusal: skip this seed
                continue
            if blob:
                out.append({"blob": blob, "regions": [[r.name, r.start, r.size] for r in regs]})
        return out

    def generate(self, rng, corpus):
        base = rng.choice(corpus)
        if rng.random() < 0.1:
            return {"blob": base["blob"], "expect": base["regions"]}
        return {"blob": mutate_bytes(rng, base["blob"], [c["blob"] for c in corpus], max_len=2 * PAGE)}

    def run(self, case):
        regs = _clients.decode_memblock(case["blob"])
        if "expect" in case:
            got = [[r.name, r.start, r.size] for r in regs]
            if got != [list(r) for r in case["expect"]]:
                raise Lie(f"memblock: decoded {got[:3]}, encoded {list(case['expect'])[:3]}")
        return "ok"
