"""Kernel generations as data.

A :class:`Profile` says everything that differs between KHO generations: what
goes on the wire (compatible string, property names, memory-map format and
bitmap size), what the incoming kernel checks in ``kho_populate()`` and in
which order, and the exact lines it prints.  Code asks the profile; it never
compares version numbers; a behaviour that differs between generations is a
field here (an enum or a flag), not a test in shared code.

Generations (facts and their sources: ``docs/KERNEL-FACTS.md``):

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
``F``   7.3, ``kho-v4`` (the same wire format as E): the incoming tree is
        walked early (``kho_memory_init_early``) to extend scratch over free
        1 GiB blocks, kdump kernels disable KHO, percentage scratch sizing
        leaves HugeTLB out.

Variants (not generations: :data:`VARIANTS`, not in :data:`PROFILES`):

``E-unfixed`` 7.2.13 with vmtest's patch (vmtest/patches/7.2-unfixed) that
        takes the preserved-memory-map check out of ``kho_populate``: the
        seed bug's path on a 7.2 kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from .errors import E2BIG, EBUSY, EEXIST, EFAULT, EINVAL, ENOENT, ENOMEM, EOPNOTSUPP, UsageError  # errno re-exported

__all__ = ["Profile", "MapFormat", "Finalize", "FdtBuiltAt", "FillKimageGate", "PopulateStep", "ZeroMapAction",
           "ScratchGrammar", "ScratchArea", "PROFILES", "VARIANTS", "ALIASES", "get_profile", "profiles_for_compatible",
           "newest_for_compatible", "profile_for_release", "A0", "A1", "B_PREFIX", "B", "C", "D", "E", "E_UNFIXED",
           "F", "PAGE_SHIFT", "PAGE_SIZE",
           "MAX_PAGE_ORDER", "errname", "ENOENT", "EFAULT", "EEXIST", "EINVAL", "ENOMEM", "EBUSY", "E2BIG",
           "EOPNOTSUPP"]

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
MAX_PAGE_ORDER = 10  # x86-64 and arm64 with 4 KiB pages
SZ_1M = 1 << 20

#: ``%pe`` prints "-EINVAL" only with CONFIG_SYMBOLIC_ERRNAME; the oracle's and
#: vmtest's tinyconfig kernels lack it and print "-22" (seen on 7.2.13)
SYMBOLIC_ERRNAME = False
_ERRNAMES = {ENOENT: "-ENOENT", EFAULT: "-EFAULT", EINVAL: "-EINVAL", ENOMEM: "-ENOMEM", EEXIST: "-EEXIST",
             EBUSY: "-EBUSY"}


def errname(err: int) -> str:
    """How the kernel's ``%pe`` prints a negative errno."""
    return _ERRNAMES.get(-err, str(err)) if SYMBOLIC_ERRNAME else str(err)


class MapFormat(StrEnum):
    """The preserved memory map on the wire (KERNEL-FACTS §2, §4)."""
    CHUNKS = "chunks"      #: kho-v1: khoser_mem_chunk list of bitmaps
    RADIX = "radix"        #: kho-v2+: radix tree keyed by order and pfn


class Finalize(StrEnum):
    """What ``finalize`` does in generations that have it (KERNEL-FACTS §3, §9)."""
    NOTIFIER = "notifier"  #: 6.16-6.18: the root FDT is built by finalize notifiers
    SERIALIZE = "serialize"  #: 6.19-7.0: finalize only serialises the chunk list


class FdtBuiltAt(StrEnum):
    """When the outgoing root FDT is created (KERNEL-FACTS §3)."""
    FINALIZE = "finalize"
    BOOT = "boot"


class FillKimageGate(StrEnum):
    """When ``kho_fill_kimage`` hands the FDT to kexec (KERNEL-FACTS §6)."""
    ENABLE = "enable"          #: whenever KHO is enabled
    FINALIZED = "finalized"    #: only after finalize


class PopulateStep(StrEnum):
    """The checks of ``kho_populate``, listed per profile in order (KERNEL-FACTS §1)."""
    MAP_FDT = "map_fdt"
    HEADER = "check_header"
    COMPATIBLE = "check_compatible"
    MEM_MAP = "check_mem_map"
    MAP_SCRATCH = "map_scratch"
    MARK_SCRATCH = "mark_scratch"


