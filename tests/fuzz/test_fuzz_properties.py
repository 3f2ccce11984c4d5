"""Hostile-input properties of every decoder family (issue 5).

For every input: the decoder returns a result or raises a pykho error
(KhoError / KhoDecodeError), never anything else, and returns in under 1 s
(of CPU time, so that a loaded CI machine does not fail a fast decoder).
Inputs are built two ways: structured (valid handovers from the encoders,
then fields, pointers and lengths mutated, the mutation choices drawn by
hypothesis) and byte-level (hypothesis bytes, and mutations of the real
7.2.13 artifacts shipped in pykho/fuzz/seeds).

A decoder bug found and not yet fixed goes into KNOWN together with a
strict-xfail regression test: the property tests then tolerate exactly that
signature so that a *new* failure stands out; when the bug is fixed its
regression test XPASSes (strict: fails) and the KNOWN entry must go.  The
bugs found so far are fixed; their regression tests are at the bottom.
"""

from __future__ import annotations

import random
import struct
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import oracle, reserve_lines
from pykho import clients, fuzz
from pykho.abi import chunks, fdt, radix, structs
from pykho.errors import KhoDecodeError, KhoError
from pykho.memory import Bump, SparseMemory

# a timeout raised inside hypothesis' gc callback is swallowed there (and
# re-raised 50 ms later by call_with_limit); pytest reports the swallowed one
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))
FEW = settings(SETTINGS, max_examples=15)

# (kind, substring of the signature or traceback, reason) of decoder bugs
# reported and not fixed yet; each has a regression test below.
KNOWN: list[tuple[str, str, str]] = [
    # the eleven decoder bugs the first campaign found are fixed (regression
    # tests at the bottom); add an entry only together with a strict-xfail
    # regression test for a newly found, not yet fixed bug
]


def _known(kind: str, tag: str, detail: str) -> str | None:
    for k, sub, reason in KNOWN:
        if k == kind and (sub in tag or sub in detail):
            return reason
    return None


def check(family: str, case: dict, limit: float = 1.0):
    """The property: a result or a pykho error, within ``limit`` seconds."""
    kind, tag, detail = fuzz.execute(family, case, limit)
    if kind == "result":
        return tag
    if _known(kind, tag, detail):
        return f"known:{kind}"
    raise AssertionError(f"{family}: {kind} {tag}\n{detail}")


BLOB_FAMILIES = ("fdt", "root", "chosen", "memblock", "kexec_metadata", "scratch")


# --------------------------------------------------------------------------
# every family, structured generation driven by hypothesis


@pytest.mark.parametrize("family", list(fuzz.FAMILIES))
@SETTINGS
@given(rnd=st.randoms(use_true_random=False))
def test_structured_generation(family, rnd):
    corpus = fuzz.corpus_for(0, family)
    case = fuzz.FAMILIES[family].generate(rnd, corpus)
    check(family, case)


@pytest.mark.parametrize("family", list(fuzz.FAMILIES))
@FEW
@given(index=st.integers(0, 10**9))
def test_campaign_inputs(family, index):
    """Exactly the inputs the campaign runs (seed 7)."""
    check(family, fuzz.generate(7, family, index))



# --------------------------------------------------------------------------
# byte-level: hypothesis bytes and mutations of the real artifacts


@pytest.mark.parametrize("family", BLOB_FAMILIES)
@SETTINGS
@given(blob=st.binary(max_size=600))
def test_raw_bytes(family, blob):
    check(family, {"blob": blob})


@pytest.mark.parametrize("family", BLOB_FAMILIES + ("kho_test",))
@SETTINGS
@given(rnd=st.randoms(use_true_random=False))
def test_seed_mutation(family, rnd):
    corpus = fuzz.corpus_for(0, family)
    blobs = [c["blob"] if isinstance(c, dict) else c for c in corpus]
    blob = fuzz.mutate_bytes(rnd, rnd.choice(blobs), blobs)
    case = {"blob": blob}
    if family == "kho_test":
        case["mem"] = SparseMemory(ram=[(0, 1 << 32)])
    check(family, case)


