"""The fuzz families, one module per decoder family, and their registry.

:data:`FAMILIES` maps a family name to its :class:`~.base.Family`; its order
is the order the campaign runs and reports them.  Add a family by writing a
module here and listing an instance below.
"""

from __future__ import annotations

from .base import Family, Lie, count_leaves
from .blocks import BlocksFamily
from .chosen import ChosenFamily
from .chunks import ChunksFamily
from .debugfs import DebugfsTextFamily
from .fdt import FdtFamily
from .kexec_metadata import KexecMetadataFamily
from .kho_test import KhoTestFamily
from .luo import LuoFamily
from .memblock import MemblockFamily
from .memfd import MemfdFamily
from .memsources import MemElfFamily, MemRawFamily, MemSparseFamily
from .radix import RadixFamily
from .root import RootFamily
from .scratch import ScratchFamily
from .setup_data import SetupDataFamily
from .vmalloc import VmallocFamily

__all__ = ["FAMILIES", "Family", "Lie", "count_leaves"]

#: name -> family, in campaign order
FAMILIES: dict[str, Family] = {f.name: f for f in (
    FdtFamily(), RootFamily(), RadixFamily(), ChunksFamily(), ScratchFamily(), SetupDataFamily(),
    ChosenFamily(), VmallocFamily(), BlocksFamily(), KexecMetadataFamily(), LuoFamily(), MemfdFamily(),
    MemblockFamily(), KhoTestFamily(), DebugfsTextFamily(), MemSparseFamily(), MemRawFamily(),
    MemElfFamily())}
