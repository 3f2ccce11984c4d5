"""Scenarios: a machine, a chain of kernels, steps; and ``kho simulate``.

TOML format (``kho simulate FILE.toml``)::

    [machine]
    ram = [[0x100000, 0x40000000, 0]]     # [start, end, nid] per range
    seed = 1

    [[kernel]]                             # boots cold
    profile = "B-prefix"                   # any generation name
    cmdline = "kho=on"

    [[kernel]]                             # booted by the first kexec
    profile = "B"

    [[step]]                               # applied to the running kernel
    do = "finalize"                        # see STEPS below
    [[step]]
    do = "kexec_file_load"
    [[step]]
    do = "kexec"                           # the next [[kernel]] boots

Steps: ``finalize``, ``abort``, ``kexec_file_load``, ``kexec``,
``preserve`` (``order``: allocate a folio and preserve it), ``vmalloc``
(``pages``: preserve a vmalloc area for the next kernel),
``restore_vmalloc``, ``corrupt`` (``what`` = ``zero-fdt`` | ``zero-map`` |
``compatible`` with ``value``: rewrite the handover before the jump).
After every step the invariants are checked.
"""

from __future__ import annotations

import os
import tomllib

from .. import profiles as P
from ..clients import VmallocTestClient
from ..errors import UsageError
from .kernel import Kernel
from .machine import PAGE_SIZE, Machine, Violation

GiB = 1 << 30


def _chain(prof_old, prof_new, steps, cmd="kho=on", n=2):
    kernels = [{"profile": prof_old, "cmdline": cmd}] + [{"profile": prof_new, "cmdline": cmd}] * (n - 1)
    return {"machine": {"ram": [[0x100000, GiB, 0]]}, "kernel": kernels, "step": steps}


def _rt(p):
    fin = [{"do": "finalize"}] if P.get_profile(p).finalize else []
    return fin + [{"do": "kexec_file_load"}, {"do": "kexec"}]


