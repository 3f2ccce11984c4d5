"""The end-to-end benchmark's generator and its CI smoke run.

* bench/gen.py writes handover directories that decode, through
  ``pykho.handover.load`` and the radix walker, to exactly what they were
  made of, with their layout as the kernel keeps it (preserved memory in RAM
  outside scratch; map pages neither preserved nor in scratch), and that
  ``kho validate`` accepts without an error finding.
* The smoke run: ``kho validate -j`` of 64 GiB preserved in order-0 pages
  (16,777,217 blocks, 2 MiB of radix leaves), as a process through the
  benchmark's own runner (bench/proc.py), under a peak-RSS limit a
  vectorised walk fits in easily: Python and numpy start at about 40 MiB,
  the map is 2 MiB, a batch of addresses half a MiB.  A Python object per
  block (16.7 million of them) does not fit; neither does a numpy array of
  every block's address plus a copy of it (128 MiB each) on top of much else.
"""

import bisect
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from pykho.abi import radix, structs
from pykho.handover import load
from pykho.memory import SparseDir, parse_iomem

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench")
sys.path.insert(0, BENCH)
import gen  # noqa: E402
import proc  # noqa: E402
import run as bench_run  # noqa: E402

#: peak RSS allowed to ``kho validate -j`` of the 64 GiB order-0 case
SMOKE_RSS = 400 << 20
SMOKE_TIME = 120.0


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("handovers"))


@pytest.fixture(scope="module")
def spawn(tmp_path_factory):
    """bench/spawn.c, so a command's peak RSS is its own (None without gcc:
    then forked from pytest, an upper bound)."""
    return proc.spawn_wrapper(str(tmp_path_factory.mktemp("spawn")))


def open_case(d):
    mem = SparseDir(os.path.join(d, "ram"))
    ho = load(os.path.join(d, "debugfs", "kho", "out"), mem)
    with open(os.path.join(d, "case.json")) as f:
        doc = json.load(f)
    return ho, mem, doc


def walk_by_order(mem, root):
    w = radix.RadixWalk(mem, root)
    got: dict[int, list] = {}
    for order, physs in w.leaves():
        got.setdefault(order, []).append(np.asarray(physs, np.uint64))
    assert not w.problems
    return {o: np.sort(np.concatenate(a)) for o, a in got.items()}


def test_generated_order0_1G_decodes_to_its_runs(gen_dir):
    d, doc = gen.ensure("order0-1G", out=gen_dir)
    ho, mem, doc = open_case(d)
    assert ho.root.compatible == "kho-v4" and ho.root.mem_map == doc["map_root"]
    assert ho.root_phys == doc["fdt_phys"]                    # found in memory, via setup_data
    assert ho.scratch == [structs.KhoScratch(a, s) for a, s in doc["scratch"]]
    assert (ho.scratch_phys, ho.scratch_len) == (doc["scratch_array_phys"], 16 * len(doc["scratch"]))
    blocks = sorted(radix.RadixWalk(mem, ho.root.mem_map).blocks())
    want = sorted((p + (i << (12 + o)), o) for p, n, o in doc["runs"] for i in range(n))
    assert blocks == want
    assert len(want) == 262_144 + 1                           # 1 GiB of pages and the root FDT page
    assert doc["expected"]["blocks"] == len(want)
    with open(os.path.join(d, "iomem.txt")) as f:
        assert parse_iomem(f.read()) == [tuple(r) for r in doc["ram"]]


