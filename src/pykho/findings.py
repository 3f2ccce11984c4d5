"""Every finding code ``kho validate`` can report, with its severity.

A finding is an *error* only when the target kernel would fail, lose or
corrupt something with the handover: those codes come from the model's run
of that kernel on the capture (``handover-rejected``, ``client-*``,
``model-*``).  What the bytes are (a decoder's structural problem, an unusual
scratch array) is a *warning*; what real kernels do in normal operation (the
cut debugfs ``out/fdt`` of 7.2, an empty global scratch area) is *info*.

docs/JSON.md lists the same codes; a test keeps the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ERROR", "WARNING", "INFO", "Finding", "CODES", "PATTERNS", "severity_of", "known"]

ERROR, WARNING, INFO = "error", "warning", "info"


@dataclass
class Finding:
    severity: str
    code: str
    message: str
    where: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"severity": self.severity, "code": self.code, "message": self.message, "where": self.where}


#: code -> (severity, meaning)
CODES: dict[str, tuple[str, str]] = {
    # --- consequences in the target kernel (from the model's run)
    "handover-rejected": (ERROR, "kho_populate refuses the handover: the kernel boots cold, nothing preserved "
                                 "survives"),
    "handover-forgotten": (ERROR, "kho_memory_init drops a handover kho_populate accepted: no client finds its "
                                  "data, and the kernel goes on as if booted cold over the adopted scratch"),
    "client-restore-failed": (ERROR, "a client's restore fails in the target kernel"),
    "client-retrieve-failed": (ERROR, "kho_retrieve_subtree fails for a client's sub-node"),
    "client-not-predicted": (INFO, "the memory given lacks what a client's restore reads"),
    "walk-memblock-scans": (WARNING, "the map walk reserves block by block, and each memblock call scans "
                                     "memblock.reserved from its start: on a map of many separate runs the boot "
                                     "spends minutes to hours in kho_memory_init"),
    "reserved-not-restored": (INFO, "blocks the target kernel reserves from the map that no client modelled "
                                    "restores at boot (LUO files restore later, on first open)"),
    # --- what the bytes are (decoders and handover loading)
    "fdt-header": (WARNING, "the root FDT header does not pass fdt_check_header"),
    "fdt-structure": (WARNING, "the root FDT does not pass fdt_check_full"),
    "scratch-length": (WARNING, "the scratch array length is not a multiple of 16"),
    "scratch-empty": (INFO, "a scratch area of size 0"),
    "scratch-unaligned": (WARNING, "a scratch area not page aligned"),
    "scratch-outside-ram": (WARNING, "a scratch area outside System RAM (--iomem)"),
    "scratch-overlap": (WARNING, "two scratch areas overlap"),
    "sources-disagree": (WARNING, "the debugfs copy and memory say different things; the verdict follows what "
                                  "the kernel reads"),
    "no-memory": (INFO, "no --mem: the map and the sub-blobs were not checked"),
    "live-in-consumed": (INFO, "in/ read on the kernel that received it: its map was consumed at boot, memory is "
                               "not read"),
    # --- the map decoder's structural problems
    "radix-pointer-outside": (WARNING, "a radix entry points outside the memory given"),
    "radix-unaligned-node": (WARNING, "a radix entry points at an unaligned address"),
    "radix-shared-node": (WARNING, "a radix node is reached twice"),
    "radix-too-many-nodes": (WARNING, "the radix tree holds more nodes than its key space allows"),
    "radix-bad-key": (WARNING, "a radix leaf bit decodes to an impossible key"),
    "chunk-pointer-outside": (WARNING, "a kho-v1 chunk or bitmap pointer points outside the memory given"),
    "chunk-cycle": (WARNING, "the kho-v1 chunk list loops"),
    "chunk-num-elms": (WARNING, "a kho-v1 chunk claims more elements than fit"),
    "chunk-bad-order": (WARNING, "a kho-v1 chunk element has an impossible order"),
    "chunk-too-many": (WARNING, "the kho-v1 chunk list is longer than the memory it could describe"),
    "chunk-unaligned-start": (WARNING, "a kho-v1 bitmap start is not aligned to its order"),
    "chunk-shared-bitmap": (WARNING, "two kho-v1 chunk elements share one bitmap"),
    "map-duplicate": (WARNING, "the map holds the same block twice"),
    "map-overlap": (WARNING, "two blocks of the map overlap"),
    # --- known behaviours of real kernels (handover loading)
    "debugfs-fdt-truncated": (INFO, "7.2's debugfs out/fdt keeps the size the FDT had at kho_init"),
    "debugfs-fdt-completed": (INFO, "the cut debugfs out/fdt was completed from its known tail"),
    "debugfs-no-out-fdt": (INFO, "a kernel booted through KHO has no debugfs out/fdt"),
    "root-fdt-not-located": (INFO, "the bounded search of the memory for the root FDT stopped (time or size) "
                                   "before finding it; --fdt-phys gives it"),
    "root-fdt-not-in-memory": (WARNING, "the memory given holds neither setup_data pointing at the root FDT nor a "
                                        "page starting with it: the report is the file's"),
    "mem-base-doubtful": (WARNING, "the root FDT was found where the capture's own pointers (setup_data, the "
                                   "scratch array, the FDT's map and sub-blobs, System RAM of --iomem) do not "
                                   "lead: the memory is probably given at the wrong base, the verdict cannot be "
                                   "told"),
    "debugfs-luo-freed": (INFO, "in/sub_fdts/LUO points at a page LUO freed"),
    "debugfs-luo-not-serialized": (INFO, "out/sub_fdts/LUO before kernel_kexec has sessions_pa = 0"),
}

#: code families: prefix -> (severity, meaning)
PATTERNS: dict[str, tuple[str, str]] = {
    "model-": (ERROR, "a fault of the target kernel's model booted on the capture (model-double-free, "
                      "model-oops, model-panic, model-preserved-overlaps-scratch, model-map-page-in-scratch, "
                      "model-client-data-not-preserved, model-map-walk-failed, model-walk-amplified, ...)"),
    "subblob-": (WARNING, "a sub-blob that its client's decoder rejects (subblob-<decoder code>)"),
}


def severity_of(code: str) -> str:
    """The severity of ``code`` (KeyError for a code nobody registered)."""
    if code in CODES:
        return CODES[code][0]
    for prefix, (sev, _) in PATTERNS.items():
        if code.startswith(prefix):
            return sev
    raise KeyError(f"unregistered finding code {code!r}")


def known(code: str) -> bool:
    try:
        severity_of(code)
    except KeyError:
        return False
    return True
