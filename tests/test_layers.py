"""The import graph of src/pykho follows the layer table of docs/ARCHITECTURE.md.

Every module is parsed with :mod:`ast`; every import statement counts, wherever it
is (module level, inside a function, under ``if TYPE_CHECKING:``).  Relative and
absolute imports are resolved to pykho modules.  An edge fails when it goes to a
higher layer, sideways to another unit of the same layer, or into the ``pykho``
facade; a module outside the table fails; any import cycle between modules fails.

The table below is data; ``test_architecture_doc_lists_the_same_units`` keeps it
in step with the markdown table.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"

FACADE = "pykho"  # src/pykho/__init__.py: the public API; may import anything but the CLI

# (layer, unit, module prefixes).  A prefix matches the module itself and its submodules.
LAYERS: list[tuple[int, str, tuple[str, ...]]] = [
    (0, "errors", ("pykho.errors",)),
    (0, "findings", ("pykho.findings",)),
    (0, "_version", ("pykho._version",)),
    (1, "abi", ("pykho.abi",)),
    (2, "memory", ("pykho.memory",)),
    (3, "profiles", ("pykho.profiles",)),
    (4, "clients", ("pykho.clients",)),
    (5, "handover", ("pykho.handover",)),
    (6, "model", ("pykho.model",)),
    (7, "reports.inspect", ("pykho.reports.inspect",)),
    (7, "reports.validate", ("pykho.reports.validate",)),
    (7, "reports.mapplot", ("pykho.reports.mapplot",)),
    (7, "fuzz", ("pykho.fuzz",)),
    (8, "cli", ("pykho.cli",)),
]

# Helper units shared by the units of one package on the same layer: the package's
# __init__ and its private modules (reports/_common.py, ...).  The package's units may
# import them; they themselves obey the ordinary rules (so they may not import those units).
SHARED: dict[str, tuple[int, str]] = {"pykho.reports": (7, "reports")}

CLI_UNIT = "cli"


@dataclass(frozen=True)
class Unit:
    layer: int
    name: str
    shared_by: str | None = None  # package whose units may import this shared helper unit


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    file: str
    line: int


@dataclass(frozen=True)
class Violation:
    kind: str  # upward | sideways | facade | unlisted | missing | cycle
    where: str  # file:line
    text: str

    def __str__(self) -> str:
        return f"{self.where}: {self.kind}: {self.text}"


def module_files(src: Path, package: str = "pykho") -> dict[str, Path]:
    """Module name -> file, for every .py under src/<package>."""
    out = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(mod: str, path: Path, modules: dict[str, Path], src: Path) -> tuple[list[Edge], list[Violation]]:
    """Edges from mod to pykho modules; imports of pykho names that do not exist."""
    rel = str(path.relative_to(src.parent)) if src.parent in path.parents else str(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    edges, missing = [], []

    def add(target: str, line: int) -> None:
        if target in modules:
            edges.append(Edge(mod, target, rel, line))
        else:
            missing.append(Violation("missing", f"{rel}:{line}", f"{mod} imports {target}, which is not a module"))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "pykho" or alias.name.startswith("pykho."):
                    add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level - 1 > len(base_parts) - 1:
                    missing.append(Violation("missing", f"{rel}:{node.lineno}", "relative import beyond the package"))
                    continue
                base = ".".join(base_parts[: len(base_parts) - (node.level - 1)])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
                if not (target == "pykho" or target.startswith("pykho.")):
                    continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if alias.name != "*" and sub in modules:
                    edges.append(Edge(mod, sub, rel, node.lineno))
                else:
                    add(target, node.lineno)
    return sorted(set(edges), key=lambda e: (e.line, e.dst)), missing


def unit_of(mod: str) -> Unit | None:
    best: tuple[int, Unit] | None = None
    for layer, name, prefixes in LAYERS:
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and (best is None or len(p) > best[0]):
                best = (len(p), Unit(layer, name))
    for pkg, (layer, name) in SHARED.items():
        last = mod.rpartition(".")[2]
        if mod == pkg or (mod.rpartition(".")[0] == pkg and last.startswith("_")):
            best = (len(mod), Unit(layer, name, shared_by=pkg))
    return best[1] if best else None


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with a cycle (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1 or v in graph.get(v, ()):
                        out.append(sorted(comp))
    return sorted(out)


def check(src: Path) -> list[Violation]:
    """Every violation of the layer table under src/pykho."""
    modules = module_files(src)
    found: list[Violation] = []
    edges: list[Edge] = []
    for mod, path in modules.items():
        e, missing = imports_of(mod, path, modules, src)
        edges += e
        found += missing
        if mod != FACADE and unit_of(mod) is None:
            rel = path.relative_to(src.parent)
            found.append(Violation("unlisted", f"{rel}:1", f"{mod} is in no unit of the layer table"))
    for e in edges:
        where = f"{e.file}:{e.line}"
        if e.src == e.dst:
            continue
        if e.src == FACADE:
            dst = unit_of(e.dst)
            if dst is not None and dst.name == CLI_UNIT:
                found.append(Violation("facade", where, f"the pykho facade imports the CLI ({e.dst})"))
            continue
        if e.dst == FACADE:
            found.append(Violation("facade", where, f"{e.src} imports the pykho facade (use pykho._version)"))
            continue
        s, d = unit_of(e.src), unit_of(e.dst)
        if s is None or d is None or s.name == d.name:
            continue
        if d.layer > s.layer:
            found.append(Violation("upward", where, f"{e.src} (layer {s.layer} {s.name}) imports {e.dst} "
                                                    f"(layer {d.layer} {d.name})"))
        elif d.layer == s.layer:
            if d.shared_by is not None and e.src.startswith(d.shared_by + "."):
                continue
            found.append(Violation("sideways", where, f"{e.src} ({s.name}) imports {e.dst} ({d.name}), "
                                                      f"both layer {s.layer}"))
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for e in edges:
        graph[e.src].add(e.dst)
    for comp in _cycles(graph):
        members = set(comp)
        inner = [e for e in edges if e.src in members and e.dst in members]
        found.append(Violation("cycle", inner[0].file + f":{inner[0].line}" if inner else "?",
                               "import cycle " + " <-> ".join(comp) + "; edges: " +
                               ", ".join(f"{e.src} -> {e.dst} ({e.file}:{e.line})" for e in inner)))
    return sorted(found, key=lambda v: (v.where.rpartition(":")[0], int(v.where.rpartition(":")[2] or 0), v.kind))


def test_import_graph_follows_the_layer_table():
    found = check(SRC)
    for v in found:
        print(v)
    assert not found, f"{len(found)} layer violations:\n" + "\n".join(map(str, found))


def doc_units(text: str) -> set[tuple[int, str]]:
    """(layer, unit) pairs of the markdown layer table."""
    out = set()
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].isdigit():
            continue
        layer = int(cells[0])
        for m in re.finditer(r"`(?P<name>[^`]+)`(?:\s*\((?P<subs>[^)]*)\))?", cells[1]):
            name = m["name"].removesuffix("/").removesuffix(".py")
            subs = re.findall(r"`([^`]+)`", m["subs"] or "")
            if subs:
                out |= {(layer, f"{name}.{s.removesuffix('.py')}") for s in subs}
            else:
                out.add((layer, name))
    return out


def test_architecture_doc_lists_the_same_units():
    documented = doc_units(ARCHITECTURE.read_text())
    assert len(documented) >= 10, documented  # the parser found the table
    assert documented == {(layer, name) for layer, name, _ in LAYERS}


def test_doc_parser_reads_package_units():
    text = "| layer | unit | x |\n|---|---|---|\n| 0 | `a.py`, `b.py` | - |\n| 7 | `r/` (`i`, `v`), `f/` | - |\n"
    assert doc_units(text) == {(0, "a"), (0, "b"), (7, "r.i"), (7, "r.v"), (7, "f")}


def _write(root: Path, files: dict[str, str]) -> Path:
    src = root / "src"
    for name, body in files.items():
        p = src / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(body)
    return src


CLEAN = {
    "pykho/__init__.py": "from ._version import __version__\nfrom .reports.validate import run\n",
    "pykho/_version.py": "__version__ = '0'\n",
    "pykho/errors.py": "",
    "pykho/abi/__init__.py": "from . import fdt\n",
    "pykho/abi/fdt.py": "from ..errors import *\n",
    "pykho/memory/__init__.py": "from pykho.abi.fdt import x\n",
    "pykho/model/__init__.py": "",
    "pykho/model/a.py": "import pykho.memory\n",
    "pykho/model/b.py": "def f():\n    from . import a\n",
    "pykho/reports/__init__.py": "",
    "pykho/reports/_common.py": "from ..model import b\n",
    "pykho/reports/inspect.py": "from ._common import h\n",
    "pykho/reports/validate.py": "from . import _common\nfrom pykho.reports import _common\n",
    "pykho/cli/__init__.py": "from pykho._version import __version__\nfrom ..reports import inspect\n",
}


def test_checker_accepts_a_clean_fake_package(tmp_path):
    assert check(_write(tmp_path, CLEAN)) == []


def test_checker_finds_exactly_the_planted_violations(tmp_path):
    files = dict(CLEAN)
    files["pykho/abi/extra.py"] = "def g():\n    from ..model import a\n"             # upward, inside a function
    files["pykho/reports/inspect.py"] += "import pykho.reports.validate\n"            # sideways
    files["pykho/model/a.py"] += "from .b import f\n"                                # model.a <-> model.b
    found = check(_write(tmp_path, files))
    got = sorted((v.kind, v.where) for v in found)
    assert got == [("cycle", "src/pykho/model/a.py:2"),
                   ("sideways", "src/pykho/reports/inspect.py:2"),
                   ("upward", "src/pykho/abi/extra.py:2")], "\n".join(map(str, found))
    cycle = next(v for v in found if v.kind == "cycle")
    assert "pykho.model.a <-> pykho.model.b" in cycle.text
    assert "src/pykho/model/b.py:2" in cycle.text


def test_checker_finds_facade_unlisted_and_missing(tmp_path):
    files = dict(CLEAN)
    files["pykho/handover.py"] = "from . import errors\nfrom . import __version__\n"  # the facade (line 2)
    files["pykho/stray.py"] = ""                                               # unlisted
    files["pykho/__init__.py"] += "from .cli import main\n"                    # facade imports the CLI
    files["pykho/memory/__init__.py"] = "from ..abi.gone import x\n"           # no such module
    found = check(_write(tmp_path, files))
    got = sorted((v.kind, v.where) for v in found)
    assert got == [("facade", "src/pykho/__init__.py:3"),
                   ("facade", "src/pykho/handover.py:2"),
                   ("missing", "src/pykho/memory/__init__.py:1"),
                   ("unlisted", "src/pykho/stray.py:1")], "\n".join(map(str, found))
