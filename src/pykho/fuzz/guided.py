"""Coverage-guided fuzzing of one family with atheris (optional, ``kho fuzz --atheris``).

The fuzzer's bytes seed the family's generator (structured inputs), or,
when the first byte is 0 and the family takes a blob, are the blob itself.
Only pykho's own decoder functions are instrumented.
"""

from __future__ import annotations

import os
import random
import sys

from .cases import save_failure
from .engine import BAD_KINDS, corpus_for, execute
from .families import FAMILIES

__all__ = ["run_atheris"]


def _instrument_pykho(atheris) -> int:
    """Coverage-instrument pykho's own functions (the decoders), not every
    loaded module (instrument_all takes minutes with numpy loaded)."""
    import inspect
    n = 0
    for name, mod in list(sys.modules.items()):
        if not name.startswith("pykho.") or name == "pykho.fuzz" or name.startswith("pykho.fuzz.") or mod is None:
            continue
        for obj in list(vars(mod).values()):
            targets = []
            if inspect.isfunction(obj) and obj.__module__ == name:
                targets.append(obj)
            elif inspect.isclass(obj) and obj.__module__ == name:
                targets += [v for v in vars(obj).values() if inspect.isfunction(v)]
            for fn in targets:
                try:
                    atheris.instrument_func(fn)
                    n += 1
                except Exception:  # noqa: BLE001, S110 - some code objects cannot be instrumented
                    pass
    return n


def run_atheris(family: str, seconds: float, seed: int, crash_dir: str, limit: float) -> int:
    """Coverage-guided fuzzing of one family with atheris: the fuzzer's bytes
    seed the generator's random stream (structured), or, when the first byte
    is 0, are the blob itself.  Like libFuzzer it stops at the first crash,
    hang, lie or memory finding (saved under ``crash_dir``, exit non-zero) and
    otherwise exits 0 after ``seconds``."""
    try:
        import atheris
    except ImportError:
        print("atheris is not installed (pip install atheris)", file=sys.stderr)
        return 2
    fam = FAMILIES[family]
    corpus = corpus_for(seed, family)
    found = [0]

    def one(data: bytes):
        rng = random.Random(data)
        try:
            case = fam.generate(rng, corpus)
        except Exception:  # noqa: BLE001 - a generator bug is not what this mode looks for
            return
        if "blob" in case and data[:1] == b"\x00":
            case = dict(case, blob=data[1:])
        kind, tag, detail = execute(family, case, limit, None)
        if kind in BAD_KINDS:
            found[0] += 1
            path = save_failure(crash_dir, seed, family, -1, kind, tag, detail, case)
            print(f"{kind} {tag}: {path}", file=sys.stderr)
            # libFuzzer stops at the first finding and exits non-zero
            raise RuntimeError(f"kho fuzz --atheris: {family} {kind} {tag}; input saved to {path}")

    os.makedirs(crash_dir, exist_ok=True)
    # libFuzzer's own (wall-clock) timeout only backs up our CPU-time limit
    args = [sys.argv[0], f"-max_total_time={int(seconds)}", f"-seed={seed or 1}", "-rss_limit_mb=4096",
            f"-timeout={max(30, int(limit * 30))}", f"-artifact_prefix={os.path.join(crash_dir, '')}"]
    _instrument_pykho(atheris)
    atheris.Setup(args, one)
    try:
        atheris.Fuzz()
    except SystemExit:
        pass
    return 1 if found[0] else 0
