"""``kho fuzz``: the seeded fuzz campaign over every decoder."""

from __future__ import annotations

import argparse

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from .. import fuzz
    fuzz.add_parser(sub)
