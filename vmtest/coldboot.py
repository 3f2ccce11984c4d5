"""What a cold boot's own log says about its scratch sizing (standard library only).

A boot with ``memblock=debug`` logs every memblock reservation from the
parsing of its early parameters on.  :func:`early_facts` reads, from a
stage folder, what the per-node scratch size of that boot depends on: the
RAM of each node (``Early memory node ranges``), the kernel image (iomem),
the initrd (``RAMDISK:``), the kernel reservations logged before NUMA init
(the first ``NODE_DATA(`` line; x86 ``initmem_init``) and the scratch sizes
the kernel chose (debugfs ``scratch_len``).  Whether the kernel has NUMA
comes from the build's config.
"""
from __future__ import annotations

import re
from pathlib import Path

__all__ = ["MEMBLOCK_RSRV_KERN", "build_has_numa", "early_facts", "node_ranges"]

#: include/linux/memblock.h: the flag of memblock_reserve_kern's regions
MEMBLOCK_RSRV_KERN = 0x20
PAGE = 4096

_NODE = re.compile(r"node\s+(\d+): \[mem (0x[0-9a-f]+)-(0x[0-9a-f]+)\]")
_RSV = re.compile(r"__memblock_reserve: \[(0x[0-9a-f]+)-(0x[0-9a-f]+)\] nid=(-?\d+) flags=([0-9a-f]+)")
_FREE = re.compile(r"memblock_phys_free: \[(0x[0-9a-f]+)-(0x[0-9a-f]+)\]")
_RAMDISK = re.compile(r"RAMDISK: \[mem (0x[0-9a-f]+)-(0x[0-9a-f]+)\]")


def build_has_numa(build_dir: str | Path) -> bool:
    cfg = Path(build_dir) / "config"
    return cfg.exists() and "CONFIG_NUMA=y" in cfg.read_text().splitlines()


def node_ranges(dmesg: list[str]) -> list[tuple[int, int, int]]:
    """``(start, end, nid)`` of every ``Early memory node ranges`` line."""
    out = []
    for x in dmesg:
        m = _NODE.search(x)
        if m and "[mem" in x and "Initmem" not in x:
            out.append((int(m.group(2), 16), int(m.group(3), 16) + 1, int(m.group(1))))
    return out


def early_facts(stage_dir: str | Path) -> dict:
    """The inputs of a cold boot's scratch sizing, read from its stage folder."""
    sd = Path(stage_dir)
    dmesg = (sd / "dmesg.txt").read_text(errors="replace").splitlines()
    iomem = (sd / "iomem.txt").read_text().splitlines()
    code = [int(x.split("-")[0], 16) for x in iomem if x.strip().endswith("Kernel code")]
    bss = [int(x.split(":")[0].split("-")[1], 16) + 1 for x in iomem if x.strip().endswith("Kernel bss")]
    image = (code[0], -(-(bss[0] - code[0]) // PAGE) * PAGE) if code and bss else None
    early: list[tuple[int, int]] = []
    freed: list[tuple[int, int]] = []
    for x in dmesg:
        if "NODE_DATA(" in x:
            break
        m = _RAMDISK.search(x)
        if m:
            a, b = int(m.group(1), 16), int(m.group(2), 16) + 1
            early.append((a, b - a))
        m = _RSV.search(x)
        if m and int(m.group(4), 16) & MEMBLOCK_RSRV_KERN:
            a, b = int(m.group(1), 16), int(m.group(2), 16) + 1
            early.append((a, b - a))
        m = _FREE.search(x)
        if m:
            a, b = int(m.group(1), 16), int(m.group(2), 16) + 1
            freed.append((a, b - a))
    for f in freed:                      # an early allocation given back (init_mem_mapping's 2 MiB)
        if f in early:
            early.remove(f)
    lens = (sd / "scratch_len.txt").read_text().split() if (sd / "scratch_len.txt").exists() else []
    return {"ram": node_ranges(dmesg), "image": image, "early_kern": early,
            "cmdline": (sd / "cmdline.txt").read_text().strip() if (sd / "cmdline.txt").exists() else "",
            "scratch_len": [int(v, 16) for v in lens]}
