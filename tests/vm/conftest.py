"""Fixtures for the real-kernel tests (pytest marker ``vm``).

These tests boot the vmtest kernel under QEMU (TCG) and drive real KHO kexecs
through the ``vmtest`` package (importable: pyproject.toml puts the repository
root on pytest's ``pythonpath``).  What they need: root, qemu-system-x86_64 and
a kernel build (``sudo vmtest/setup.sh && vmtest/build.sh``).  When something is missing
they are skipped with a message naming it -- except under CI=true, where a
missing prerequisite is a failure: CI must really run them.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import vmtest as vm


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "vm: boots a real Linux kernel under QEMU (needs root, qemu-system-x86, a kernel build)")
    config.addinivalue_line(
        "markers", "multistop: stops the guest more than once per QEMU run (3-boot chain, entry injection); "
                   "the runner survives a gdbstub link reset between stops (seen with QEMU 7.2)")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def skip_or_fail(msg: str):
    """Skip locally; fail under CI=true (the vm stage must not silently skip there)."""
    if in_ci():
        pytest.fail(f"CI=true but the vm tests cannot run: {msg}", pytrace=False)
    pytest.skip(msg)


def vm_missing() -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("not root (the vm tests run QEMU as root; CI runs as root)")
    if not vm.qemu_binary():
        missing.append("no qemu-system-x86_64 (run: sudo vmtest/setup.sh)")
    if vm.find_build() is None:
        missing.append("no kernel build (run: sudo vmtest/setup.sh && vmtest/build.sh)")
    return missing


@pytest.fixture(scope="session")
def vm_build():
    missing = vm_missing()
    if missing:
        skip_or_fail("; ".join(missing))
    return vm.find_build()


# A TCG guest hung once in ~30 runs during development, after a KHO kexec (it
# stopped printing in the initcalls).  A chain that hangs is booted once more;
# out/stalled-attempt-1/ keeps the evidence (serial log, hang-registers.txt).
def _run(tmp_path_factory, name: str, opts) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp(name)
    summary = vm.run_chain(out, opts)
    keep = os.environ.get("VMTEST_KEEP_CAPTURES")
    if keep:  # copy the capture somewhere persistent for inspection
        dest = Path(keep) / name
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(out, dest)
    return out, summary


@pytest.fixture(scope="session")
def roundtrip(vm_build, tmp_path_factory):
    """Boot 1 preserves (test_kho, reserve_mem, LUO memfd), kexec, boot 2 restores."""
    return _run(tmp_path_factory, "roundtrip", vm.Options(boots=2, stall_retries=1))


@pytest.fixture(scope="session")
def chain3(vm_build, tmp_path_factory):
    """Three kernels: 1 -> 2 -> 3 (kexec-metadata count 1 then 2)."""
    return _run(tmp_path_factory, "chain3", vm.Options(boots=3, stall_retries=1))


# --------------------------------------------------------------------- pykho

def kho_cli() -> list[str] | None:
    """The pykho command line, or None when pykho is not importable."""
    if importlib.util.find_spec("pykho") is None or importlib.util.find_spec("pykho.cli") is None:
        return None
    return [sys.executable, "-c", "import sys; from pykho.cli import main; sys.exit(main())"]


@pytest.fixture(scope="session")
def kho():
    cli = kho_cli()
    if cli is None:
        skip_or_fail("pykho is not importable (pip install -e .); pykho-side checks need `kho`")

    def call(*args: str, check: bool = True) -> dict:
        r = subprocess.run(cli + list(args), capture_output=True, text=True, timeout=600)
        if check and r.returncode not in (0, 1):
            raise AssertionError(f"kho {' '.join(args)} exited {r.returncode}:\n{r.stderr[-3000:]}")
        try:
            return json.loads(r.stdout)
        except json.JSONDecodeError:
            raise AssertionError(f"kho {' '.join(args)} did not print JSON (rc {r.returncode}):\n"
                                 f"stdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-2000:]}")
    return call