class ZeroMapAction(StrEnum):
    """What ``kho_memory_init`` does when the map property is missing, bad or
    zero (KERNEL-FACTS §2, §3)."""
    WALK_NOTHING = "walk-nothing"  #: 6.16-6.18: nothing is reserved, the handover is kept
    CLEAR_FDT = "clear-fdt"        #: 6.19+: ``kho_in.fdt_phys = 0``: the handover is forgotten


class ScratchGrammar(StrEnum):
    """``kho_scratch=`` parsing (KERNEL-FACTS §5)."""
    A0 = "a0"          #: every size non-zero, trailing text ignored
    STRICT = "strict"  #: sum non-zero, the whole argument consumed


class ScratchArea(StrEnum):
    """The three sizes of an explicit ``kho_scratch=L,G,P`` (KERNEL-FACTS §5)."""
    LOWMEM = "lowmem"
    GLOBAL = "global"
    PERNODE = "pernode"


# the old names, for code that lists populate steps
STEP_MAP_FDT = PopulateStep.MAP_FDT
STEP_HEADER = PopulateStep.HEADER
STEP_COMPATIBLE = PopulateStep.COMPATIBLE
STEP_MEM_MAP = PopulateStep.MEM_MAP
STEP_MAP_SCRATCH = PopulateStep.MAP_SCRATCH
STEP_MARK_SCRATCH = PopulateStep.MARK_SCRATCH


