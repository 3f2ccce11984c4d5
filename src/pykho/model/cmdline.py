"""The KHO boot options as a kernel of each generation parses them.

``kho=`` is a ``kstrtobool``; ``kho_scratch=`` is either a percentage
(scale of the kernel's own early reservations) or three memparse sizes
``lowmem,global,pernode`` whose grammar differs by generation
(:class:`~pykho.profiles.ScratchGrammar`).
"""

from __future__ import annotations

from ..abi.cmdline import kstrtobool, memparse, param_values, params
from ..profiles import Profile, ScratchGrammar

__all__ = ["kstrtobool", "memparse", "params", "param_values", "parse_kho_scratch", "ScratchConfig"]

#: ("scale", percent) or ("sizes", lowmem, global, pernode)
ScratchConfig = tuple


def parse_kho_scratch(profile: Profile, arg: str) -> tuple[ScratchConfig | None, list[str]]:
    """``kho_parse_scratch_size``: the configuration (None for -EINVAL) and
    the line it prints."""
    if not arg:
        return None, []
    if arg.endswith("%"):
        if len(arg) > 11 or not arg[:-1].isdigit():
            return None, []
        n = int(arg[:-1])
        if n > 0xFFFFFFFF:
            return None, []
        return ("scale", n), [f"KHO: scratch scale is {n}%"]
    sizes, rest = [], arg
    for i in range(3):
        if i:
            if not rest.startswith(","):
                return None, []
            rest = rest[1:]
        v, r = memparse(rest)
        if r == rest:
            return None, []
        sizes.append(v)
        rest = r
    if profile.scratch_grammar is ScratchGrammar.A0:
        if not all(sizes):
            return None, []
    elif not sum(sizes) or rest:
        return None, []
    line = (f"KHO: scratch areas: lowmem: {sizes[0] >> 20}MiB global: {sizes[1] >> 20}MiB "
            f"pernode: {sizes[2] >> 20}MiB")
    return ("sizes", *sizes), [line]
