"""``kho fuzz``: a seeded, reproducible fuzz campaign over every decoder family.

Every decoder of pykho reads bytes that are by definition suspect.  The
property checked here, for every input, is:

* the decoder returns a result or raises a :class:`~pykho.errors.KhoError`
  (in practice a :class:`~pykho.errors.KhoDecodeError` naming the structure
  and the location); any other exception is a **crash**;
* it returns within the per-input time limit (1 s by default); otherwise it
  is a **hang**;
* the worker's peak RSS does not jump by more than ``--rss-jump-mb`` during
  one input (allocations sized by values read from the input); otherwise it
  is a **memory** finding;
* an input that was built by the encoders and not mutated decodes to exactly
  what was encoded; otherwise it is a **lie**.

Inputs come from two sources per family: *structured generation* (a valid
handover built with pykho's own encoders in a :class:`SparseMemory`, then
fields, pointers and lengths mutated) and *byte-level mutation* of seed
files (the real 7.2.13 artifacts under ``tests/data/fuzz`` and encoder
output).

Reproducibility: input ``i`` of family ``F`` under seed ``S`` is generated
from ``random.Random(f"{S}:{F}:{i}")`` and a per-family seed corpus built
from ``random.Random(f"{S}:{F}:corpus")``, so it does not depend on the
number of jobs, on timing or on which worker ran it.  Worker ``w`` of ``J``
runs indices ``w, w+J, w+2J, ...`` of every family, a time slice of each
family in turn (equal time per family; ``--max-inputs`` caps a family so
the others get its time).  Every failing input is saved as JSON under ``--crash-dir`` (the case
itself, plus seed/family/index) and :func:`replay` runs it again.

Time limit: each input runs under an interval timer (``ITIMER_PROF``, the
worker's CPU time, by default, so that a loaded machine does not turn slow
inputs into hangs; ``--clock wall`` for ``ITIMER_REAL``) whose signal raises
a ``BaseException`` that decoders cannot swallow; a parent watchdog kills a
worker that makes no progress for ``--hard-seconds`` of wall time and records
the input it was on.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import random
import resource
import shutil
import signal
import struct
import sys
import tarfile
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

from .errors import KhoDecodeError, KhoError
from .memory import SparseMemory
from .memory import sources as _sources
from .abi import fdt as _fdt
from .abi import root as _root
from .abi import radix as _radix
from .abi import chunks as _chunks
from .abi import structs as _structs
from . import clients as _clients

PAGE = 4096
MASK64 = (1 << 64) - 1

FAMILIES = ("fdt", "root", "radix", "chunks", "scratch", "setup_data", "chosen", "vmalloc", "blocks",
            "kexec_metadata", "luo", "memfd", "memblock", "kho_test", "debugfs_text",
            "mem_sparse", "mem_raw", "mem_elf")

#: outcome kinds that fail a campaign
BAD_KINDS = ("crash", "hang", "lie", "memory")


class InputTimeout(BaseException):
    """Raised by SIGALRM when one input runs past the limit (a BaseException so
    that no ``except Exception`` in a decoder can swallow it)."""


class Lie(Exception):
    """A pristine encoder output decoded to something else."""


# --------------------------------------------------------------------------
# seed files


def _data_dir() -> Path | None:
    env = os.environ.get("PYKHO_FUZZ_DATA")
    cands = [Path(env)] if env else []
    here = Path(__file__).resolve()
    cands += [here.parents[2] / "tests" / "data" / "fuzz", Path.cwd() / "tests" / "data" / "fuzz"]
    for c in cands:
        if c.is_dir():
            return c
    return None


_SEEDS: dict[str, bytes] | None = None


def seed_files() -> dict[str, bytes]:
    """The small real artifacts shipped in ``tests/data/fuzz`` (name -> bytes);
    empty when the directory is not found (the campaign then runs on encoder
    output only)."""
    global _SEEDS
    if _SEEDS is None:
        _SEEDS = {}
        d = _data_dir()
        if d is not None:
            for p in sorted(d.iterdir()):
                if p.is_file() and p.stat().st_size <= 1 << 20:
                    _SEEDS[p.name] = p.read_bytes()
    return _SEEDS


_ORACLE_MEM: SparseMemory | None | bool = False


def oracle_memory() -> SparseMemory | None:
    """Scenario A's RAM extract (radix tree at 0x306000, kho_test, setup_data)
    as a writable SparseMemory holding exactly the extracted ranges."""
    global _ORACLE_MEM
    if _ORACLE_MEM is False:
        _ORACLE_MEM = None
        d = _data_dir()
        p = d / "A-ram.sparse.tar.xz" if d else None
        if p is not None and p.is_file():
            src = _sources.SparseDir(str(p))
            m = SparseMemory(ram=list(src.ranges()), name="oracle A RAM")
            for s, e in src.ranges():
                m.write(s, src.read(s, e - s))
            _ORACLE_MEM = m
    return _ORACLE_MEM or None


ORACLE_A_MAP = 0x306000
ORACLE_A_ROOT_FDT = 0x317000
ORACLE_A_SETUP_DATA = 0x212B080

# --------------------------------------------------------------------------
# case (de)serialisation: plain JSON, bytes as base64, memories as pages


def _enc(v):
    if isinstance(v, SparseMemory):
        return {"__mem__": {"ram": [list(r) for r in v.ranges()], "fill": v.fill,
                            "pages": {str(k): base64.b64encode(bytes(p)).decode() for k, p in v.pages.items()}}}
    if isinstance(v, (bytes, bytearray)):
        return {"__b64__": base64.b64encode(bytes(v)).decode()}
    if isinstance(v, dict):
        return {"__dict__": [[_enc(k), _enc(x)] for k, x in v.items()]}
    if isinstance(v, (list, tuple)):
        return [_enc(x) for x in v]
    return v


def _dec(v):
    if isinstance(v, dict):
        if "__mem__" in v:
            d = v["__mem__"]
            m = SparseMemory(ram=[tuple(r) for r in d["ram"]], fill=d["fill"])
            m.pages = {int(k): bytearray(base64.b64decode(p)) for k, p in d["pages"].items()}
            return m
        if "__b64__" in v:
            return base64.b64decode(v["__b64__"])
        if "__dict__" in v:
            return {_dec(k): _dec(x) for k, x in v["__dict__"]}
        return {k: _dec(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_dec(x) for x in v]
    return v


def case_to_json(case: dict) -> str:
    return json.dumps(_enc(case), sort_keys=True)


def case_from_json(text: str) -> dict:
    return _dec(json.loads(text))


def case_size(case: dict) -> int:
    """Bytes of input in a case (blobs, files and written memory pages)."""
    n = 0
    for v in case.values():
        if isinstance(v, (bytes, bytearray, str)):
            n += len(v)
        elif isinstance(v, SparseMemory):
            n += PAGE * len(v.pages)
        elif isinstance(v, dict):
            n += sum(len(x) for x in v.values() if isinstance(x, (bytes, str)))
    return n


# --------------------------------------------------------------------------
# interesting values and byte-level mutation

I32 = (0, 1, 2, 3, 4, 8, 9, 16, 0x10, 0x11, 0x28, 0x38, 0x48, 0x7F, 0x80, 0xFF, 0x100, 0xFFF, 0x1000, 0x1001,
       0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 0xFFFFFFF8, 0xFFFFFFFC,
       0xFFFFFFFF, 0xD00DFEED, 16, 17, 255, 256)
I64_BASE = (0, 1, 7, 8, 0xFFF, 0x1000, 0x1008, 0xFFFF_FFFF, 1 << 32, 1 << 40, (1 << 52) - 1, 1 << 52, 1 << 56,
            1 << 63, (1 << 63) - 1, MASK64, MASK64 - 7, MASK64 - 0xFFF, 0xDEADBEEF000, 0x8000_0000_0000)


def _geo(rng: random.Random, p: float = 0.5, cap: int = 8) -> int:
    n = 1
    while n < cap and rng.random() < p:
        n += 1
    return n


def _i32(rng, n_len: int = 0) -> int:
    r = rng.random()
    if r < 0.6:
        return rng.choice(I32)
    if r < 0.8 and n_len:
        return max(0, n_len + rng.randint(-16, 16)) & 0xFFFFFFFF
    return rng.getrandbits(32) if rng.random() < 0.5 else rng.randrange(0, 1 << rng.randint(1, 16))


def _i64(rng) -> int:
    r = rng.random()
    if r < 0.6:
        return rng.choice(I64_BASE)
    if r < 0.8:
        return rng.randrange(0, 1 << rng.randint(1, 64))
    return (rng.getrandbits(64 - 12) << 12) & MASK64


def mutate_bytes(rng: random.Random, data: bytes, others=(), max_len: int = 1 << 16, fdt_aware: bool = True) -> bytes:
    """Apply 1..8 random byte-level operations (AFL-style plus FDT header fields)."""
    b = bytearray(data)
    for _ in range(_geo(rng, 0.55)):
        op = rng.randrange(14)
        n = len(b)
        if op == 0 and n:                        # flip a bit
            i = rng.randrange(n)
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:                      # interesting byte
            b[rng.randrange(n)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, 0x2F, 0x40, 0x2C, 0x3A)) \
                if rng.random() < 0.7 else rng.randrange(256)
        elif op == 2 and n >= 4:                 # big-endian u32 (FDT cells, tokens, header)
            i = rng.randrange(0, n - 3) & ~3 if rng.random() < 0.8 else rng.randrange(0, n - 3)
            v = rng.choice((1, 2, 3, 4, 9)) if rng.random() < 0.2 else _i32(rng, n)
            b[i:i + 4] = struct.pack(">I", v)
        elif op == 3 and n >= 8:                 # little-endian u64 (KHO values)
            i = rng.randrange(0, n - 7) & ~7 if rng.random() < 0.8 else rng.randrange(0, n - 7)
            b[i:i + 8] = struct.pack("<Q", _i64(rng))
        elif op == 4:                            # insert bytes
            i = rng.randrange(n + 1)
            k = rng.choice((1, 2, 4, 8, 12, 16, rng.randrange(1, 256)))
            ins = bytes(rng.randrange(256) for _ in range(k)) if rng.random() < 0.5 else bytes(k)
            b[i:i] = ins
        elif op == 5 and n:                      # delete a range
            i = rng.randrange(n)
            del b[i:i + rng.choice((1, 4, 8, 16, rng.randrange(1, n + 1)))]
        elif op == 6 and n:                      # copy a range elsewhere
            i, j = rng.randrange(n), rng.randrange(n)
            k = rng.randrange(1, min(64, n) + 1)
            chunk = b[i:i + k]
            if rng.random() < 0.5:
                b[j:j] = chunk
            else:
                b[j:j + len(chunk)] = chunk
        elif op == 7 and n:                      # truncate
            del b[rng.randrange(n):]
        elif op == 8:                            # extend
            k = rng.choice((1, 8, 40, 64, 4096 - n % 4096 if n % 4096 else 1, rng.randrange(1, 512)))
            b += bytes(k) if rng.random() < 0.6 else bytes(rng.randrange(256) for _ in range(min(k, 512)))
        elif op == 9 and others:                 # splice with another seed
            o = rng.choice(others)
            if o:
                i, j = rng.randrange(n + 1), rng.randrange(len(o))
                b[i:] = o[j:j + rng.randrange(1, len(o) - j + 1)]
        elif op == 10 and fdt_aware and n >= 40:  # FDT header field
            f = rng.randrange(10)
            b[4 * f:4 * f + 4] = struct.pack(">I", _i32(rng, n))
        elif op == 11 and n >= 4:                # repeat a u32 pattern (token runs)
            i = rng.randrange(0, n - 3) & ~3
            tok = struct.pack(">I", rng.choice((1, 2, 3, 4, 9)))
            b[i:i] = tok * rng.randrange(1, 64)
        elif op == 12 and n:                     # fill a span with one byte
            i = rng.randrange(n)
            k = rng.randrange(1, min(256, n - i) + 1)
            b[i:i + k] = bytes([rng.choice((0, 0xFF, 0x41))]) * k
        elif op == 13 and n >= 2:                # swap two bytes / nibble
            i, j = rng.randrange(n), rng.randrange(n)
            b[i], b[j] = b[j], b[i]
    if len(b) > max_len:
        del b[max_len:]
    return bytes(b)


# --------------------------------------------------------------------------
# memory helpers


class Bump:
    """A deterministic page allocator over a SparseMemory (zeroed pages)."""

    def __init__(self, rng: random.Random, mem: SparseMemory, base: int | None = None, fail: float = 0.0):
        self.rng = rng
        self.mem = mem
        self.at = base if base is not None else rng.randrange(0x100, 0x8000) << 12
        self.fail = fail
        self.pages: list[int] = []

    def page(self):
        if self.fail and self.rng.random() < self.fail:
            return None
        if self.rng.random() < 0.3:
            self.at += PAGE * self.rng.randrange(1, 8)
        p = self.at
        self.at += PAGE
        self.pages.append(p)
        return p     # never-written pages read as zero

    def alloc(self, size: int):
        if size >= PAGE:
            p = self.page()
            self.at += ((size - 1) // PAGE) * PAGE
            return p
        # small objects: size-aligned inside fresh pages (kmalloc-like)
        if not hasattr(self, "_small") or self._small + size > self._small_end:
            p = self.page()
            self._small, self._small_end = p, p + PAGE
        p = self._small
        self._small += size
        return p

    def free(self, p):
        pass


def _w(mem, phys: int, data: bytes) -> None:
    """Write into a case's memory; a write where RAM was unmapped is dropped."""
    try:
        mem.write(phys, data)
    except KhoDecodeError:
        pass


