"""``mem_raw``, ``mem_elf``, ``mem_sparse``: the memory sources that open
files (raw images with a base address, ELF cores, sparse directories and
tar archives).

Each input is written to a per-process scratch directory (``/dev/shm`` when
writable), opened through :func:`~pykho.memory.open_source` and read the
way the tools read it: ranges, reads across range ends, a root FDT at the
first range, a short radix walk.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import tempfile

from ...abi import radix as _radix
from ...abi import root as _root
from ...errors import KhoDecodeError
from ...memory import sources as _sources
from ..corpus import seed_files
from ..generators import build_elf, small_payload, tar_bytes
from ..mutation import MASK64, PAGE, geo, i64, mutate_bytes
from .base import Family

__all__ = ["MemElfFamily", "MemRawFamily", "MemSparseFamily", "ScratchDir", "probe_memory"]


class ScratchDir:
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


def probe_memory(mem, rng_seed: int, hint: int | None = None):
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
            mem.read(i64(rng), rng.choice((1, 8, 40, PAGE)))
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


class _FileFamily(Family):
    def cleanup(self):
        ScratchDir.cleanup()


class MemRawFamily(_FileFamily):
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
                b += small_payload(rng)
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
        path = ScratchDir.path(".bin")
        try:
            with open(path, "wb") as f:
                f.write(case["file"])
            mem = _sources.open_source(f"raw:{path}{case['suffix']}")
            probe_memory(mem, len(case["file"]))
            mem.describe()
        finally:
            os.unlink(path)
        return "ok"


class MemElfFamily(_FileFamily):
    name = "mem_elf"

    def corpus(self, rng):
        out = []
        for _ in range(10):
            segs = []
            at = rng.randrange(0, 1 << 20) & ~0xFFF
            for _ in range(rng.randrange(0, 4)):
                d = small_payload(rng)
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
                 "Q": lambda: i64(rng)}[fmt]()
            struct.pack_into("<" + fmt, b, off, v)
        elif r < 0.9:
            b = bytearray(mutate_bytes(rng, bytes(b), fdt_aware=False, max_len=1 << 15))
        return {"file": bytes(b)}

    def run(self, case):
        path = ScratchDir.path(".elf")
        try:
            with open(path, "wb") as f:
                f.write(case["file"])
            mem = _sources.open_source(f"elf:{path}")
            probe_memory(mem, len(case["file"]))
        finally:
            os.unlink(path)
        return "ok"


class MemSparseFamily(_FileFamily):
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
            for _ in range(rng.randrange(0, 4)):
                d = small_payload(rng)
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
            for _ in range(geo(rng)):
                k = rng.randrange(len(lines))
                parts = lines[k].split("\t")
                j = rng.randrange(max(1, len(parts)))
                while len(parts) <= j:
                    parts.append("")
                parts[j] = rng.choice((
                    "", "0", "-1", "-0x1000", "0x", "0x" + "f" * 20, "9" * 30, "1e3", "0x1_000", " 0x10", "0b11",
                    "0o17", "00", "08", "\u0661", "../x", "/etc/hostname", "a/../../b", "sub/f", ".", "..", "x\0y",
                    "MANIFEST.tsv", "\udcff", f"0x{i64(rng):x}", str(i64(rng)), parts[j] * 2))
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
            t = tar_bytes(safe, "w:gz" if kind == "tar.gz" else "w")
        except (UnicodeError, ValueError):
            return {"files": files}
        if kind == "tar-mutated":
            t = mutate_bytes(rng, t, fdt_aware=False, max_len=1 << 15)
        return {"tar": t}

    def run(self, case):
        if "tar" in case:
            path = ScratchDir.path(".tar")
            with open(path, "wb") as f:
                f.write(case["tar"])
            def cleanup():
                os.unlink(path)
        else:
            path = ScratchDir.path(".d")
            os.mkdir(path)
            for name, data in case["files"].items():
                # only plain names become files; odd names stay in the manifest only
                if name and "/" not in name and "\0" not in name and name not in (".", ".."):
                    try:
                        with open(os.path.join(path, name), "wb") as f:
                            f.write(data)
                    except (OSError, ValueError):
                        pass
            def cleanup():
                shutil.rmtree(path, ignore_errors=True)
        try:
            mem = _sources.open_source(f"sparse:{path}")
            probe_memory(mem, len(case.get("tar", b"")))
        finally:
            cleanup()
        return "ok"
