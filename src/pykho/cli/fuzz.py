"""``kho fuzz``: a seeded, reproducible fuzz campaign over every decoder family.

The argument parser lives here so that ``kho --version`` and ``kho --help``
import nothing of the fuzzer; the campaign itself is :mod:`pykho.fuzz`.
"""

from __future__ import annotations

import argparse
import json
import os

from ..errors import UsageError
from ._common import add_json_args, dump_json, number, whole, writable_file

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("fuzz", help="run a seeded fuzz campaign over every decoder family",
                       description="A seeded, reproducible fuzz campaign over every decoder family: any crash, "
                                   "hang, wrong answer or memory blow-up fails it (exit 1); failing inputs are "
                                   "saved for --replay.")
    p.add_argument("--seconds", type=number(0, lo_open=True), default=60.0,
                   help="campaign length in seconds (default 60)")
    p.add_argument("--family", action="append", metavar="F",
                   help="fuzz only this family (repeatable; default: all; an unknown name lists them)")
    p.add_argument("--jobs", type=whole(1), default=os.cpu_count() or 1,
                   help="worker processes (default: all cores; no short form: -j is --json)")
    p.add_argument("--seed", type=whole(0), default=0, help="campaign seed, 0 or more (default 0)")
    p.add_argument("--crash-dir", default="fuzz-crashes",
                   help="where failing inputs are saved (default ./fuzz-crashes)")
    p.add_argument("--limit", type=number(0, lo_open=True), default=1.0,
                   help="per-input time limit in seconds (default 1)")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="what --limit measures: the worker's CPU time (default; a loaded machine does not "
                        "turn slow inputs into hangs) or wall-clock time")
    p.add_argument("--hard-seconds", type=number(0, lo_open=True), default=20.0,
                   help="kill a worker that makes no progress for this long (default 20)")
    p.add_argument("--max-inputs", type=whole(1), default=None,
                   help="stop each family at this input index (default: no limit; ends early when all are done)")
    p.add_argument("--first-index", type=whole(0), default=0,
                   help="start each family at this input index (default 0; continue an earlier campaign of the "
                        "same seed: inputs are numbered, so two runs cover two index ranges)")
    p.add_argument("--mem-mb", type=whole(1), default=3072,
                   help="address-space headroom per worker in MiB (default 3072)")
    p.add_argument("--rss-jump-mb", type=whole(1), default=256,
                   help="flag an input during which peak RSS grows by more than this many MiB (default 256)")
    p.add_argument("--keep", type=whole(1), default=5, help="inputs saved per failure signature (default 5)")
    p.add_argument("--progress", type=number(0), default=0.0,
                   help="print a progress line every N seconds (default 0: none)")
    p.add_argument("--summary-file", default=None, metavar="FILE",
                   help="also write the summary as JSON to FILE (default: none)")
    p.add_argument("--replay", default=None, metavar="PATH",
                   help="run one saved input (a file under --crash-dir) and show what it does (default: none)")
    p.add_argument("--atheris", action="store_true",
                   help="coverage-guided mode with atheris (one family, one process; default: off)")
    add_json_args(p, "the summary (or the replay's result)")
    p.set_defaults(func=run)


def _check_crash_dir(d: str) -> None:
    """--crash-dir must be a directory, or creatable under one we may write."""
    if not d:
        raise UsageError("--crash-dir '': give a directory")
    at = os.path.abspath(d)
    while not os.path.exists(at):
        at = os.path.dirname(at)
    if not os.path.isdir(at):
        raise UsageError(f"--crash-dir {d}: {at} is not a directory")
    if not os.access(at, os.W_OK | os.X_OK):
        raise UsageError(f"--crash-dir {d}: cannot write in {at}: permission denied")


def run(args: argparse.Namespace) -> int:
    """1 when anything crashed, hung, lied or blew memory."""
    from .. import fuzz
    from ..fuzz import engine
    if args.family:
        unknown = [f for f in args.family if f not in fuzz.FAMILIES]
        if unknown:
            raise UsageError(f"--family {unknown[0]!r}: no such family; known: {', '.join(fuzz.FAMILIES)}")
    if args.summary_file is not None:
        writable_file(args.summary_file, "--summary-file")
    if args.replay is not None:
        if not args.replay:
            raise UsageError("--replay '': give a failure saved by kho fuzz")
        try:
            family, case = fuzz.load_case(args.replay)
        except UsageError as e:
            raise UsageError(f"--replay {e}") from None
        kind, tag, detail = engine.execute(family, case, args.limit)
        if args.json:
            dump_json({"file": args.replay, "family": family, "result": kind, "tag": tag, "detail": detail}, args)
        else:
            print(f"{args.replay}: family {family}, {kind}: {tag}")
            if detail:
                print(detail)
        return 1 if kind in engine.BAD_KINDS else 0
    if args.atheris:
        from ..fuzz.guided import run_atheris
        fams = args.family or ["fdt"]
        return int(run_atheris(fams[0], args.seconds, args.seed, args.crash_dir, args.limit))
    _check_crash_dir(args.crash_dir)
    engine.CLOCK[0] = args.clock
    c = fuzz.Campaign(args.seconds, args.family, args.jobs, args.seed, args.crash_dir, args.limit,
                      args.hard_seconds, args.max_inputs, args.mem_mb, args.rss_jump_mb, args.keep, args.progress,
                      clock=args.clock, first_index=args.first_index)
    s = c.run()
    if args.json:
        dump_json(s, args)
    else:
        print(fuzz.format_summary(s))
    if args.summary_file:
        try:
            with open(args.summary_file, "w") as f:
                json.dump(s, f, indent=1, sort_keys=True)
        except OSError as e:
            raise UsageError(f"--summary-file {args.summary_file}: cannot write: {e.strerror}") from None
    bad = sum(s["counts"].get(k, 0) for k in engine.BAD_KINDS)
    return 1 if bad else 0
