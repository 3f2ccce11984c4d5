"""``radix``: the kho-v2+ preserved-memory radix tree walk.

Seeds: scenario A's real tree (RAM extract) and encoder-built trees of
random (phys, order) sets.  Inputs: the trees with node fields, pointers and
pages mutated, a random root, a table whose entries all point to one leaf;
and encoder fuzz (random adds/deletes with failing allocations).

Oracle: an unmutated tree walks to exactly the blocks that were put in it,
with no problems: the (phys, order) list the generator fed to the encoder,
the blocks whose ``add`` succeeded, or for scenario A the blocks the real
next kernel reserved (:data:`~pykho.fuzz.corpus.ORACLE_A_BLOCKS`).  The
expectation never comes from the walker under test.
"""

from __future__ import annotations

import struct

from ...abi import radix as _radix
from ...memory import Bump
from ..corpus import ORACLE_A_BLOCKS, ORACLE_A_MAP, oracle_memory
from ..generators import new_mem
from ..mutation import clone, mutate_memory, pointer, poke
from .base import Family, Lie, count_leaves

__all__ = ["RadixFamily"]


class RadixFamily(Family):
    name = "radix"

    def corpus(self, rng):
        out = []
        om = oracle_memory()
        if om is not None:
            # the walk only picks the tree's nodes as mutation targets; the
            # expected blocks are the real kernel's reservations
            w = _radix.RadixWalk(om, ORACLE_A_MAP)
            list(w.blocks())
            out.append({"mem": om, "root": ORACLE_A_MAP, "nodes": [n.phys for n in w.nodes],
                        "expect": list(ORACLE_A_BLOCKS)})
        for _ in range(12):
            mem = new_mem(rng, 40)
            alloc = Bump(rng=rng)
            blocks = set()
            for _ in range(rng.choice((1, 2, 4, 8, 20, 40, rng.randrange(1, 120)))):
                order = rng.choice((0, 0, 0, 1, 2, 3, 4, 9, 10, rng.randrange(0, 19)))
                phys = (rng.randrange(0, 1 << 38) >> (12 + order)) << (12 + order)
                blocks.add((phys, order))
            tree = _radix.encode(sorted(blocks), mem, alloc.page)
            out.append({"mem": mem, "root": tree.root, "nodes": list(tree.nodes), "expect": sorted(blocks)})
        return out

    def generate(self, rng, corpus):
        r = rng.random()
        if r < 0.1:
            return self._encode_case(rng)
        base = rng.choice(corpus)
        mem = clone(base["mem"])
        if r < 0.15:
            return {"mem": mem, "root": base["root"], "expect": base["expect"]}
        nodes = base["nodes"]
        log = mutate_memory(rng, mem, nodes)
        root = base["root"]
        if rng.random() < 0.1:
            root = pointer(rng, mem, nodes)
            log.append(f"root=0x{root:x}")
        if rng.random() < 0.05:
            # amplification probe: every level-1 entry of one table points to the same leaf
            t = rng.choice(nodes)
            poke(mem, t, struct.pack("<Q", rng.choice(nodes)) * 512)
            log.append(f"amplify 0x{t:x}")
        return {"mem": mem, "root": root, "ops": log}

    def _encode_case(self, rng):
        """Encoder fuzz: random adds/deletes with failing allocations; the
        walk must show exactly the blocks whose add succeeded."""
        mem = new_mem(rng, 40)
        alloc = Bump(rng=rng, fail=rng.choice((0.0, 0.05, 0.3)))
        root = None
        while root is None:
            root = alloc.page()
        tree = _radix.RadixTree(mem, alloc.page, alloc.free, root=root)
        present = set()
        for _ in range(rng.randrange(1, 60)):
            order = rng.choice((0, 1, 2, 10, rng.randrange(0, 53)))
            phys = (rng.randrange(0, 1 << 52) >> (12 + order)) << (12 + order)
            if present and rng.random() < 0.2:
                phys, order = rng.choice(sorted(present))
                if tree.delete(phys, order):
                    present.discard((phys, order))
                continue
            if tree.add(phys, order) == 0:
                present.add((phys, order))
        return {"mem": mem, "root": root, "expect": sorted(present)}

    def run(self, case):
        mem, root = case["mem"], case["root"]
        w = _radix.RadixWalk(mem, root)
        # blocks() only flattens leaves(): the per-block tuples are built
        # where they are compared (unmutated inputs), mutated ones count
        got = list(w.blocks()) if "expect" in case else count_leaves(w)
        if "expect" in case and sorted(got) != [tuple(x) for x in case["expect"]]:
            raise Lie(f"radix walk returned {len(got)} blocks, {len(case['expect'])} were encoded"
                      f" (problems: {[str(p) for p in w.problems[:3]]})")
        if "expect" in case and w.problems:
            raise Lie(f"pristine radix tree reported problems: {w.problems[0]}")
        count_leaves(_radix.RadixWalk(mem, root, strict=True))
        return "ok"
