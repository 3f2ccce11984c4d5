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


def run_host_cycle(ram: int = 1 << 40, guest_bytes: int = 512 << 30, memfd_bytes: int = 1 << 30,
                   range_bytes: int = 1 << 30, profile: str = "E", memfd_stride: int = 1) -> dict:
    """A live-update host through the batched API: guest memory in 4 KiB
    folios preserved as ranges (``kho_preserve_pages``, one call per
    ``range_bytes``), a memfd's worth preserved folio by folio
    (``kho_preserve_folio``; one page in ``memfd_stride``), the kexec, and the next kernel restoring the
    ranges (``kho_restore_pages``) and the folios.  Reports the map's size,
    its metadata overhead and the scratch the next kernel booted from."""
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    machine = Machine(ram=[(0x100000, ram, 0)])
    old = Kernel(machine, profile, "kho=on", name="kernel 1", clients=()).boot()
    t["boot"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    scratch = old._scratch_set()
    top = ram
    ranges: list[int] = []
    # guest memory from the top of RAM down, range by range, outside scratch
    at = (top - range_bytes) & ~(range_bytes - 1)
    while len(ranges) * range_bytes < guest_bytes and at > 0:
        if not scratch.overlaps(at, at + range_bytes):
            old.pages.free_set.remove(at, at + range_bytes)
            if old.preserve_pages(at, range_bytes // PAGE_SIZE, "guest memory") == 0:
                ranges.append(at)
        at -= range_bytes
    # a memfd's worth of 4 KiB folios below it
    folios = []
    base = (at - memfd_bytes * memfd_stride) & ~(range_bytes - 1)
    for p in range(base, base + memfd_bytes * memfd_stride, PAGE_SIZE * memfd_stride):
        if scratch.overlaps(p, p + PAGE_SIZE):
            continue
        old.pages.free_set.remove(p, p + PAGE_SIZE)
        if old.preserve_folio(p, 0, "memfd") == 0:
            folios.append(p)
    t["preserve"] = time.perf_counter() - t1
    meta_bytes = None
    if old.radix_tree is not None:
        from ..abi.radix import RadixWalk
        from ..handover import summarize_walk
        _, meta, _ = summarize_walk(RadixWalk(machine.mem, old.radix_tree.root or 0))
        meta_bytes = meta["bytes"]
    t2 = time.perf_counter()
    rc = old.kexec_file_load()
    new = old.kexec(profile, name="kernel 2", clients=())
    t["kexec+populate+walk"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    restored = 0
    for a in ranges:
        restored += new.restore_pages(a, range_bytes // PAGE_SIZE)
    for p in folios:
        if new.restore_folio(p) == 0:
            restored += 1
    t["restore"] = time.perf_counter() - t3
    t["total"] = time.perf_counter() - t0
    wanted = len(ranges) * (range_bytes // PAGE_SIZE) + len(folios)
    return {"ram": ram, "preserved_pages": wanted, "preserved_bytes": wanted * PAGE_SIZE,
            "ranges": len(ranges), "memfd_folios": len(folios), "map_blocks": len(old.preserved.blocks),
            "map_metadata_bytes": meta_bytes,
            "scratch_bytes": sum(a.size for a in new.scratch), "kexec_file_load": rc,
            "memblock": getattr(new, "walk_memblock", None),
            "populate": "accepted" if new.populate and new.populate.accepted else "rejected",
            "restored_pages": restored, "violations": [v.as_dict() for v in old.violations], "seconds": t}
