"""The project's own list of mistakes, per sub-command: what a user gets wrong,
the exit code it must give, and the one line on stderr that names the file or
option and what was wrong.  No traceback, ever; exit 3 (an internal error) is
never right.  Every bug found in how ``kho`` answers a mistake becomes a row.

A row is ``(argv, exit code, substring of the one stderr line)``; a substring of
None means stderr stays empty (the input is fine or partial, and the report on
stdout says what it holds).  ``{name}`` in an argument is a file of the
``inputs`` fixture below; ``{D}`` the bundled handover's directory.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from pykho.cli import main

D = os.path.join(os.path.dirname(__file__), "..", "..", "src", "pykho", "data", "linux-7.2-luo")
OUT = os.path.join(D, "debugfs", "kho", "out")
ORACLE = os.path.join(os.path.dirname(__file__), "..", "data", "oracle")
B_OUT = os.path.join(ORACLE, "B-luo-memblock-chain", "stage1-debugfs", "kho", "out")

# (argv, exit code, substring of the single stderr line or None for an empty stderr)
MISTAKES: list[tuple[list[str], int, str | None]] = [
    # ---- the command line itself
    ([], 2, "kho: no command given: inspect, validate"),
    (["nosuch"], 2, "argument COMMAND: invalid choice: 'nosuch'"),
    (["inspect", "--nosuch"], 2, "kho inspect: unrecognized arguments: --nosuch"),
    (["inspect", OUT, "extra"], 2, "kho inspect: unrecognized arguments: extra"),
    (["inspect", "--fdt-phys", "zz"], 2, "argument --fdt-phys: 'zz' is not a number"),
    (["inspect", "--fdt-phys", "-1"], 2, "argument --fdt-phys: '-1' is negative"),
    (["inspect", "--fdt-phys", "0x1" + "0" * 16], 2, "argument --fdt-phys: '0x10000000000000000' is beyond"),
    (["inspect", "--bitmap-bits", "7"], 2, "argument --bitmap-bits: '7': kho-v1 bitmaps hold 4096 bits"),
    (["inspect", "--bitmap-bits", "x"], 2, "argument --bitmap-bits: 'x' is not a number"),
    (["inspect", "--profile", "ZZ"], 2, "--profile 'ZZ': unknown kernel generation"),
    (["inspect", "--profile", ""], 2, "--profile '': unknown kernel generation"),
    (["validate", "--target", ""], 2, "--target '': unknown kernel generation"),
    (["validate", "--target", "8.0"], 2, "--target '8.0': unknown kernel generation"),
    (["explore", "--profile", "nope"], 2, "--profile 'nope': unknown kernel generation"),
    (["explore", "--runs", "-5"], 2, "argument --runs: '-5' must be at least 1"),
    (["explore", "--runs", "0"], 2, "argument --runs: '0' must be at least 1"),
    (["explore", "--runs", "1.5"], 2, "argument --runs: '1.5' is not a whole number"),
    (["explore", "--seed", "-1"], 2, "argument --seed: '-1' must be at least 0"),
    (["explore", "--runs", "1", "--save", "/dev/null/x"], 2, "--save /dev/null/x: cannot write there"),
    (["explore", "--runs", "1", "--save", "{random.bin}"], 2, "not a directory"),
    (["explore", "--runs", "1", "--save", ""], 2, "--save '': give a directory"),
    (["fuzz", "--seconds", "-1"], 2, "argument --seconds: '-1' must be above 0"),
    (["fuzz", "--seconds", "nan"], 2, "argument --seconds: 'nan' is not a finite number"),
    (["fuzz", "--seconds", "inf"], 2, "argument --seconds: 'inf' is not a finite number"),
    (["fuzz", "--jobs", "0"], 2, "argument --jobs: '0' must be at least 1"),
    (["fuzz", "--limit", "0"], 2, "argument --limit: '0' must be above 0"),
    (["fuzz", "--progress", "-1"], 2, "argument --progress: '-1' must be at least 0"),
    (["fuzz", "--first-index", "-1"], 2, "argument --first-index: '-1' must be at least 0"),
    (["fuzz", "--clock", "moon"], 2, "argument --clock: invalid choice: 'moon'"),
    (["fuzz", "--family", "nope", "--seconds", "1"], 2, "--family 'nope': no such family"),
    (["fuzz", "--replay", "/nonexistent"], 2, "--replay /nonexistent: not a regular file"),
    (["fuzz", "--replay", "{random.bin}"], 2, "not a saved kho fuzz failure"),
    (["fuzz", "--replay", "{case.json}"], 2, "not a saved kho fuzz failure (no known 'family')"),
    (["fuzz", "--replay", "{fifo}"], 2, "not a regular file"),
    (["fuzz", "--replay", "{emptydir}"], 2, "not a regular file"),
    (["fuzz", "--replay", ""], 2, "--replay '': give a failure saved by kho fuzz"),
    (["fuzz", "--seconds", "1", "--crash-dir", "{random.bin}"], 2, "--crash-dir"),
    (["fuzz", "--seconds", "1", "--summary-file", "/nonexistent/d/s.json"], 2,
     "--summary-file /nonexistent/d/s.json: cannot write: no directory"),
    (["simulate", "nosuch"], 2, "'nosuch': not a built-in scenario"),
    (["simulate", "{random.bin}"], 2, "not a TOML scenario (not UTF-8 text"),
    (["simulate", "{bad.toml}"], 2, "not a TOML scenario ("),
    (["simulate", "{table.toml}"], 2, "'kernel' must be an array of tables"),
    (["simulate", "{unknown.toml}"], 2, "unknown table 'kernels'"),
    (["simulate", "{empty.fdt}"], 2, "an empty scenario"),
    (["simulate", "{step.toml}"], 2, "unknown step 'jump'"),
    (["simulate", "{order.toml}"], 2, "invalid scenario (ValueError"),
    (["simulate", "{fifo}"], 2, "scenario file must be a regular file, not a FIFO"),
    (["simulate", "{emptydir}"], 2, "scenario file must be a regular file, not a directory"),
    (["simulate", "/dev/null"], 2, "scenario file must be a regular file, not a character device"),
    (["simulate", "--nosuch"], 2, "kho simulate: unrecognized arguments: --nosuch"),
    (["simulate", "{badprofile.toml}"], 2, "[[kernel]] #1: profile 'ZZ' is not a known generation"),
    (["simulate", "{badhost.toml}"], 2, "[host] ram = -1: a number of bytes"),
    (["simulate", "{hostkey.toml}"], 2, "[host] has no key 'rams'"),
    (["simulate", "{hostrange.toml}"], 2, "[host] range_bytes = 1000: a power of two"),
    (["compat", "extra"], 2, "kho compat: unrecognized arguments: extra"),
    (["preflight"], 2, "kho preflight: one of the arguments --target-image --target is required"),
    (["preflight", "--target", "E", "--target-image", "x"], 2, "argument --target-image: not allowed with"),
    (["preflight", "{fifo}", "--target", "E"], 2, "a FIFO, not a debugfs kho directory"),
    (["preflight", "{emptydir}", "--target", "E"], 2, "no fdt, no scratch_phys"),
    (["preflight", OUT, "--target", "nope"], 2, "--target 'nope': unknown kernel generation"),
    (["preflight", "--target-image", "{random.bin}"], 2, "no kernel release found"),
    (["preflight", "--target-image", "{fifo}"], 2, "not a regular file"),
    (["validate", "--target", "E", "--target-image", "x"], 2, "argument --target-image: not allowed with"),
    (["validate", "--target-image", "{random.bin}"], 2, "no kernel release found"),
    # ---- PATH: what is not a handover
    (["inspect", "/nonexistent"], 2, "/nonexistent: no such file or directory"),
    (["inspect", "{emptydir}"], 2, "no fdt, no scratch_phys: not a copy of /sys/kernel/debug/kho"),
    (["validate", "{emptydir}"], 2, "no fdt, no scratch_phys: not a copy of /sys/kernel/debug/kho"),
    (["map", "{emptydir}", "--out", "{tmp}/m.svg"], 2, "no fdt, no scratch_phys"),
    (["inspect", "{fifo}"], 2, "a FIFO, not a debugfs kho directory or a root FDT file"),
    (["validate", "{fifo}"], 2, "a FIFO, not a debugfs kho directory"),
    (["inspect", "/dev/null"], 2, "a character device, not a debugfs kho directory"),
    (["inspect", "{fifodir}"], 2, "root FDT must be a regular file, not a FIFO"),
    (["inspect", "{empty.fdt}"], 2, "an empty file, not a root FDT"),
    (["validate", "{empty.fdt}"], 2, "an empty file, not a root FDT"),
    (["inspect", "{random.bin}"], 2, "KHO root FDT at"),
    (["inspect", "{junk.dtb}"], 2, "KHO root FDT at"),
    (["inspect", "{board.dtb}"], 2, "a flattened device tree, but not a KHO root FDT: its root's compatible is "
                                    "'acme,board'"),
    (["inspect", "{nocompat.dtb}"], 2, "not a KHO root FDT: its root has no compatible property"),
    (["map", "{board.dtb}", "--out", "{tmp}/m.svg"], 2, "not a KHO root FDT"),
    # validate says what the kernel does with the bytes: a device tree that is not KHO's is refused
    (["validate", "{board.dtb}"], 1, None),
    (["inspect", "{badscratch}"], 2, "expected 0x<hex>"),
    (["inspect", "{binscratch}"], 2, "not a debugfs scratch_phys copy (not ASCII text)"),
    (["inspect", "{oddscratch}"], 2, "2 addresses but 1 sizes"),
    (["inspect", "{kho_booted}"], 2, "this kernel was booted through KHO"),
    # ---- partial input decodes what it holds: exit 0, the report says what needs memory
    (["inspect", OUT], 0, None),
    (["inspect", os.path.dirname(OUT)], 0, None),
    (["inspect", B_OUT], 0, None),
    (["inspect", "{cut.fdt}"], 0, None),
    (["validate", OUT], 2, "cannot tell what E does with it: the root FDT file is cut short"),
    (["validate", "{cut.fdt}"], 2, "cannot tell what E does with it"),
    # ---- --mem
    (["inspect", OUT, "--mem", "bogus:x"], 2, "--mem 'bogus:x': unknown source kind 'bogus'"),
    (["inspect", OUT, "--mem", "raw"], 2, "--mem 'raw': expected raw:PATH"),
    (["inspect", OUT, "--mem", "raw:/nonexistent"], 2, "/nonexistent: cannot open raw memory image"),
    (["inspect", OUT, "--mem", "raw:{random.bin}@-1"], 2, "base '-1' is negative"),
    (["inspect", OUT, "--mem", "raw:{random.bin}@zz"], 2, "base 'zz' is not a number"),
    (["inspect", OUT, "--mem", "raw:{random.bin}@0x" + "f" * 16], 2, "ends beyond 64-bit physical addresses"),
    (["inspect", OUT, "--mem", "raw:@0x1000"], 2, "no file name before '@'"),
    (["inspect", OUT, "--mem", "raw:{fifo}"], 2, "raw memory image must be a regular file, not a FIFO"),
    (["inspect", OUT, "--mem", "raw:{emptydir}"], 2, "raw memory image must be a regular file, not a directory"),
    (["inspect", OUT, "--mem", "raw:/dev/zero"], 2, "raw memory image must be a regular file, not a character device"),
    (["inspect", OUT, "--mem", "elf:{random.bin}"], 2, "not an ELF file (bad magic)"),
    (["inspect", OUT, "--mem", "sparse:{random.bin}"], 2, "not a sparse extract directory or tar archive"),
    (["inspect", OUT, "--mem", "sparse:{emptydir}"], 2, "no MANIFEST.tsv"),
    (["inspect", OUT, "--mem", "sparse:/nonexistent"], 2, "/nonexistent: no such file or directory"),
    (["inspect", OUT, "--mem", "sparse:{badmanifest}"], 2, "expected file<TAB>phys_start<TAB>length"),
    (["inspect", OUT, "--mem", "sparse:{fifomanifest}"], 2, "sparse extract file must be a regular file, not a FIFO"),
    # memory that does not hold the FDT: the file's tree, and a note saying so
    (["inspect", OUT, "--mem", "raw:{random.bin}"], 0, None),
    (["inspect", OUT, "--mem", "raw:{random.bin}", "--fdt-phys", "0x100000000"], 2,
     "--fdt-phys 0x100000000: KHO root FDT header at 0x100000000"),
    # ---- --iomem
    (["validate", "--iomem", "{random.bin}"], 2, "--iomem {random.bin}: not a /proc/iomem copy (not ASCII text)"),
    (["validate", "--iomem", "{garbage.txt}"], 2, "not a /proc/iomem copy (no 'System RAM' line)"),
    (["validate", "--iomem", "{nonroot_iomem}"], 2, "every System RAM address is 0"),
    (["validate", "--iomem", "{backwards_iomem}"], 2, "ends before it starts"),
    (["validate", "--iomem", "{fifo}"], 2, "{fifo}: --iomem file must be a regular file, not a FIFO"),
    (["validate", "--iomem", "/nonexistent"], 2, "/nonexistent: cannot open --iomem file"),
    (["validate", "--iomem", ""], 2, "--iomem '': give a copy of /proc/iomem"),
    (["map", "--iomem", "{random.bin}", "--out", "{tmp}/m.svg"], 2, "not a /proc/iomem copy"),
    # ---- map --out
    (["map", "--out", "/nonexistent/d/x.png"], 2, "--out /nonexistent/d/x.png: cannot write: no directory"),
    (["map", "--out", "/nonexistent/d/x.svg"], 2, "--out /nonexistent/d/x.svg: cannot write: no directory"),
    (["map", "--out", "/dev/null/x.svg"], 2, "cannot write: /dev/null is not a directory"),
    (["map", "--out", "{emptydir}"], 2, "must end in .svg or .png"),
    (["map", "--out", "{tmp}/m.pdf"], 2, "--out '{tmp}/m.pdf': must end in .svg or .png"),
    (["map", "--out", "{tmp}/d.svg"], 2, "cannot write: it is a directory"),
    (["map", "--out", "{tmp}/m.svg"], 0, None),
    (["map", "-j", "--out", "{tmp}/m.svg"], 0, None),
]


def _fdt(props: list[tuple[str, bytes]]) -> bytes:
    from pykho.abi import fdt
    blob, err = fdt.build(props, [])
    assert not err
    return blob


@pytest.fixture
def inputs(tmp_path):
    """Files that ordinary mistakes are made with."""
    t = tmp_path
    (t / "random.bin").write_bytes(bytes((i * 151 + 7) % 256 for i in range(65536)))
    os.mkfifo(t / "fifo")
    (t / "emptydir").mkdir()
    (t / "empty.fdt").write_bytes(b"")
    with open(os.path.join(OUT, "fdt"), "rb") as f:
        (t / "cut.fdt").write_bytes(f.read()[:100])
    (t / "junk.dtb").write_bytes(b"\xd0\x0d\xfe\xed" + b"\xff" * 60)
    (t / "board.dtb").write_bytes(_fdt([("compatible", b"acme,board\0")]))
    (t / "nocompat.dtb").write_bytes(_fdt([("model", b"acme\0")]))
    (t / "case.json").write_text('{"a": 1}')
    (t / "bad.toml").write_text("[machine\nram = 1\n")
    (t / "table.toml").write_text("kernel = 5\n")
    (t / "unknown.toml").write_text("[[kernels]]\nprofile = 'E'\n")
    (t / "step.toml").write_text("[[kernel]]\nprofile = 'E'\n[[step]]\ndo = 'jump'\n")
    (t / "order.toml").write_text("[[kernel]]\nprofile = 'E'\n[[step]]\ndo = 'preserve'\norder = 'big'\n")
    (t / "badprofile.toml").write_text("[[kernel]]\nprofile = 'ZZ'\n")
    (t / "badhost.toml").write_text("[host]\nram = -1\n")
    (t / "hostkey.toml").write_text("[host]\nrams = 1\n")
    (t / "hostrange.toml").write_text("[host]\nrange_bytes = 1000\n")
    (t / "garbage.txt").write_text("this is not /proc/iomem\n")
    (t / "nonroot_iomem").write_text("00000000-00000000 : Reserved\n00000000-00000000 : System RAM\n")
    (t / "backwards_iomem").write_text("00200000-000fffff : System RAM\n")
    (t / "d.svg").mkdir()
    for name, files in {"badscratch": {"scratch_phys": "hello\n", "scratch_len": "0x1000\n"},
                        "oddscratch": {"scratch_phys": "0x1000\n0x2000\n", "scratch_len": "0x1000\n"},
                        "kho_booted": {"scratch_phys": "0x1000\n", "scratch_len": "0x1000\n"}}.items():
        (t / name).mkdir()
        for f, text in files.items():
            (t / name / f).write_text(text)
    (t / "binscratch").mkdir()
    (t / "binscratch" / "scratch_phys").write_bytes(b"\xff\xfe\x00")
    (t / "fifodir").mkdir()
    os.mkfifo(t / "fifodir" / "fdt")
    (t / "badmanifest").mkdir()
    (t / "badmanifest" / "MANIFEST.tsv").write_text("x\ty\n")
    (t / "fifomanifest").mkdir()
    os.mkfifo(t / "fifomanifest" / "MANIFEST.tsv")
    subst = {p.name: str(p) for p in t.iterdir()} | {"tmp": str(t), "D": D}
    return subst


def _fill(text: str, subst: dict[str, str]) -> str:
    return re.sub(r"\{([A-Za-z0-9_.]+)\}", lambda m: subst[m.group(1)], text)


def _argv(argv: list[str], subst: dict[str, str]) -> list[str]:
    return [_fill(a, subst) for a in argv]


@pytest.mark.parametrize("argv,code,line", MISTAKES, ids=[" ".join(a) or "(none)" for a, _, _ in MISTAKES])
def test_mistake(argv, code, line, inputs, capsys, monkeypatch):
    monkeypatch.chdir(inputs["tmp"])
    rc = main(_argv(argv, inputs))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert "internal error" not in err
    assert rc == code, err
    if line is None:
        assert err == "", err
        return
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("kho"), lines[0]
    assert _fill(line, inputs) in lines[0], lines[0]


def test_help_and_version_exit_0(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("pykho ")
    for cmd in ("inspect", "validate", "simulate", "compat", "map", "explore", "fuzz"):
        assert main([cmd, "--help"]) == 0
        assert "usage: kho " + cmd in capsys.readouterr().out


def test_every_option_says_what_it_means_and_its_default():
    """Each option of each sub-command has a help text, and says its default
    (flags, --help and -p aside: their default is off / implied)."""
    from pykho.cli import build_parser
    ap = build_parser()
    sub = next(a for a in ap._actions if a.__class__.__name__ == "_SubParsersAction")
    missing = []
    for name, p in sub.choices.items():
        for a in p._actions:
            if a.dest == "help":
                continue
            h = a.help or ""
            if len(h) < 10:
                missing.append(f"{name} {a.option_strings or a.dest}: no help")
            elif a.nargs != 0 and "default" not in h and a.option_strings:
                missing.append(f"{name} {a.option_strings}: no default in {h!r}")
    assert missing == []


def test_json_on_every_subcommand_means_json(inputs, capsys):
    """-j and -p mean JSON everywhere (map prints what it wrote as JSON)."""
    runs = [["inspect"], ["validate"], ["simulate", "seed-fixed"], ["simulate", "--list"], ["compat"],
            ["map", "--out", os.path.join(inputs["tmp"], "m.svg")], ["explore", "--runs", "2"]]
    for argv in runs:
        for flag in ("-j", "-p"):
            main(argv + [flag])
            out = capsys.readouterr().out
            doc = json.loads(out)
            assert isinstance(doc, (dict, list)), argv
            if flag == "-p":
                assert "\n  " in out, argv
    main(["map", "--out", os.path.join(inputs["tmp"], "m.svg"), "-j"])
    rep = json.loads(capsys.readouterr().out)
    assert rep["out"].endswith("m.svg") and rep["blocks"] == 21 and rep["format"] == "svg"


def test_map_names_its_default_output(inputs, capsys, monkeypatch):
    monkeypatch.chdir(inputs["tmp"])
    assert "(default: ./kho-map.svg)" in _help("map")
    assert main(["map"]) == 0
    assert capsys.readouterr().out.startswith("wrote kho-map.svg:")
    assert os.path.isfile(os.path.join(inputs["tmp"], "kho-map.svg"))


def _help(cmd: str) -> str:
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main([cmd, "--help"])
    return " ".join(buf.getvalue().split())


def test_a_doubtful_base_cannot_be_told(tmp_path, capsys):
    """The bundled capture as a raw image given 4 GiB too high: the root FDT
    is found, but not where setup_data says; the verdict is 'cannot tell'."""
    from pykho.memory import open_source
    src = open_source("sparse:" + os.path.join(D, "ram.sparse.tar.xz"))
    raw = tmp_path / "ram.raw"
    with open(raw, "wb") as f:
        f.truncate(src.ranges()[-1][1])
        for s, e in src.ranges():
            f.seek(s)
            f.write(src.read(s, e - s))
    rc = main(["validate", OUT, "--mem", f"raw:{raw}@0x100000000", "-j"])
    out, err = capsys.readouterr()
    rep = json.loads(out)
    assert rc == 2 and len(err.splitlines()) == 1 and "wrong base" in err
    assert rep["verdict"]["populate"] == "unknown" and "at_this_base" in rep["verdict"]
    assert "mem-base-doubtful" in {f["code"] for f in rep["findings"]}
    assert "at 0x0" in rep["verdict"]["outcome"]          # where everything lines up
    # at the right base: no doubt, the real verdict
    rc = main(["validate", OUT, "--mem", f"raw:{raw}", "-j"])
    rep = json.loads(capsys.readouterr().out)
    assert rc == 0 and rep["verdict"]["populate"] == "accepted"
    assert "mem-base-doubtful" not in {f["code"] for f in rep["findings"]}
    # --iomem that puts the found FDT outside RAM doubts it too
    iomem = tmp_path / "iomem"
    iomem.write_text("100000000-13fffffff : System RAM\n")
    rc = main(["validate", OUT, "--mem", f"raw:{raw}", "--iomem", str(iomem), "-j"])
    rep = json.loads(capsys.readouterr().out)
    assert rc == 2 and "outside System RAM" in rep["verdict"]["outcome"]


def test_the_scan_is_bounded(tmp_path, monkeypatch):
    """An image that holds no root FDT is searched within the time limit, a
    chunk at a time, and the report says how far it got."""
    from pykho import handover
    from pykho.memory import RawImage
    big = tmp_path / "big.raw"
    with open(big, "wb") as f:
        f.truncate(8 << 30)                 # 8 GiB of holes: reads cost time, not disk
    monkeypatch.setattr(handover, "SCAN_SECONDS", 0.3)
    import time
    t0 = time.monotonic()
    ho = handover.load(OUT, RawImage(str(big)))
    assert time.monotonic() - t0 < 5
    q = [x for x in ho.quirks if x.code == "root-fdt-not-located"]
    assert q and "of 8.0 GiB" in q[0].message
    assert ho.partial is not None             # the file's cut tree is still shown
    res = handover.scan_memory(RawImage(str(big)), b"\xd0\x0d\xfe\xed", seconds=60, limit=3 << 20)
    assert res.stopped == "bytes" and res.scanned == 3 << 20


def test_scratch_of_the_cut_copy_and_sub_blobs(capsys):
    """The bundled debugfs copy alone: the tree as far as the cut goes, the
    scratch areas, the sub-blobs, and what needs memory."""
    assert main(["inspect", OUT, "-j"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["partial"] == {"have": 233, "totalsize": 405,
                              "names_from": "those every KHO root FDT uses (its strings block is cut)",
                              "incomplete": ["kho_test"], "only_in_sub_fdts": ["kexec-metadata"]}
    assert [s["name"] for s in rep["subtrees"]] == ["memblock", "LUO", "kho_test", "kexec-metadata"]
    assert rep["subtrees"][0]["phys"] == 0x881000 and rep["subtrees"][0]["size"] == 214
    assert rep["subtrees"][3]["decoded"]["kind"] == "kexec-metadata"
    assert len(rep["scratch"]) == 3 and rep["memory_map"] == 0x29A000
    need = " ".join(rep["needs_memory"])
    assert "172 of 405 bytes" in need and "0x29a000" in need and "kexec-metadata" in need


def test_inspect_profile_that_contradicts_the_bytes(capsys):
    assert main(["inspect", "--profile", "A0"]) == 0
    out = capsys.readouterr().out
    assert "--profile A0 writes 'kho-v1' but these bytes say 'kho-v4'" in out


def test_explore_counts_runs_and_occurrences(capsys):
    assert main(["explore", "--runs", "30", "--seed", "1", "-j"]) == 1
    rep = json.loads(capsys.readouterr().out)
    for kind, c in rep["violations"].items():
        assert 1 <= c["runs"] <= 30 and c["occurrences"] >= c["runs"], kind
    assert any(c["occurrences"] > c["runs"] for c in rep["violations"].values())


def test_rows_are_well_formed():
    for argv, code, line in MISTAKES:
        assert code in (0, 1, 2) and (line is None or isinstance(line, str)), argv
    assert len(MISTAKES) >= 100


def test_setup_data_found_with_and_without_numpy(monkeypatch):
    import sys

    from pykho import handover
    from pykho.memory import open_source
    mem = open_source("sparse:" + os.path.join(D, "ram.sparse.tar.xz"))
    with_np = handover.scan_memory(mem, None).setup_data
    monkeypatch.setitem(sys.modules, "numpy", None)          # the one-byte search path
    without = handover.scan_memory(mem, None).setup_data
    assert with_np is not None and with_np == without and with_np[1].fdt_addr == 0x2D5000
