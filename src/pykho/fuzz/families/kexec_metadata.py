"""``kexec_metadata``: the raw ``kexec-metadata`` sub-blob (version, release, count).

Seeds: the real 7.2.13 blob and packed records of several versions; inputs
are those mutated byte-wise (no FDT awareness: this blob is a plain struct).
"""

from __future__ import annotations

from ...abi import structs as _structs
from ..corpus import blob_corpus
from ..mutation import mutate_bytes
from .base import Family

__all__ = ["KexecMetadataFamily"]


class KexecMetadataFamily(Family):
    name = "kexec_metadata"

    def corpus(self, rng):
        extra = [_structs.KexecMetadata(rng.choice((1, 1, 0, 2)), f"7.2.{rng.randrange(100)}",
                                        rng.getrandbits(32)).pack() for _ in range(8)]
        return blob_corpus(("B-sub-kexec-metadata",), extra)

    def generate(self, rng, corpus):
        b = rng.choice(corpus)
        if rng.random() < 0.9:
            b = mutate_bytes(rng, b, corpus, max_len=256, fdt_aware=False)
        return {"blob": b}

    def run(self, case):
        m = _structs.decode_kexec_metadata(case["blob"])
        m.pack()
        return "ok"
