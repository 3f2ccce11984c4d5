"""Packaging metadata: one version, an SPDX licence, the files a release ships."""

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pykho
from pykho import _version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version_is_the_installed_metadata_version():
    assert pykho.__version__ == _version.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", pykho.__version__)
    # an editable install records the version when it is installed: reinstall after a bump
    assert importlib.metadata.version("pykho") == pykho.__version__


def test_pyproject_has_no_literal_version():
    project = PYPROJECT["project"]
    assert "version" not in project
    assert "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "pykho._version.__version__"}


def test_license_is_an_spdx_string_and_the_file_exists():
    project = PYPROJECT["project"]
    assert isinstance(project["license"], str) and re.fullmatch(r"[A-Za-z0-9.+-]+", project["license"])
    assert project["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "the pykho authors" in text
    assert project["license-files"] == ["LICENSE"]


def test_py_typed_is_shipped():
    assert (ROOT / "src" / "pykho" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["pykho"]
