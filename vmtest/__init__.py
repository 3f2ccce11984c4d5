"""vmtest - boot the vmtest kernel under QEMU (TCG) and drive real KHO kexecs.

Subcommands of ``python -m vmtest`` (from the repository root; ``run`` is the default):

  run   boot a chain of N kernels (each stage kexecs the next one with KHO).
        The QEMU gdbstub stops the guest at ``machine_kexec`` before each jump;
        the runner saves guest RAM through QMP ``pmemsave``, keeps only the pages
        a test needs (a sparse RAM directory), optionally writes given bytes into
        guest memory (fault injection for the differential tests) and lets the
        jump happen.  Writes into kexec segments (setup_data, scratch array) are
        deferred to the next kernel's x86_64_start_kernel, after purgatory's
        sha256 check (see Write).  The serial log is split into one folder per stage.
  split SERIAL OUT      split a serial log (ours or the oracle's) into stage folders
  scan  RAMFILE STAGEDIR OUT [--stage N]
                        analyse a full RAM dump taken at machine_kexec (setup_data,
                        root FDT, radix tree, scratch array copies) and write the
                        sparse RAM directory + locate-stageN.json

Capture layout (``--out DIR``)::

  qemu-cmdline.txt serial.log runner.log summary.json
  stageN/cmdline.txt dmesg.txt dmesg_kho.txt console-boot.log console-kexec.log ...
  stageN/debugfs/kho/{in,out}/...          files exactly as read from debugfs
  ram/ram-stageN.sparse/MANIFEST.tsv + <phys:012x>.bin   (RAM at machine_kexec of boot N)
  ram/locate-stageN.json                   what the runner found in that RAM
  ram/ram-stageN-out-fdt-full.dtb          the complete outgoing root FDT of boot N
  ram/qmp-stageN.txt                       registers at the breakpoint
  ram/inject-stageN.json                   bytes written (if any), with their phase

Modules: :mod:`~vmtest.build` (the cached kernel build), :mod:`~vmtest.qmp`,
:mod:`~vmtest.gdb` (gdbstub client), :mod:`~vmtest.serial` (serial log
splitting, dmesg helpers), :mod:`~vmtest.capture` (RAM dump, analysis, sparse
directory), :mod:`~vmtest.inject` (writes and their phases),
:mod:`~vmtest.runner` (:func:`run_chain`).  The package re-exports the names
tests use.  Only the Python standard library is used.
"""
from __future__ import annotations

from .build import Build, find_build, kernel_table, read_env
from .capture import (
           analyse_ram,
           parse_fdt,
           read_sparse,
           scan_ram_file,
           select_ranges,
           walk_radix,
)
from .inject import StopContext, Write, command_hook, parse_inject_arg, resolve_target
from .runner import BASE_CMDLINE, Options, chain_initramfs, qemu_binary, run_chain
from .serial import (
           KHO_LINE,
           MEMBLOCK_KHO,
           dmesg_lines,
           kho_reserved,
           split_serial,
           strip_ts,
)

__all__ = ["BASE_CMDLINE", "KHO_LINE", "MEMBLOCK_KHO", "Build", "Options", "StopContext", "Write",
           "analyse_ram", "chain_initramfs", "command_hook", "dmesg_lines", "find_build", "kernel_table",
           "kho_reserved", "parse_fdt",
           "parse_inject_arg", "qemu_binary", "read_env", "read_sparse", "resolve_target", "run_chain",
           "scan_ram_file", "select_ranges", "split_serial", "strip_ts", "walk_radix"]
