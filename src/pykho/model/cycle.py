"""A whole kexec cycle at host scale, for the benchmark.

``run_cycle`` boots a cold kernel on a machine of ``ram`` bytes, preserves
``preserve_fraction`` of it as folios of ``order`` (guest memory in large
folios, as a VMM on a live-update host keeps it), loads and jumps, lets the
new kernel populate, walk the map and restore every folio, and checks the
invariants.  Memory use follows what is preserved, not RAM size.
"""

from __future__ import annotations

import time

from .kernel import PAGE_SIZE, Kernel
from .machine import Machine


def run_cycle(ram: int = 64 << 30, preserve_fraction: float = 0.25, order: int = 10, profile: str = "E",
              nodes: int = 1) -> dict:
    t = {}
    t0 = time.perf_counter()
    per = ram // nodes
    base = 0x100000
    machine = Machine(ram=[(max(base, n * per), (n + 1) * per, n) for n in range(nodes)])
    old = Kernel(machine, profile, "kho=on", name="kernel 1", clients=()).boot()
    t["boot"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    block = PAGE_SIZE << order
    want = int(ram * preserve_fraction) // block
    # guest memory: large folios taken from the top of RAM (away from the
    # kernel's own low allocations), preserved one by one through the API
    done = 0
    scratch = old._scratch_set()
    for s, e in reversed(list(old.pages.free_set)):
        a = (e - block) & ~(block - 1)
        while a >= s and done < want:
            if not scratch.overlaps(a, a + block):
                old.pages.free_set.remove(a, a + block)
                if old.preserve_folio(a, order, "guest memory") == 0:
                    done += 1
            a -= block
        if done >= want:
            break
    t["preserve"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    rc = old.kexec_file_load()
    new = old.kexec(profile, name="kernel 2", clients=())
    t["kexec+populate+walk"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    restored = 0
    for phys, o in list(new.pages.preserved.items()):
        if new.restore_folio(phys) == o:
            restored += 1
    t["restore"] = time.perf_counter() - t3
    t["total"] = time.perf_counter() - t0
    return {"ram": ram, "order": order, "preserved_blocks": done, "preserved_bytes": done * block,
            "kexec_file_load": rc, "populate": "accepted" if new.populate and new.populate.accepted else "rejected",
            "reserved": len(new.pages.preserved) + len(new.pages.restored), "restored": restored,
            "violations": [v.as_dict() for v in old.violations], "seconds": t,
            "written_pages": len(machine.mem.pages)}
