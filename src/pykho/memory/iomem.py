"""``/proc/iomem``: the System RAM ranges of a machine."""

from __future__ import annotations

__all__ = ["parse_iomem"]


def parse_iomem(text: str) -> list[tuple[int, int]]:
    """System RAM ranges (top level only) of a ``/proc/iomem`` copy, as
    half-open ``(start, end)`` pairs."""
    out = []
    for line in text.splitlines():
        if line.startswith(" ") or ":" not in line:
            continue
        rng, _, name = line.partition(":")
        if name.strip() != "System RAM":
            continue
        try:
            a, b = (int(x, 16) for x in rng.strip().split("-"))
        except ValueError:
            continue
        out.append((a, b + 1))
    return out