@SETTINGS
@given(text=st.text(max_size=300), name=st.sampled_from(["scratch_phys", "scratch_len"]))
def test_debugfs_text_any_text(text, name):
    check("debugfs_text", {"text": text, "name": name})


@SETTINGS
@given(data=st.binary(max_size=200), mem_bytes=st.binary(max_size=256), at=st.integers(0, 1 << 64))
def test_luo_raw(data, mem_bytes, at):
    mem = SparseMemory(ram=[(0, 1 << 32)])
    mem.write(0x10000, mem_bytes)
    check("luo", {"data": data, "mem": mem})
    check("memfd", {"mem": mem, "phys": at if at < 1 << 64 else 0})


@FEW
@given(blob=st.binary(max_size=2048), suffix=st.sampled_from(["", "@0x0", "@0x1000", "@-1", "@x", "@0x" + "f" * 17]))
def test_mem_raw_bytes(blob, suffix):
    check("mem_raw", {"file": blob, "suffix": suffix})


@FEW
@given(blob=st.binary(max_size=2048))
def test_mem_elf_bytes(blob):
    check("mem_elf", {"file": b"\x7fELF\x02\x01" + blob})


@FEW
@given(manifest=st.text(max_size=200), data=st.binary(max_size=256))
def test_mem_sparse_manifest(manifest, data):
    check("mem_sparse", {"files": {"MANIFEST.tsv": manifest.encode("utf-8", "surrogatepass"), "a.bin": data}})


# --------------------------------------------------------------------------
# structured strategies: encode, round-trip (no lies), then mutate


def _bump(base=0x100000):
    at = [base]

    def page():
        at[0] += 4096
        return at[0]
    return page


blocks_st = st.sets(st.tuples(st.integers(0, (1 << 26) - 1), st.sampled_from([0, 0, 1, 2, 9, 10, 18])),
                    min_size=1, max_size=40)


@SETTINGS
@given(blocks=blocks_st, data=st.data())
def test_radix_roundtrip_then_mutate(blocks, data):
    mem = SparseMemory(ram=[(0, 1 << 40)])
    want = sorted({((pfn >> o) << (o + 12), o) for pfn, o in blocks})
    tree = radix.encode(want, mem, _bump())
    w = radix.RadixWalk(mem, tree.root)
    assert sorted(w.blocks()) == want and not w.problems
    for _ in range(data.draw(st.integers(1, 4))):
        node = data.draw(st.sampled_from(tree.nodes))
        slot = data.draw(st.integers(0, 511))
        val = data.draw(st.one_of(st.sampled_from(tree.nodes), st.integers(0, (1 << 64) - 1),
                                  st.sampled_from([0, 1, 8, 4095, 1 << 40, (1 << 64) - 4096])))
        mem.write_u64(node + 8 * slot, val)
    check("radix", {"mem": mem, "root": tree.root})


@settings(SETTINGS, max_examples=12)
@given(blocks=blocks_st, pb=st.sampled_from([4096, 32768]), data=st.data())
def test_chunks_roundtrip_then_mutate(blocks, pb, data):
    mem = SparseMemory(ram=[(0, 1 << 40)])
    tr = chunks.ChunkTracker(pb)
    for pfn, o in blocks:
        tr.add((pfn >> o) << (o + 12), o)
    rng = random.Random(data.draw(st.integers(0, 1 << 30)))
    alloc = Bump(rng=rng)
    first, pages = chunks.encode(tr, mem, alloc.alloc)
    w = chunks.ChunkWalk(mem, first, pb)
    assert sorted(w.blocks()) == sorted(tr.blocks()) and not w.problems
    for _ in range(data.draw(st.integers(1, 3))):
        page = data.draw(st.sampled_from(pages))
        off = data.draw(st.sampled_from([0, 8, 12, 16, 24, 32, 40]))
        val = data.draw(st.one_of(st.sampled_from(pages), st.integers(0, (1 << 64) - 1),
                                  st.sampled_from([0, 1, 255, 256, 4096, 1 << 32])))
        if off in (8, 12):
            mem.write(page + off, struct.pack("<I", val & 0xFFFFFFFF))
        else:
            mem.write_u64(page + off, val)
    check("chunks", {"mem": mem, "first": first, "pb": pb})


