"""Fuzz cases as plain JSON, and the saved-failure file format.

A case is a dict of ints, strings, bytes, lists, dicts and
:class:`~pykho.memory.SparseMemory` objects.  In JSON, bytes become
``{"__b64__": ...}``, a dict with non-string keys ``{"__dict__": [[k, v], ...]}``
and a memory ``{"__mem__": {"ram", "fill", "pages"}}`` (its written pages
only).  A saved failure is one JSON document naming the family, seed,
index, kind and tag next to the case itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os

from ..memory import SparseMemory
from .mutation import PAGE

__all__ = [
    "case_from_json",
    "case_size",
    "case_to_json",
    "decode_case",
    "encode_case",
    "read_failure",
    "save_failure",
]


def encode_case(v):
    """``v`` with bytes, dicts and memories turned into JSON-able values."""
    if isinstance(v, SparseMemory):
        return {"__mem__": {"ram": [list(r) for r in v.ranges()], "fill": v.fill,
                            "pages": {str(k): base64.b64encode(bytes(p)).decode() for k, p in v.pages.items()}}}
    if isinstance(v, (bytes, bytearray)):
        return {"__b64__": base64.b64encode(bytes(v)).decode()}
    if isinstance(v, dict):
        return {"__dict__": [[encode_case(k), encode_case(x)] for k, x in v.items()]}
    if isinstance(v, (list, tuple)):
        return [encode_case(x) for x in v]
    return v


def decode_case(v):
    """The inverse of :func:`encode_case` (tuples come back as lists)."""
    if isinstance(v, dict):
        if "__mem__" in v:
            d = v["__mem__"]
            m = SparseMemory(ram=[tuple(r) for r in d["ram"]], fill=d["fill"])
            m.pages = {int(k): bytearray(base64.b64decode(p)) for k, p in d["pages"].items()}
            return m
        if "__b64__" in v:
            return base64.b64decode(v["__b64__"])
        if "__dict__" in v:
            return {decode_case(k): decode_case(x) for k, x in v["__dict__"]}
        return {k: decode_case(x) for k, x in v.items()}
    if isinstance(v, list):
        return [decode_case(x) for x in v]
    return v


def case_to_json(case: dict) -> str:
    return json.dumps(encode_case(case), sort_keys=True)


def case_from_json(text: str) -> dict:
    return decode_case(json.loads(text))


def case_size(case: dict) -> int:
    """Bytes of input in a case (blobs, files and written memory pages)."""
    n = 0
    for v in case.values():
        if isinstance(v, (bytes, bytearray, str)):
            n += len(v)
        elif isinstance(v, SparseMemory):
            n += PAGE * len(v.pages)
        elif isinstance(v, dict):
            n += sum(len(x) for x in v.values() if isinstance(x, (bytes, str)))
    return n


def save_failure(crash_dir: str, seed: int, family: str, index: int, kind: str, tag: str, detail: str,
                 case: dict | None) -> str:
    """Write one failing input as ``{family}-{kind}-{hash of tag}-s{seed}-i{index}.json``; its path."""
    os.makedirs(crash_dir, exist_ok=True)
    h = hashlib.sha1(tag.encode()).hexdigest()[:8]
    path = os.path.join(crash_dir, f"{family}-{kind}-{h}-s{seed}-i{index}.json")
    doc = {"family": family, "seed": seed, "index": index, "kind": kind, "tag": tag, "detail": detail[-4000:],
           "case": encode_case(case) if case is not None else None, "size": case_size(case) if case else None}
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    return path


def read_failure(path: str) -> tuple[dict, dict | None]:
    """A saved failure: (its document, the case or None when it was not saved)."""
    with open(path) as f:
        doc = json.load(f)
    return doc, decode_case(doc["case"]) if doc.get("case") is not None else None
