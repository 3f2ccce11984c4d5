"""The kernel command line as the kernel's own parsers read it.

``memparse`` and ``kstrtobool`` behave as lib/cmdline.c and lib/kstrtox.c
do (the prefixes they accept, what they leave unconsumed); :func:`params`
splits a command line into ``name=value`` pairs, keeping every repeat.
"""

from __future__ import annotations

__all__ = ["kstrtobool", "memparse", "params", "param_values"]


def kstrtobool(s: str) -> bool | None:
    """``kstrtobool``: y/t/1/on true, n/f/0/off false (first letters
    decide), None when unrecognised."""
    if not s:
        return None
    c = s[0].lower()
    if c in "yt1":
        return True
    if c in "nf0":
        return False
    if s.lower().startswith("on"):
        return True
    if s.lower().startswith("of"):
        return False
    return None


def memparse(s: str) -> tuple[int, str]:
    """``memparse``: a number (base 0: 0x hex, leading 0 octal) with an
    optional K/M/G/T/P/E suffix; returns (value, the rest of ``s``)."""
    i = 0
    base = 10
    if s[:2].lower() == "0x" and len(s) > 2 and s[2] in "0123456789abcdefABCDEF":
        base, i = 16, 2
    elif s[:1] == "0":
        base = 8
    digits = "0123456789abcdef"[:base]
    j = i
    while j < len(s) and s[j].lower() in digits:
        j += 1
    if j == i and not (base == 8 and i == 0 and s[:1] == "0"):
        return 0, s
    val = int(s[i:j], base) if j > i else 0
    rest = s[j:]
    if rest and rest[0].upper() in "KMGTPE":
        val <<= 10 * ("KMGTPE".index(rest[0].upper()) + 1)
        rest = rest[1:]
    return val, rest


def params(cmdline: str) -> list[tuple[str, str]]:
    """Every ``name=value`` (or bare ``name``, value "") in order."""
    out = []
    for a in cmdline.split():
        name, _, value = a.partition("=")
        out.append((name, value))
    return out


def param_values(cmdline: str, name: str) -> list[str]:
    """The values of every occurrence of ``name=`` in order."""
    return [v for n, v in params(cmdline) if n == name]
