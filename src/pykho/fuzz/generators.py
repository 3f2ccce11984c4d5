"""Valid-input generators: random FDTs and root FDTs, handover structures
in memory, ELF cores and sparse-archive files.

Everything here builds *valid* inputs with pykho's own encoders (the
families then mutate them).  Each function draws from the caller's
``random.Random`` in a fixed order, so a seed reproduces its inputs.
"""

from __future__ import annotations

import gzip
import io
import random
import struct
import tarfile

from .. import clients as _clients
from .. import profiles
from ..abi import fdt as _fdt
from ..abi import root as _root
from ..abi import structs as _structs
from ..memory import SparseMemory
from .mutation import PAGE, i32, i64

__all__ = [
    "build_elf",
    "build_memfd",
    "build_vmalloc",
    "new_mem",
    "rand_name",
    "rand_value",
    "random_fdt",
    "random_root",
    "small_payload",
    "tar_bytes",
]


# --------------------------------------------------------------------------
# FDTs


_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-_,.+@#"


def rand_name(rng) -> str:
    """A node or property name: empty, a KHO name, or random characters."""
    r = rng.random()
    if r < 0.1:
        return ""
    if r < 0.2:
        return rng.choice(("compatible", "fdt", "preserved-data", "blob-size", "preserved-memory-map",
                           "memblock", "LUO", "kho_test", "kexec-metadata", "chosen", "data", "start", "size"))
    n = rng.choice((1, 2, 5, 8, 16, 31, 64, rng.randrange(1, 200)))
    return "".join(rng.choice(_NAME_CHARS) for _ in range(n))


def rand_value(rng) -> bytes | str:
    """A property value: a u64, a u32, a KHO compatible string, empty, or random bytes."""
    r = rng.random()
    if r < 0.25:
        return struct.pack("<Q", i64(rng))
    if r < 0.4:
        return struct.pack(">I", i32(rng))
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
                v = rand_value(rng)
                name = rand_name(rng) or "p"
                if isinstance(v, str):
                    sw.property_string(name, v)
                else:
                    sw.property(name, v)
            if d < 6:
                for _ in range(rng.randrange(0, 4 if d < 3 else 2)):
                    sw.begin_node(rand_name(rng) or "c")
                    node(d + 1)
                    sw.end_node()
        node(0)
    sw.end_node()
    sw.finish()
    if sw.err:
        return b""
    return sw.blob()


def random_root(rng: random.Random) -> bytes:
    """A root FDT built with a random generation's own call sequence."""
    p = rng.choice([profiles.PROFILES[n] for n in profiles.PROFILES])
    subs = [(rng.choice(("memblock", "LUO", "kho_test", "kexec-metadata", rand_name(rng) or "x")),
             rng.randrange(0, 1 << 36) & ~0xFFF) for _ in range(rng.randrange(0, 6))]
    mm = rng.choice((0, rng.randrange(1, 1 << 36) & ~0xFFF, i64(rng)))
    if p.fdt_built_at == "finalize":
        blob, _err = _root.build_root_at_finalize(p, mm, subs)
        return blob
    page = _root.build_root_at_boot(p, mm)
    for name, phys in subs:
        page.add_subtree(name, phys, rng.randrange(0, 1 << 16))
    if subs and rng.random() < 0.3:
        page.remove_subtree(subs[0][1])
    return bytes(page.buf) if rng.random() < 0.3 else page.blob()


# --------------------------------------------------------------------------
# structures in memory


def new_mem(rng: random.Random, size_log2: int | None = None) -> SparseMemory:
    """An empty SparseMemory of RAM ``[0, 2**size_log2)`` (random size when not given)."""
    top = 1 << (size_log2 or rng.choice((32, 34, 36, 40)))
    return SparseMemory(ram=[(0, top)])


def build_vmalloc(rng, mem, alloc, nblocks: int, order: int, fill=None):
    """Blocks of ``1 << order`` pages + their kho_vmalloc chunk list:
    ``(descriptor, chunk pages, block addresses)``."""
    physs = []
    for _ in range(nblocks):
        p = alloc.alloc(PAGE << order)
        physs.append(p)
        if fill is not None:
            mem.write(p, fill(p))
    desc, chunks = _structs.encode_vmalloc_chunks(mem, alloc.page, physs, order)
    return desc, chunks, physs


def build_memfd(rng, mem, alloc, nr: int | None = None):
    """A memfd_luo_ser record and its folio array (vmalloc'd, order 0):
    ``(record address, structure pages, number of folios)``."""
    nr = rng.choice((0, 1, 3, 20, 256, 257)) if nr is None else nr
    arr = b"".join(_clients.MEMFD_FOLIO_SER.pack((rng.randrange(1 << 30)) | (rng.randrange(4) << 52), k)
                   for k in range(nr))
    npages = (len(arr) + PAGE - 1) // PAGE
    desc, chunks, physs = build_vmalloc(rng, mem, alloc, npages, 0)
    for k, p in enumerate(physs):
        mem.write(p, arr[k * PAGE:(k + 1) * PAGE])
    if not nr:
        desc = _structs.KhoVmalloc(0, 0, 0, 0)
        chunks = []
    rec = alloc.alloc(_clients.MEMFD_LUO_SER.size)
    mem.write(rec, _clients.MEMFD_LUO_SER.pack(rng.randrange(1 << 20), nr * PAGE, rng.getrandbits(32), 0, nr,
                                               desc.pack()))
    return rec, chunks + physs, nr


# --------------------------------------------------------------------------
# files for the memory sources


def small_payload(rng) -> bytes:
    """Contents of a memory-source file: a root FDT, zeros, or random bytes."""
    r = rng.random()
    if r < 0.3:
        return random_root(rng)
    if r < 0.5:
        return bytes(rng.choice((0, 1, 100, 4096, 4100, 8192)))
    return bytes(rng.randrange(256) for _ in range(rng.choice((1, 16, 64, 512))))


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


def tar_bytes(files: dict[str, bytes], mode: str = "w") -> bytes:
    """A tar archive (``mode`` "w" or "w:gz") of ``files`` (name -> bytes).
    Every time stamp is 0, the gzip header's too, so the bytes depend on
    ``files`` only (a seed replays to the same input)."""
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w") as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mtime = 0
            tf.addfile(ti, io.BytesIO(data))
    if mode == "w":
        return bio.getvalue()
    if mode != "w:gz":
        raise ValueError(f"tar_bytes: mode {mode!r}")
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(bio.getvalue())
    return out.getvalue()