def _w64(mem, phys: int, value: int) -> None:
    _w(mem, phys, struct.pack("<Q", value & MASK64))


def new_mem(rng: random.Random, size_log2: int | None = None) -> SparseMemory:
    top = 1 << (size_log2 or rng.choice((32, 34, 36, 40)))
    return SparseMemory(ram=[(0, top)])


def clone(mem: SparseMemory) -> SparseMemory:
    m = SparseMemory(ram=list(mem.ranges()), fill=mem.fill, name=mem.name)
    m.pages = {k: bytearray(v) for k, v in mem.pages.items()}
    return m


def _ptr(rng: random.Random, mem: SparseMemory, targets: list[int], here: int | None = None) -> int:
    """A pointer-ish value: another structure, itself, a neighbour, outside RAM, unaligned, huge."""
    r = rng.random()
    ram_end = mem.ranges()[-1][1]
    if targets and r < 0.45:
        t = rng.choice(targets)
        return (t + rng.choice((0, 0, 0, 8, 16, -8, 1, PAGE, -PAGE, 0x800))) & MASK64
    if here is not None and r < 0.55:
        return here
    if r < 0.65:
        return (ram_end + rng.choice((-PAGE, -8, -1, 0, PAGE, 1 << 30))) & MASK64
    if r < 0.75:
        return rng.randrange(0, ram_end) & ~(PAGE - 1)
    return _i64(rng)


# operation weights of mutate_memory: field writes dominate; whole-page fills
# (which turn a leaf into 32768 blocks) are rarer
_MEM_OPS = (0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 6, 7, 7, 8, 9, 10)


