"""``root``: the KHO root FDT, as a blob and read out of memory.

Seeds: the real root FDTs and debugfs copies, the hand-made bad pages, and
root FDTs built with each generation's own call sequence.  A share of the
inputs place the (mutated) blob in memory, sometimes with RAM ending inside
it, and read it back the way the incoming kernel maps it.
"""

from __future__ import annotations

from ...abi import root as _root
from ...memory import SparseMemory
from ..corpus import blob_corpus
from ..generators import random_root
from ..mutation import PAGE, mutate_bytes, poke
from .base import Family

__all__ = ["RootFamily"]


class RootFamily(Family):
    name = "root"

    def corpus(self, rng):
        names = ("A-root.dtb", "B-root.dtb", "A-debugfs-fdt", "B-debugfs-fdt", "C-zero-fdt-page.bin",
                 "C-compat-kho-v3-page.bin", "C-zero-mem-map-page.bin")
        return blob_corpus(names, [random_root(rng) for _ in range(32)])

    def generate(self, rng, corpus):
        r = rng.random()
        b = random_root(rng) if r < 0.1 else rng.choice(corpus)
        if r > 0.15:
            b = mutate_bytes(rng, b, corpus, max_len=2 * PAGE)
        if rng.random() < 0.3:
            # the blob in memory, read back as the incoming kernel would map it
            mem = SparseMemory(ram=[(0, 1 << 24)])
            phys = rng.choice((0x317000, 0x2000, (1 << 24) - PAGE, (1 << 24) - 40, (1 << 24) - 16))
            if len(b) and phys + len(b) > 1 << 24:
                b = b[:(1 << 24) - phys]
            poke(mem, phys, b)
            if rng.random() < 0.4:
                # RAM ends inside (or right after) the blob
                cut = max(1, phys + rng.choice((0, 8, 40, 64, PAGE, len(b))))
                full = mem
                mem = SparseMemory(ram=[(0, cut)])
                mem.pages = {k: v for k, v in full.pages.items() if k << 12 < cut}
            return {"mem": mem, "phys": phys}
        return {"blob": b}

    def run(self, case):
        if "mem" in case:
            blob = _root.read_root_from_memory(case["mem"], case["phys"])
        else:
            blob = case["blob"]
        r = _root.decode_root(blob)
        for s in r.subtrees:
            s.as_dict()
        r.subtree("memblock")
        return "ok"
