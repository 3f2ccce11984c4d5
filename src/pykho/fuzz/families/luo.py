"""``luo``: the LUO sub-FDT's ``luo_ser`` data and everything it points to
(sessions, files, memfd records, file-lifecycle-bound objects).

Seeds: the real 7.2.13 LUO blob and LUO states of 0..60 sessions of 0..65
files each (some memfd files with real records) and FLB pages.  Inputs: the
blob's pointers or bytes mutated, and pointers, counts and pages of the
records mutated.
"""

from __future__ import annotations

import struct

from ... import clients as _clients
from ...abi import structs as _structs
from ...memory import Bump, SparseMemory
from ..corpus import seed_files
from ..generators import build_memfd, new_mem
from ..mutation import PAGE, clone, geo, i64, mutate_bytes, mutate_memory, pointer, poke64
from .base import Family

__all__ = ["LuoFamily"]


class LuoFamily(Family):
    name = "luo"

    def corpus(self, rng):
        out = []
        seeds = seed_files()
        if "B-sub-LUO" in seeds:
            out.append({"mem": SparseMemory(ram=[(0, 1 << 32)]), "data": seeds["B-sub-LUO"], "targets": []})
        for _ in range(12):
            mem = new_mem(rng, 36)
            alloc = Bump(rng=rng)
            targets = []
            sessions = []
            for s in range(rng.choice((0, 1, 2, 5, 60))):
                files = []
                for f in range(rng.choice((0, 1, 3, 64, 65))):
                    compat = rng.choice(("memfd-v2", "memfd-v1", "hugetlb-v1", ""))
                    data = 0
                    if compat.startswith("memfd") and rng.random() < 0.7 and f < 4:
                        data, tg, _nr = build_memfd(rng, mem, alloc, rng.choice((0, 1, 3)))
                        targets += [data] + tg
                    files.append(_clients.LUO_FILE_SER.pack(compat.encode(), data, rng.getrandbits(64)))
                fhead, fpages = _structs.encode_blocks(mem, alloc.page, files, _clients.LUO_FILE_SER.size)
                targets += fpages
                sessions.append(_clients.LUO_SESSION_SER.pack(f"s{s}".encode(), fhead, len(files)))
            shead, spages = _structs.encode_blocks(mem, alloc.page, sessions, _clients.LUO_SESSION_SER.size)
            targets += spages
            flbs = 0
            if rng.random() < 0.6:
                pg = rng.choice((1, 2))
                flbs = alloc.alloc(PAGE * pg)
                cnt = rng.randrange(0, (pg * PAGE - 16) // 64 + 1)
                mem.write(flbs, _clients.LUO_FLB_HEADER.pack(pg, cnt) + b"".join(
                    _clients.LUO_FLB_SER.pack(b"flb%d" % k, rng.getrandbits(64), rng.randrange(4))
                    for k in range(cnt)))
                targets.append(flbs)
            data = _clients.encode_luo_ser(rng.randrange(1, 100), shead, flbs)
            out.append({"mem": mem, "data": data, "targets": targets})
        return out

    def generate(self, rng, corpus):
        base = rng.choice(corpus)
        mem = clone(base["mem"])
        data = base["data"]
        if rng.random() < 0.1:
            return {"mem": mem, "data": data}
        if rng.random() < 0.3:
            b = bytearray(data)
            f = rng.randrange(4)
            if f == 0 and len(b) >= 32:
                b[16:24] = struct.pack("<Q", pointer(rng, mem, base["targets"]))
            elif f == 1 and len(b) >= 32:
                b[24:32] = struct.pack("<Q", pointer(rng, mem, base["targets"]))
            else:
                b = bytearray(mutate_bytes(rng, bytes(b), fdt_aware=False, max_len=128))
            data = bytes(b)
        if base["targets"] and rng.random() < 0.8:
            t = base["targets"]
            for _ in range(geo(rng)):
                p = rng.choice(t)
                r = rng.random()
                if r < 0.3:   # a files_pa / data / next pointer inside a record
                    off = rng.choice((0, 8, 16 + 64, 16 + 72, 16 + 48, 16 + 56))
                    poke64(mem, p + off, pointer(rng, mem, t))
                elif r < 0.5:  # a count
                    off = rng.choice((8, 16 + 72, 8))
                    poke64(mem, p + off, rng.choice((0, 1, 50, 51, 63, 64, 65, i64(rng))))
                else:
                    mutate_memory(rng, mem, [p], 1)
        return {"mem": mem, "data": data}

    def run(self, case):
        _clients.decode_luo(case["data"])
        luo = _clients.decode_luo(case["data"], mem=case["mem"])
        for s in luo.sessions:
            for f in s.files:
                _ = f.memfd
        return "ok"