def mutate_memory(rng: random.Random, mem: SparseMemory, targets: list[int], nops: int | None = None,
                  extra_ptrs: list[int] = ()) -> list[str]:
    """Mutate fields of the structures in ``targets`` (page-granular) in place.
    Returns a description of the operations."""
    log = []
    pool = list(targets) + list(extra_ptrs)
    for _ in range(nops or _geo(rng, 0.5, 6)):
        if not targets:
            break
        t = rng.choice(targets)
        base = t & ~(PAGE - 1)
        op = rng.choice(_MEM_OPS)
        try:
            if op <= 2:                          # a u64 field near the start (headers) or anywhere
                off = rng.choice((0, 8, 16, 24, 32)) if rng.random() < 0.5 else rng.randrange(0, PAGE // 8) * 8
                v = _ptr(rng, mem, pool, t)
                _w64(mem, t + off if t + off + 8 <= base + PAGE else base + off, v)
                log.append(f"u64 0x{t:x}+{off}=0x{v:x}")
            elif op == 3:                        # u32 field (order, num_elms, count, type, len)
                off = rng.choice((8, 12, 16, 20, 24, 28))
                v = _i32(rng)
                _w(mem, t + off, struct.pack("<I", v))
                log.append(f"u32 0x{t:x}+{off}=0x{v:x}")
            elif op == 4:                        # flip bits
                off = rng.randrange(0, PAGE)
                old = mem.read(base + off, 1)[0]
                _w(mem, base + off, bytes([old ^ (1 << rng.randrange(8))]))
                log.append(f"flip 0x{base + off:x}")
            elif op == 5:                        # zero the page
                mem.zero(base, PAGE)
                log.append(f"zero 0x{base:x}")
            elif op == 6:                        # fill with a byte
                v = rng.choice((0xFF, 0xA5, 0x01))
                _w(mem, base, bytes([v]) * PAGE)
                log.append(f"fill 0x{base:x} {v:#x}")
            elif op == 7:                        # random bytes in a span
                off = rng.randrange(0, PAGE)
                k = rng.randrange(1, min(256, PAGE - off) + 1)
                _w(mem, base + off, bytes(rng.randrange(256) for _ in range(k)))
                log.append(f"rand 0x{base + off:x}+{k}")
            elif op == 8 and len(targets) > 1:   # copy one structure over another
                src = rng.choice(targets) & ~(PAGE - 1)
                _w(mem, base, mem.read(src, PAGE))
                log.append(f"copy 0x{src:x}->0x{base:x}")
            elif op == 9:                        # shrink RAM so that this page is outside
                rs = [(s, e) for s, e in mem.ranges()]
                new = []
                for s, e in rs:
                    if s <= base < e:
                        if s < base:
                            new.append((s, base))
                        if base + PAGE < e and rng.random() < 0.7:
                            new.append((base + PAGE, e))
                    else:
                        new.append((s, e))
                if new:
                    m2 = SparseMemory(ram=new, fill=mem.fill, name=mem.name)
                    mem._ram = m2._ram           # same object identity for the caller
                    mem._starts_cache = None
                    log.append(f"unmap 0x{base:x}")
            elif op == 10:                       # self-pointer at the start (cycles)
                _w64(mem, t, t)
                log.append(f"self 0x{t:x}")
        except KhoDecodeError:
            # the target was already unmapped by an earlier operation
            log.append("skip")
    return log


# --------------------------------------------------------------------------
# FDT generation


_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-_,.+@#"


def _rand_name(rng) -> str:
    r = rng.random()
    if r < 0.1:
        return ""
    if r < 0.2:
        return rng.choice(("compatible", "fdt", "preserved-data", "blob-size", "preserved-memory-map",
                           "memblock", "LUO", "kho_test", "kexec-metadata", "chosen", "data", "start", "size"))
    n = rng.choice((1, 2, 5, 8, 16, 31, 64, rng.randrange(1, 200)))
    return "".join(rng.choice(_NAME_CHARS) for _ in range(n))


def _rand_value(rng) -> bytes | str:
    r = rng.random()
    if r < 0.25:
        return struct.pack("<Q", _i64(rng))
    if r < 0.4:
        return struct.pack(">I", _i32(rng))
    if r < 0.55:
        return rng.choice(("kho-v1", "kho-v2", "kho-v3", "kho-v4", "memblock-v1", "reserve-mem-v1",
                           "kho-test-v1", "luo-v5", ""))
    if r < 0.65:
        return b""
    return bytes(rng.randrange(256) for _ in range(rng.choice((1, 3, 7, 9, 16, 73, rng.randrange(0, 600)))))


def random_fdt(rng: random.Random, size: int = 1 << 16) -> bytes:
    """A random valid FDT written with libfdt's sequential-write mode: random
    names/properties, sometimes very deep or very wide."""
    shape = rng.random()
    sw = _fdt.FdtSw(size)
    sw.finish_reservemap()
    sw.begin_node("")
    if shape < 0.08:                 # a deep chain
        depth = rng.choice((64, 200, 999, 1100, 3000, rng.randrange(2, 4000)))
        name = rng.choice(("a", "n", ""))
        for _ in range(depth):
            if sw.begin_node(name or "x") < 0:
                break
        for _ in range(depth):
            sw.end_node()
    elif shape < 0.14:               # wide
        for k in range(rng.choice((100, 1000, 3000))):
            sw.begin_node(f"n{k}")
            sw.property("fdt", struct.pack("<Q", k << 12))
            sw.end_node()
    else:
        def node(d):
            for _ in range(rng.randrange(0, 6)):
                v = _rand_value(rng)
                name = _rand_name(rng) or "p"
                if isinstance(v, str):
                    sw.property_string(name, v)
                else:
                    sw.property(name, v)
            if d < 6:
                for _ in range(rng.randrange(0, 4 if d < 3 else 2)):
                    sw.begin_node(_rand_name(rng) or "c")
                    node(d + 1)
                    sw.end_node()
        node(0)
    sw.end_node()
    sw.finish()
    if sw.err:
        return b""
    return sw.blob()


def _profiles():
    from . import profiles
    return [profiles.PROFILES[n] for n in profiles.PROFILES]


def random_root(rng: random.Random) -> bytes:
    """A root FDT built with the generation's own call sequence."""
    profs = _profiles()
    p = rng.choice(profs)
    subs = [(rng.choice(("memblock", "LUO", "kho_test", "kexec-metadata", _rand_name(rng) or "x")),
             rng.randrange(0, 1 << 36) & ~0xFFF) for _ in range(rng.randrange(0, 6))]
    mm = rng.choice((0, rng.randrange(1, 1 << 36) & ~0xFFF, _i64(rng)))
    if p.fdt_built_at == "finalize":
        blob, err = _root.build_root_at_finalize(p, mm, subs)
        return blob
    page = _root.build_root_at_boot(p, mm)
    for name, phys in subs:
        page.add_subtree(name, phys, rng.randrange(0, 1 << 16))
    if subs and rng.random() < 0.3:
        page.remove_subtree(subs[0][1])
    return bytes(page.buf) if rng.random() < 0.3 else page.blob()


# --------------------------------------------------------------------------
# families: corpus (built once per worker), generator (one input), runner


def _blob_corpus(rng, names, extra):
    seeds = seed_files()
    out = [seeds[n] for n in names if n in seeds]
    out += extra
    return [b for b in out if b]


class Family:
    name = ""
    mutated_share = 0.85   # share of inputs that are mutated (the rest are pristine)

    def corpus(self, rng):
        return []

    def generate(self, rng, corpus) -> dict:
        raise NotImplementedError

    def run(self, case) -> str:
        raise NotImplementedError


# ---- FDT blob families ------------------------------------------------------


class FdtFamily(Family):
    name = "fdt"

    def corpus(self, rng):
        names = [n for n in seed_files() if n.endswith((".dtb", "fdt", "kho_test", "memblock", "page.bin"))]
        extra = [random_fdt(rng) for _ in range(24)]
        extra += [random_root(rng) for _ in range(8)]
        extra.append(_structs.encode_chosen(0x1000, 0x2000, 0x30))
        extra.append(_clients.encode_memblock([_clients.ReserveMem("r", 0x1000, 0x2000)])[0])
        return _blob_corpus(rng, names, extra)

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


class RootFamily(Family):
    name = "root"

    def corpus(self, rng):
        names = ("A-root.dtb", "B-root.dtb", "A-debugfs-fdt", "B-debugfs-fdt", "C-zero-fdt-page.bin",
                 "C-compat-kho-v3-page.bin", "C-zero-mem-map-page.bin")
        return _blob_corpus(rng, names, [random_root(rng) for _ in range(32)])

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
            _w(mem, phys, b)
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


class ChosenFamily(Family):
    name = "chosen"

    def corpus(self, rng):
        out = []
        for _ in range(16):
            ac, sc = rng.choice((1, 2)), rng.choice((1, 2))
            out.append(_structs.encode_chosen(rng.randrange(0, 1 << (32 * ac)), rng.randrange(0, 1 << (32 * ac)),
                                              rng.randrange(0, 1 << (32 * sc)), ac, sc,
                                              rng.randrange(0, 1 << (32 * sc))))
        for _ in range(8):   # odd cell counts and property lengths
            cells = lambda: struct.pack(">I", _i32(rng))  # noqa: E731
            blob, err = _fdt.build(
                [("#address-cells", cells()), ("#size-cells", cells())],
                [("chosen", [("linux,kho-fdt", b"".join(cells() for _ in range(rng.randrange(0, 6)))),
                             ("linux,kho-scratch", b"".join(cells() for _ in range(rng.randrange(0, 6))))])])
            if blob:
                out.append(blob)
        return out

    def generate(self, rng, corpus):
        b = rng.choice(corpus)
        if rng.random() < 0.85:
            b = mutate_bytes(rng, b, corpus, max_len=2 * PAGE)
        return {"blob": b}

    def run(self, case):
        got = _structs.decode_chosen(case["blob"])
        return "ok" if got is not None else "ignored"


class MemblockFamily(Family):
    name = "memblock"

    def corpus(self, rng):
        extra = []
        for _ in range(16):
            regs = [_clients.ReserveMem(_rand_name(rng) or "r", _i64(rng), _i64(rng))
                    for _ in range(rng.randrange(0, 5))]
            try:
                blob, err = _clients.encode_memblock(regs)
            except Exception:
                continue
            if blob:
                extra.append(blob)
        return _blob_corpus(rng, ("B-sub-memblock",), extra)

    def generate(self, rng, corpus):
        b = rng.choice(corpus)
        pristine = rng.random() < 0.1
        if not pristine:
            b = mutate_bytes(rng, b, corpus, max_len=2 * PAGE)
        return {"blob": b}

    def run(self, case):
        regs = _clients.decode_memblock(case["blob"])
        return "ok" if regs is not None else "none"


class KexecMetadataFamily(Family):
    name = "kexec_metadata"

    def corpus(self, rng):
        extra = [_structs.KexecMetadata(rng.choice((1, 1, 0, 2)), "7.2.%d" % rng.randrange(100),
                                        rng.getrandbits(32)).pack() for _ in range(8)]
        return _blob_corpus(rng, ("B-sub-kexec-metadata",), extra)

    def generate(self, rng, corpus):
        b = rng.choice(corpus)
        if rng.random() < 0.9:
            b = mutate_bytes(rng, b, corpus, max_len=256, fdt_aware=False)
        return {"blob": b}

    def run(self, case):
        m = _structs.decode_kexec_metadata(case["blob"])
        m.pack()
        return "ok"


class ScratchFamily(Family):
    name = "scratch"

    def corpus(self, rng):
        out = []
        for _ in range(8):
            areas = [_structs.KhoScratch(_i64(rng), _i64(rng)) for _ in range(rng.randrange(0, 6))]
            out.append(_structs.encode_scratch(areas))
        return out

    def generate(self, rng, corpus):
        b = rng.choice(corpus)
        if rng.random() < 0.9:
            b = mutate_bytes(rng, b, corpus, max_len=1024, fdt_aware=False)
        return {"blob": b}

    def run(self, case):
        areas, rest = _structs.decode_scratch(case["blob"])
        if len(areas) * 16 + rest != len(case["blob"]) or not 0 <= rest < 16:
            raise Lie(f"decode_scratch: {len(areas)} areas + {rest} bytes for {len(case['blob'])}")
        for a in areas:
            a.end
        return "ok"


class DebugfsTextFamily(Family):
    name = "debugfs_text"

    def corpus(self, rng):
        extra = [_structs.format_debugfs_scratch([_i64(rng) for _ in range(rng.randrange(0, 5))]).encode()
                 for _ in range(8)]
        names = [n for n in seed_files() if "scratch_" in n]
        return _blob_corpus(rng, names, extra)

    def generate(self, rng, corpus):
        b = rng.choice(corpus)
        r = rng.random()
        if r < 0.8:
            b = mutate_bytes(rng, b, corpus, max_len=4096, fdt_aware=False)
        elif r < 0.9:
            b = b"".join(rng.choice((b"0x", b"0X", b"-0x1", b"0x_1", b" ", b"\t", b"\n", b"\r\n", b"0x" + b"f" * 40,
                                     b"\xff", b"\x00", b"0x1_0", b"\xe2\x80\xa8", b"\x0b", b"0x\xd9\xa0", b"1"))
                         for _ in range(rng.randrange(1, 40)))
        text = b.decode("utf-8", "replace") if rng.random() < 0.7 else b.decode("latin-1")
        return {"text": text, "name": rng.choice(("scratch_phys", "scratch_len"))}

    def run(self, case):
        vals = _structs.parse_debugfs_scratch(case["text"], case["name"])
        if any(not isinstance(v, int) for v in vals):
            raise Lie("non-integer value")
        return "ok"


# ---- memory structure families --------------------------------------------


def _count_leaves(walk) -> int:
    """Walk every leaf of a radix or chunk walk; the number of blocks."""
    n = 0
    for _order, physs in walk.leaves():
        n += len(physs)
    return n


class RadixFamily(Family):
    name = "radix"

    def corpus(self, rng):
        out = []
        om = oracle_memory()
        if om is not None:
            blocks = sorted(_radix.RadixWalk(om, ORACLE_A_MAP, strict=True).blocks())
            w = _radix.RadixWalk(om, ORACLE_A_MAP)
            list(w.blocks())
            out.append({"mem": om, "root": ORACLE_A_MAP, "nodes": [n.phys for n in w.nodes], "expect": blocks})
        for _ in range(12):
            mem = new_mem(rng, 40)
            alloc = Bump(rng, mem)
            blocks = set()
            for _ in range(rng.choice((1, 2, 4, 8, 20, 40, rng.randrange(1, 120)))):
                order = rng.choice((0, 0, 0, 1, 2, 3, 4, 9, 10, rng.randrange(0, 19)))
                phys = (rng.randrange(0, 1 << 38) >> (12 + order)) << (12 + order)
                blocks.add((phys, order))
            tree = _radix.encode(sorted(blocks), mem, alloc.page)
            out.append({"mem": mem, "root": tree.root, "nodes": list(tree.nodes), "expect": sorted(blocks)})
        return out

    def generate(self, rng, corpus):
        r = rng.random()
        if r < 0.1:
            return self._encode_case(rng)
        base = rng.choice(corpus)
        mem = clone(base["mem"])
        if r < 0.15:
            return {"mem": mem, "root": base["root"], "expect": base["expect"]}
        nodes = base["nodes"]
        log = mutate_memory(rng, mem, nodes)
        root = base["root"]
        if rng.random() < 0.1:
            root = _ptr(rng, mem, nodes)
            log.append(f"root=0x{root:x}")
        if rng.random() < 0.05:
            # amplification probe: every level-1 entry of one table points to the same leaf
            t = rng.choice(nodes)
            _w(mem, t, struct.pack("<Q", rng.choice(nodes)) * 512)
            log.append(f"amplify 0x{t:x}")
        return {"mem": mem, "root": root, "ops": log}

    def _encode_case(self, rng):
        """Encoder fuzz: random adds/deletes with failing allocations; the
        walk must show exactly the blocks whose add succeeded."""
        mem = new_mem(rng, 40)
        alloc = Bump(rng, mem, fail=rng.choice((0.0, 0.05, 0.3)))
        root = None
        while root is None:
            root = alloc.page()
        tree = _radix.RadixTree(mem, alloc.page, alloc.free, root=root)
        present = set()
        for _ in range(rng.randrange(1, 60)):
            order = rng.choice((0, 1, 2, 10, rng.randrange(0, 53)))
            phys = (rng.randrange(0, 1 << 52) >> (12 + order)) << (12 + order)
            if present and rng.random() < 0.2:
                phys, order = rng.choice(sorted(present))
                if tree.delete(phys, order):
                    present.discard((phys, order))
                continue
            if tree.add(phys, order) == 0:
                present.add((phys, order))
        return {"mem": mem, "root": root, "expect": sorted(present)}

    def run(self, case):
        mem, root = case["mem"], case["root"]
        w = _radix.RadixWalk(mem, root)
        # blocks() only flattens leaves(): the per-block tuples are built
        # where they are compared (unmutated inputs), mutated ones count
        got = list(w.blocks()) if "expect" in case else _count_leaves(w)
        if "expect" in case and sorted(got) != [tuple(x) for x in case["expect"]]:
            raise Lie(f"radix walk returned {len(got)} blocks, {len(case['expect'])} were encoded"
                      f" (problems: {[str(p) for p in w.problems[:3]]})")
        if "expect" in case and w.problems:
            raise Lie(f"pristine radix tree reported problems: {w.problems[0]}")
        _count_leaves(_radix.RadixWalk(mem, root, strict=True))
        return "ok"


class ChunksFamily(Family):
    name = "chunks"

    def corpus(self, rng):
        out = []
        for k in range(12):
            pb = rng.choice((4096, 32768))
            mem = new_mem(rng, 40)
            alloc = Bump(rng, mem)
            tr = _chunks.ChunkTracker(pb)
            # two lists long enough for several chunks (255 elements each);
            # the rest small, so that inputs stay cheap
            n = rng.randrange(300, 600) if k < 2 else rng.choice((1, 2, 5, 20, 50, rng.randrange(1, 120)))
            for _ in range(n):
                order = rng.choice((0, 0, 1, 2, 9, 10, rng.randrange(0, 11)))
                phys = (rng.randrange(0, 1 << 38) >> (12 + order)) << (12 + order)
                tr.add(phys, order)
            if rng.random() < 0.2 and tr.orders:
                o = rng.choice(sorted(tr.orders))
                for idx in tr.orders[o]:
                    tr.orders[o][idx].clear()
            first, chunk_pages = _chunks.encode(tr, mem, alloc.alloc)
            w = _chunks.ChunkWalk(mem, first, pb)
            list(w.leaves())
            out.append({"mem": mem, "first": first, "pb": pb, "chunks": chunk_pages,
                        "bitmaps": list(w.bitmaps), "expect": sorted(tr.blocks())})
        return out

    def generate(self, rng, corpus):
        base = rng.choice(corpus)
        mem = clone(base["mem"])
        if rng.random() < 0.1:
            return {"mem": mem, "first": base["first"], "pb": base["pb"], "expect": base["expect"]}
        targets = list(base["chunks"]) + list(base["bitmaps"][:64])
        log = mutate_memory(rng, mem, targets, extra_ptrs=base["bitmaps"][:16])
        first = base["first"]
        if rng.random() < 0.1:
            first = _ptr(rng, mem, targets)
        pb = base["pb"] if rng.random() < 0.9 else 4096 + 32768 - base["pb"]
        if rng.random() < 0.005 and base["chunks"]:
            # amplification probe: 255 elements sharing one full bitmap
            c = rng.choice(base["chunks"])
            bm = rng.choice(base["bitmaps"]) if base["bitmaps"] else c
            _w(mem, bm, b"\xff" * (pb // 8))
            _w(mem, c, struct.pack("<QII", 0, rng.randrange(0, 11), 255) + struct.pack("<QQ", 0, bm) * 255)
            log.append(f"amplify 0x{c:x}")
        return {"mem": mem, "first": first, "pb": pb, "ops": log}

    def run(self, case):
        mem, first, pb = case["mem"], case["first"], case["pb"]
        w = _chunks.ChunkWalk(mem, first, pb)
        got = list(w.blocks()) if "expect" in case else _count_leaves(w)
        if "expect" in case:
            if sorted(got) != [tuple(x) for x in case["expect"]] or w.problems:
                raise Lie(f"chunk walk returned {len(got)} blocks, {len(case['expect'])} were encoded")
        _chunks.guess_preserve_bits(mem, first)
        _count_leaves(_chunks.ChunkWalk(mem, first, pb, strict=True))
        return "ok"


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
            for _ in range(_geo(rng)):
                at = rng.choice(base["recs"])
                f = rng.randrange(6)
                if f == 0:
                    _w64(mem, at, _ptr(rng, mem, base["recs"], at))
                elif f == 1:
                    _w(mem, at + 8, struct.pack("<I", rng.choice((10, 10, 0, 1, _i32(rng)))))
                elif f == 2:
                    _w(mem, at + 12, struct.pack("<I", _i32(rng)))
                elif f == 3:
                    _w64(mem, at + 16 + 8 * rng.randrange(4), _i64(rng))
                elif f == 4:
                    first = _ptr(rng, mem, base["recs"])
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


def _build_vmalloc(rng, mem, alloc, nblocks: int, order: int, fill=None):
    """Blocks of ``1 << order`` pages + their kho_vmalloc chunk list."""
    physs = []
    for _ in range(nblocks):
        p = alloc.alloc(PAGE << order)
        physs.append(p)
        if fill is not None:
            mem.write(p, fill(p))
    desc, chunks = _structs.encode_vmalloc_chunks(mem, alloc.page, physs, order)
    return desc, chunks, physs


class VmallocFamily(Family):
    name = "vmalloc"

    def corpus(self, rng):
        out = []
        for _ in range(12):
            mem = new_mem(rng, 36)
            alloc = Bump(rng, mem)
            order = rng.choice((0, 0, 1, 2, 4, 10))
            n = rng.choice((0, 1, 5, 511, 512, 1023, rng.randrange(0, 300)))
            desc, chunks, physs = _build_vmalloc(rng, mem, alloc, n, order)
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
                first = _ptr(rng, mem, base["chunks"])
            elif f == 1:
                total = _i32(rng)
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
        blocks, chunks = _structs.decode_vmalloc(case["mem"], desc)
        if "expect" in case and blocks != list(case["expect"]):
            raise Lie(f"vmalloc: {len(blocks)} blocks decoded, {len(case['expect'])} encoded")
        return "ok"


class BlocksFamily(Family):
    name = "blocks"
    SIZES = (80, 64, 16, 48, 8, 1, 24, 2040, 4080)

    def corpus(self, rng):
        out = []
        for _ in range(12):
            mem = new_mem(rng, 36)
            alloc = Bump(rng, mem)
            es = rng.choice(self.SIZES)
            entries = [bytes(rng.randrange(256) for _ in range(min(es, 16))).ljust(es, b"\0")
                       for _ in range(rng.choice((0, 1, 3, 50, 51, 52, 200, rng.randrange(0, 600))))]
            head, pages = _structs.encode_blocks(mem, alloc.page, entries, es)
            out.append({"mem": mem, "head": head, "es": es, "pages": pages, "expect": entries})
        return out

    def generate(self, rng, corpus):
        base = rng.choice(corpus)
        mem = clone(base["mem"])
        head = base["head"]
        if rng.random() < 0.1:
            return {"mem": mem, "head": head, "es": base["es"], "expect": base["expect"]}
        pages = base["pages"] or [head or 0x10000]
        for _ in range(_geo(rng)):
            r = rng.random()
            p = rng.choice(pages)
            if r < 0.35:
                _w64(mem, p, _ptr(rng, mem, pages, p))
            elif r < 0.6:
                _w64(mem, p + 8, rng.choice((0, 1, 50, 51, 52, 255, 256, _i64(rng))))
            elif r < 0.65:
                head = _ptr(rng, mem, pages)
            else:
                mutate_memory(rng, mem, [p], 1)
        if rng.random() < 0.01:
            # a long chain: 2000..12000 blocks of 16 bytes each (next, count=1) in a few pages
            n = rng.choice((2000, 9999, 10001, 12000))
            at = (rng.randrange(0x100, 0x1000) << 12)
            chain = b"".join(struct.pack("<QQ", at + 16 * (k + 1) if k + 1 < n else 0, 1) for k in range(n))
            _w(mem, at, chain)
            head = at
        return {"mem": mem, "head": head, "es": base["es"]}

    def run(self, case):
        entries, pages = _structs.decode_blocks(case["mem"], case["head"], case["es"])
        if "expect" in case and entries != list(case["expect"]):
            raise Lie(f"blocks: {len(entries)} entries decoded, {len(case['expect'])} encoded")
        return "ok"


def _build_memfd(rng, mem, alloc, nr: int | None = None):
    """A memfd_luo_ser record and its folio array (vmalloc'd, order 0)."""
    nr = rng.choice((0, 1, 3, 20, 256, 257)) if nr is None else nr
    arr = b"".join(_clients.MEMFD_FOLIO_SER.pack((rng.randrange(1 << 30)) | (rng.randrange(4) << 52), k)
                   for k in range(nr))
    npages = (len(arr) + PAGE - 1) // PAGE
    desc, chunks, physs = _build_vmalloc(rng, mem, alloc, npages, 0)
    for k, p in enumerate(physs):
        mem.write(p, arr[k * PAGE:(k + 1) * PAGE])
    if not nr:
        desc = _structs.KhoVmalloc(0, 0, 0, 0)
        chunks = []
    rec = alloc.alloc(_clients.MEMFD_LUO_SER.size)
    mem.write(rec, _clients.MEMFD_LUO_SER.pack(rng.randrange(1 << 20), nr * PAGE, rng.getrandbits(32), 0, nr,
                                               desc.pack()))
    return rec, chunks + physs, nr


class MemfdFamily(Family):
    name = "memfd"

    def corpus(self, rng):
        out = []
        for _ in range(12):
            mem = new_mem(rng, 36)
            alloc = Bump(rng, mem)
            rec, targets, nr = _build_memfd(rng, mem, alloc)
            out.append({"mem": mem, "phys": rec, "targets": [rec] + targets, "nr": nr})
        return out

    def generate(self, rng, corpus):
        base = rng.choice(corpus)
        mem = clone(base["mem"])
        phys = base["phys"]
        if rng.random() < 0.1:
            return {"mem": mem, "phys": phys, "nr": base["nr"]}
        r = rng.random()
        if r < 0.5:
            f = rng.randrange(6)
            if f == 0:
                _w64(mem, phys + 24, rng.choice((0, 1, 255, 256, 257, 1 << 20, (1 << 20) + 1, _i64(rng))))
            elif f == 1:
                _w64(mem, phys + 32, _ptr(rng, mem, base["targets"]))
            elif f == 2:
                _w(mem, phys + 40, struct.pack("<I", _i32(rng)))
            elif f == 3:
                _w(mem, phys + 44, struct.pack("<HH", rng.getrandbits(16),
                                                 rng.choice((0, 1, 9, 10, 11, 0xFFFF))))
            elif f == 4:
                phys = _ptr(rng, mem, base["targets"])
            else:
                _w(mem, phys, bytes(rng.randrange(256) for _ in range(48)))
        if r > 0.3:
            mutate_memory(rng, mem, base["targets"])
        return {"mem": mem, "phys": phys}

    def run(self, case):
        out = _clients.decode_memfd(case["mem"], case["phys"])
        if "nr" in case and len(out["folios"]) != case["nr"]:
            raise Lie(f"memfd: {len(out['folios'])} folios decoded, {case['nr']} encoded")
        return "ok"


class LuoFamily(Family):
    name = "luo"

    def corpus(self, rng):
        out = []
        seeds = seed_files()
        if "B-sub-LUO" in seeds:
            out.append({"mem": SparseMemory(ram=[(0, 1 << 32)]), "data": seeds["B-sub-LUO"], "targets": []})
        for _ in range(12):
            mem = new_mem(rng, 36)
            alloc = Bump(rng, mem)
            targets = []
            sessions = []
            for s in range(rng.choice((0, 1, 2, 5, 60))):
                files = []
                for f in range(rng.choice((0, 1, 3, 64, 65))):
                    compat = rng.choice(("memfd-v2", "memfd-v1", "hugetlb-v1", ""))
                    data = 0
                    if compat.startswith("memfd") and rng.random() < 0.7 and f < 4:
                        data, tg, _nr = _build_memfd(rng, mem, alloc, rng.choice((0, 1, 3)))
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
                b[16:24] = struct.pack("<Q", _ptr(rng, mem, base["targets"]))
            elif f == 1 and len(b) >= 32:
                b[24:32] = struct.pack("<Q", _ptr(rng, mem, base["targets"]))
            else:
                b = bytearray(mutate_bytes(rng, bytes(b), fdt_aware=False, max_len=128))
            data = bytes(b)
        if base["targets"] and rng.random() < 0.8:
            t = base["targets"]
            for _ in range(_geo(rng)):
                p = rng.choice(t)
                r = rng.random()
                if r < 0.3:   # a files_pa / data / next pointer inside a record
                    off = rng.choice((0, 8, 16 + 64, 16 + 72, 16 + 48, 16 + 56))
                    _w64(mem, p + off, _ptr(rng, mem, t))
                elif r < 0.5:  # a count
                    off = rng.choice((8, 16 + 72, 8))
                    _w64(mem, p + off, rng.choice((0, 1, 50, 51, 63, 64, 65, _i64(rng))))
                else:
                    mutate_memory(rng, mem, [p], 1)
        return {"mem": mem, "data": data}

    def run(self, case):
        _clients.decode_luo(case["data"])
        luo = _clients.decode_luo(case["data"], mem=case["mem"])
        for s in luo.sessions:
            for f in s.files:
                f.memfd
        return "ok"


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
            alloc = Bump(rng, mem)
            nr = rng.choice((0, 1, 19, 512, rng.randrange(0, 100)))
            folios = [((rng.randrange(1 << 30) << 12) | rng.randrange(0, 11)) for _ in range(nr)]
            if rng.random() < 0.3:
                blob, err = _clients.encode_kho_test(nr, rng.getrandbits(32), inline=folios)
                targets = []
            else:
                arr = b"".join(struct.pack("<Q", v) for v in folios)
                order = rng.choice((0, 0, 1))
                npg = max(1, (len(arr) + (PAGE << order) - 1) // (PAGE << order))
                desc, chunks, physs = _build_vmalloc(rng, mem, alloc, npg, order)
                for k, p in enumerate(physs):
                    mem.write(p, arr[k * (PAGE << order):(k + 1) * (PAGE << order)])
                blob, err = _clients.encode_kho_test(nr, rng.getrandbits(32), folios_info=desc)
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


# ---- memory sources (files) -------------------------------------------------


class _Scratch:
    """A per-process scratch directory for file-backed inputs."""

    _dir: str | None = None
    _n = 0

    @classmethod
    def path(cls, suffix: str) -> str:
        if cls._dir is None or not os.path.isdir(cls._dir):
            base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
            cls._dir = tempfile.mkdtemp(prefix="pykho-fuzz-", dir=base)
        cls._n += 1
        return os.path.join(cls._dir, f"in{cls._n}{suffix}")

    @classmethod
    def cleanup(cls):
        if cls._dir:
            shutil.rmtree(cls._dir, ignore_errors=True)
            cls._dir = None


def _probe_memory(mem, rng_seed: int, hint: int | None = None):
    """Read a source the way the tools do: ranges, reads across range ends, a
    root FDT at the first range start, a short radix walk."""
    rng = random.Random(rng_seed)
    rs = mem.ranges()
    for s, e in rs[:8]:
        for at, n in ((s, 1), (s, min(64, e - s)), (e - 8, 16), (e - 1, 2), (s - 1, 2)):
            try:
                mem.read(at, n)
            except KhoDecodeError:
                pass
        mem.contains(s, e - s)
    for _ in range(4):
        try:
            mem.read(_i64(rng), rng.choice((1, 8, 40, PAGE)))
        except KhoDecodeError:
            pass
    at = hint if hint is not None else (rs[0][0] if rs else 0)
    try:
        blob = _root.read_root_from_memory(mem, at)
        _root.decode_root(blob)
    except KhoDecodeError:
        pass
    w = _radix.RadixWalk(mem, at, max_nodes=64)
    for _ in w.blocks():
        pass


def _small_payload(rng) -> bytes:
    r = rng.random()
    if r < 0.3:
        return random_root(rng)
    if r < 0.5:
        return bytes(rng.choice((0, 1, 100, 4096, 4100, 8192)))
    return bytes(rng.randrange(256) for _ in range(rng.choice((1, 16, 64, 512))))


class MemRawFamily(Family):
    name = "mem_raw"

    def corpus(self, rng):
        out = []
        seeds = seed_files()
        for n in ("C-zero-fdt-page.bin", "C-compat-kho-v3-page.bin", "C-zero-mem-map-page.bin"):
            if n in seeds:
                out.append(seeds[n])
        for _ in range(8):
            b = bytearray()
            for _ in range(rng.randrange(1, 4)):
                b += _small_payload(rng)
                b += bytes((-len(b)) % PAGE if rng.random() < 0.5 else 0)
            out.append(bytes(b))
        return out

    def generate(self, rng, corpus):
        b = rng.choice(corpus)
        if rng.random() < 0.8:
            b = mutate_bytes(rng, b, corpus, max_len=1 << 15)
        base = rng.choice((0, 0, 0x317000, 1 << 32, 1 << 52, (1 << 63), MASK64 - 0xFFF, MASK64, 0x123))
        spec_kind = rng.random()
        if spec_kind < 0.8:
            suffix = f"@0x{base:x}" if base or rng.random() < 0.5 else ""
        else:
            suffix = rng.choice(("@", "@x", "@-0x1000", "@0x", "@1e3", "@@0x1000", "@0b101", "@0o17", "@ 0x1000",
                                 "@0x" + "f" * 40, "@-1", "@0_0", "@\u0661"))
        return {"file": b, "suffix": suffix}

    def run(self, case):
        path = _Scratch.path(".bin")
        try:
            with open(path, "wb") as f:
                f.write(case["file"])
            mem = _sources.open_source(f"raw:{path}{case['suffix']}")
            _probe_memory(mem, len(case["file"]))
            mem.describe()
        finally:
            os.unlink(path)
        return "ok"


def build_elf(rng, segments: list[tuple[int, bytes]], extra_phdrs: int = 0) -> bytes:
    """An ELF64 core file with one PT_LOAD per (paddr, data) segment."""
    phnum = len(segments) + extra_phdrs
    phoff = 64
    data_off = phoff + 56 * phnum
    data_off = (data_off + 15) & ~15
    ehdr = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr += struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, phoff, 0, 0, 64, 56, phnum, 64, 0, 0)
    phdrs = b""
    body = b""
    for _ in range(extra_phdrs):
        phdrs += struct.pack("<IIQQQQQQ", 4, 0, data_off, 0, 0, 0, 0, 4)   # PT_NOTE, empty
    off = data_off
    for paddr, data in segments:
        phdrs += struct.pack("<IIQQQQQQ", 1, 7, off, 0xFFFF800000000000 + paddr, paddr, len(data), len(data), PAGE)
        body += data
        off += len(data)
    head = ehdr + phdrs
    return head + bytes(data_off - len(head)) + body


class MemElfFamily(Family):
    name = "mem_elf"

    def corpus(self, rng):
        out = []
        for _ in range(10):
            segs = []
            at = rng.randrange(0, 1 << 20) & ~0xFFF
            for _ in range(rng.randrange(0, 4)):
                d = _small_payload(rng)
                segs.append((at, d))
                at += rng.choice((len(d), len(d) + PAGE, -8 if len(d) > 8 else 0, 1 << 32))
            out.append(build_elf(rng, segs, rng.randrange(0, 2)))
        return out

    def generate(self, rng, corpus):
        b = bytearray(rng.choice(corpus))
        r = rng.random()
        if r < 0.4 and len(b) >= 64:
            # structured: an ELF header or program header field
            phnum = struct.unpack_from("<H", b, 56)[0]
            if rng.random() < 0.4 or not phnum:
                off, fmt = rng.choice(((4, "B"), (5, "B"), (32, "Q"), (54, "H"), (56, "H"), (16, "H")))
            else:
                ph = 64 + 56 * rng.randrange(phnum)
                off, fmt = rng.choice(((ph, "I"), (ph + 8, "Q"), (ph + 24, "Q"), (ph + 32, "Q"), (ph + 40, "Q")))
                if off + struct.calcsize(fmt) > len(b):
                    off, fmt = 56, "H"
            v = {"B": lambda: rng.choice((0, 1, 2, 3, 0xFF)), "H": lambda: rng.choice((0, 1, 55, 56, 57, 0xFFFF)),
                 "I": lambda: rng.choice((0, 1, 2, 4, 0x6474E550, 0xFFFFFFFF)),
                 "Q": lambda: _i64(rng)}[fmt]()
            struct.pack_into("<" + fmt, b, off, v)
        elif r < 0.9:
            b = bytearray(mutate_bytes(rng, bytes(b), fdt_aware=False, max_len=1 << 15))
        return {"file": bytes(b)}

    def run(self, case):
        path = _Scratch.path(".elf")
        try:
            with open(path, "wb") as f:
                f.write(case["file"])
            mem = _sources.open_source(f"elf:{path}")
            _probe_memory(mem, len(case["file"]))
        finally:
            os.unlink(path)
        return "ok"


def _tar_bytes(files: dict[str, bytes], mode: str = "w") -> bytes:
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode=mode) as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mtime = 0
            tf.addfile(ti, io.BytesIO(data))
    return bio.getvalue()


class MemSparseFamily(Family):
    name = "mem_sparse"

    def corpus(self, rng):
        out = []
        seeds = seed_files()
        if "A-ram.sparse.tar.xz" in seeds:
            out.append({"tar": seeds["A-ram.sparse.tar.xz"]})
        for _ in range(10):
            files = {}
            lines = ["# file\tphys_start\tlength"]
            at = rng.randrange(0, 1 << 24) & ~0xFFF
            for k in range(rng.randrange(0, 4)):
                d = _small_payload(rng)
                name = f"{at:012x}.bin"
                files[name] = d
                lines.append(f"{name}\t0x{at:x}\t0x{len(d):x}")
                at += len(d) + rng.choice((0, PAGE, -8 if len(d) > 8 else 0))
            files["MANIFEST.tsv"] = ("\n".join(lines) + "\n").encode()
            out.append({"files": files})
        return out

    def generate(self, rng, corpus):
        base = rng.choice(corpus)
        if "tar" in base:
            t = base["tar"]
            if rng.random() < 0.8:
                t = mutate_bytes(rng, t, fdt_aware=False, max_len=1 << 15)
            return {"tar": t}
        files = dict(base["files"])
        r = rng.random()
        if r < 0.5:
            lines = files["MANIFEST.tsv"].decode("utf-8", "replace").split("\n")
            for _ in range(_geo(rng)):
                k = rng.randrange(len(lines))
                parts = lines[k].split("\t")
                j = rng.randrange(max(1, len(parts)))
                while len(parts) <= j:
                    parts.append("")
                parts[j] = rng.choice((
                    "", "0", "-1", "-0x1000", "0x", "0x" + "f" * 20, "9" * 30, "1e3", "0x1_000", " 0x10", "0b11",
                    "0o17", "00", "08", "\u0661", "../x", "/etc/hostname", "a/../../b", "sub/f", ".", "..", "x\0y",
                    "MANIFEST.tsv", "\udcff", "0x%x" % _i64(rng), str(_i64(rng)), parts[j] * 2))
                lines[k] = "\t".join(parts) if rng.random() < 0.9 else " ".join(parts)
                if rng.random() < 0.1:
                    lines.insert(rng.randrange(len(lines) + 1), lines[k])
            files["MANIFEST.tsv"] = "\n".join(lines).encode("utf-8", "surrogateescape")
        elif r < 0.7 and len(files) > 1:
            name = rng.choice([n for n in files if n != "MANIFEST.tsv"])
            if rng.random() < 0.5:
                files[name] = files[name][:rng.randrange(len(files[name]) + 1)]
            else:
                del files[name]
        elif r < 0.8:
            files["MANIFEST.tsv"] = mutate_bytes(rng, files["MANIFEST.tsv"], fdt_aware=False, max_len=4096)
        kind = rng.choice(("dir", "dir", "tar", "tar-mutated", "tar.gz"))
        if kind == "dir":
            return {"files": files}
        safe = {n: d for n, d in files.items() if n and "\0" not in n}
        try:
            t = _tar_bytes(safe, "w:gz" if kind == "tar.gz" else "w")
        except (UnicodeError, ValueError):
            return {"files": files}
        if kind == "tar-mutated":
            t = mutate_bytes(rng, t, fdt_aware=False, max_len=1 << 15)
        return {"tar": t}

    def run(self, case):
        if "tar" in case:
            path = _Scratch.path(".tar")
            with open(path, "wb") as f:
                f.write(case["tar"])
            cleanup = lambda: os.unlink(path)  # noqa: E731
        else:
            path = _Scratch.path(".d")
            os.mkdir(path)
            for name, data in case["files"].items():
                # only plain names become files; odd names stay in the manifest only
                if name and "/" not in name and "\0" not in name and name not in (".", ".."):
                    try:
                        with open(os.path.join(path, name), "wb") as f:
                            f.write(data)
                    except (OSError, ValueError):
                        pass
            cleanup = lambda: shutil.rmtree(path, ignore_errors=True)  # noqa: E731
        try:
            mem = _sources.open_source(f"sparse:{path}")
            _probe_memory(mem, len(case.get("tar", b"")))
        finally:
            cleanup()
        return "ok"


REGISTRY: dict[str, Family] = {f.name: f for f in (
    FdtFamily(), RootFamily(), RadixFamily(), ChunksFamily(), ScratchFamily(), SetupDataFamily(),
    ChosenFamily(), VmallocFamily(), BlocksFamily(), KexecMetadataFamily(), LuoFamily(), MemfdFamily(),
    MemblockFamily(), KhoTestFamily(), DebugfsTextFamily(), MemSparseFamily(), MemRawFamily(),
    MemElfFamily())}
assert tuple(REGISTRY) == FAMILIES


# --------------------------------------------------------------------------
# running one input


_CORPORA: dict[tuple[int, str], list] = {}


def corpus_for(seed: int, family: str) -> list:
    key = (seed, family)
    c = _CORPORA.get(key)
    if c is None:
        c = REGISTRY[family].corpus(random.Random(f"{seed}:{family}:corpus"))
        _CORPORA[key] = c
    return c


def generate(seed: int, family: str, index: int) -> dict:
    """Input ``index`` of ``family`` under ``seed`` (deterministic)."""
    rng = random.Random(f"{seed}:{family}:{index}")
    return REGISTRY[family].generate(rng, corpus_for(seed, family))


_ARMED = [False]
#: what the per-input limit measures: "cpu" (the worker's CPU time, immune to
#: a loaded machine; ITIMER_PROF/SIGPROF) or "wall" (ITIMER_REAL/SIGALRM)
CLOCK = ["cpu"]


def _timer():
    if CLOCK[0] == "wall":
        return signal.ITIMER_REAL, signal.SIGALRM, time.perf_counter
    return signal.ITIMER_PROF, signal.SIGPROF, time.process_time


def _on_alarm(signum, frame):
    if _ARMED[0]:
        raise InputTimeout()


def call_with_limit(fn, limit: float):
    """``fn()`` under a time limit (CPU seconds by default, see :data:`CLOCK`):
    raises :class:`InputTimeout` when it runs past ``limit`` seconds (in Python code; a single long C call is
    interrupted when it returns).  The timer repeats every 50 ms until
    disarmed, so a timeout swallowed where Python cannot propagate an
    exception (a ``__del__``, a weakref callback) is raised again."""
    import threading
    if not limit or limit <= 0 or not hasattr(signal, "setitimer") \
            or threading.current_thread() is not threading.main_thread():
        return fn()
    which, signum, _clock = _timer()
    if signal.getsignal(signum) is not _on_alarm:
        signal.signal(signum, _on_alarm)
    _ARMED[0] = True
    signal.setitimer(which, limit, 0.05)
    try:
        try:
            return fn()
        finally:
            _ARMED[0] = False
    finally:
        _ARMED[0] = False
        signal.setitimer(which, 0)


def _maxrss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _chain(exc: BaseException) -> str:
    """The pykho functions on the traceback, outermost first ("via decode_luo > decode_blocks")."""
    names = [fr.name for fr in traceback.extract_tb(exc.__traceback__)
             if "pykho" in fr.filename and not fr.filename.endswith("fuzz.py")]
    return "via " + " > ".join(names) if names else "via ?"


def _signature(exc: BaseException, skip=("fuzz.py",)) -> str:
    """Exception type + innermost pykho frame (for de-duplication)."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = "?"
    for fr in reversed(tb):
        if "pykho" in fr.filename and not fr.filename.endswith(skip):
            where = f"{Path(fr.filename).name}:{fr.lineno}:{fr.name}"
            break
    else:
        if tb:
            fr = tb[-1]
            where = f"{Path(fr.filename).name}:{fr.lineno}:{fr.name}"
    return f"{type(exc).__name__}@{where}"


def execute(family: str, case: dict, limit: float = 1.0, rss_jump_kb: int | None = None):
    """Run one case: (kind, tag, detail) where kind is "result", "crash",
    "hang", "lie" or "memory" and tag is the result or error code (or the
    crash signature)."""
    fam = REGISTRY[family]
    rss0 = _maxrss_kb() if rss_jump_kb else 0
    clock = _timer()[2]
    t0 = clock()
    kind, tag, detail = "result", "ok", ""
    try:
        tag = call_with_limit(lambda: fam.run(case), limit)
    except InputTimeout as e:
        # the tag names where the time went (innermost pykho frame)
        kind, tag = "hang", _signature(e, ("fuzz.py", "base.py", "bits.py")).replace("InputTimeout", "timeout")
        detail = _chain(e) + "\n" + traceback.format_exc(limit=-12)
    except Lie as e:
        kind, tag, detail = "lie", f"Lie@{family}", str(e)
    except KhoDecodeError as e:
        tag = e.code
        str(e)   # the message must format
    except KhoError as e:
        tag = type(e).__name__
        str(e)
    except RecursionError as e:
        kind, tag, detail = "crash", _signature(e), _chain(e)[:300] + "\n" + traceback.format_exc(limit=-8)
    except Exception as e:  # noqa: BLE001 - this is what we are looking for
        kind, tag, detail = "crash", _signature(e), _chain(e) + "\n" + traceback.format_exc()
    elapsed = clock() - t0
    if kind == "result" and limit and elapsed > limit:
        kind, tag, detail = "hang", "slow", f"{elapsed:.2f} s ({CLOCK[0]} time)"
    if kind == "result" and rss_jump_kb:
        jump = _maxrss_kb() - rss0
        if jump > rss_jump_kb:
            kind, tag, detail = "memory", f"rss+{jump // 1024}MB", f"peak RSS grew by {jump // 1024} MiB"
    return kind, tag, detail


def save_failure(crash_dir: str, seed: int, family: str, index: int, kind: str, tag: str, detail: str,
                 case: dict | None) -> str:
    os.makedirs(crash_dir, exist_ok=True)
    h = hashlib.sha1(tag.encode()).hexdigest()[:8]
    path = os.path.join(crash_dir, f"{family}-{kind}-{h}-s{seed}-i{index}.json")
    doc = {"family": family, "seed": seed, "index": index, "kind": kind, "tag": tag, "detail": detail[-4000:],
           "case": _enc(case) if case is not None else None, "size": case_size(case) if case else None}
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    return path


def load_case(path: str) -> tuple[str, dict]:
    with open(path) as f:
        doc = json.load(f)
    case = _dec(doc["case"]) if doc.get("case") is not None else generate(doc["seed"], doc["family"], doc["index"])
    return doc["family"], case


def replay(path: str, limit: float | None = None, raise_errors: bool = True):
    """Run a saved input again.  With ``raise_errors`` the decoder's own
    exception propagates (a KhoDecodeError or the crash); otherwise returns
    ``(kind, tag, detail)`` as :func:`execute`."""
    family, case = load_case(path)
    if raise_errors:
        return REGISTRY[family].run(case)
    return execute(family, case, limit or 0)


# --------------------------------------------------------------------------
# workers and the campaign


#: seconds each worker spends on one family before moving to the next; every
#: family gets the same share of time, and a family that reached
#: ``--max-inputs`` drops out so the others get its share
SLICE = 0.25


def _limit_memory(mb: int):
    if not mb:
        return
    try:
        vm_kb = 0
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    vm_kb = int(line.split()[1])
        lim = vm_kb * 1024 + mb * (1 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    except (OSError, ValueError):
        pass


def _worker(wid: int, jobs: int, seed: int, families: list[str], limit: float, stop_at: float,
            max_per_family: int | None, resume: dict, skip: set, queue, hb, crash_dir: str, mem_mb: int,
            rss_jump_mb: int, keep: int, clock: str = "cpu"):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    CLOCK[0] = clock
    signal.signal(_timer()[1], _on_alarm)
    _limit_memory(mem_mb)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
    nxt = {f: resume.get(f, wid) for f in families}
    saved = Counter()
    # short campaigns use shorter slices so that every family gets rounds
    slice_s = max(0.01, min(SLICE, (stop_at - time.time()) / (8 * max(1, len(families)))))
    try:
        for f in families:
            corpus_for(seed, f)
        while time.time() < stop_at:
            active = [f for f in families if max_per_family is None or nxt[f] < max_per_family]
            if not active:
                break
            for fi, f in enumerate(families):
                if f not in active:
                    continue
                counts = Counter()
                bad = []
                n = 0
                t_start = time.perf_counter()
                t_end = t_start + slice_s
                while time.perf_counter() < t_end:
                    i = nxt[f]
                    if max_per_family is not None and i >= max_per_family:
                        break
                    nxt[f] += jobs
                    if (f, i) in skip:
                        continue
                    hb[3 * wid] = time.time()
                    hb[3 * wid + 1] = fi
                    hb[3 * wid + 2] = i
                    try:
                        case = generate(seed, f, i)
                    except Exception as e:  # noqa: BLE001 - a generator bug; report it, go on
                        counts[("generator-error", _signature(e))] += 1
                        n += 1
                        continue
                    kind, tag, detail = execute(f, case, limit, rss_jump_mb * 1024 if rss_jump_mb else None)
                    counts[(kind, tag)] += 1
                    n += 1
                    if kind in BAD_KINDS:
                        path = None
                        if saved[(f, kind, tag)] < keep:
                            saved[(f, kind, tag)] += 1
                            path = save_failure(crash_dir, seed, f, i, kind, tag, detail, case)
                        lines = detail.splitlines() if detail else [""]
                        bad.append((kind, tag, i, path, lines[-1], lines[0]))
                    if time.time() >= stop_at:
                        break
                queue.put(("batch", wid, f, n, dict(counts), bad, nxt[f], _maxrss_kb(),
                           time.perf_counter() - t_start))
                if time.time() >= stop_at:
                    break
    finally:
        hb[3 * wid] = -1.0
        queue.put(("done", wid, _maxrss_kb()))
        _Scratch.cleanup()


class Campaign:
    """A multi-process campaign; :meth:`run` returns the summary dict."""

    def __init__(self, seconds: float, families=None, jobs: int | None = None, seed: int = 0,
                 crash_dir: str = "fuzz-crashes", limit: float = 1.0, hard_seconds: float = 20.0,
                 max_per_family: int | None = None, mem_mb: int = 3072, rss_jump_mb: int = 256,
                 keep: int = 5, progress: float = 0.0, out=sys.stdout, clock: str = "cpu", first_index: int = 0):
        self.seconds = seconds
        self.first_index = first_index
        self.families = list(families or FAMILIES)
        self.jobs = max(1, jobs or os.cpu_count() or 1)
        self.seed = seed
        self.crash_dir = crash_dir
        self.limit = limit
        self.hard = max(hard_seconds, 3 * limit)
        self.max_per_family = max_per_family
        self.mem_mb = mem_mb
        self.rss_jump_mb = rss_jump_mb
        self.keep = keep
        self.progress = progress
        self.out = out
        self.clock = clock

    def run(self) -> dict:
        import multiprocessing as mp
        ctx = mp.get_context("fork")
        queue = ctx.Queue()
        hb = ctx.Array("d", 3 * self.jobs, lock=False)
        stop_at = time.time() + self.seconds
        t0 = time.time()
        inputs = Counter()
        results: dict[str, Counter] = {f: Counter() for f in self.families}
        bad: list[dict] = []
        peak_rss = {}
        busy = Counter()
        # worker w runs indices first_index + w, + jobs, ... of every family
        nxt: dict[int, dict] = {w: {f: self.first_index + w for f in self.families} for w in range(self.jobs)}
        skip: dict[int, set] = {w: set() for w in range(self.jobs)}
        procs = {}

        def start(w):
            p = ctx.Process(target=_worker, args=(w, self.jobs, self.seed, self.families, self.limit, stop_at,
                                                  self.max_per_family, nxt[w], skip[w], queue, hb,
                                                  self.crash_dir, self.mem_mb, self.rss_jump_mb, self.keep,
                                                  self.clock),
                            daemon=True)
            hb[3 * w] = time.time()
            p.start()
            procs[w] = p

        for w in range(self.jobs):
            start(w)
        done = set()
        last_progress = time.time()
        while len(done) < self.jobs:
            try:
                msg = queue.get(timeout=0.5)
            except Exception:  # queue.Empty
                msg = None
            now = time.time()
            if msg is not None:
                if msg[0] == "batch":
                    _, w, f, n, counts, bads, nx, rss, dt = msg
                    inputs[f] += n
                    busy[f] += dt
                    nxt[w][f] = nx
                    peak_rss[w] = max(peak_rss.get(w, 0), rss)
                    for (kind, tag), c in counts.items():
                        results[f][(kind, tag)] += c
                    for kind, tag, i, path, last, chain in bads:
                        bad.append({"family": f, "kind": kind, "tag": tag, "index": i, "path": path, "last": last,
                                    "chain": chain})
                elif msg[0] == "done":
                    _, w, rss = msg
                    peak_rss[w] = max(peak_rss.get(w, 0), rss)
                    done.add(w)
                    procs[w].join(timeout=5)
            # watchdog: a worker stuck in C code past the hard limit
            for w, p in list(procs.items()):
                if w in done:
                    continue
                ts = hb[3 * w]
                if not p.is_alive() and p.exitcode == 0:
                    # finished normally; its "done" message may still be in
                    # the queue (not a crash)
                    continue
                if not p.is_alive() and w not in done:
                    # died without saying so (killed by the OOM killer, a segfault in C)
                    self._record_dead(w, hb, results, bad, inputs, nxt, skip, "crash",
                                      f"worker died (exit code {p.exitcode})")
                    if time.time() < stop_at:
                        start(w)
                    else:
                        done.add(w)
                elif ts > 0 and now - ts > self.hard:
                    p.kill()
                    p.join(timeout=5)
                    self._record_dead(w, hb, results, bad, inputs, nxt, skip, "hang",
                                      f"no progress for {self.hard:.0f} s (killed)")
                    if time.time() < stop_at:
                        start(w)
                    else:
                        done.add(w)
            if self.progress and now - last_progress >= self.progress:
                last_progress = now
                tot = sum(inputs.values())
                nb = sum(1 for b in bad)
                print(f"[{now - t0:7.0f}s] {tot} inputs ({tot / max(now - t0, 1e-9):.0f}/s), "
                      f"min/family {min(inputs[f] for f in self.families)}, failures {nb}",
                      file=self.out, flush=True)
        for p in procs.values():
            p.join(timeout=5)
        wall = time.time() - t0
        child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        summary = {
            "seed": self.seed, "jobs": self.jobs, "seconds": self.seconds, "wall": wall, "limit": self.limit,
            "first_index": self.first_index, "max_index": self.max_per_family,
            "clock": self.clock,
            "families": self.families,
            "inputs": {f: inputs[f] for f in self.families},
            "busy_seconds": {f: round(busy[f], 4) for f in self.families},
            "results": {f: {f"{k}:{t}" if k != "result" else t: c for (k, t), c in sorted(results[f].items())}
                        for f in self.families},
            "failures": bad,
            "counts": {k: sum(c for f in self.families for (kk, _t), c in results[f].items() if kk == k)
                       for k in BAD_KINDS + ("generator-error",)},
            "peak_rss_kb": {str(w): r for w, r in sorted(peak_rss.items())},
            "peak_rss_children_kb": child_rss,
            "crash_dir": self.crash_dir,
        }
        return summary

    def _record_dead(self, w, hb, results, bad, inputs, nxt, skip, kind, why):
        fi, i = int(hb[3 * w + 1]), int(hb[3 * w + 2])
        f = self.families[fi]
        results[f][(kind, "killed")] += 1
        inputs[f] += 1
        path = None
        try:
            case = generate(self.seed, f, i)
            path = save_failure(self.crash_dir, self.seed, f, i, kind, "killed", why, case)
        except Exception:  # noqa: BLE001
            path = save_failure(self.crash_dir, self.seed, f, i, kind, "killed", why, None)
        bad.append({"family": f, "kind": kind, "tag": "killed", "index": i, "path": path, "last": why,
                    "chain": ""})
        skip[w].add((f, i))
        nxt[w][f] = max(nxt[w].get(f, w), i + self.jobs)


def format_summary(s: dict) -> str:
    lines = []
    fams = s["families"]
    lines.append(f"kho fuzz: seed {s['seed']}, {s['jobs']} jobs, {s['wall']:.1f} s wall, "
                 f"per-input limit {s['limit']} s ({s.get('clock', 'cpu')} time)"
                 + (f", inputs from index {s['first_index']}" if s.get("first_index") else ""))
    w = max(len(f) for f in fams)
    lines.append(f"{'family':<{w}}  {'inputs':>10}  {'/s':>7}  results by code")
    for f in fams:
        n = s["inputs"][f]
        busy = s["busy_seconds"].get(f) or 0
        rate = n / busy if busy else 0
        res = s["results"][f]
        top = sorted(res.items(), key=lambda kv: -kv[1])
        txt = ", ".join(f"{k} {v}" for k, v in top[:8]) + (f", ... ({len(top) - 8} more)" if len(top) > 8 else "")
        lines.append(f"{f:<{w}}  {n:>10}  {rate:>7.0f}  {txt}")
    tot = sum(s["inputs"].values())
    lines.append(f"total inputs {tot} ({tot / max(s['wall'], 1e-9):.0f}/s)")
    c = s["counts"]
    lines.append("crashes {crash}, hangs {hang}, lies {lie}, memory {memory}, generator errors {ge}".format(
        ge=c.get("generator-error", 0), **{k: c.get(k, 0) for k in BAD_KINDS}))
    peak = max([int(v) for v in s["peak_rss_kb"].values()] + [0])
    lines.append(f"peak RSS per worker: {peak / 1024:.0f} MiB (max over {len(s['peak_rss_kb'])} workers)")
    if s["failures"]:
        lines.append(f"failures (inputs saved under {s['crash_dir']}):")
        seen = Counter()
        for b in s["failures"]:
            key = (b["family"], b["kind"], b["tag"])
            seen[key] += 1
            if seen[key] <= 1:
                lines.append(f"  {b['family']} {b['kind']} {b['tag']} input {b['index']}: {b['last']} "
                             f"({b.get('chain', '')[:160]})"
                             + (f"  -> {b['path']}" if b["path"] else ""))
        dup = sum(v - 1 for v in seen.values())
        if dup:
            lines.append(f"  ({dup} more failures with the same signatures)")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# atheris (coverage-guided, optional)


def _instrument_pykho(atheris) -> int:
    """Coverage-instrument pykho's own functions (the decoders), not every
    loaded module (instrument_all takes minutes with numpy loaded)."""
    import inspect
    n = 0
    for name, mod in list(sys.modules.items()):
        if not name.startswith("pykho.") or name == "pykho.fuzz" or mod is None:
            continue
        for obj in list(vars(mod).values()):
            targets = []
            if inspect.isfunction(obj) and obj.__module__ == name:
                targets.append(obj)
            elif inspect.isclass(obj) and obj.__module__ == name:
                targets += [v for v in vars(obj).values() if inspect.isfunction(v)]
            for fn in targets:
                try:
                    atheris.instrument_func(fn)
                    n += 1
                except Exception:  # noqa: BLE001 - some code objects cannot be instrumented
                    pass
    return n


def run_atheris(family: str, seconds: float, seed: int, crash_dir: str, limit: float) -> int:
    """Coverage-guided fuzzing of one family with atheris: the fuzzer's bytes
    seed the generator's random stream (structured), or, when the first byte
    is 0, are the blob itself.  Like libFuzzer it stops at the first crash,
    hang, lie or memory finding (saved under ``crash_dir``, exit non-zero) and
    otherwise exits 0 after ``seconds``."""
    try:
        import atheris
    except ImportError:
        print("atheris is not installed (pip install atheris)", file=sys.stderr)
        return 2
    fam = REGISTRY[family]
    corpus = corpus_for(seed, family)
    found = [0]

    def one(data: bytes):
        rng = random.Random(data)
        try:
            case = fam.generate(rng, corpus)
        except Exception:  # noqa: BLE001
            return
        if "blob" in case and data[:1] == b"\x00":
            case = dict(case, blob=data[1:])
        kind, tag, detail = execute(family, case, limit, None)
        if kind in BAD_KINDS:
            found[0] += 1
            path = save_failure(crash_dir, seed, family, -1, kind, tag, detail, case)
            print(f"{kind} {tag}: {path}", file=sys.stderr)
            # libFuzzer stops at the first finding and exits non-zero
            raise RuntimeError(f"kho fuzz --atheris: {family} {kind} {tag}; input saved to {path}")

    os.makedirs(crash_dir, exist_ok=True)
    # libFuzzer's own (wall-clock) timeout only backs up our CPU-time limit
    args = [sys.argv[0], f"-max_total_time={int(seconds)}", f"-seed={seed or 1}", "-rss_limit_mb=4096",
            f"-timeout={max(30, int(limit * 30))}", f"-artifact_prefix={os.path.join(crash_dir, '')}"]
    _instrument_pykho(atheris)
    atheris.Setup(args, one)
    try:
        atheris.Fuzz()
    except SystemExit:
        pass
    return 1 if found[0] else 0


# --------------------------------------------------------------------------
# command line


def add_parser(subparsers):
    """Register the ``fuzz`` sub-command on an argparse sub-parsers object."""
    p = subparsers.add_parser("fuzz", help="run a seeded fuzz campaign over the decoders",
                              description=__doc__.split("\n\n")[0])
    configure_parser(p)
    return p


def configure_parser(p: argparse.ArgumentParser):
    p.add_argument("--seconds", type=float, default=60.0, help="campaign length (default 60)")
    p.add_argument("--family", action="append", choices=FAMILIES, metavar="F",
                   help=f"fuzz only this family (repeatable): {', '.join(FAMILIES)}")
    p.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 1, help="worker processes (default: all cores)")
    p.add_argument("--seed", type=int, default=0, help="campaign seed (default 0)")
    p.add_argument("--crash-dir", default="fuzz-crashes", help="where failing inputs are saved (default ./fuzz-crashes)")
    p.add_argument("--limit", type=float, default=1.0, help="per-input time limit in seconds (default 1)")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="what --limit measures: the worker's CPU time (default; a loaded machine does not "
                        "turn slow inputs into hangs) or wall-clock time")
    p.add_argument("--hard-seconds", type=float, default=20.0,
                   help="kill a worker that makes no progress for this long (default 20)")
    p.add_argument("--max-inputs", type=int, default=None,
                   help="stop each family at this input index (ends early when all are done)")
    p.add_argument("--first-index", type=int, default=0,
                   help="start each family at this input index (continue an earlier campaign of the same "
                        "seed: inputs are numbered, so two runs cover two index ranges)")
    p.add_argument("--mem-mb", type=int, default=3072, help="address-space headroom per worker in MiB (default 3072)")
    p.add_argument("--rss-jump-mb", type=int, default=256,
                   help="flag an input during which peak RSS grows by more than this (default 256)")
    p.add_argument("--keep", type=int, default=5, help="inputs saved per failure signature (default 5)")
    p.add_argument("--progress", type=float, default=0.0, help="print a progress line every N seconds")
    p.add_argument("--json", default=None, help="write the summary as JSON to this file")
    p.add_argument("--replay", default=None, metavar="PATH", help="run one saved input and show what it does")
    p.add_argument("--atheris", action="store_true",
                   help="coverage-guided mode with atheris (one family, one process)")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run the ``fuzz`` sub-command; 1 when anything crashed, hung, lied or blew memory."""
    if getattr(args, "replay", None):
        family, case = load_case(args.replay)
        kind, tag, detail = execute(family, case, args.limit)
        print(f"{args.replay}: family {family}, {kind}: {tag}")
        if detail:
            print(detail)
        return 1 if kind in BAD_KINDS else 0
    if getattr(args, "atheris", False):
        fams = args.family or ["fdt"]
        return run_atheris(fams[0], args.seconds, args.seed, args.crash_dir, args.limit)
    CLOCK[0] = getattr(args, "clock", "cpu")
    c = Campaign(args.seconds, args.family, args.jobs, args.seed, args.crash_dir, args.limit, args.hard_seconds,
                 args.max_inputs, args.mem_mb, args.rss_jump_mb, args.keep, args.progress, clock=CLOCK[0],
                 first_index=getattr(args, "first_index", 0))
    s = c.run()
    print(format_summary(s))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(s, f, indent=1, sort_keys=True)
    bad = sum(s["counts"].get(k, 0) for k in BAD_KINDS)
    return 1 if bad else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="kho fuzz", description=__doc__.split("\n\n")[0])
    configure_parser(p)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