BUILTIN = {
    "host-1T": ("a 1 TiB live-update host preserving 512 GiB of guest memory in 4 KiB folios through "
                "kho_preserve_pages ranges and a 1 GiB memfd folio by folio; map size, metadata, scratch",
                {"host": {"ram": 1 << 40, "guest_bytes": 512 << 30, "memfd_bytes": 1 << 30}}),
    "host-1T-fragmented": ("host-1T with the memfd's folios every other page (memory after long uptime): each "
                           "one its own memblock region in the next kernel's walk, whose memblock calls scan "
                           "them all",
                           {"host": {"ram": 1 << 40, "guest_bytes": 512 << 30, "memfd_bytes": 1 << 30,
                                     "memfd_stride": 2}}),
    "seed-bug": ("6.19 before the fix: KHO on, never finalized; the next kernel adopts the old scratch, "
                 "forgets the handover and frees scratch twice",
                 _chain("B-prefix", "B-prefix", [{"do": "kexec_file_load"}, {"do": "kexec"}])),
    "seed-fixed": ("6.19 with 'kho: validate preserved memory map during population': the same handover is "
                   "rejected in kho_populate, the next kernel cold-boots",
                   _chain("B", "B", [{"do": "kexec_file_load"}, {"do": "kexec"}])),
    "chain-3": ("7.2: three kernels, kexec-metadata counts the kexecs",
                _chain("E", "E", _rt("E") + _rt("E"), n=3)),
    "vmalloc": ("7.2: a vmalloc area preserved and restored",
                _chain("E", "E", [{"do": "vmalloc", "pages": 700}, {"do": "kexec_file_load"}, {"do": "kexec"},
                                  {"do": "restore_vmalloc"}])),
    "abort-a0": ("6.16: finalize then abort, then kexec: the stale FDT still points at the freed chunk list",
                 _chain("A0", "A0", [{"do": "preserve", "order": 2}, {"do": "finalize"}, {"do": "abort"},
                                     {"do": "kexec_file_load"}, {"do": "kexec"}])),
    "unfinalized-a0": ("6.16: kexec without finalize hands over an unwritten FDT page",
                       _chain("A0", "A0", [{"do": "kexec_file_load"}, {"do": "kexec"}])),
    "compat-6.17-6.18": ("6.17 -> 6.18: 512-byte bitmaps read as 4 KiB ones",
                         _chain("A0", "A1", [{"do": "preserve", "order": 0}, {"do": "preserve", "order": 0},
                                             {"do": "finalize"}, {"do": "kexec_file_load"}, {"do": "kexec"}])),
    "roundtrip-E-arm64": ("7.2 on arm64: the handover travels in /chosen (linux,kho-fdt, linux,kho-scratch)",
                          {"machine": {"ram": [[0x40000000, 0x80000000, 0]], "arch": "arm64"},
                           "kernel": [{"profile": "E", "cmdline": "kho=on"}] * 2,
                           "step": [{"do": "kexec_file_load"}, {"do": "kexec"}]}),
    "luo-memfd": ("7.2: a LUO session preserving a memfd across kexec",
                  {"machine": {"ram": [[0x100000, GiB, 0]]},
                   "kernel": [{"profile": "E", "cmdline": "kho=on liveupdate=on"}] * 2,
                   "step": [{"do": "luo_session", "name": "test-session", "token": 26},
                            {"do": "kexec_file_load"}, {"do": "kexec"},
                            {"do": "luo_retrieve", "name": "test-session"}]}),
    "reserve-mem": ("7.2: a reserve_mem region revived from KHO",
                    {"machine": {"ram": [[0x100000, GiB, 0]]},
                     "kernel": [{"profile": "E", "cmdline": "kho=on liveupdate=on reserve_mem=4M:4K:oracle_rmem "
                                                            "kho_scratch=16M,96M,32M"}] * 2,
                     "step": [{"do": "kexec_file_load"}, {"do": "kexec"}]}),
}
for _p in P.PROFILES:
    BUILTIN[f"roundtrip-{_p}"] = (f"{_p}: test_kho round trip", _chain(_p, _p, _rt(_p)))