@SETTINGS
@given(entries=st.lists(st.binary(min_size=80, max_size=80), max_size=120), data=st.data())
def test_blocks_roundtrip_then_mutate(entries, data):
    mem = SparseMemory(ram=[(0, 1 << 36)])
    head, pages = structs.encode_blocks(mem, _bump(), entries, 80)
    got, _ = structs.decode_blocks(mem, head, 80)
    assert got == entries
    if pages:
        for _ in range(data.draw(st.integers(1, 3))):
            p = data.draw(st.sampled_from(pages))
            mem.write_u64(p + data.draw(st.sampled_from([0, 8])),
                          data.draw(st.one_of(st.sampled_from(pages), st.integers(0, (1 << 64) - 1))))
    check("blocks", {"mem": mem, "head": head, "es": 80})


@SETTINGS
@given(n=st.integers(0, 1100), order=st.sampled_from([0, 1, 3]), data=st.data())
def test_vmalloc_roundtrip_then_mutate(n, order, data):
    mem = SparseMemory(ram=[(0, 1 << 36)])
    physs = [(0x4000_0000 + (k << (12 + order))) for k in range(n)]
    desc, chunk_pages = structs.encode_vmalloc_chunks(mem, _bump(), physs, order)
    got, _ = structs.decode_vmalloc(mem, structs.KhoVmalloc.unpack(desc.pack()))
    assert got == physs
    d = data.draw(st.fixed_dictionaries({"total": st.integers(0, (1 << 32) - 1),
                                         "order": st.integers(0, (1 << 16) - 1)}))
    desc2 = structs.KhoVmalloc(desc.first, d["total"], desc.flags, d["order"])
    check("vmalloc", {"mem": mem, "desc": desc2.pack()})


@SETTINGS
@given(version=st.integers(0, (1 << 32) - 1), rel=st.binary(max_size=80), count=st.integers(0, (1 << 32) - 1),
       cut=st.integers(0, 100))
def test_kexec_metadata_fields(version, rel, count, cut):
    blob = struct.pack("<I65sI", version, rel[:65], count)[:cut]
    check("kexec_metadata", {"blob": blob})


@SETTINGS
@given(ac=st.integers(0, 5), sc=st.integers(0, 5), n1=st.integers(0, 6), n2=st.integers(0, 6))
def test_chosen_cells(ac, sc, n1, n2):
    blob, err = fdt.build([("#address-cells", struct.pack(">I", ac)), ("#size-cells", struct.pack(">I", sc))],
                          [("chosen", [("linux,kho-fdt", bytes(4 * n1)), ("linux,kho-scratch", bytes(4 * n2))])])
    assert err == 0
    check("chosen", {"blob": blob})


def test_error_names_structure_and_location():
    """A decode error names the structure and says where."""
    mem = SparseMemory(ram=[(0, 1 << 20)])
    mem.write_u64(0x1000, 0x1000)   # a block whose next points to itself
    mem.write_u64(0x1008, 1)
    with pytest.raises(KhoDecodeError) as e:
        structs.decode_blocks(mem, 0x1000, 80)
    assert e.value.structure and e.value.where is not None and e.value.code == "block-cycle"
    assert "0x1000" in str(e.value)


# --------------------------------------------------------------------------
# the campaign engine


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz-crashes")
    c = fuzz.Campaign(seconds=10, jobs=1, seed=5, crash_dir=str(d), limit=1.0, hard_seconds=20)
    return c.run()


