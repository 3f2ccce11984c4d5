"""The KHO ABI: bytes <-> values, byte-exact, pure.

The codecs read (and the encoders write) physical memory only through the
protocols of :mod:`pykho.abi.mem`; nothing here imports ``pykho.memory``,
``pykho.profiles`` or the model.
"""

__all__ = ["bits", "chunks", "cmdline", "fdt", "mem", "radix", "root", "structs"]