class Run:
    """A scenario in progress: the machine, the kernels so far, the log."""

    def __init__(self, spec: dict, name: str = "scenario"):
        self.spec = spec
        self.name = name
        m = spec.get("machine", {})
        rows = [tuple(int(x, 0) if isinstance(x, str) else int(x) for x in r)
                for r in m.get("ram", [[0x100000, GiB, 0]])]
        ram = [(r[0], r[1], r[2] if len(r) > 2 else 0) for r in rows]
        self.machine = Machine(ram=ram)
        self.seed = int(m.get("seed", 1))
        self.kernels_spec = spec.get("kernel") or [{"profile": "E"}]
        self.violations: list[Violation] = []
        self.log: list[str] = []
        self.kernels: list[Kernel] = []
        self.events: list[dict] = []

    @property
    def cur(self) -> Kernel:
        return self.kernels[-1]

    def _boot_first(self):
        ks = self.kernels_spec[0]
        k = Kernel(self.machine, ks.get("profile", "E"), ks.get("cmdline", "kho=on"), ks.get("release"),
                   "kernel 1", self.violations, seed=self.seed,
                   test_kho_max_mem=int(ks.get("test_kho_max_mem", 1 << 20)), faults=ks.get("faults"),
                   arch=m.get("arch", "x86") if (m := self.spec.get("machine", {})) else "x86")
        self._emit_boot(k, lambda: k.boot())

    def _emit_boot(self, k, fn):
        before = len(self.violations)
        k2 = fn()
        self.log.append(f"--- {k2.name}: {k2.p.name} ({k2.p.kernels}, {k2.release}), cmdline: {k2.cmdline}")
        self.kernels.append(k2)
        self.log.extend(k2.log)
        self._check(k2, before)

    def _check(self, k, before):
        for v in self.violations[before:]:
            self.log.append(f"!!! {v.kernel}: {v.kind} [0x{v.start:x}-0x{v.end:x}) during {v.step}: {v.detail}")

    def step(self, st: dict):
        do = st.get("do")
        k = self.cur
        before = len(self.violations)
        n_log = len(k.log)
        if do == "finalize":
            rc = k.finalize()
            self.log.append(f"    [{k.name}] finalize -> {rc}")
        elif do == "abort":
            rc = k.abort()
            self.log.append(f"    [{k.name}] abort -> {rc}")
        elif do == "kexec_file_load":
            rc = k.kexec_file_load()
            kd = k.image and k.image.get("kho_data")
            self.log.append(f"    [{k.name}] kexec_file_load -> {rc}"
                            + (f" (handover: fdt 0x{kd.fdt_addr:x}, scratch array 0x{kd.scratch_addr:x}+"
                               f"0x{kd.scratch_size:x})" if kd else " (no KHO handover)"))
        elif do == "kexec" and k.image is None:
            # reboot(LINUX_REBOOT_CMD_KEXEC) without a loaded image: -EINVAL
            self.log.append(f"    [{k.name}] kexec: no image loaded (-EINVAL); scenario ends")
            self.ended = True
        elif do == "kexec":
            i = len(self.kernels)
            if i >= len(self.kernels_spec):
                raise UsageError(f"{self.name}: step kexec but no [[kernel]] #{i + 1} to boot")
            ks = self.kernels_spec[i]
            self.log.extend(k.log[n_log:])
            # invariant: the decoded map equals what the old kernel preserved
            self._check_map(k)
            self._emit_boot(k, lambda: k.kexec(ks.get("profile", "E"), ks.get("cmdline"), ks.get("release"),
                                               name=f"kernel {i + 1}", faults=ks.get("faults")))
            self._check_reservations(k, self.cur)
            return
        elif do == "preserve":
            order = int(st.get("order", 0))
            phys = k.alloc_pages(order)
            rc = k.preserve_folio(phys, order, "scenario")
            self.log.append(f"    [{k.name}] preserve folio 0x{phys:x} order {order} -> {rc}")
        elif do == "vmalloc":
            n = int(st.get("pages", 4))
            c = k.client("vmalloc-test")
            rc = c.preserve(n) if isinstance(c, VmallocTestClient) else -P.EOPNOTSUPP
            self.log.append(f"    [{k.name}] preserve vmalloc area of {n} pages -> {rc}")
        elif do == "restore_vmalloc":
            c = k.client("vmalloc-test")
            if isinstance(c, VmallocTestClient):
                c.restore()
        elif do == "corrupt":
            self._corrupt(k, st)
        elif do == "luo_session":
            rc = k.luo_preserve_memfd(st.get("name", "session"), int(st.get("token", 1)),
                                      str(st.get("content", "hello kexec world")).encode())
            self.log.append(f"    [{k.name}] LUO session {st.get('name', 'session')!r} preserves a memfd -> {rc}")
        elif do == "luo_retrieve":
            want = str(st.get("content", "hello kexec world")).encode()
            ok = False
            for sess in k.luo_incoming:
                if sess.name == st.get("name", "session"):
                    for f in sess.files:
                        if f.memfd and f.memfd.get("folios"):
                            pfn = f.memfd["folios"][0]["pfn"]
                            ok = k.restore_folio(pfn << 12) is not None and k.m.mem.read(pfn << 12, len(want)) == want
            self.log.append(f"memfd from LUO session {st.get('name', 'session')!r}: "
                            f"{'content intact' if ok else 'lost'}")
        elif do == "fault":
            site = st.get("site", "page")
            tgt = k.pages if site == "page" else k.memblock
            tgt.faults.arm(int(st.get("count", 1)), int(st.get("after", 0)))
            self.log.append(f"    [{k.name}] fault: fail {st.get('count', 1)} {site} allocation(s) "
                            f"after {st.get('after', 0)}")
        elif do == "unpreserve":
            if k.preserved.blocks:
                phys, order = sorted(k.preserved.blocks)[int(st.get("index", 0)) % len(k.preserved.blocks)]
                rc = k.unpreserve_folio(phys, order)
                self.log.append(f"    [{k.name}] unpreserve 0x{phys:x} order {order} -> {rc}")
        else:
            raise UsageError(f"{self.name}: unknown step {do!r}")
        self.log.extend(k.log[n_log:])
        self._check(k, before)

    def _corrupt(self, k, st):
        what = st.get("what")
        kd = k.image and k.image.get("kho_data")
        if not kd:
            self.log.append(f"    [{k.name}] corrupt {what}: no handover loaded, nothing to corrupt")
            return
        self._check_map(k)          # judge the map as the old kernel wrote it
        k.map_checked = True
        mem = k.m.mem
        if what == "zero-fdt":
            mem.write(kd.fdt_addr, bytes(PAGE_SIZE))
        elif what in ("zero-map", "compatible"):
            from ..abi.root import RootFdtPage
            page = RootFdtPage(k.p, mem.read(kd.fdt_addr, PAGE_SIZE))
            if what == "zero-map":
                page.set_mem_map(0)
            else:
                off = page.find_prop_value(0, "compatible")
                val = str(st.get("value", "kho-v0")).encode()
                page.buf[off:off + len(val)] = val
            mem.write(kd.fdt_addr, bytes(page.buf))
        else:
            raise UsageError(f"{self.name}: unknown corruption {what!r}")
        self.log.append(f"    [{k.name}] corrupt {what}")

    def _check_map(self, k):
        if getattr(k, "map_checked", False):
            return
        if not k.image or not k.image.get("kho_data") or k.p.fdt_built_at is P.FdtBuiltAt.FINALIZE and not k.finalized:
            return
        if k.p.finalize is P.Finalize.SERIALIZE and not k.finalized:
            return
        decoded = set(k.decoded_map())
        truth = set(k.preserved.blocks)
        for phys, order in sorted(truth - decoded):
            self.violations.append(Violation("preservation-missing-from-map", phys, phys + (PAGE_SIZE << order),
                                             f"preserved (order {order}) but not in the outgoing map", k.name,
                                             "kexec"))

    def _check_reservations(self, old, new):
        if not new.populate or not new.populate.accepted:
            return
        truth = set(old.preserved.blocks)
        got = set(new.pages.preserved) | new.pages.restored
        reserved = {p for p, _ in truth}
        for phys in sorted(set(new.pages.preserved) - reserved):
            o = new.pages.preserved[phys]
            self.violations.append(Violation("reserved-but-not-preserved", phys, phys + (PAGE_SIZE << o),
                                             f"the new kernel reserved order {o} from the map, the old kernel "
                                             "did not preserve it", new.name, "kho_memory_init"))
        if new.pages.preserved or new.pages.restored:
            for phys, order in sorted(truth):
                if phys not in got:
                    self.violations.append(Violation("preserved-not-reserved", phys, phys + (PAGE_SIZE << order),
                                                     "preserved by the old kernel, not reserved by the new one",
                                                     new.name, "kho_memory_init"))
        self._check(new, len(self.violations))

    def run(self):
        self.ended = False
        self._boot_first()
        for st in self.spec.get("step", []):
            if self.ended:
                break
            self.step(st)
        return self

    def result(self) -> dict:
        return {
            "scenario": self.name,
            "log": self.log,
            "violations": [v.as_dict() for v in self.violations],
            "kernels": [{
                "name": k.name, "profile": k.p.name, "release": k.release,
                "kho_enabled": k.kho_enable, "is_kho_boot": k.is_kho_boot(),
                "populate": None if k.populate is None else ("accepted" if k.populate.accepted else "rejected"),
                "scratch": [{"addr": a.addr, "size": a.size} for a in k.scratch],
                "preserved_blocks": len(k.preserved.blocks),
                "reserved_from_map": len(k.pages.preserved) + len(k.pages.restored),
                "restored": len(k.pages.restored),
                "unrestored": len(k.pages.preserved),
                "kexec_count_in": k.kexec_count_in,
                "debugfs": _debugfs_listing(k.debugfs()),
            } for k in self.kernels],
        }


