"""``kho explore``: random lifecycles with random faults, checked by the invariants.

Each run draws a two-kernel lifecycle for one generation: a random sequence
of preservations, unpreservations, vmalloc areas, finalize/abort where the
generation has them (or not: forgetting to finalize is a lifecycle like any
other), allocation faults in either kernel, corruptions of the handed-over
bytes, then ``kexec_file_load`` and the jump.  The scenario's invariants
(:mod:`pykho.model.scenarios`) judge it.  Every violation class found is
reduced to a minimal scenario (steps dropped while the same violation kind
still appears) and can be written as TOML for ``kho simulate``.

Nothing here knows about the seed bug: on ``B-prefix`` it is found because
some lifecycles never finalize.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

from .. import profiles as P
from ..errors import KhoError
from .scenarios import Run


def random_spec(profile: str, rng: random.Random, faults: bool = True) -> dict:
    prof = P.get_profile(profile)
    steps = []
    for _ in range(rng.randrange(0, 6)):
        r = rng.random()
        if r < 0.45:
            steps.append({"do": "preserve", "order": rng.choice([0, 0, 0, 1, 2, 9, 10])})
        elif r < 0.55 and prof.unpreserve:
            steps.append({"do": "unpreserve", "index": rng.randrange(8)})
        elif r < 0.65 and prof.map_format is P.MapFormat.RADIX:
            steps.append({"do": "vmalloc", "pages": rng.randrange(1, 20)})
        elif r < 0.8 and faults:
            steps.append({"do": "fault", "site": rng.choice(["page", "memblock"]), "count": rng.randrange(1, 3),
                          "after": rng.randrange(0, 4)})
    if prof.finalize and rng.random() < 0.6:
        steps.append({"do": "finalize"})
        if prof.abort and rng.random() < 0.2:
            steps.append({"do": "abort"})
    steps.append({"do": "kexec_file_load"})
    if faults and rng.random() < 0.15:
        steps.append({"do": "corrupt", "what": rng.choice(["zero-fdt", "zero-map", "compatible"]),
                      "value": "kho-v9"})
    steps.append({"do": "kexec"})
    if any(s["do"] == "vmalloc" for s in steps):
        steps.append({"do": "restore_vmalloc"})
    k2: dict[str, Any] = {"profile": profile, "cmdline": "kho=on"}
    if faults and rng.random() < 0.2:
        k2["faults"] = {rng.choice(["page", "memblock"]): rng.randrange(1, 3),
                        "page_after": rng.randrange(0, 6), "memblock_after": rng.randrange(0, 4)}
    return {"machine": {"ram": [[0x100000, 1 << 30, 0]], "seed": rng.randrange(1 << 30)},
            "kernel": [{"profile": profile, "cmdline": "kho=on"}, k2], "step": steps}


def run_spec(spec: dict) -> tuple[list[dict], str | None]:
    """(violations, model error or None)."""
    try:
        r = Run(spec, "explore").run()
    except KhoError as e:
        return [], f"{type(e).__name__}: {e}"
    except Exception as e:  # a bug in the model itself: report, do not hide
        return [], f"model error {type(e).__name__}: {e}"
    return [v.as_dict() for v in r.violations], None


def minimize(spec: dict, kind: str, budget: int = 60) -> dict:
    """Drop steps (and kernel-2 faults) while a violation of ``kind`` remains."""
    cur = json.loads(json.dumps(spec))
    keep = {"kexec_file_load", "kexec"}
    changed = True
    while changed and budget > 0:
        changed = False
        for i in range(len(cur["step"])):
            if cur["step"][i]["do"] in keep:
                continue
            cand = json.loads(json.dumps(cur))
            del cand["step"][i]
            budget -= 1
            if any(v["kind"] == kind for v in run_spec(cand)[0]):
                cur, changed = cand, True
                break
        if not changed and "faults" in cur["kernel"][1]:
            cand = json.loads(json.dumps(cur))
            del cand["kernel"][1]["faults"]
            budget -= 1
            if any(v["kind"] == kind for v in run_spec(cand)[0]):
                cur, changed = cand, True
    return cur


def to_toml(spec: dict, comment: str = "") -> str:
    def val(v):
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return hex(v) if v > 4096 else str(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + " }"
        return json.dumps(v)
    out = [f"# {line}" for line in comment.splitlines()] if comment else []
    out.append("[machine]")
    for k, v in spec["machine"].items():
        out.append(f"{k} = {val(v)}")
    for k in spec["kernel"]:
        out.append("\n[[kernel]]")
        for a, b in k.items():
            out.append(f"{a} = {val(b)}")
    for s in spec["step"]:
        out.append("\n[[step]]")
        for a, b in s.items():
            out.append(f"{a} = {val(b)}")
    return "\n".join(out) + "\n"


def explore(profile: str, runs: int, seed: int, faults: bool = True) -> dict:
    rng = random.Random(seed)
    classes: dict[str, dict] = {}
    model_errors: dict[str, dict] = {}
    t0 = time.time()
    for i in range(runs):
        spec = random_spec(profile, rng, faults)
        viol, err = run_spec(spec)
        if err:
            model_errors.setdefault(err.split(":")[0] + ":" + err.split(":")[1][:60] if ":" in err else err,
                                    {"count": 0, "spec": spec, "error": err})["count"] += 1
            continue
        kinds = set()
        for v in viol:
            c = classes.setdefault(v["kind"], {"count": 0, "occurrences": 0, "first_run": i, "spec": spec,
                                               "example": v})
            c["occurrences"] += 1
            if v["kind"] not in kinds:           # runs: lifecycles that reached this kind, once each
                kinds.add(v["kind"])
                c["count"] += 1
    for kind, c in classes.items():
        c["minimal"] = minimize(c["spec"], kind)
    return {"profile": P.get_profile(profile).name, "runs": runs, "seed": seed, "seconds": round(time.time() - t0, 2),
            "violations": {k: {"runs": c["count"], "occurrences": c["occurrences"], "first_run": c["first_run"],
                               "example": c["example"], "minimal": c["minimal"]} for k, c in sorted(classes.items())},
            "model_errors": {k: {"runs": v["count"], "error": v["error"], "spec": v["spec"]}
                             for k, v in model_errors.items()}}