def test_generated_host_shape_matches_its_bitmaps(gen_dir):
    d, doc = gen.ensure("host-8G", out=gen_dir)
    ho, mem, doc = open_case(d)
    got = walk_by_order(mem, ho.root.mem_map)
    h = gen.CASES["host-8G"]()
    h.preserved.add_run(doc["fdt_phys"], 1, 0)
    assert sorted(got) == sorted(h.preserved.words) == [0, 9, 18]
    for o, a in got.items():
        assert np.array_equal(a, h.preserved.blocks(o)), o
    assert {str(o): len(a) for o, a in got.items()} == doc["expected"]["by_order"] == \
        {"0": 65_536 + 1, "9": 1024, "18": 2}
    # layout: preserved in RAM outside scratch, 1 GiB blocks aligned, map pages apart
    ram, scratch = doc["ram"], doc["scratch"]
    spans = sorted((int(p), int(p) + (4096 << o)) for o, a in got.items() for p in a.tolist())
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    assert all(any(s <= a and b <= e for s, e in ram) for a, b in spans)
    assert not any(a < x + n and x < b for a, b in spans for x, n in scratch if n)
    assert all(p % (1 << 30) == 0 for p in got[18].tolist())
    w = radix.RadixWalk(mem, ho.root.mem_map)
    list(w.leaves())
    nodes = [n.phys for n in w.nodes]
    assert len(nodes) == doc["map_pages"]
    starts = [a for a, _ in spans]
    assert not any(spans[i][0] <= p < spans[i][1] for p in nodes if (i := bisect.bisect_right(starts, p) - 1) >= 0)
    assert not any(x <= p < x + n for p in nodes for x, n in scratch)


def test_generated_host_shape_validates_clean(gen_dir, spawn, walker):
    """kho validate accepts it without an error finding and counts what the
    generator and the C walker count."""
    d, doc = gen.ensure("host-8G", out=gen_dir)
    c = json.loads(subprocess.run([walker, "--handover", d], check=True, capture_output=True, text=True).stdout)
    assert (c["blocks"], c["bytes"], c["by_order"], c["physsum"], c["problems"], c["overlaps"]) == \
        (doc["expected"]["blocks"], doc["expected"]["bytes"], doc["expected"]["by_order"],
         doc["expected"]["physsum"], 0, 0)
    argv = bench_run.command_argv("validate", d, bench_run.kho_argv(None), None, "")
    r = proc.run(argv, stdout_path=os.path.join(gen_dir, "host-8G.json"), env=bench_run.kho_env(), time_cap=120,
                 spawn=spawn)
    assert r.ok and r.rc == 0, r.stderr_tail
    with open(r.stdout_path) as f:
        rep = json.load(f)
    assert [f["code"] for f in rep["findings"] if f["severity"] == "error"] == []
    assert rep["verdict"]["populate"] == "accepted"
    assert {k: rep["summary"][k] for k in ("blocks", "bytes", "by_order")} == \
        {k: doc["expected"][k] for k in ("blocks", "bytes", "by_order")}


@pytest.fixture(scope="module")
def walker(tmp_path_factory):
    gcc = shutil.which("gcc")
    if not gcc:
        if os.environ.get("CI") == "true":
            pytest.fail("no gcc: CI must install it")
        pytest.skip("no gcc")
    exe = str(tmp_path_factory.mktemp("walker") / "walker")
    subprocess.run([gcc, "-O2", "-Wall", "-Werror", "-o", exe, os.path.join(BENCH, "walker.c")], check=True)
    return exe


