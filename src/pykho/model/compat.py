"""``kho compat``: what every generation makes of every other's handover.

Each cell is computed by running the model: the old generation boots cold,
test_kho preserves its folios, the old kernel finalizes where it must,
kexec_file_load, the jump, and the new generation boots from the bytes.
Nothing here is a table typed in by hand.
"""

from __future__ import annotations

from .. import profiles as P
from .scenarios import Run


def cell(old: str, new: str) -> dict:
    steps = ([{"do": "finalize"}] if P.get_profile(old).finalize else []) + \
        [{"do": "kexec_file_load"}, {"do": "kexec"}]
    spec = {"machine": {"ram": [[0x100000, 1 << 30, 0]]},
            "kernel": [{"profile": old, "cmdline": "kho=on"}, {"profile": new, "cmdline": "kho=on"}],
            "step": steps}
    r = Run(spec, f"{old}->{new}").run()
    k2 = r.kernels[-1]
    lines = k2.log
    viol = [v for v in r.violations if v.kernel == k2.name]
    if k2.populate is None:
        verdict, short = "no-handover", "none"
    elif not k2.populate.accepted:
        verdict, short = "rejected", "rej"
    elif viol:
        verdict, short = "corrupt", "BAD"
    elif k2.restored_ok.get("kho_test"):
        verdict, short = "restored", "ok"
    else:
        verdict, short = "restore-failed", "fail"
    return {"old": old, "new": new, "verdict": verdict, "short": short,
            "log": lines, "violations": [v.as_dict() for v in viol]}


def matrix() -> list[dict]:
    names = list(P.PROFILES)
    return [cell(o, n) for o in names for n in names]


def render(cells: list[dict]) -> str:
    names = list(P.PROFILES)
    by = {(c["old"], c["new"]): c for c in cells}
    w = 9
    out = ["old \\ new".ljust(w) + "".join(n.rjust(w) for n in names)]
    for o in names:
        out.append(o.ljust(w) + "".join(by[(o, n)]["short"].rjust(w) for n in names))
    out.append("")
    out.append("ok: test_kho restored, no invariant violated; rej: kho_populate refused (cold boot);")
    out.append("fail: accepted but test_kho could not restore; BAD: accepted and memory state corrupted")
    notes = []
    for c in cells:
        if c["short"] in ("rej", "BAD", "fail") and c["old"] != c["new"]:
            why = (c["log"][-1] if c["short"] == "fail" else c["log"][0]) if c["log"] else ""
            if c["short"] == "BAD":
                why = f"{len(c['violations'])} violations, first: {c['violations'][0]['kind']}"
            notes.append(f"  {c['old']} -> {c['new']}: {why}")
    if notes:
        out.append("")
        out.append("why (first line):")
        out.extend(notes)
    return "\n".join(out)