def test_campaign_runs_every_family_with_no_unknown_failure(campaign):
    s = campaign
    assert set(s["inputs"]) == set(fuzz.FAMILIES)
    assert all(n > 0 for n in s["inputs"].values()), s["inputs"]
    assert s["counts"]["generator-error"] == 0, s["results"]
    unknown = [f for f in s["failures"]
               if not _known(f["kind"], f["tag"], f.get("last", "") + " " + f.get("chain", ""))]
    # a saved input replays to the same kind of failure
    for f in unknown:
        assert f["path"], f
    assert not unknown, fuzz.format_summary(s)
    assert "peak_rss_kb" in s and s["peak_rss_kb"]


def test_campaign_zero_crashes_and_hangs(campaign):
    c = campaign["counts"]
    assert c["crash"] == 0 and c["hang"] == 0 and c["memory"] == 0 and c["lie"] == 0, \
        fuzz.format_summary(campaign)


def test_campaign_index_range(tmp_path):
    """--first-index / --max-inputs select an index range per family: two
    runs of one seed cover [0, K) and [K, N) with nothing run twice."""
    c = fuzz.Campaign(seconds=30, families=["scratch", "chosen"], jobs=2, seed=5, crash_dir=str(tmp_path),
                      max_per_family=130, first_index=100)
    s = c.run()
    assert s["inputs"] == {"scratch": 30, "chosen": 30}
    assert s["first_index"] == 100 and s["max_index"] == 130


def test_generation_is_reproducible():
    for fam in fuzz.FAMILIES:
        a, b = fuzz.generate(3, fam, 12345), fuzz.generate(3, fam, 12345)
        assert fuzz.case_to_json(a) == fuzz.case_to_json(b), fam


def test_generation_does_not_depend_on_the_clock(monkeypatch):
    """A .tar.gz input carries no time stamp (gzip would write the clock)."""
    def gz_cases(now):
        monkeypatch.setattr(time, "time", lambda: now)
        cases = [fuzz.generate(3, "mem_sparse", i) for i in range(300)]
        return [fuzz.case_to_json(c) for c in cases if c.get("tar", b"")[:2] == b"\x1f\x8b"]
    early, late = gz_cases(1e9), gz_cases(2e9)
    assert early and early == late


def test_radix_oracle_is_the_real_kernels_reservations():
    """Scenario A's expected blocks are what the real next kernel reserved."""
    dmesg = Path(oracle("A-selftest", "stage2-dmesg.txt")).read_text()
    assert list(fuzz.corpus.ORACLE_A_BLOCKS) == sorted(reserve_lines(dmesg))


def test_radix_oracle_catches_a_walker_that_drops_a_block(monkeypatch):
    """The expectation does not come from the walker under test: a walker
    that loses one block fails the unmutated inputs, scenario A's included."""
    blocks = radix.RadixWalk.blocks

    def lossy(self):
        it = blocks(self)
        next(it, None)
        yield from it
    monkeypatch.setattr(radix.RadixWalk, "blocks", lossy)
    corpus = fuzz.FAMILIES["radix"].corpus(random.Random("lossy"))
    assert corpus[0]["root"] == fuzz.corpus.ORACLE_A_MAP
    for base in corpus:
        case = {"mem": fuzz.mutation.clone(base["mem"]), "root": base["root"], "expect": base["expect"]}
        assert fuzz.execute("radix", case)[0] == "lie", hex(base["root"])


def _pristine(family):
    """The unmutated inputs among the first 400 of ``family`` (seed 0)."""
    cases = [fuzz.generate(0, family, i) for i in range(400)]
    return [c for c in cases if "expect" in c]