@dataclass(frozen=True)
class Profile:
    """One kernel generation.  Each field names the section of
    docs/KERNEL-FACTS.md that establishes it."""

    name: str
    kernels: str
    #: the release a modelled kernel of this generation reports (kexec-metadata, logs)
    default_release: str
    compatible: str                       # §1 (COMPAT per generation), §4
    #: sub-node property holding the blob's physical address (§4)
    subtree_prop: str
    #: sub-node property holding the blob's size (7.1+), else None (§4, §7)
    size_prop: str | None
    map_format: MapFormat                 # §2, §4
    #: bits per kho-v1 bitmap (PRESERVE_BITS); 0 for radix (§4)
    preserve_bits: int
    #: the incoming kernel stamps page->private with KHOP|order (§4)
    khop_magic: bool
    #: kho_restore_page rejects order > MAX_PAGE_ORDER (§4)
    restore_checks_order: bool
    #: finalize's job, None when the generation has no finalize (§3, §9)
    finalize: Finalize | None
    #: the generation has kho_abort (§9)
    abort: bool
    fdt_built_at: FdtBuiltAt              # §3
    fill_kimage_gate: FillKimageGate      # §6
    #: kho_populate steps in order (§1)
    populate_steps: tuple[PopulateStep, ...]
    #: format strings of kho_populate's lines, "KHO: " included (§1)
    msg_header_invalid: str = "KHO: setup: handover FDT (0x{fdt:x}) is invalid: {err}"
    msg_incompatible: str = "KHO: setup: handover FDT (0x{fdt:x}) is incompatible with '{compat}': {err}"
    msg_map_fdt: str = "KHO: setup: failed to memremap FDT (0x{fdt:x})"
    msg_map_scratch: str = "KHO: setup: failed to memremap scratch (phys=0x{phys:x}, len={len})"
    #: ``0x%pa`` prints the 0x twice; ``%pe`` prints a symbolic errno name (§1 step 5)
    msg_mark_scratch: str = "KHO: failed to mark the scratch region 0x0x{addr:016x}+0x0x{size:016x}: {errname}"
    msg_found: str = "KHO: found kexec handover data."                         # §1 step 6
    #: the populate failure line; {err} present only in generations that print it (§1 final)
    msg_disable: str = "KHO: disabling KHO revival: {err}"
    #: populate's message when preserved-memory-map is missing or not 8 bytes (§1 step 3b)
    msg_map_prop_bad: str | None = None
    #: populate's message when the map value is zero, None: silent (§1 step 3b)
    msg_map_zero: str | None = None
    #: kho_memory_init's walker: message when the property is missing or bad (§2)
    msg_walker_prop_bad: str = "KHO: failed to get preserved memory bitmaps"
    #: kho_memory_init on a missing, bad or zero map (§2, §3)
    memory_init_zero_map: ZeroMapAction = ZeroMapAction.CLEAR_FDT
    #: kho_init writes and reads a kexec-metadata sub-node (§7)
    kexec_metadata: bool = False
    #: KHO serialization blocks (kho_block) exist (§7)
    kho_blocks: bool = False
    #: the LUO client (luo-v5 over KHO blocks) exists (§8)
    luo: bool = False
    #: kho_in_debugfs_init lists incoming sub-nodes, warning on bad ones (§9)
    debugfs_in_subfdts: bool = False
    #: kho_scratch= parser (§5)
    scratch_grammar: ScratchGrammar = ScratchGrammar.STRICT
    #: alignment and rounding of scratch sizes (§5)
    scratch_align: int = 2 * SZ_1M
    #: which sizes are rounded with explicit kho_scratch=L,G,P (§5)
    scratch_round_explicit: tuple[ScratchArea, ...] = (ScratchArea.PERNODE,)
    #: scratch reservation failure lines, printed in order (§5)
    msg_scratch_fail: tuple[str, ...] = ("KHO: Failed to reserve scratch area, disabling kexec handover",)
    #: a "KHO: Failed to reserve <area>" line per failed area (§5)
    per_area_scratch_fail_msgs: bool = False
    #: alignment of the scratch array's kexec segment (§6)
    scratch_array_align: int = 0x10000
    #: test_kho stores folios_info in vmalloc memory (6.18+) or in the FDT (§4)
    test_kho_vmalloc: bool = True
    #: the exported kho_unpreserve_* API (6.19+) (§9)
    unpreserve: bool = True
    #: kho_init fails (and takes its error path, freeing every scratch
    #: area) when debugfs refuses to create its directory, as with
    #: ``debugfs=off``: seen on 7.2.13 (§9); not verified for older kernels
    debugfs_required: bool = False
    #: CONFIG_KEXEC_HANDOVER_DEBUG has a check that refuses to preserve
    #: memory inside scratch (6.18+, §4); whether it is built in is the
    #: kernel's config (:class:`pykho.model.kernel.Kernel` ``kho_debug``)
    debug_scratch_overlap_check: bool = False
    #: the profile writes the same bytes as this older one (F: E); decoding
    #: and generation detection cannot tell them apart (§12 F-1)
    same_wire_as: str | None = None
    #: kho_memory_init first disables KHO in a kdump kernel (is_kdump_kernel(),
    #: ``elfcorehdr=``), before any other KHO work, kho= or not (§12 F-2)
    kdump_gate: bool = False
    msg_kdump_disabled: str = "KHO: disabled in the kdump kernel"
    #: kho_memory_init_early walks the incoming tree before any memblock
    #: reservation from it (to extend scratch): a node the walk cannot read
    #: faults there, with nothing of the map reserved yet (§12 F-4)
    early_tree_walk: bool = False
    #: scratch extension: every block of this size (up to the end of DRAM)
    #: holding no preserved block and no radix node page is marked scratch on
    #: a KHO boot; 0 = no extension (§12 F-5)
    scratch_extension_block: int = 0
    msg_extend_fail: str = "KHO: Failed to extend scratch: {errname}"
    #: percentage scratch sizing subtracts the boot-time HugeTLB reservations
    #: from the kernel's memblock size (§12 F-6)
    scratch_excludes_hugetlb: bool = False

    def disable_line(self, err: int) -> str:
        return self.msg_disable.format(err=err)

    def __str__(self) -> str:  # pragma: no cover - cosmetic
        return f"{self.name} ({self.kernels}, {self.compatible})"


_CHUNK_STEPS = (STEP_MAP_FDT, STEP_HEADER, STEP_COMPATIBLE, STEP_MAP_SCRATCH, STEP_MARK_SCRATCH)
_FIXED_STEPS = (STEP_MAP_FDT, STEP_HEADER, STEP_COMPATIBLE, STEP_MEM_MAP, STEP_MAP_SCRATCH, STEP_MARK_SCRATCH)
_KHO_V1_FOUND = "KHO: found kexec handover data. Will skip init for some devices"
_A_MARK = "KHO: failed to mark the scratch region 0x0x{addr:016x}+0x0x{size:016x}: {err}"

A0 = Profile(
    name="A0", kernels="6.16-6.17", default_release="6.17.0", compatible="kho-v1",
    subtree_prop="fdt", size_prop=None, map_format=MapFormat.CHUNKS, preserve_bits=512 * 8,
    khop_magic=False, restore_checks_order=False, finalize=Finalize.NOTIFIER, abort=True,
    fdt_built_at=FdtBuiltAt.FINALIZE, fill_kimage_gate=FillKimageGate.ENABLE, populate_steps=_CHUNK_STEPS,
    msg_found=_KHO_V1_FOUND, msg_mark_scratch=_A_MARK,
    memory_init_zero_map=ZeroMapAction.WALK_NOTHING, scratch_grammar=ScratchGrammar.A0,
    msg_scratch_fail=(), test_kho_vmalloc=False, unpreserve=False,
)

