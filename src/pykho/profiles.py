"""Kernel generations as data.

A :class:`Profile` says everything that differs between KHO generations: what
goes on the wire (compatible string, property names, memory-map format and
bitmap size), what the incoming kernel checks in ``kho_populate()`` and in
which order, and the exact lines it prints.  Code asks the profile; it never
compares version numbers.

Generations (see ``docs/GENERATIONS.md`` and the spec):

``A0``  6.16-6.17, ``kho-v1``, chunk list with 512-byte bitmaps, FDT built at
        finalize by notifiers, finalize and abort.
``A1``  6.18, ``kho-v1`` (not bumped), 4 KiB bitmaps, KHOP page stamp,
        ``kho_fill_kimage`` only after finalize.
``B-prefix`` 6.19 before "kho: validate preserved memory map during
        population": FDT built at boot with ``preserved-memory-map = 0`` until
        finalized, always handed over: the seed bug.
``B``   6.19/7.0 with the fix: ``kho_populate`` rejects a zero map (-ENOENT).
``C``   ``kho-v2``: radix tree, ``preserved-data``, no finalize.
``D``   7.1, ``kho-v3``: ``blob-size``, ``kexec-metadata``.
``E``   7.2, ``kho-v4``: KHO serialization blocks (LUO ``luo-v5``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import UsageError

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
MAX_PAGE_ORDER = 10  # x86-64 and arm64 with 4 KiB pages
SZ_1M = 1 << 20

# errno values that reach the kernel's log lines
ENOENT = 2
EFAULT = 14
EEXIST = 17
EINVAL = 22
ENOMEM = 12
EBUSY = 16
E2BIG = 7
EOPNOTSUPP = 95

# populate steps, in the order a profile lists them
STEP_MAP_FDT = "map_fdt"
STEP_HEADER = "check_header"
STEP_COMPATIBLE = "check_compatible"
STEP_MEM_MAP = "check_mem_map"
STEP_MAP_SCRATCH = "map_scratch"
STEP_MARK_SCRATCH = "mark_scratch"


@dataclass(frozen=True)
class Profile:
    name: str
    kernels: str
    compatible: str
    #: sub-node property holding the blob's physical address
    subtree_prop: str
    #: sub-node property holding the blob's size (D+), else None
    size_prop: str | None
    #: "chunks" (kho-v1 khoser_mem_chunk list) or "radix" (kho-v2+)
    map_format: str
    #: bits per kho-v1 bitmap (PRESERVE_BITS); 0 for radix
    preserve_bits: int
    #: does the incoming kernel stamp page->private with KHOP|order
    khop_magic: bool
    #: does kho_restore_page reject order > MAX_PAGE_ORDER
    restore_checks_order: bool
    #: "notifier" (A: FDT built at finalize), "serialize" (B: finalize only
    #: serialises the map), None (C+: no finalize)
    finalize: str | None
    abort: bool
    #: when the root FDT is created: "finalize" or "boot"
    fdt_built_at: str
    #: gate of kho_fill_kimage: "enable" (handover whenever KHO is on) or
    #: "finalized" (only after finalize)
    fill_kimage_gate: str
    #: kho_populate steps in order
    populate_steps: tuple[str, ...]
    #: format strings of kho_populate's lines (the "KHO: " prefix included)
    msg_header_invalid: str = "KHO: setup: handover FDT (0x{fdt:x}) is invalid: {err}"
    msg_incompatible: str = "KHO: setup: handover FDT (0x{fdt:x}) is incompatible with '{compat}': {err}"
    msg_map_fdt: str = "KHO: setup: failed to memremap FDT (0x{fdt:x})"
    msg_map_scratch: str = "KHO: setup: failed to memremap scratch (phys=0x{phys:x}, len={len})"
    #: ``0x%pa`` prints the 0x twice; ``%pe`` prints a symbolic errno name
    msg_mark_scratch: str = "KHO: failed to mark the scratch region 0x0x{addr:016x}+0x0x{size:016x}: {errname}"
    msg_found: str = "KHO: found kexec handover data."
    #: the populate failure line; {err} present only in generations that print it
    msg_disable: str = "KHO: disabling KHO revival: {err}"
    #: populate's message when preserved-memory-map is missing or not 8 bytes
    msg_map_prop_bad: str | None = None
    #: populate's message when the map value is zero (None: silent)
    msg_map_zero: str | None = None
    #: kho_memory_init's walker: message when the property is missing or bad
    msg_walker_prop_bad: str = "KHO: failed to get preserved memory bitmaps"
    #: kho_memory_init on a zero map: "walk-nothing" (A) or "clear-fdt"
    #: (kho_in.fdt_phys = 0: the kernel forgets the handover but keeps scratch)
    memory_init_zero_map: str = "clear-fdt"
    #: does kho_memory_init clear fdt_phys when the walker fails
    kexec_metadata: bool = False
    kho_blocks: bool = False
    #: kho_scratch= parser: "a0" (every size non-zero, trailing text ignored)
    #: or "strict" (sum non-zero, fully consumed)
    scratch_grammar: str = "strict"
    #: alignment and rounding of scratch sizes
    scratch_align: int = 2 * SZ_1M
    #: which sizes are rounded with explicit kho_scratch=L,G,P
    scratch_round_explicit: tuple[str, ...] = ("pernode",)
    #: scratch reservation failure lines (printed in order)
    msg_scratch_fail: tuple[str, ...] = ("KHO: Failed to reserve scratch area, disabling kexec handover",)
    per_area_scratch_fail_msgs: bool = False
    #: kexec segments alignment of the scratch array
    scratch_array_align: int = 0x10000
    #: success line printed by populate on A0
    notes: str = ""
    #: debugfs files of out/ (cold boot)
    debugfs_out: tuple[str, ...] = ("fdt", "scratch_phys", "scratch_len", "sub_fdts")
    #: which sizes kho_alloc_preserve exists
    alloc_preserve: bool = True
    #: subnode names the kernel itself registers in kho_init
    builtin_subtrees: tuple[str, ...] = ()
    #: test_kho stores folios_info in vmalloc memory (6.18+) or in the FDT
    test_kho_vmalloc: bool = True
    #: the exported kho_unpreserve_* API (6.19+)
    unpreserve: bool = True

    @property
    def bitmap_bytes(self) -> int:
        return self.preserve_bits // 8

    def disable_line(self, err: int) -> str:
        return self.msg_disable.format(err=err)

    def __str__(self) -> str:  # pragma: no cover - cosmetic
        return f"{self.name} ({self.kernels}, {self.compatible})"


_CHUNK_STEPS = (STEP_MAP_FDT, STEP_HEADER, STEP_COMPATIBLE, STEP_MAP_SCRATCH, STEP_MARK_SCRATCH)
_FIXED_STEPS = (STEP_MAP_FDT, STEP_HEADER, STEP_COMPATIBLE, STEP_MEM_MAP, STEP_MAP_SCRATCH, STEP_MARK_SCRATCH)

A0 = Profile(
    name="A0", kernels="6.16-6.17", compatible="kho-v1",
    subtree_prop="fdt", size_prop=None, map_format="chunks", preserve_bits=512 * 8,
    khop_magic=False, restore_checks_order=False, finalize="notifier", abort=True,
    fdt_built_at="finalize", fill_kimage_gate="enable", populate_steps=_CHUNK_STEPS,
    msg_found="KHO: found kexec handover data. Will skip init for some devices",
    msg_mark_scratch="KHO: failed to mark the scratch region 0x0x{addr:016x}+0x0x{size:016x}: {err}",
    memory_init_zero_map="walk-nothing", scratch_grammar="a0",
    msg_scratch_fail=(), alloc_preserve=False,
    debugfs_out=("finalize", "scratch_phys", "scratch_len", "sub_fdts"),
    test_kho_vmalloc=False, unpreserve=False,
    notes="unfinalized kexec hands over an unwritten FDT page",
)

A1 = Profile(
    name="A1", kernels="6.18", compatible="kho-v1",
    subtree_prop="fdt", size_prop=None, map_format="chunks", preserve_bits=4096 * 8,
    khop_magic=True, restore_checks_order=True, finalize="notifier", abort=True,
    fdt_built_at="finalize", fill_kimage_gate="finalized", populate_steps=_CHUNK_STEPS,
    msg_found="KHO: found kexec handover data. Will skip init for some devices",
    msg_mark_scratch="KHO: failed to mark the scratch region 0x0x{addr:016x}+0x0x{size:016x}: {err}",
    memory_init_zero_map="walk-nothing", alloc_preserve=False,
    debugfs_out=("finalize", "scratch_phys", "scratch_len", "sub_fdts"), unpreserve=False,
)

B_PREFIX = Profile(
    name="B-prefix", kernels="6.19 (before the populate fix)", compatible="kho-v1",
    subtree_prop="fdt", size_prop=None, map_format="chunks", preserve_bits=4096 * 8,
    khop_magic=True, restore_checks_order=True, finalize="serialize", abort=False,
    fdt_built_at="boot", fill_kimage_gate="enable", populate_steps=_CHUNK_STEPS,
    memory_init_zero_map="clear-fdt",
    debugfs_out=("fdt", "finalize", "scratch_phys", "scratch_len", "sub_fdts"),
    notes="populate accepts preserved-memory-map = 0; kho_init frees scratch twice",
)

B = Profile(
    name="B", kernels="6.19-7.0", compatible="kho-v1",
    subtree_prop="fdt", size_prop=None, map_format="chunks", preserve_bits=4096 * 8,
    khop_magic=True, restore_checks_order=True, finalize="serialize", abort=False,
    fdt_built_at="boot", fill_kimage_gate="enable", populate_steps=_FIXED_STEPS,
    msg_map_prop_bad="KHO: failed to get preserved memory bitmaps",
    msg_map_zero=None,
    memory_init_zero_map="clear-fdt",
    debugfs_out=("fdt", "finalize", "scratch_phys", "scratch_len", "sub_fdts"),
)

C = Profile(
    name="C", kernels="7.1 merge window", compatible="kho-v2",
    subtree_prop="preserved-data", size_prop=None, map_format="radix", preserve_bits=0,
    khop_magic=True, restore_checks_order=True, finalize=None, abort=False,
    fdt_built_at="boot", fill_kimage_gate="enable", populate_steps=_FIXED_STEPS,
    msg_disable="KHO: disabling KHO revival",
    msg_map_prop_bad="KHO: failed to get preserved memory map",
    msg_walker_prop_bad="KHO: failed to get preserved KHO memory tree",
    per_area_scratch_fail_msgs=True,
)

D = Profile(
    name="D", kernels="7.1", compatible="kho-v3",
    subtree_prop="preserved-data", size_prop="blob-size", map_format="radix", preserve_bits=0,
    khop_magic=True, restore_checks_order=False, finalize=None, abort=False,
    fdt_built_at="boot", fill_kimage_gate="enable", populate_steps=_FIXED_STEPS,
    msg_disable="KHO: disabling KHO revival",
    msg_map_prop_bad="KHO: failed to get preserved memory map",
    msg_walker_prop_bad="KHO: failed to get preserved KHO memory tree",
    per_area_scratch_fail_msgs=True, kexec_metadata=True,
    builtin_subtrees=("kexec-metadata",),
)

E = Profile(
    name="E", kernels="7.2", compatible="kho-v4",
    subtree_prop="preserved-data", size_prop="blob-size", map_format="radix", preserve_bits=0,
    khop_magic=True, restore_checks_order=False, finalize=None, abort=False,
    fdt_built_at="boot", fill_kimage_gate="enable", populate_steps=_FIXED_STEPS,
    msg_disable="KHO: disabling KHO revival",
    msg_map_prop_bad="KHO: failed to get preserved memory map",
    msg_walker_prop_bad="KHO: failed to get preserved KHO memory tree",
    per_area_scratch_fail_msgs=True, kexec_metadata=True, kho_blocks=True,
    scratch_align=4 * SZ_1M, scratch_round_explicit=("lowmem", "global", "pernode"),
    builtin_subtrees=("kexec-metadata",),
)

PROFILES: dict[str, Profile] = {p.name: p for p in (A0, A1, B_PREFIX, B, C, D, E)}
ALIASES = {
    "6.16": "A0", "6.17": "A0", "6.18": "A1", "6.19-prefix": "B-prefix", "seed": "B-prefix",
    "6.19": "B", "7.0": "B", "7.1": "D", "7.2": "E", "7.3": "E",
    "kho-v2": "C", "kho-v3": "D", "kho-v4": "E", "b-prefix": "B-prefix",
}


def get_profile(name: str | Profile) -> Profile:
    if isinstance(name, Profile):
        return name
    key = ALIASES.get(name, ALIASES.get(name.lower(), name))
    for cand in (key, key.upper()):
        if cand in PROFILES:
            return PROFILES[cand]
    raise UsageError(f"unknown kernel generation {name!r}; known: {', '.join(PROFILES)}")


def profiles_for_compatible(compatible: str) -> list[Profile]:
    """Every profile that writes ``compatible`` on the wire (kho-v1 has four)."""
    return [p for p in PROFILES.values() if p.compatible == compatible]


def newest_for_compatible(compatible: str) -> Profile | None:
    found = profiles_for_compatible(compatible)
    return found[-1] if found else None
