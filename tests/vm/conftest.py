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
    config.addinivalue_line(
        "markers", "newer_kernel: fails when Debian carries a linux-source-7.x newer than any kernel pykho has a "
                   "profile for; only run when selected (-m newer_kernel), never in the default selection")
    config.addinivalue_line(
        "markers", "random_campaign: fresh random differential cases seeded by the commit (CI runs them on every "
                   "commit; an undocumented disagreement with the real kernel fails the build)")


#: markers whose tests run only when the -m expression names them
OPT_IN = ("newer_kernel",)


def pytest_collection_modifyitems(config, items):
    """Tests marked with an OPT_IN marker run only when -m names the marker."""
    expr = config.getoption("markexpr", "") or ""
    drop = [m for m in OPT_IN if m not in expr]
    keep = [it for it in items if not any(it.get_closest_marker(m) for m in drop)]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[it for it in items if it not in keep])
        items[:] = keep


def pytest_report_header(config):
    """The announcement: a linux-source-7.x newer than every profile (setup.sh's list)."""
    try:
        from vmtest.build import newer_sources, profiled_series
        new = newer_sources()
    except Exception:  # noqa: BLE001 - a header must never break a run
        return None
    if not new:
        return None
    top = profiled_series()
    return [f"vmtest WARNING: {r['package']} {r['version']} ({r['suite']}) is newer than any kernel pykho has a "
            f"profile for (newest {top[0]}.{top[1]})" for r in new]


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
def _run(tmp_path_factory, name: str, opts, build=None) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp(name)
    summary = vm.run_chain(out, opts, build)
    keep = os.environ.get("VMTEST_KEEP_CAPTURES")
    if keep:  # copy the capture somewhere persistent for inspection
        dest = Path(keep) / name
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(out, dest)
    return out, summary


def kernel_missing(name: str) -> str | None:
    """Why kernel ``name`` of build.sh's table cannot boot, or None."""
    import re
    table = vm.kernel_table()
    rows = {r["name"]: r for r in table} | {r["series"]: r for r in table}
    # "7.3.4" when setup.sh found no 7.3 source: the table only knows its series
    row = rows.get(name) or rows.get(re.sub(r"^(\d+\.\d+)\.\d+", r"\1", name))
    if row is None:
        return f"build.sh knows no kernel {name!r}"
    if row["state"] == "no-source":
        return (f"no source for kernel {name} (vmtest/setup.sh found no package for it: "
                f"apt-cache policy linux-source-{row['series'].split('-')[0]})")
    if vm.find_build(kernel=name) is None:
        return f"kernel {name} is not built (run: vmtest/build.sh --kernel {name})"
    return None


@pytest.fixture(scope="session")
def vm_kernel(vm_build):
    """``vm_kernel(name)``: the Build of one kernel of build.sh's table
    (``7.2.13``, ``7.2.13-unfixed``, ``7.3.4``, or their series names), or a
    skip (a failure under CI=true) naming what is missing."""
    cache: dict[str, vm.Build] = {}

    def get(name: str) -> vm.Build:
        if name not in cache:
            why = kernel_missing(name)
            if why:
                skip_or_fail(why)
            b = vm.find_build(kernel=name)
            assert b is not None
            cache[name] = b
        return cache[name]
    return get


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
        except json.JSONDecodeError as e:
            raise AssertionError(f"kho {' '.join(args)} did not print JSON (rc {r.returncode}):\n"
                                 f"stdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-2000:]}") from e
    return call