def test_smoke_validate_64G_order0(gen_dir, walker, spawn):
    """``kho validate -j`` of 64 GiB in order-0 pages: within SMOKE_RSS and
    SMOKE_TIME, counting what the C walker and the generator count."""
    d, doc = gen.ensure("order0-64G", out=gen_dir)
    exp = doc["expected"]
    c = proc.run([walker, "--handover", d], stdout_path=os.path.join(gen_dir, "c.json"), spawn=spawn)
    assert c.ok and c.rc == 0, c.stderr_tail
    with open(c.stdout_path) as f:
        cj = json.load(f)
    assert (cj["blocks"], cj["bytes"], cj["by_order"], cj["physsum"]) == \
        (exp["blocks"], exp["bytes"], exp["by_order"], exp["physsum"])
    argv = bench_run.command_argv("validate", d, bench_run.kho_argv(None), None, "")
    r = proc.run(argv, stdout_path=os.path.join(gen_dir, "validate.json"), env=bench_run.kho_env(),
                 time_cap=SMOKE_TIME, rss_cap=SMOKE_RSS, spawn=spawn)
    seen = (f"kho validate -j: {r.wall_s:.2f} s wall, peak RSS {r.rss_peak_bytes >> 20} MiB "
            f"(limit {SMOKE_RSS >> 20} MiB, {SMOKE_TIME:g} s); C walker {c.wall_s * 1e3:.1f} ms, "
            f"{c.rss_peak_bytes >> 20} MiB" + ("" if r.rss_exact else " (RSS: upper bounds, no spawn wrapper)"))
    print(seen)
    assert r.killed is None, f"killed ({r.killed}): {seen}"
    assert r.rc == 0, f"{seen}; exit {r.rc}: {r.stderr_tail}"
    summ, _, err = bench_run.summary_of(r.stdout_path, r.stdout_bytes)
    assert err is None, err
    assert bench_run.counts(summ) == bench_run.counts(cj) == bench_run.counts(exp), seen


def test_memblock_free_all_finds_a_preserved_page_taken_out_of_memblock(gen_dir, monkeypatch):
    """memblock_free_all does not search its gaps for preserved blocks while
    memblock.reserved still holds every block the walk reserved (the search
    forced on gives the same verdict); once memblock_free takes a preserved
    page out of it, the search runs and that page is freed before restore."""
    from pykho import profiles as P
    from pykho.model import verdict
    from pykho.model.memory_init import MemoryInit

    d, doc = gen.ensure("host-8G", out=gen_dir)
    ho, mem, doc = open_case(d)
    ram = [tuple(r) for r in doc["ram"]]
    clean = verdict.predict(ho, P.E, iomem=ram)
    assert clean["model_violations"] == [] and clean["consequences"] == []
    with monkeypatch.context() as m:
        m.setattr(MemoryInit, "_reserved_holds_preserved", lambda self: False)
        assert verdict.predict(ho, P.E, iomem=ram) == clean
    victim = int(walk_by_order(mem, ho.root.mem_map)[9][0])
    free_all = MemoryInit.memblock_free_all

    def cut_first(self):
        self.memblock.free(victim, 4096)
        free_all(self)

    monkeypatch.setattr(MemoryInit, "memblock_free_all", cut_first)
    got = verdict.predict(ho, P.E, iomem=ram)
    assert [(v["kind"], v["start"], v["end"], v["step"]) for v in got["model_violations"]] == \
        [("preserved-freed-before-restore", victim, victim + 4096, "memblock_free_all")]


def test_host_shape_verdict_counts_the_walks_memblock_regions(gen_dir, monkeypatch):
    """The verdict says how many memblock regions the walk's block-by-block
    reservations make (one per run of preserved memory), how big
    memblock.reserved grows in scratch, and warns of the cost of those
    calls' scans from the size where it takes the boot long."""
    from pykho import profiles as P
    from pykho.model import verdict

    d, doc = gen.ensure("host-8G", out=gen_dir)
    ho, mem, doc = open_case(d)
    ram = [tuple(r) for r in doc["ram"]]
    got = walk_by_order(mem, ho.root.mem_map)
    spans = sorted((int(p), int(p) + (4096 << o)) for o, a in got.items() for p in a.tolist())
    runs = 1 + sum(1 for a, b in zip(spans, spans[1:]) if a[1] != b[0])
    v = verdict.predict(ho, P.E, iomem=ram)
    mb = v["memblock"]
    assert mb["blocks"] == doc["expected"]["blocks"]
    assert mb["regions_after"] - mb["regions_before"] == runs
    entries = 128
    while entries < mb["regions_after"] + 3:
        entries *= 2
    assert (mb["array_entries"], mb["array_bytes"]) == (entries, 24 * entries)
    assert not [f for f in v["consequences"] if f["code"] == "walk-memblock-scans"]      # 1.4e9 visits
    monkeypatch.setattr(verdict, "SLOW_WALK_VISITS", mb["region_visits"])
    warn = [f for f in verdict.predict(ho, P.E, iomem=ram)["consequences"] if f["code"] == "walk-memblock-scans"]
    assert [f["severity"] for f in warn] == ["warning"]
    assert f"{mb['regions_after']:,} regions" in warn[0]["message"]


