"""``memblock``: the memblock client's sub-FDT (``reserve_mem`` regions).

Seeds: the real 7.2.13 memblock sub-FDT and encoded region lists with odd
names, starts and sizes; inputs are those mutated byte-wise.
"""

from __future__ import annotations

from ... import clients as _clients
from ..corpus import blob_corpus
from ..generators import rand_name
from ..mutation import PAGE, i64, mutate_bytes
from .base import Family

__all__ = ["MemblockFamily"]


class MemblockFamily(Family):
    name = "memblock"

    def corpus(self, rng):
        extra = []
        for _ in range(16):
            regs = [_clients.ReserveMem(rand_name(rng) or "r", i64(rng), i64(rng))
                    for _ in range(rng.randrange(0, 5))]
            try:
                blob, _err = _clients.encode_memblock(regs)
            except Exception:  # noqa: BLE001, S112 - an encoder refusal: skip this seed
                continue
            if blob:
                extra.append(blob)
        return blob_corpus(("B-sub-memblock",), extra)

    def generate(self, rng, corpus):
        b = rng.choice(corpus)
        pristine = rng.random() < 0.1
        if not pristine:
            b = mutate_bytes(rng, b, corpus, max_len=2 * PAGE)
        return {"blob": b}

    def run(self, case):
        regs = _clients.decode_memblock(case["blob"])
        return "ok" if regs is not None else "none"
