"""The import layering of models/ and services/, read from the source with ast (nothing is run).

- No import cycle among the modules of models/, nor among its parts (corpus, nets, metrics,
  features, train, export, eval): a cycle works only by the luck of import order. Every import
  counts wherever it stands, a lazy one inside a function too: that is how cycles get hidden.
- models.corpus and models.train reach nothing of models.eval, not even through other modules:
  evaluation sits on top (it may use training code), and training must not depend on the report.
- Nothing under services/ imports models: the installed amcsearch package ships without it.

The helpers are tried on small synthetic graphs and trees first, so that the checks on the real
tree are known to be able to fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
Graph = dict[str, set[str]]


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_base(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a `from X import ...` reads from (relative ones resolved)."""
    if node.level == 0:
        return node.module or ""
    package = module if is_package else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imported_modules(path: Path, module: str, known: set[str] | None = None) -> set[str]:
    """What the file imports: `import a.b` gives a.b; `from a import b` gives a.b when that is a
    module of `known` (a submodule), else a. Without `known`, the modules named in the file."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _import_base(node, module, path.name == "__init__.py")
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if known is not None and submodule in known else base)
    return found


def import_graph(root: Path, package: str) -> Graph:
    """Module -> the modules of the same package it imports."""
    paths = {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    known = set(paths)
    return {module: imported_modules(path, module, known) & known for module, path in paths.items()}


def part_graph(graph: Graph, depth: int = 2) -> Graph:
    """The graph between the parts (the first `depth` name components: models.corpus, ...)."""

    def part(module: str) -> str:
        return ".".join(module.split(".")[:depth])

    parts: Graph = {}
    for module, imports in graph.items():
        parts.setdefault(part(module), set()).update(part(m) for m in imports if part(m) != part(module))
    return parts


def reachable(graph: Graph, start: str) -> set[str]:
    """Every module `start` imports, directly or through others."""
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def cycles(graph: Graph) -> list[list[str]]:
    """The groups of modules that import each other, directly or through others (each group is
    one or more import cycles; a module importing itself is a group of one)."""
    reach = {node: reachable(graph, node) for node in graph}
    groups = {frozenset(m for m in reach[node] if node in reach[m]) for node in graph if node in reach[node]}
    return sorted(sorted(group) for group in groups)


def describe(graph: Graph, group: list[str]) -> str:
    return ", ".join(f"{a} -> {b}" for a in group for b in sorted(graph.get(a, set()) & set(group)))


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_cycles_finds_loops_and_only_them() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": set(), "f": {"f"}}
    assert cycles(graph) == [["a", "b", "c"], ["f"]]
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
    assert describe(graph, ["a", "b", "c"]) == "a -> b, b -> c, c -> a"


def test_part_graph_shows_a_cycle_between_parts_of_acyclic_modules() -> None:
    graph = {"m.a.x": {"m.b.y", "m.a.z"}, "m.b.y": {"m.a.z"}, "m.a.z": set()}
    assert cycles(graph) == []
    assert part_graph(graph) == {"m.a": {"m.b"}, "m.b": {"m.a"}}
    assert cycles(part_graph(graph)) == [["m.a", "m.b"]]


def test_import_graph_sees_lazy_relative_and_submodule_imports(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.low import helper\n",
            "pkg/low.py": "def helper():\n    return 1\n",
            "pkg/one.py": "from pkg import two\n",
            "pkg/two.py": "def later():\n    from . import one\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/three.py": "import pkg.low\nfrom .. import helper\nfrom ..one import x\n",
        },
    )
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg"] == {"pkg.low"}
    assert graph["pkg.one"] == {"pkg.two"}  # a submodule, not the package's __init__
    assert graph["pkg.two"] == {"pkg.one"}  # the lazy, relative import counts
    assert graph["pkg.sub.three"] == {"pkg.low", "pkg", "pkg.one"}
    assert cycles(graph) == [["pkg.one", "pkg.two"]]


@pytest.fixture(scope="module")
def models_graph() -> Graph:
    graph = import_graph(ROOT, "models")
    assert "models.corpus.build" in graph and "models.eval.composed" in graph, "models/ was not read"
    return graph


def test_no_import_cycle_among_models_modules(models_graph: Graph) -> None:
    found = cycles(models_graph)
    assert not found, "import cycles in models/: " + "; ".join(describe(models_graph, g) for g in found)


def test_no_import_cycle_among_models_parts(models_graph: Graph) -> None:
    parts = part_graph(models_graph)
    found = cycles(parts)
    assert not found, "import cycles between the parts of models/: " + "; ".join(describe(parts, g) for g in found)


def test_corpus_and_train_never_reach_eval(models_graph: Graph) -> None:
    lower = [m for m in models_graph if m.startswith(("models.corpus", "models.train"))]
    assert lower
    reached = {m: sorted(e for e in reachable(models_graph, m) if e.startswith("models.eval")) for m in lower}
    offending = {m: e for m, e in reached.items() if e}
    assert not offending, f"corpus/train modules that reach models.eval: {offending}"


def test_services_never_import_models() -> None:
    paths = sorted((ROOT / "services").rglob("*.py"))
    assert any(p.name == "launcher.py" for p in paths), "services/ was not read"
    imports = {str(p.relative_to(ROOT)): imported_modules(p, module_name(p, ROOT / "services")) for p in paths}
    offending = {p: sorted(m for m in found if m.split(".")[0] == "models") for p, found in imports.items()}
    offending = {p: m for p, m in offending.items() if m}
    assert not offending, f"services/ files that import models: {offending}"


def test_services_check_would_catch_an_import_of_models(tmp_path: Path) -> None:
    _write(tmp_path, {"svc/a.py": "def f():\n    from models.corpus import load_or_build_corpus\n"})
    assert imported_modules(tmp_path / "svc/a.py", "svc.a") == {"models.corpus"}
