"""Imports inside kdjax/ run one way (docs/architecture.md).

Read with `ast`, not by importing: every import statement counts, at module level, inside a
function or under `if TYPE_CHECKING:`, because a function-level import is a dependency all the
same (it only runs later). Two rules:

- no import cycle between kdjax modules. Excepted: the top-level package's lazy public API
  (`kdjax.from_hf` / `kdjax.to_hf` import `kdjax.hf` / `kdjax.export_core` inside the call) and
  `from kdjax import __version__`;
- no private name (`_x`, not dunder) taken from another kdjax module, by `from m import _x` or
  as `m._x` on an imported module. What two modules share belongs in a lower module both import.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kdjax"


def module_name(path: Path) -> str:
    """`kdjax/data/tasks/__init__.py` -> `kdjax.data.tasks`; `kdjax/hf.py` -> `kdjax.hf`."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _absolute(node: ast.ImportFrom, importer: str) -> str:
    """The module a `from ... import` names, relative levels resolved against `importer`."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base[: len(base) - node.level + (1 if _is_package(importer) else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _in_function(tree: ast.Module) -> set[int]:
    """ids of the import nodes that sit inside a function body."""
    inside: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside.update(id(n) for n in ast.walk(fn)
                          if isinstance(n, (ast.Import, ast.ImportFrom)))
    return inside


def _dotted(node: ast.expr) -> str | None:
    """`a.b.c` of a Name / Attribute chain, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return f"{head}.{node.attr}" if head else None
    return None


def scan(name: str, text: str | None = None) -> tuple[set[str], list[str]]:
    """(kdjax modules `name` imports, "where: what" for each private name it takes); `text`
    stands in for the module's source (the checker's own tests)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8") if text is None else text, str(path))
    lazy = _in_function(tree) if name == "kdjax" else set()
    deps: set[str] = set()
    private: list[str] = []
    bound: dict[str, str] = {}  # local name -> the kdjax module it is bound to
    where = path.relative_to(ROOT)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    deps.add(alias.name)
                    local = alias.asname or alias.name.split(".")[0]  # `import a.b` binds a
                    bound[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom) and id(node) not in lazy:
            source = _absolute(node, name)
            if source not in MODULES:
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in MODULES:  # `from kdjax.data import tasks`: the submodule itself
                    deps.add(sub)
                    bound[alias.asname or alias.name] = sub
                    continue
                if not (source == "kdjax" and alias.name == "__version__"):
                    deps.add(source)
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    private.append(f"{where}:{node.lineno}: from {source} import {alias.name}")
    for node in ast.walk(tree):  # `module._x` on a bound kdjax module (`kdjax.hf._x` too)
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and \
                not node.attr.startswith("__"):
            head, _, rest = (_dotted(node.value) or "").partition(".")
            module = bound.get(head, "") + (f".{rest}" if rest else "")
            if module in MODULES and module != name:
                private.append(f"{where}:{node.lineno}: {module}.{node.attr}")
    deps.discard(name)
    return deps, private


GRAPH = {name: scan(name)[0] for name in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_scanner_sees_the_tree():
    assert "kdjax.data.tasks" in MODULES and "kdjax.export" in MODULES
    # a function-level import is an edge: kdjax.cli imports its commands inside functions
    assert any(d.startswith("kdjax.train") for d in GRAPH["kdjax.cli"])
    # the package's lazy API is not: kdjax.from_hf imports kdjax.hf inside the call
    assert "kdjax.hf" not in GRAPH["kdjax"]
    # relative imports resolve (the HF remote code ships with them)
    assert ("kdjax.hf_remote.configuration_kdjax_electra"
            in GRAPH["kdjax.hf_remote.modeling_kdjax_electra"])


def test_private_names_are_found_however_imported():
    deps, private = scan("kdjax.eval.select", (
        "from kdjax.eval.evaluate import _error_text, attempt\n"
        "import kdjax.hf\n"
        "from kdjax.data import tasks as t\n"
        "def f():\n"
        "    from kdjax.export_core import _listing\n"
        "    return kdjax.hf._prefix, t._ALIASES, t.__name__\n"))
    assert {"kdjax.eval.evaluate", "kdjax.hf", "kdjax.data.tasks", "kdjax.export_core"} <= deps
    assert [p.split(": ", 1)[1] for p in private] == [
        "from kdjax.eval.evaluate import _error_text", "from kdjax.export_core import _listing",
        "kdjax.hf._prefix", "kdjax.data.tasks._ALIASES"]


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    found = cycles(GRAPH)
    assert not found, "import cycles between kdjax modules:\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_no_private_names_across_modules():
    private = [line for name in MODULES for line in scan(name)[1]]
    assert not private, "private names taken from another module:\n" + "\n".join(private)
