import os
import re
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
# tests/<module>/test_*.py import the shared helpers (helpers.py, this file) by name
if HERE not in sys.path:
    sys.path.insert(0, HERE)

DATA = os.path.join(HERE, "data")
ORACLE = os.path.join(DATA, "oracle")


def oracle(*parts):
    return os.path.join(ORACLE, *parts)


def reserve_lines(dmesg_text: str):
    """(phys, order) of every kho_preserved_memory_reserve memblock line, in order."""
    out = []
    for a, b in re.findall(r"__memblock_reserve: \[(0x[0-9a-f]+)-(0x[0-9a-f]+)\][^\n]*kho_preserved_memory_reserve",
                           dmesg_text):
        start, size = int(a, 16), int(b, 16) + 1 - int(a, 16)
        out.append((start, size.bit_length() - 1 - 12))
    return out


@pytest.fixture
def read():
    def _read(*parts, mode="rb"):
        with open(oracle(*parts), mode) as f:
            return f.read()
    return _read
