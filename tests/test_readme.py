"""README.md's command samples are real output (scripts/readme_samples.py
writes them; a timing is masked by its marker)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("readme_samples", ROOT / "scripts" / "readme_samples.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["readme_samples"] = mod          # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_readme_samples_are_real_output():
    rs = _script()
    text = rs.README.read_text()
    assert len(rs.MARK.findall(text)) >= 8
    _, changed = rs.regenerate(text)
    assert changed == [], f"README.md samples drifted from real output: {changed}; run scripts/readme_samples.py"


def test_the_check_sees_a_drift_and_ignores_only_masked_parts():
    rs = _script()
    text = rs.README.read_text()
    drifted = text.replace("  | KHO: exec from: 7.2.13 (count 1)\n", "  | KHO: exec from: 7.1.0 (count 1)\n", 1)
    assert drifted != text
    assert rs.regenerate(drifted)[1] == ["kho validate"]
    # the explorer's timing is masked: another number of seconds is no drift
    timed = rs.re.sub(r"\(seed 1\) in [0-9.]+ s", "(seed 1) in 999.99 s", text)
    assert timed != text and rs.regenerate(timed)[1] == []


def test_readme_names_what_the_tools_do():
    text = (ROOT / "README.md").read_text()
    for word in ("docs/API.md", "docs/JSON.md", "kho-map.svg", "'pykho[plot]'", "docs/img/map-7.2-luo.png",
                 "docs/img/map-host-1T.png"):
        assert word in text, word
    for img in ("map-7.2-luo.png", "map-host-1T.png"):
        assert (ROOT / "docs" / "img" / img).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_docs_cite_public_sources_only():
    """No path of one machine, no lookup id of a private index, no document the repository lacks."""
    import re
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        for bad in (r"/work/", r"/home/\w+", r"find_string", r"hit id \d+", r"KHO-ABI\.md"):
            assert not re.search(bad, text), f"{doc.name}: {bad}"


def test_the_sdist_carries_what_these_tests_read():
    manifest = (ROOT / "MANIFEST.in").read_text()
    for line in ("graft docs", "graft tests", "include scripts/*.py"):
        assert line in manifest.splitlines(), line