A1 = Profile(
    name="A1", kernels="6.18", default_release="6.18.0", compatible="kho-v1",
    subtree_prop="fdt", size_prop=None, map_format=MapFormat.CHUNKS, preserve_bits=4096 * 8,
    khop_magic=True, restore_checks_order=True, finalize=Finalize.NOTIFIER, abort=True,
    debug_scratch_overlap_check=True,
    fdt_built_at=FdtBuiltAt.FINALIZE, fill_kimage_gate=FillKimageGate.FINALIZED, populate_steps=_CHUNK_STEPS,
    msg_found=_KHO_V1_FOUND, msg_mark_scratch=_A_MARK,
    memory_init_zero_map=ZeroMapAction.WALK_NOTHING, unpreserve=False,
)

B_PREFIX = Profile(
    name="B-prefix", kernels="6.19 (before the populate fix)", default_release="6.19.0-rc4", compatible="kho-v1",
    subtree_prop="fdt", size_prop=None, map_format=MapFormat.CHUNKS, preserve_bits=4096 * 8,
    khop_magic=True, restore_checks_order=True, finalize=Finalize.SERIALIZE, abort=False,
    debug_scratch_overlap_check=True,
    fdt_built_at=FdtBuiltAt.BOOT, fill_kimage_gate=FillKimageGate.ENABLE, populate_steps=_CHUNK_STEPS,
    memory_init_zero_map=ZeroMapAction.CLEAR_FDT,
)

B = Profile(
    name="B", kernels="6.19-7.0", default_release="7.0.0", compatible="kho-v1",
    subtree_prop="fdt", size_prop=None, map_format=MapFormat.CHUNKS, preserve_bits=4096 * 8,
    khop_magic=True, restore_checks_order=True, finalize=Finalize.SERIALIZE, abort=False,
    debug_scratch_overlap_check=True,
    fdt_built_at=FdtBuiltAt.BOOT, fill_kimage_gate=FillKimageGate.ENABLE, populate_steps=_FIXED_STEPS,
    msg_map_prop_bad="KHO: failed to get preserved memory bitmaps",
    memory_init_zero_map=ZeroMapAction.CLEAR_FDT,
)

C = Profile(
    name="C", kernels="7.1 merge window", default_release="7.1.0-rc1", compatible="kho-v2",
    subtree_prop="preserved-data", size_prop=None, map_format=MapFormat.RADIX, preserve_bits=0,
    khop_magic=True, restore_checks_order=True, finalize=None, abort=False,
    debug_scratch_overlap_check=True,
    fdt_built_at=FdtBuiltAt.BOOT, fill_kimage_gate=FillKimageGate.ENABLE, populate_steps=_FIXED_STEPS,
    msg_disable="KHO: disabling KHO revival",
    msg_map_prop_bad="KHO: failed to get preserved memory map",
    msg_walker_prop_bad="KHO: failed to get preserved KHO memory tree",
    per_area_scratch_fail_msgs=True,
)

D = Profile(
    name="D", kernels="7.1", default_release="7.1.0", compatible="kho-v3",
    subtree_prop="preserved-data", size_prop="blob-size", map_format=MapFormat.RADIX, preserve_bits=0,
    khop_magic=True, restore_checks_order=False, finalize=None, abort=False,
    debug_scratch_overlap_check=True,
    fdt_built_at=FdtBuiltAt.BOOT, fill_kimage_gate=FillKimageGate.ENABLE, populate_steps=_FIXED_STEPS,
    msg_disable="KHO: disabling KHO revival",
    msg_map_prop_bad="KHO: failed to get preserved memory map",
    msg_walker_prop_bad="KHO: failed to get preserved KHO memory tree",
    per_area_scratch_fail_msgs=True, kexec_metadata=True, debugfs_in_subfdts=True,
)

