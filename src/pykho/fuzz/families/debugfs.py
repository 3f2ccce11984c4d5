"""``debugfs_text``: the debugfs ``scratch_phys`` / ``scratch_len`` text files.

Seeds: the real 7.2.13 files and formatted value lists; inputs are those
mutated byte-wise, or soups of hex-ish tokens, whitespace and odd Unicode,
decoded as UTF-8 or Latin-1.

Oracle: an unmutated formatted list parses back to exactly its values.
"""

from __future__ import annotations

from ...abi import structs as _structs
from ..corpus import seed_files
from ..mutation import i64, mutate_bytes
from .base import Family, Lie

__all__ = ["DebugfsTextFamily"]


class DebugfsTextFamily(Family):
    name = "debugfs_text"

    def corpus(self, rng):
        """``{"blob", "values"}``: a text file and the values it was formatted
        from (None for the real files)."""
        lists = [[i64(rng) for _ in range(rng.randrange(0, 5))] for _ in range(8)]
        seeds = seed_files()
        out = [{"blob": seeds[n], "values": None} for n in seeds if "scratch_" in n and seeds[n]]
        for vals in lists:
            blob = _structs.format_debugfs_scratch(vals).encode()
            if blob:
                out.append({"blob": blob, "values": vals})
        return out

    def generate(self, rng, corpus):
        base = rng.choice(corpus)
        b = base["blob"]
        r = rng.random()
        if r < 0.8:
            b = mutate_bytes(rng, b, [c["blob"] for c in corpus], max_len=4096, fdt_aware=False)
        elif r < 0.9:
            b = b"".join(rng.choice((b"0x", b"0X", b"-0x1", b"0x_1", b" ", b"\t", b"\n", b"\r\n", b"0x" + b"f" * 40,
                                     b"\xff", b"\x00", b"0x1_0", b"\xe2\x80\xa8", b"\x0b", b"0x\xd9\xa0", b"1"))
                         for _ in range(rng.randrange(1, 40)))
        text = b.decode("utf-8", "replace") if rng.random() < 0.7 else b.decode("latin-1")
        case = {"text": text, "name": rng.choice(("scratch_phys", "scratch_len"))}
        if r >= 0.9 and base["values"] is not None:
            case["expect"] = base["values"]
        return case

    def run(self, case):
        vals = _structs.parse_debugfs_scratch(case["text"], case["name"])
        if "expect" in case and vals != list(case["expect"]):
            raise Lie(f"debugfs {case['name']}: parsed {vals[:4]}, formatted from {list(case['expect'])[:4]}")
        return "ok"