def test_debugfs_text_oracle_can_fail(monkeypatch):
    """Unmutated formatted lists parse back to their values; a parser that
    drops the last value is a lie on every one that has a value."""
    cases = _pristine("debugfs_text")
    assert cases and all(fuzz.execute("debugfs_text", c)[0] == "result" for c in cases)
    parse = structs.parse_debugfs_scratch
    monkeypatch.setattr(structs, "parse_debugfs_scratch", lambda text, name: parse(text, name)[:-1])
    kinds = {fuzz.execute("debugfs_text", c)[0] for c in cases if c["expect"]}
    assert kinds == {"lie"}


def test_memblock_oracle_is_the_real_kernels_region():
    """The real memblock sub-FDT's expected region: the name and size on the
    command line, the address the kernel's memblock debug line shows."""
    cmdline = Path(oracle("B-luo-memblock-chain", "stage1-cmdline.txt")).read_text()
    size, _align, name = cmdline.split("reserve_mem=")[1].split()[0].split(":")
    assert size == "4M"
    dmesg = Path(oracle("B-luo-memblock-chain", "stage1-dmesg.txt")).read_text().splitlines()
    at = next(i for i, line in enumerate(dmesg) if "reserve_mem+" in line)
    start, end = (int(x, 16) for x in dmesg[at + 1].split("[")[2].split("]")[0].split("-"))
    assert fuzz.corpus.ORACLE_B_MEMBLOCK == ((name, start, 4 << 20),) and end + 1 - start == 4 << 20


def test_memblock_oracle_can_fail(monkeypatch):
    """Unmutated sub-FDTs (the real one included) decode to the encoded
    regions; a decoder that moves a start by a page is a lie."""
    cases = _pristine("memblock")
    assert any(c["expect"] for c in cases)
    assert all(fuzz.execute("memblock", c)[0] == "result" for c in cases)
    assert fuzz.corpus_for(0, "memblock")[0]["regions"] == [list(r) for r in fuzz.corpus.ORACLE_B_MEMBLOCK]
    assert fuzz.execute("memblock", {"blob": fuzz.seed_files()["B-sub-memblock"],
                                     "expect": fuzz.corpus.ORACLE_B_MEMBLOCK})[0] == "result"
    decode = clients.decode_memblock
    monkeypatch.setattr(clients, "decode_memblock", lambda blob: [
        clients.ReserveMem(r.name, r.start + 4096, r.size) for r in decode(blob)])
    kinds = {fuzz.execute("memblock", c)[0] for c in cases if c["expect"]}
    assert kinds == {"lie"}


def test_saved_case_replays(tmp_path):
    case = {"blob": b"\xd0\x0d\xfe\xed" + bytes(60)}
    path = fuzz.save_failure(str(tmp_path), 1, "fdt", 2, "crash", "X", "detail", case)
    fam, back = fuzz.load_case(path)
    assert fam == "fdt" and back == case
    with pytest.raises(KhoDecodeError):
        fuzz.replay(path)
    assert fuzz.replay(path, raise_errors=False)[0] == "result"


def test_timeout_is_reported_as_hang():
    class Slow(fuzz.Family):
        name = "slow"

        def run(self, case):
            while True:
                pass
    fuzz.FAMILIES["slow"] = Slow()
    try:
        t = time.time()
        kind, tag, _ = fuzz.execute("slow", {}, 0.2)
        assert kind == "hang" and time.time() - t < 10
    finally:
        del fuzz.FAMILIES["slow"]


def test_cli_parser():
    import argparse

    from pykho.cli import fuzz as cli_fuzz
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    cli_fuzz.add_parser(sub)
    a = p.parse_args(["fuzz", "--seconds", "3", "--family", "fdt", "--family", "radix", "--jobs", "2",
                      "--seed", "9", "--crash-dir", "x"])
    assert a.func is cli_fuzz.run and a.family == ["fdt", "radix"] and a.jobs == 2 and a.seed == 9
    # -j is not --jobs (it means --json in the other sub-commands)
    with pytest.raises(SystemExit):
        p.parse_args(["fuzz", "-j", "2"])


