"""``fdt``: the flattened-device-tree reader on any FDT blob.

Seeds: the real root and sub-FDTs, random valid FDTs (deep, wide, odd names
and values), root FDTs of every generation, a /chosen node and a memblock
sub-FDT; inputs are those mutated byte-wise (FDT header fields included).
"""

from __future__ import annotations

from ... import clients as _clients
from ...abi import fdt as _fdt
from ...abi import structs as _structs
from ..corpus import blob_corpus, seed_files
from ..generators import random_fdt, random_root
from ..mutation import mutate_bytes
from .base import Family

__all__ = ["FdtFamily"]


class FdtFamily(Family):
    name = "fdt"

    def corpus(self, rng):
        names = [n for n in seed_files() if n.endswith((".dtb", "fdt", "kho_test", "memblock", "page.bin"))]
        extra = [random_fdt(rng) for _ in range(24)]
        extra += [random_root(rng) for _ in range(8)]
        extra.append(_structs.encode_chosen(0x1000, 0x2000, 0x30))
        extra.append(_clients.encode_memblock([_clients.ReserveMem("r", 0x1000, 0x2000)])[0])
        return blob_corpus(names, extra)

    def generate(self, rng, corpus):
        r = rng.random()
        if r < 0.1:
            return {"blob": random_fdt(rng)}
        b = rng.choice(corpus)
        if r < 0.15:
            return {"blob": b}
        return {"blob": mutate_bytes(rng, b, corpus, max_len=1 << 17)}

    def run(self, case):
        blob = case["blob"]
        _fdt.kernel_check_header(blob)
        _fdt.check_full(blob)
        _fdt.header(blob)
        tree = _fdt.parse(blob)
        for _path, node in tree.walk():
            node.prop_u64("fdt")
            node.prop_str("compatible")
        return "ok"
