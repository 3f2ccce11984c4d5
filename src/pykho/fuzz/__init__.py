"""``kho fuzz``: a seeded, reproducible fuzz campaign over every decoder family.

Every decoder of pykho reads bytes that are by definition suspect.  The
property checked here, for every input, is:

* the decoder returns a result or raises a :class:`~pykho.errors.KhoError`
  (in practice a :class:`~pykho.errors.KhoDecodeError` naming the structure
  and the location); any other exception is a **crash**;
* it returns within the per-input time limit (1 s by default); otherwise it
  is a **hang**;
* the worker's peak RSS does not jump by more than ``--rss-jump-mb`` during
  one input (allocations sized by values read from the input); otherwise it
  is a **memory** finding;
* an input that was built by the encoders and not mutated decodes to exactly
  what was encoded; otherwise it is a **lie**.

Inputs come from two sources per family: *structured generation* (a valid
handover built with pykho's own encoders in a :class:`SparseMemory`, then
fields, pointers and lengths mutated) and *byte-level mutation* of seed
files (the real 7.2.13 artifacts shipped in ``pykho/fuzz/seeds`` and
encoder output).

The package:

* :mod:`.mutation` -- byte-level and structure-level mutators;
* :mod:`.generators` -- valid-input generators (FDTs, memory structures, files);
* :mod:`.corpus` -- the packaged seed files and scenario A's RAM;
* :mod:`.families` -- one module per decoder family and the :data:`FAMILIES` registry;
* :mod:`.engine` -- generation by (seed, family, index), running one input,
  the time limit, crash classification, the worker loop;
* :mod:`.cases` -- cases as JSON and saved failures;
* :mod:`.campaign` -- the multi-process campaign, replay, the summary, the command line;
* :mod:`.guided` -- coverage-guided mode with atheris.

The fuzzer imports ``errors``, ``memory``, ``abi`` and ``profiles``, never
the model or the report layers.
"""

from __future__ import annotations

from .campaign import Campaign, format_summary, load_case, replay
from .cases import case_from_json, case_size, case_to_json, save_failure
from .corpus import oracle_memory, seed_files
from .engine import BAD_KINDS, CLOCK, InputTimeout, call_with_limit, corpus_for, execute, generate
from .families import FAMILIES, Family, Lie
from .mutation import mutate_bytes, mutate_memory

__all__ = [
           "BAD_KINDS",
           "CLOCK",
           "FAMILIES",
           "Campaign",
           "Family",
           "InputTimeout",
           "Lie",
           "call_with_limit",
           "case_from_json",
           "case_size",
           "case_to_json",
           "corpus_for",
           "execute",
           "format_summary",
           "generate",
           "load_case",
           "mutate_bytes",
           "mutate_memory",
           "oracle_memory",
           "replay",
           "save_failure",
           "seed_files",
]
