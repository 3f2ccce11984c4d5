"""docs/real-kernel.json: one record per comparison of pykho with a real kernel.

Every vm test that compares pykho's prediction with what a real kernel did
calls :func:`record`.  A record has the fields below; ``real`` and
``predicted`` hold the compared lines and outcome, ``agree`` whether they
match, ``note`` the evidence where a disagreement is documented.

Records are appended to a JSON-lines staging file (``VMTEST_RECORDS``,
default ``/tmp/pykho-real-kernel.jsonl``) so parallel tests never race on one
JSON document; :func:`merge` folds the staging file into docs/real-kernel.json
(a list, one record per run; a newer record of the same ``source``/``case``/
``seed``/``kernel``/``next_kernel``/``arch`` replaces the older).
"""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["FIELDS", "record", "merge", "staging_path", "DOC"]

DOC = Path(__file__).resolve().parent.parent / "docs" / "real-kernel.json"
FIELDS = ("kernel", "next_kernel", "arch", "source", "case", "seed", "change", "real", "predicted", "agree",
          "note")


def staging_path() -> Path:
    return Path(os.environ.get("VMTEST_RECORDS", "/tmp/pykho-real-kernel.jsonl"))


def record(*, kernel: str, next_kernel: str, arch: str, source: str, case: str, change: str,
           real: Any, predicted: Any, agree: bool, seed: int | None = None, note: str = "") -> dict[str, Any]:
    """Append one record to the staging file and return it."""
    rec = {"kernel": kernel, "next_kernel": next_kernel, "arch": arch, "source": source, "case": case,
           "seed": seed, "change": change, "real": real, "predicted": predicted, "agree": bool(agree),
           "note": note}
    path = staging_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps(rec, sort_keys=True) + "\n")
    return rec


def _key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r.get("source"), r.get("case"), r.get("seed"), r.get("kernel"), r.get("next_kernel"), r.get("arch"))


def merge(staging: Path | None = None, doc: Path = DOC) -> int:
    """Fold the staging records into ``doc``; returns how many records it holds."""
    staging = staging or staging_path()
    old = json.loads(doc.read_text()) if doc.exists() else []
    by = {_key(r): r for r in old}
    if staging.exists():
        for line in staging.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                by[_key(r)] = r
    out = sorted(by.values(), key=lambda r: tuple(str(x) for x in _key(r)))
    doc.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    return len(out)
