"""The registry of finding codes and docs/JSON.md list the same codes with the
same severities, and every code a report emits is registered."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pykho import findings

DOC = Path(__file__).resolve().parents[1] / "docs" / "JSON.md"


def _doc_table() -> dict[str, str]:
    text = DOC.read_text()
    part = text[text.index("### Finding codes"):]
    rows = {}
    for m in re.finditer(r"^\| `([a-z0-9-]+\*?)` \| (error|warning|info) \|", part, re.M):
        rows[m.group(1)] = m.group(2)
    return rows


def test_json_md_lists_exactly_the_registry():
    doc = _doc_table()
    reg = {c: sev for c, (sev, _) in findings.CODES.items()}
    reg |= {p + "*": sev for p, (sev, _) in findings.PATTERNS.items()}
    assert doc == reg


def test_severity_of_unknown_code_raises():
    assert findings.severity_of("model-double-free") == findings.ERROR
    assert findings.severity_of("debugfs-fdt-truncated") == findings.INFO
    with pytest.raises(KeyError):
        findings.severity_of("no-such-code")


def test_every_code_in_the_sources_is_registered():
    """Each literal finding code handed to a report is in the registry."""
    src = Path(findings.__file__).parent
    used = set()
    for f in list((src / "reports").glob("*.py")) + list((src / "model").glob("*.py")) + [src / "handover.py"] + \
            list((src / "clients").glob("*.py")):
        text = f.read_text()
        used |= set(re.findall(r'(?:add|_finding)\(\s*"([a-z0-9-]+)"', text))
        used |= set(re.findall(r'Quirk\(\s*"([a-z0-9-]+)"', text))
    assert used, "the pattern found no code at all"
    assert sorted(c for c in used if not findings.known(c)) == []
