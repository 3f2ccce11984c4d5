"""What a fuzz family is: a corpus, a generator of one input, a runner.

A family owns one decoder (or a few that read the same bytes).  The engine
builds its corpus once per worker from ``random.Random(f"{seed}:{name}:corpus")``,
asks :meth:`Family.generate` for input ``i`` with ``random.Random(f"{seed}:{name}:{i}")``
and runs :meth:`Family.run` on it.  ``run`` returns a short result tag;
raising :class:`Lie` is the oracle saying that an unmutated encoder output
decoded to something other than what was encoded.
"""

from __future__ import annotations

__all__ = ["Family", "Lie", "count_leaves"]


class Lie(Exception):
    """A pristine encoder output decoded to something else."""


class Family:
    """One decoder family (subclasses set :attr:`name`)."""

    name = ""
    mutated_share = 0.85   # share of inputs that are mutated (the rest are pristine)

    def corpus(self, rng) -> list:
        """The seeds inputs are drawn from (built once per worker and seed)."""
        return []

    def generate(self, rng, corpus) -> dict:
        """One input (a JSON-able case dict) drawn with ``rng`` from ``corpus``."""
        raise NotImplementedError

    def run(self, case) -> str:
        """Decode ``case``; a result tag, or a KhoError, or :class:`Lie`."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Release per-process resources (scratch files) when a worker ends."""


def count_leaves(walk) -> int:
    """Walk every leaf of a radix or chunk walk; the number of blocks."""
    n = 0
    for _order, physs in walk.leaves():
        n += len(physs)
    return n
