"""Test modules need unique basenames: tests/ has no packages (conftest adds
it to sys.path), so two test_x.py in different folders stop collection of the
whole suite with an import-file mismatch."""
from collections import Counter
from pathlib import Path


def test_test_module_basenames_are_unique():
    names = Counter(p.name for p in Path(__file__).resolve().parent.rglob("test_*.py"))
    assert not [n for n, k in names.items() if k > 1], names.most_common(3)
