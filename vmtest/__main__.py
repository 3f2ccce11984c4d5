"""``python -m vmtest [run] ...``, ``python -m vmtest split ...``, ``python -m vmtest scan ...``,
``python -m vmtest campaign --seed S --cases N --jobs J`` (see the package docstring and vmtest/README.md)."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import vmtest

from .build import find_build, warn_newer_sources
from .capture import scan_ram_file
from .inject import command_hook, parse_inject_arg
from .runner import Options, run_chain
from .serial import dmesg_lines, split_serial, strip_ts

__all__ = ["campaign_main", "main", "parse_cmdline_stage"]


def _stage_kernel(s: str) -> tuple[int, str]:
    """``N=NAME`` of --kernel-stage."""
    n, sep, name = s.partition("=")
    if not sep or not n.isdigit() or not name:
        raise argparse.ArgumentTypeError(f"expected N=NAME, got {s!r}")
    return int(n), name


def parse_cmdline_stage(s: str) -> tuple[int, str]:
    """``N=WORDS`` of ``--cmdline-stage``."""
    n, sep, words = s.partition("=")
    if not sep or not n.strip().isdigit():
        raise argparse.ArgumentTypeError(f"--cmdline-stage wants N=WORDS, not {s!r}")
    return int(n), words


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "split":
        p = argparse.ArgumentParser(prog="python -m vmtest split")
        p.add_argument("serial")
        p.add_argument("out")
        a = p.parse_args(argv[1:])
        st = split_serial(Path(a.serial), Path(a.out))
        for n, s in sorted(st.items()):
            print(f"stage{n}: started={s['started']} kexec={s['kexec']} end={s['end']} "
                  f"blobs={len(s['blobs'])} errors={s['errors']}")
        return 0
    if argv and argv[0] == "scan":
        p = argparse.ArgumentParser(prog="python -m vmtest scan")
        p.add_argument("ram")
        p.add_argument("stage_dir")
        p.add_argument("out")
        p.add_argument("--stage", type=int, default=1)
        p.add_argument("--keep", default="preserved", choices=["meta", "preserved", "all-preserved"])
        a = p.parse_args(argv[1:])
        res = scan_ram_file(Path(a.ram), Path(a.stage_dir), Path(a.out), a.stage, a.keep)
        print(json.dumps({k: res[k] for k in ("fdt", "errors", "sparse")}, indent=1))
        if res.get("radix"):
            print(f"radix: {len(res['radix']['nodes'])} nodes, {len(res['radix']['entries'])} entries")
        return 0
    if argv and argv[0] == "campaign":
        return campaign_main(argv[1:])
    if argv and argv[0] == "run":
        argv = argv[1:]
    p = argparse.ArgumentParser(prog="python -m vmtest", description=vmtest.__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="capture folder (emptied of stage*/ and ram/)")
    p.add_argument("--boots", type=int, default=2, help="number of kernels in the chain (2 = round trip)")
    p.add_argument("--build", help="build folder (default: the one build.sh names)")
    p.add_argument("--no-luo", action="store_true", help="do not preserve/check a LUO memfd")
    p.add_argument("--reserve-mem", default="4M:4K:vmtest_rmem", help="reserve_mem= value ('' for none)")
    p.add_argument("--test-kho-max-mem", default="1048576", help="test_kho.max_mem ('' for the default 8 MiB)")
    p.add_argument("--append", default="", help="extra kernel command line words")
    p.add_argument("--timeout", type=float, default=600, help="seconds for the whole chain")
    p.add_argument("--memory", default="1G", help="guest RAM (QEMU -m: 1G, 4G; from 3.5G up, RAM above "
                                                  "3 GiB sits above the PCI hole, from 4 GiB)")
    p.add_argument("--numa-nodes", type=int, default=1,
                   help="NUMA nodes of the guest (the RAM and vCPUs split evenly; ACPI SRAT)")
    p.add_argument("--stall-timeout", type=float, default=90,
                   help="give up when the guest runs but prints nothing for this long")
    p.add_argument("--stall-retries", type=int, default=0, help="boot the chain again this often if it hangs")
    p.add_argument("--earlyprintk", action="store_true", help="add earlyprintk=serial,ttyS0")
    p.add_argument("--keep", default="preserved", choices=["meta", "preserved", "all-preserved"],
                   help="which RAM pages to keep (meta: KHO metadata pages only)")
    p.add_argument("--keep-full-ram", action="store_true",
                   help="also keep each full RAM image zstd-compressed in the capture (~15-50 MB each)")
    p.add_argument("--inject", action="append", default=[], metavar="STAGE:TARGET:DATA",
                   help="write DATA (hex, @file or zero:N) at TARGET (phys address or fdt, memmap, "
                        "setup_data, scratch, node:I, blob:NAME, each with optional +OFF) when boot "
                        "STAGE stops at machine_kexec")
    p.add_argument("--inject-cmd", help="shell command run at every stop; prints JSON writes (see command_hook)")
    p.add_argument("--cmdline-stage", action="append", default=[], type=parse_cmdline_stage, metavar="N=WORDS",
                   help="boot N's own extra kernel command line words, in place of --append (repeatable; "
                        "boots 2.. get theirs written at their x86_64_start_kernel)")
    p.add_argument("--kernel", help="boot 1's kernel from build.sh's table (7.2.13, 7.2.13-unfixed, 7.3.4; "
                                    "default: the default build)")
    p.add_argument("--kernel-stage", action="append", default=[], type=_stage_kernel, metavar="N=NAME",
                   help="boot N runs kernel NAME (repeatable): a cross-version chain; the initramfs carries "
                        "its image")
    a = p.parse_args(argv)
    opts = Options(boots=a.boots, luo=not a.no_luo, reserve_mem=a.reserve_mem or None,
                   test_kho_max_mem=int(a.test_kho_max_mem, 0) if a.test_kho_max_mem else None,
                   append=a.append, timeout=a.timeout, stall_timeout=a.stall_timeout,
                   memory=a.memory, numa_nodes=a.numa_nodes,
                   earlyprintk=a.earlyprintk, stall_retries=a.stall_retries, keep=a.keep, keep_full_ram=a.keep_full_ram,
                   writes=[parse_inject_arg(s) for s in a.inject],
                   hook=command_hook(a.inject_cmd) if a.inject_cmd else None,
                   cmdlines=dict(a.cmdline_stage))
    build = find_build(a.build) if not a.kernel else find_build(kernel=a.kernel)
    if build is None:
        print("no kernel build found: run vmtest/setup.sh (root) and vmtest/build.sh"
              + (f" --kernel {a.kernel}" if a.kernel else ""), file=sys.stderr)
        return 2
    warn_newer_sources()
    s = run_chain(a.out, opts, build, kernels=dict(a.kernel_stage))
    for n in range(1, a.boots + 1):
        sd = Path(a.out) / f"stage{n}"
        lines = [strip_ts(x) for x in dmesg_lines(sd) if re.search(r"KHO:|test_kho:|luo:|Revived", x)]
        print(f"--- stage {n}: " + ("; ".join(lines[:8]) if lines else "(no KHO lines)"))
    print(json.dumps({k: s[k] for k in ("exit", "qemu_rc", "stages_reached", "completed", "elapsed_s")}))
    return 0 if s["completed"] else 1


def campaign_main(argv: list[str]) -> int:
    """``python -m vmtest campaign``: random differential cases against the real kernel."""
    from . import campaign, records
    p = argparse.ArgumentParser(prog="python -m vmtest campaign",
                                description="random mutations of real handovers and random boot-2 options, each "
                                            "through the real kernel and through pykho (vmtest/campaign.py)")
    p.add_argument("--seed", type=int, required=True, help="campaign seed (case i gets a seed derived from it)")
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--start", type=int, default=0, help="index of the first case (to continue a campaign)")
    p.add_argument("--jobs", type=int, default=1, help="QEMU instances at a time")
    p.add_argument("--out", help="folder for the captures of disagreeing cases (default: a temporary one)")
    p.add_argument("--merge", action="store_true", help="fold the staged records into docs/real-kernel.json after")
    p.add_argument("--kernel", help="the kernel of both boots, from build.sh's table (default: the default build)")
    p.add_argument("--memory", default="1G", help="guest RAM (4G: RAM above the PCI hole too)")
    p.add_argument("--numa-nodes", type=int, default=1, help="NUMA nodes of the guest")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    a = p.parse_args(argv)
    build = find_build(kernel=a.kernel) if a.kernel else find_build()
    if build is None:
        print("no kernel build found: run vmtest/setup.sh (root) and vmtest/build.sh"
              + (f" --kernel {a.kernel}" if a.kernel else ""), file=sys.stderr)
        return 2
    s = campaign.run_campaign(a.seed, a.cases, a.jobs, Path(a.out) if a.out else None, build=build, start=a.start,
                              log=lambda m: print(m, flush=True), memory=a.memory, numa_nodes=a.numa_nodes)
    if a.merge:
        s["records"] = records.merge()
    print(json.dumps(s) if a.json else
          f"{s['cases']} cases: {s['agree']} agree, {s['nondeterminism']} documented nondeterminism, "
          f"{len(s['disagree'])} disagree {s['disagree']} in {s['seconds']} s (captures of disagreements: "
          f"{s['workdir']})")
    return 0 if not s["disagree"] else 1


if __name__ == "__main__":
    sys.exit(main())
