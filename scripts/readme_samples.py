#!/usr/bin/env python3
"""Regenerate README.md's command samples from real output.

A sample is a fenced block between two markers::

    <!-- sample: kho validate | grep=^  \\| | mask=in [0-9.]+ s -->
    ```
    $ kho validate
    ...
    ```
    <!-- /sample -->

The command (``kho ...``) is run in process through :func:`pykho.cli.main`
from the repository's root, and the block is rewritten with ``$ COMMAND``
and what it printed.  Options after ``|``:

``head=N``    keep the first N lines of the output
``grep=RE``   keep only the lines matching RE (a ``...`` line stands for what was left out above them)
``mask=RE``   a host-dependent part (a timing): written as it came out, ignored by the check

The repository's absolute path is cut from the output (the bundled handover
prints as ``src/pykho/data/...``).  ``--check`` rewrites nothing and exits 1
when a sample differs from real output (tests/test_readme.py runs it).
``--images`` also redraws docs/img/ (the bundled handover's map, and the map of
a generated 1 TiB host fully preserved in 4 KiB pages).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARK = re.compile(r"^<!-- sample: (?P<spec>.*?) -->\n```\n(?P<body>.*?)```\n<!-- /sample -->$", re.M | re.S)


@dataclass
class Sample:
    command: str
    head: int | None = None
    grep: str | None = None
    masks: list[str] = field(default_factory=list)


def parse_spec(spec: str) -> Sample:
    parts = [p.strip() for p in re.split(r" \| (?=(?:head|grep|mask)=)", spec)]
    s = Sample(parts[0])
    for opt in parts[1:]:
        key, _, val = opt.partition("=")
        if key == "head":
            s.head = int(val)
        elif key == "grep":
            s.grep = val
        elif key == "mask":
            s.masks.append(val)
    if not s.command.startswith("kho"):
        raise SystemExit(f"README sample {spec!r}: the command must start with 'kho'")
    return s


def run(sample: Sample) -> str:
    """``$ COMMAND`` and its output, as the README shows it."""
    sys.path.insert(0, str(ROOT / "src"))
    from pykho.cli import main
    argv = shlex.split(sample.command)[1:]
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(argv)
    finally:
        os.chdir(cwd)
    text = out.getvalue().replace(str(ROOT) + os.sep, "")
    lines = text.splitlines()
    if sample.grep:
        kept = [ln for ln in lines if re.search(sample.grep, ln)]
        lines = (["..."] if kept and kept[0] != lines[0] else []) + kept
    if sample.head is not None:
        lines = lines[:sample.head]
    return f"$ {sample.command}\n" + "".join(ln.rstrip() + "\n" for ln in lines)


def masked(text: str, masks: list[str]) -> str:
    for m in masks:
        text = re.sub(m, "<masked>", text)
    return text


def regenerate(readme: str) -> tuple[str, list[str]]:
    """(the new README, the commands whose sample changed beyond their masks)."""
    changed: list[str] = []

    def sub(m: re.Match[str]) -> str:
        sample = parse_spec(m.group("spec"))
        body = run(sample)
        if masked(body, sample.masks) != masked(m.group("body"), sample.masks):
            changed.append(sample.command)
            sys.stderr.writelines(difflib.unified_diff(m.group("body").splitlines(True), body.splitlines(True),
                                                       "README.md", sample.command))
        return f"<!-- sample: {m.group('spec')} -->\n```\n{body}```\n<!-- /sample -->"

    return MARK.sub(sub, readme), changed


def images() -> None:
    """docs/img/: the bundled handover's map and a 1 TiB host's."""
    sys.path.insert(0, str(ROOT / "src"))
    sys.path.insert(0, str(ROOT / "bench"))
    from pykho.cli import main
    out = ROOT / "docs" / "img"
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        main(["map", "--out", str(out / "map-7.2-luo.png")])
    finally:
        os.chdir(cwd)
    import cases  # bench/cases.py: the benchmark layouts

    from pykho import profiles as P
    from pykho.abi import radix, root, structs
    from pykho.handover import Handover
    from pykho.memory import Bump, SparseMemory
    from pykho.reports import mapplot
    gib = 1 << 30
    runs, size = cases.order0(1 << 40)
    mem = SparseMemory([(0, size + gib)])
    bump = Bump(size + (256 << 20))                      # the map's pages above what they describe
    tree = radix.encode_runs(runs, mem, bump.page)
    fdt = bump.page()
    page = root.build_root_at_boot(P.E, tree.root)
    mem.write(fdt, bytes(page.buf))
    arr = bump.page()
    scratch = [structs.KhoScratch(size + (512 << 20), 16 << 20), structs.KhoScratch(size + (640 << 20), 96 << 20),
               structs.KhoScratch(size + (768 << 20), 32 << 20)]
    mem.write(arr, structs.encode_scratch(scratch))
    ho = Handover(source="generated host-1T", root_blob=page.blob(), root_phys=fdt, scratch=scratch,
                  scratch_phys=arr, scratch_len=16 * len(scratch), mem=mem)
    layers = mapplot.collect(ho, [(0, size + gib)])
    mapplot.render_png(layers, "KHO handover of a 1 TiB host, all of it preserved in 4 KiB pages (generated by "
                               "pykho's encoders, kho-v4)", str(out / "map-host-1T.png"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when a sample differs from real output")
    ap.add_argument("--images", action="store_true", help="also redraw docs/img/")
    args = ap.parse_args()
    text = README.read_text()
    new, changed = regenerate(text)
    if args.check:
        if changed:
            print(f"README.md: {len(changed)} sample(s) differ from real output: {', '.join(changed)}; "
                  "run scripts/readme_samples.py", file=sys.stderr)
            return 1
        return 0
    if new != text:
        README.write_text(new)
    print(f"README.md: {len(MARK.findall(text))} samples, {len(changed)} rewritten")
    if args.images:
        images()
        print("docs/img/: map-7.2-luo.png, map-host-1T.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