# --------------------------------------------------------------------------
# regression tests for the decoder bugs the campaign found (all fixed now; a
# new, unfixed one gets @pytest.mark.xfail(strict=True) and a KNOWN entry)


def bounded(fn, limit: float = 1.0):
    """Run ``fn``; it must return or raise a KhoError within ``limit`` CPU seconds."""
    t = time.process_time()

    def go():
        try:
            fn()
        except KhoError:
            pass
    try:
        fuzz.call_with_limit(go, limit)
    except fuzz.InputTimeout:
        raise AssertionError(f"took over {limit} s") from None
    assert time.process_time() - t < limit, f"took {time.process_time() - t:.1f} CPU s"


def deep_fdt(depth: int) -> bytes:
    sw = fdt.FdtSw(1 << 16)
    sw.finish_reservemap()
    sw.begin_node("")
    for _ in range(depth):
        sw.begin_node("a")
    for _ in range(depth):
        sw.end_node()
    sw.end_node()
    sw.finish()
    assert sw.err == 0
    return sw.blob()


def test_regression_parse_deep_fdt():
    """Was RecursionError: node_at recursed once per nesting level."""
    for depth in (1100, 5000):
        blob = deep_fdt(depth)
        assert fdt.check_full(blob) == 0
        bounded(lambda blob=blob: fdt.parse(blob))


def test_regression_parse_non_utf8_property_name():
    """Was SystemError from pylibfdt (UnicodeDecodeError inside)."""
    blob, _ = fdt.build([("compatible", "x")], [("node", [("p", b"1")])])
    bounded(lambda: fdt.parse(blob.replace(b"compatible", b"com\x80atible")))
    bounded(lambda: fdt.parse(blob.replace(b"node\0", b"n\x80de\0")))


def test_regression_guess_preserve_bits_huge_order():
    mem = SparseMemory(ram=[(0, 1 << 30)])
    mem.write(0x1000, struct.pack("<QII", 0, 0xFFFFFFF0, 1) + struct.pack("<QQ", 0x123000, 0x2000))
    bounded(lambda: chunks.guess_preserve_bits(mem, 0x1000))


def test_regression_chunk_shared_bitmap_amplification():
    mem = SparseMemory(ram=[(0, 1 << 30)])
    mem.write(0x2000, b"\xff" * 4096)
    mem.write(0x1000, struct.pack("<QII", 0, 0, 255) + struct.pack("<QQ", 0, 0x2000) * 255)
    bounded(lambda: sum(1 for _ in chunks.ChunkWalk(mem, 0x1000, 32768).blocks()))


def test_regression_radix_unaligned_leaf_amplification():
    mem = SparseMemory(ram=[(0, 1 << 32)])
    leaf = 0x100000
    mem.write(leaf, b"\xff" * 8192)
    chain = [0x10000, 0x11000, 0x12000, 0x13000, 0x14000]      # levels 5..1
    for a, b in zip(chain, chain[1:]):
        mem.write_u64(a, b)
    mem.write(chain[-1], b"".join(struct.pack("<Q", leaf + 8 * j) for j in range(512)))
    bounded(lambda: sum(1 for _ in radix.RadixWalk(mem, chain[0]).blocks()))


def _vmalloc_bomb(mem, chunk: int, nblocks: int):
    """One kho_vmalloc_chunk of ``nblocks`` order-10 blocks (4 MiB each)."""
    mem.write(chunk, struct.pack("<Q", 0) + b"".join(struct.pack("<Q", (1 << 30) + (k << 22))
                                                     for k in range(nblocks)))
    return structs.KhoVmalloc(chunk, nblocks << 10, 1, 10)


def test_regression_memfd_reads_all_blocks():
    mem = SparseMemory(ram=[(0, 1 << 40)])
    desc = _vmalloc_bomb(mem, 0x10000, 511)
    mem.write(0x20000, clients.MEMFD_LUO_SER.pack(0, 0, 0, 0, 1, desc.pack()))
    bounded(lambda: clients.decode_memfd(mem, 0x20000))