def _debugfs_listing(tree: dict, prefix: str = "kho") -> dict:
    """debugfs files and their sizes: ``{"kho/out/fdt": 233, ...}``."""
    out = {}
    for name, v in tree.items():
        path = f"{prefix}/{name}"
        if isinstance(v, dict):
            out.update(_debugfs_listing(v, path))
        else:
            out[path] = len(v)
    return out


def load_spec(name: str) -> tuple[str, dict]:
    if name in BUILTIN:
        return name, BUILTIN[name][1]
    if os.path.isfile(name):
        if tomllib is None:  # pragma: no cover
            raise UsageError("TOML scenarios need Python 3.11+")
        try:
            with open(name, "rb") as f:
                return name, tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise UsageError(f"{name}: {e}") from None
    raise UsageError(f"{name!r}: not a built-in scenario (kho simulate --list) nor a TOML file")


def simulate(name: str) -> dict:
    n, spec = load_spec(name)
    if "host" in spec:
        return host_result(n, spec["host"])
    return Run(spec, n).run().result()


def host_result(name: str, h: dict) -> dict:
    """A ``[host]`` scenario: :func:`~pykho.model.cycle.run_host_cycle` with
    the sizes given, reported like a scenario (log, violations, kernels)."""
    from .cycle import run_host_cycle
    from .verdict import duration
    r = run_host_cycle(ram=int(h.get("ram", 1 << 40)), guest_bytes=int(h.get("guest_bytes", 512 << 30)),
                       memfd_bytes=int(h.get("memfd_bytes", 1 << 30)), range_bytes=int(h.get("range_bytes", 1 << 30)),
                       memfd_stride=int(h.get("memfd_stride", 1)),
                       profile=str(h.get("profile", "E")))
    gib = 1 << 30
    log = [f"--- host: {r['ram'] // gib} GiB RAM, {h.get('profile', 'E')}",
           f"    preserved {r['preserved_bytes'] // gib} GiB: {r['ranges']} ranges of "
           f"{int(h.get('range_bytes', 1 << 30)) // gib} GiB (kho_preserve_pages) + {r['memfd_folios']} memfd folios",
           f"    map: {r['map_blocks']} blocks, metadata {r['map_metadata_bytes']} bytes "
           f"({r['map_metadata_bytes'] / max(r['preserved_bytes'], 1) * 100:.5f} % of what it describes)",
           f"    scratch the next kernel boots from: {r['scratch_bytes'] >> 20} MiB",
           *([f"    the walk's memblock calls: {mb['regions_after']:,} regions "
              + (f"(an array of {mb['array_entries']:,} entries, {mb['array_bytes'] >> 10:,} KiB in scratch)"
                 if mb["array_phys"] is not None else "(in the static array)")
              + f", about {mb['region_visits']:.2g} region visits ({duration(mb['region_visits'] / 1e9)} "
              "at 1 ns each)"] if (mb := r.get("memblock")) else []),
           f"    kexec_file_load -> {r['kexec_file_load']}; next kernel: populate {r['populate']}, "
           f"restored {r['restored_pages']} of {r['preserved_pages']} pages",
           "    seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in r["seconds"].items())]
    if r["restored_pages"] != r["preserved_pages"]:
        r["violations"].append({"kind": "restore-short", "start": 0, "end": 0, "kernel": "kernel 2",
                                "step": "restore", "detail": f"{r['restored_pages']} of {r['preserved_pages']} "
                                "pages restored"})
    return {"scenario": name, "log": log, "violations": r["violations"], "host": r, "kernels": []}