E = Profile(
    name="E", kernels="7.2", default_release="7.2.13", compatible="kho-v4",
    subtree_prop="preserved-data", size_prop="blob-size", map_format=MapFormat.RADIX, preserve_bits=0,
    khop_magic=True, restore_checks_order=False, finalize=None, abort=False,
    debug_scratch_overlap_check=True,
    fdt_built_at=FdtBuiltAt.BOOT, fill_kimage_gate=FillKimageGate.ENABLE, populate_steps=_FIXED_STEPS,
    msg_disable="KHO: disabling KHO revival",
    msg_map_prop_bad="KHO: failed to get preserved memory map",
    msg_walker_prop_bad="KHO: failed to get preserved KHO memory tree",
    per_area_scratch_fail_msgs=True, kexec_metadata=True, kho_blocks=True, luo=True, debugfs_in_subfdts=True,
    debugfs_required=True, scratch_align=4 * SZ_1M,
    scratch_round_explicit=(ScratchArea.LOWMEM, ScratchArea.GLOBAL, ScratchArea.PERNODE),
)

#: 7.2.13 with vmtest/patches/7.2-unfixed: kho_populate has B-prefix's steps
#: (no preserved-memory-map check, §12 U-1); the rest is 7.2's, so a handover
#: without a usable map is accepted, its scratch adopted, and kho_memory_init
#: forgets it (§2 E row, §3 "latent only" made reachable: §12 U-2)
E_UNFIXED = replace(
    E, name="E-unfixed", kernels="7.2.13 without the populate map check (vmtest patch)",
    default_release="7.2.13", populate_steps=_CHUNK_STEPS, same_wire_as="E",
)

#: 7.3.4 (Debian linux-source-7.3 7.3.4-1~bpo13+1): E's wire format, populate,
#: clients and debugfs (§12 F-1, F-7); the early walk, scratch extension,
#: kdump gate and HugeTLB sizing are new (§12)
F = replace(
    E, name="F", kernels="7.3", default_release="7.3.4",
    same_wire_as="E",                               # §12 F-1
    kdump_gate=True,                                # §12 F-2
    msg_walker_prop_bad="KHO: failed to get preserved memory map",   # §12 F-3
    early_tree_walk=True,                           # §12 F-4
    scratch_extension_block=1 << 30,                # §12 F-5
    scratch_excludes_hugetlb=True,                  # §12 F-6
)

PROFILES: dict[str, Profile] = {p.name: p for p in (A0, A1, B_PREFIX, B, C, D, E, F)}
#: kernels that are not a generation of their own (patched test kernels)
VARIANTS: dict[str, Profile] = {p.name: p for p in (E_UNFIXED,)}
ALIASES = {
    "6.16": "A0", "6.17": "A0", "6.18": "A1", "6.19-prefix": "B-prefix", "seed": "B-prefix",
    "6.19": "B", "7.0": "B", "7.1": "D", "7.2": "E", "7.2.13": "E", "7.3": "F", "7.3.4": "F",
    "kho-v2": "C", "kho-v3": "D", "kho-v4": "E", "b-prefix": "B-prefix",
    "7.2-unfixed": "E-unfixed", "7.2.13-unfixed": "E-unfixed", "e-unfixed": "E-unfixed",
}


def get_profile(name: str | Profile) -> Profile:
    if isinstance(name, Profile):
        return name
    key = ALIASES.get(name, ALIASES.get(name.lower(), name))
    for cand in (key, key.upper()):
        if cand in PROFILES:
            return PROFILES[cand]
        if cand in VARIANTS:
            return VARIANTS[cand]
    raise UsageError(f"unknown kernel generation {name!r}; known: {', '.join([*PROFILES, *VARIANTS])}")


def profile_for_release(release: str) -> Profile | None:
    """The generation of a kernel release string (``7.2.13``, ``6.19.0-rc4``,
    ``7.2.13-unfixed``): an alias of the full release if there is one, else
    of its ``major.minor``; None for a release no profile covers."""
    if release in ALIASES or release in PROFILES or release in VARIANTS:
        return get_profile(release)
    parts = release.split(".")
    if len(parts) >= 2 and parts[0].isdigit():
        minor = "".join(ch for ch in parts[1] if ch.isdigit())
        key = f"{parts[0]}.{minor}"
        if key in ALIASES:
            return get_profile(key)
    return None


def profiles_for_compatible(compatible: str, same_wire: bool = False) -> list[Profile]:
    """The profiles that write ``compatible`` on the wire (kho-v1 has four),
    one per wire format: a profile whose bytes are another's (F writes E's)
    is listed only with ``same_wire``."""
    return [p for p in PROFILES.values() if p.compatible == compatible and (same_wire or not p.same_wire_as)]


def newest_for_compatible(compatible: str) -> Profile | None:
    found = profiles_for_compatible(compatible)
    return found[-1] if found else None
