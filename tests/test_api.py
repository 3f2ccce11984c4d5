"""docs/API.md's examples run as written, and the API is what it says.

Every fenced ``python`` block of docs/API.md is executed from the
repository's root, each in a fresh namespace, in document order."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pykho

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "API.md"


def _blocks() -> list[tuple[int, str]]:
    text = DOC.read_text()
    out = []
    for m in re.finditer(r"^```python\n(.*?)^```$", text, re.M | re.S):
        out.append((text[:m.start()].count("\n") + 1, m.group(1)))
    return out


BLOCKS = _blocks()


def test_the_doc_has_at_least_five_examples():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("line,code", BLOCKS, ids=[f"API.md:{n}" for n, _ in BLOCKS])
def test_example_runs_as_written(line, code, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    exec(compile(code, f"{DOC}:{line}", "exec"), {"__name__": "__api_example__"})
    assert capsys.readouterr().out        # every example shows something


def test_all_is_the_documented_surface():
    documented = set()
    for row in re.findall(r"^\| (`pykho\..*?) \|", DOC.read_text(), re.M):
        documented |= set(re.findall(r"`pykho\.([A-Za-z_]+)", row))
    assert documented == set(pykho.__all__) - {"__version__"}
    for name in pykho.__all__:
        assert getattr(pykho, name) is not None


def test_import_pykho_loads_nothing_else():
    code = "import sys, pykho; print(sorted(m for m in sys.modules if m.startswith('pykho')))"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == "['pykho', 'pykho._version']"


def test_blocks_stream_in_walk_order_and_arrays_agree():
    ho = pykho.open()
    streamed = list(pykho.blocks(ho))
    arrays = pykho.block_arrays(ho)
    assert sorted(streamed) == sorted((int(p), o) for o, a in arrays.items() for p in a)
    # walk order: the same order the inspect --blocks stream and validate's reservations use
    v = pykho.validate(ho, blocks=True)
    assert [tuple(b) for b in v["preserved"]] == streamed


def test_open_without_a_path_or_memory_is_the_bundled_handover():
    ho = pykho.open()
    assert ho.root_phys == 0x2D5000 and ho.mem is not None and ho.base_doubt is None


def test_unknown_profile_is_a_usage_error():
    with pytest.raises(pykho.UsageError, match="profile 'Z9'"):
        pykho.inspect(pykho.open(), profile="Z9")