def test_profile_splits_a_command_into_imports_and_functions(gen_dir, capsys):
    """bench/profile_command.py runs the benchmark's own ``kho validate`` of a case
    as a process, then under ``-X importtime`` and cProfile: the wall time,
    the imports with numpy's share, and pykho's functions by cumulative time
    (the command's entry point first, the model's boot among them)."""
    import profile_command as bench_profile  # bench/profile_command.py
    assert bench_profile.main(["order0-1G", "validate", "--handovers", gen_dir, "--top", "40"]) == 0
    out = capsys.readouterr().out
    head, imports, _, _, _, *rows = out.splitlines()
    assert head.startswith("order0-1G validate -j: ") and head.endswith("wall as a process (exit 0)")
    total, numpy = (float(x) for x in re.match(r"imports \(python -X importtime\): ([\d.]+) s, numpy ([\d.]+) s",
                                               imports).groups())
    assert 0 < numpy < total
    names = [r.split()[-1] for r in rows]
    assert names[0].startswith("__init__.py:") and names[0].endswith("(main)")        # pykho.cli.main
    assert any(n.startswith("kernel.py:") and n.endswith("(boot)") for n in names)


def test_floor_line_names_the_targets_python_and_numpy_alone_miss():
    """The table's floor line: a row's time budget is its target times the
    C walker's time (plus ``kho --version``'s for a target above start-up);
    the rows whose budget is below ``python -c 'import numpy'`` of the same
    run are listed, the others not."""
    rows = []
    for case, cmd, wall in (("host-1T", "validate", 1.2), ("host-4T", "inspect", 0.8), ("memfd-64G", "validate", 0.35)):
        row = {"case": case, "command": cmd, "wall_best_s": wall, "rss_peak_bytes": 100 << 20, "killed": None}
        c_best = {"host-1T": 0.1, "host-4T": 0.4, "memfd-64G": 0.007}[case]
        bench_run.judge(row, c_best, 0.06)
        rows.append(row)
    assert [round(r["budget_s"], 6) for r in rows] == [0.2, 0.8, 0.081]
    assert rows[1]["met"] is True and rows[0]["met"] is False
    rows.append({"case": "-", "command": "numpy", "wall_best_s": 0.21, "ok": True})
    assert bench_run.floor_line(rows) == ("time targets below python -c 'import numpy' (210.0ms) alone: "
                                          "host-1T validate (200.0ms), memfd-64G validate (81.0ms)")
    rows[-1]["wall_best_s"] = 0.05
    assert bench_run.floor_line(rows).endswith("alone: none")


def test_compiled_walk_gives_pykhos_runs(gen_dir, capsys):
    """bench/compiled_walk.py's C runs (what compiled code in the walk would
    give) are pykho's own, array for array, on every leaf group of the
    host-8G case (pages, folios and 1 GiB blocks) and of order0-1G (eight
    full leaves: one run across them), and kho validate accepts both cases
    with either."""
    if not (shutil.which("gcc") or shutil.which("cc")):
        pytest.skip("no C compiler")
    import compiled_walk
    for case, groups, runs in (("host-8G", 2, 1000), ("order0-1G", 1, 1)):
        assert compiled_walk.main([case, "--handovers", gen_dir, "--reps", "1"]) == 0
        out = capsys.readouterr().out.splitlines()
        m = re.match(case + r": runs equal on (\d+) leaf groups \(([\d,]+) runs", out[0])
        assert m and int(m.group(1)) >= groups and int(m.group(2).replace(",", "")) >= runs
        assert "kho validate -j in process:" in out[2]