def test_regression_kho_test_reads_all_blocks():
    mem = SparseMemory(ram=[(0, 1 << 40)])
    desc = _vmalloc_bomb(mem, 0x10000, 511)
    blob, err = clients.encode_kho_test(1, 0, folios_info=desc)
    bounded(lambda: clients.decode_kho_test(blob, mem=mem))


def test_regression_luo_shared_file_chain():
    mem = SparseMemory(ram=[(0, 1 << 32)])
    n, at = 9000, 0x100000
    mem.write(at, b"".join(struct.pack("<QQ", at + 16 * (k + 1) if k + 1 < n else 0, 1) for k in range(n)))
    sessions = [clients.LUO_SESSION_SER.pack(b"s%d" % i, at, n) for i in range(204)]
    head, _ = structs.encode_blocks(mem, _bump(0x1000_0000), sessions, clients.LUO_SESSION_SER.size)
    data = clients.encode_luo_ser(1, head, 0)
    bounded(lambda: clients.decode_luo(data, mem=mem))


def _sparse_tar(tmp_path, mutate):
    import io
    import tarfile
    files = {"MANIFEST.tsv": b"a.bin\t0x1000\t0x10\n", "a.bin": bytes(16)}
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w:xz") as tf:
        for name, d in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(d)
            tf.addfile(ti, io.BytesIO(d))
    p = tmp_path / "x.tar.xz"
    p.write_bytes(mutate(bio.getvalue()))
    return str(p)


@pytest.mark.parametrize("cut", ["truncate", "corrupt"])
def test_regression_sparse_corrupt_tar(tmp_path, cut):
    """Was EOFError / lzma.LZMAError / tarfile.ReadError from a cut or corrupt .tar.xz."""
    from pykho.memory import SparseDir
    if cut == "truncate":
        path = _sparse_tar(tmp_path, lambda b: b[:len(b) - 40])
    else:
        path = _sparse_tar(tmp_path, lambda b: b[:len(b) // 2] + bytes([b[len(b) // 2] ^ 0xFF]) + b[len(b) // 2 + 1:])
    bounded(lambda: SparseDir(path))


def test_regression_sparse_manifest_nul_name(tmp_path):
    from pykho.memory import SparseDir
    (tmp_path / "MANIFEST.tsv").write_bytes(b"a\x00b\t0x1000\t0x10\n")
    bounded(lambda: SparseDir(str(tmp_path)))


def test_sparse_archive_header_does_not_size_memory(tmp_path):
    """Found by the fuzz campaign (mem_sparse, seed 20261125, input 517778):
    tarfile's guessing ran the legacy .lzma decoder on a file starting
    0x30 ff ff ff ff, whose header asks for a 4 GiB dictionary -- MemoryError
    under the worker's address-space limit.  Archives are now told by magic
    bytes and xz is decoded with a memory cap."""
    import subprocess
    import sys
    bad = tmp_path / "lzma-alone.bin"
    bad.write_bytes(bytes([0x30]) + b"\xff" * 12 + bytes(10240 - 13))
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from pykho.memory import open_source\n"
        "from pykho.errors import KhoError\n"
        "try:\n"
        f"    open_source('sparse:{bad}')\n"
        "except KhoError as e:\n"
        "    print(type(e).__name__)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "UsageError", r.stderr[-2000:]
    # an xz stream whose header wants more than the cap is a decode error
    import io
    import lzma
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("MANIFEST.tsv")
        info.size = 0
        tf.addfile(info, io.BytesIO(b""))
    big = tmp_path / "big-dict.tar.xz"
    big.write_bytes(lzma.compress(buf.getvalue(), filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 30}]))
    from pykho.errors import KhoDecodeError
    from pykho.memory import open_source
    with pytest.raises(KhoDecodeError) as e:
        open_source(f"sparse:{big}")
    assert "Memory usage limit" in str(e.value) or "memory" in str(e.value).lower()
