"""Byte-level and structure-level mutators.

:func:`mutate_bytes` applies AFL-style operations (plus FDT header fields) to
a blob; :func:`mutate_memory` rewrites fields, pointers and whole pages of the
structures an encoder wrote into a :class:`~pykho.memory.SparseMemory`.  The
helpers draw "interesting" integers (:func:`i32`, :func:`i64`) and
pointer-ish values (:func:`pointer`).  Every function takes the caller's
``random.Random`` and draws from it in a fixed order: a change here changes
the inputs a seed produces.
"""

from __future__ import annotations

import random
import struct

from ..errors import KhoDecodeError
from ..memory import SparseMemory

__all__ = [
    "I32",
    "I64_BASE",
    "MASK64",
    "PAGE",
    "clone",
    "geo",
    "i32",
    "i64",
    "mutate_bytes",
    "mutate_memory",
    "pointer",
    "poke",
    "poke64",
]

PAGE = 4096
MASK64 = (1 << 64) - 1

I32 = (0, 1, 2, 3, 4, 8, 9, 16, 0x10, 0x11, 0x28, 0x38, 0x48, 0x7F, 0x80, 0xFF, 0x100, 0xFFF, 0x1000, 0x1001,
       0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 0xFFFFFFF8, 0xFFFFFFFC,
       0xFFFFFFFF, 0xD00DFEED, 16, 17, 255, 256)
I64_BASE = (0, 1, 7, 8, 0xFFF, 0x1000, 0x1008, 0xFFFF_FFFF, 1 << 32, 1 << 40, (1 << 52) - 1, 1 << 52, 1 << 56,
            1 << 63, (1 << 63) - 1, MASK64, MASK64 - 7, MASK64 - 0xFFF, 0xDEADBEEF000, 0x8000_0000_0000)


def geo(rng: random.Random, p: float = 0.5, cap: int = 8) -> int:
    """1, 2, ... with geometrically falling odds (at most ``cap``)."""
    n = 1
    while n < cap and rng.random() < p:
        n += 1
    return n


def i32(rng, n_len: int = 0) -> int:
    """An interesting u32: a boundary value, a length near ``n_len``, or random."""
    r = rng.random()
    if r < 0.6:
        return rng.choice(I32)
    if r < 0.8 and n_len:
        return max(0, n_len + rng.randint(-16, 16)) & 0xFFFFFFFF
    return rng.getrandbits(32) if rng.random() < 0.5 else rng.randrange(0, 1 << rng.randint(1, 16))


def i64(rng) -> int:
    """An interesting u64: a boundary value, a random magnitude, or a page-aligned random."""
    r = rng.random()
    if r < 0.6:
        return rng.choice(I64_BASE)
    if r < 0.8:
        return rng.randrange(0, 1 << rng.randint(1, 64))
    return (rng.getrandbits(64 - 12) << 12) & MASK64


def mutate_bytes(rng: random.Random, data: bytes, others=(), max_len: int = 1 << 16, fdt_aware: bool = True) -> bytes:
    """Apply 1..8 random byte-level operations (AFL-style plus FDT header fields)."""
    b = bytearray(data)
    for _ in range(geo(rng, 0.55)):
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
            v = rng.choice((1, 2, 3, 4, 9)) if rng.random() < 0.2 else i32(rng, n)
            b[i:i + 4] = struct.pack(">I", v)
        elif op == 3 and n >= 8:                 # little-endian u64 (KHO values)
            i = rng.randrange(0, n - 7) & ~7 if rng.random() < 0.8 else rng.randrange(0, n - 7)
            b[i:i + 8] = struct.pack("<Q", i64(rng))
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
            b[4 * f:4 * f + 4] = struct.pack(">I", i32(rng, n))
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
# memory


def poke(mem, phys: int, data: bytes) -> None:
    """Write into a case's memory; a write where RAM was unmapped is dropped."""
    try:
        mem.write(phys, data)
    except KhoDecodeError:
        pass


def poke64(mem, phys: int, value: int) -> None:
    """:func:`poke` a little-endian u64."""
    poke(mem, phys, struct.pack("<Q", value & MASK64))


def clone(mem: SparseMemory) -> SparseMemory:
    """A private copy of a corpus memory (RAM ranges and written pages)."""
    m = SparseMemory(ram=list(mem.ranges()), fill=mem.fill, name=mem.name)
    m.pages = {k: bytearray(v) for k, v in mem.pages.items()}
    return m


def pointer(rng: random.Random, mem: SparseMemory, targets: list[int], here: int | None = None) -> int:
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
    return i64(rng)


# operation weights of mutate_memory: field writes dominate; whole-page fills
# (which turn a leaf into 32768 blocks) are rarer
_MEM_OPS = (0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 6, 7, 7, 8, 9, 10)


def mutate_memory(rng: random.Random, mem: SparseMemory, targets: list[int], nops: int | None = None,
                  extra_ptrs: list[int] | tuple[int, ...] = ()) -> list[str]:
    """Mutate fields of the structures in ``targets`` (page-granular) in place.
    Returns a description of the operations."""
    log = []
    pool = list(targets) + list(extra_ptrs)
    for _ in range(nops or geo(rng, 0.5, 6)):
        if not targets:
            break
        t = rng.choice(targets)
        base = t & ~(PAGE - 1)
        op = rng.choice(_MEM_OPS)
        try:
            if op <= 2:                          # a u64 field near the start (headers) or anywhere
                off = rng.choice((0, 8, 16, 24, 32)) if rng.random() < 0.5 else rng.randrange(0, PAGE // 8) * 8
                v = pointer(rng, mem, pool, t)
                poke64(mem, t + off if t + off + 8 <= base + PAGE else base + off, v)
                log.append(f"u64 0x{t:x}+{off}=0x{v:x}")
            elif op == 3:                        # u32 field (order, num_elms, count, type, len)
                off = rng.choice((8, 12, 16, 20, 24, 28))
                v = i32(rng)
                poke(mem, t + off, struct.pack("<I", v))
                log.append(f"u32 0x{t:x}+{off}=0x{v:x}")
            elif op == 4:                        # flip bits
                off = rng.randrange(0, PAGE)
                old = mem.read(base + off, 1)[0]
                poke(mem, base + off, bytes([old ^ (1 << rng.randrange(8))]))
                log.append(f"flip 0x{base + off:x}")
            elif op == 5:                        # zero the page
                mem.zero(base, PAGE)
                log.append(f"zero 0x{base:x}")
            elif op == 6:                        # fill with a byte
                v = rng.choice((0xFF, 0xA5, 0x01))
                poke(mem, base, bytes([v]) * PAGE)
                log.append(f"fill 0x{base:x} {v:#x}")
            elif op == 7:                        # random bytes in a span
                off = rng.randrange(0, PAGE)
                k = rng.randrange(1, min(256, PAGE - off) + 1)
                poke(mem, base + off, bytes(rng.randrange(256) for _ in range(k)))
                log.append(f"rand 0x{base + off:x}+{k}")
            elif op == 8 and len(targets) > 1:   # copy one structure over another
                src = rng.choice(targets) & ~(PAGE - 1)
                poke(mem, base, mem.read(src, PAGE))
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
                    mem._starts_cache = None  # type: ignore[assignment]
                    log.append(f"unmap 0x{base:x}")
            elif op == 10:                       # self-pointer at the start (cycles)
                poke64(mem, t, t)
                log.append(f"self 0x{t:x}")
        except KhoDecodeError:
            # the target was already unmapped by an earlier operation
            log.append("skip")
    return log
