"""``vmalloc``: a ``kho_vmalloc`` descriptor and its chunk list.

Seeds: vmalloc areas of 0..1023 blocks of several orders.  Inputs: the
descriptor's fields (first chunk, total pages, flags, order) or bytes
mutated, and the chunk pages mutated.

Oracle: an unmutated area decodes to exactly the encoded block addresses.
"""

from __future__ import annotations

from ...abi import structs as _structs
from ...memory import Bump
from ..generators import build_vmalloc, new_mem
from ..mutation import clone, i32, mutate_bytes, mutate_memory, pointer
from .base import Family, Lie

__all__ = ["VmallocFamily"]


class VmallocFamily(Family):
    name = "vmalloc"

    def corpus(self, rng):
        out = []
        for _ in range(12):
            mem = new_mem(rng, 36)
            alloc = Bump(rng=rng)
            order = rng.choice((0, 0, 1, 2, 4, 10))
            n = rng.choice((0, 1, 5, 511, 512, 1023, rng.randrange(0, 300)))
            desc, chunks, physs = build_vmalloc(rng, mem, alloc, n, order)
            out.append({"mem": mem, "desc": desc.pack(), "chunks": chunks, "expect": physs})
        return out

    def generate(self, rng, corpus):
        base = rng.choice(corpus)
        mem = clone(base["mem"])
        desc = base["desc"]
        if rng.random() < 0.1:
            return {"mem": mem, "desc": desc, "expect": base["expect"]}
        r = rng.random()
        if r < 0.4:
            first, total, flags, order = _structs.KHO_VMALLOC.unpack(desc)
            f = rng.randrange(4)
            if f == 0:
                first = pointer(rng, mem, base["chunks"])
            elif f == 1:
                total = i32(rng)
            elif f == 2:
                flags = rng.getrandbits(16)
            else:
                order = rng.choice((0, 1, 10, 11, 12, 20, 0xFFFF, rng.getrandbits(16)))
            desc = _structs.KHO_VMALLOC.pack(first, total, flags, order)
        elif r < 0.45:
            desc = mutate_bytes(rng, desc, fdt_aware=False, max_len=32)
        if r >= 0.3:
            mutate_memory(rng, mem, base["chunks"], extra_ptrs=base["expect"][:8])
        return {"mem": mem, "desc": desc}

    def run(self, case):
        desc = _structs.KhoVmalloc.unpack(case["desc"])
        blocks, _chunks = _structs.decode_vmalloc(case["mem"], desc)
        if "expect" in case and blocks != list(case["expect"]):
            raise Lie(f"vmalloc: {len(blocks)} blocks decoded, {len(case['expect'])} encoded")
        return "ok"
