"""The package's layering: every module imports, no import circles, no private names across modules.

The import graph is read from the source (``ast``), counting imports inside functions too: a
deferred import hides a circle from Python but not from a reader.
"""

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "treemdp"

#: Private names still imported across modules, in files another change is rewriting (the grid's
#: sweep/lab store, the LLM track); each entry is (importing module, imported module, name).
PENDING_PRIVATE: set = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> list[tuple[str, list[str]]]:
    """(imported treemdp module, names taken from it) for every import statement of a module."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names if alias.name.startswith("treemdp")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("treemdp"):
                continue
            names = [alias.name for alias in node.names]
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            out += [(sub, []) for sub in submodules]
            out.append((target, [n for n in names if f"{target}.{n}" not in MODULES]))
    return out


def graph() -> dict[str, set[str]]:
    """Module -> the treemdp modules it imports (a package's ``__init__`` counts as the package)."""
    edges = {}
    for name in MODULES:
        targets = {target for target, _ in imports(name) if target in MODULES and target != name}
        # "from treemdp.a.b import x" also runs treemdp.a's __init__, but that is not a dependency
        # a reader follows; only the named module counts.
        edges[name] = targets
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
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
                out.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def is_package_init_edge(source: str, target: str) -> bool:
    """A package's ``__init__`` re-exporting its own submodules (and they importing siblings) is
    the package's public face, not a circle between concepts."""
    return source == target.rpartition(".")[0] or target == source.rpartition(".")[0]


def test_every_module_imports():
    for name in MODULES:
        if name.startswith("treemdp.llm") or name.endswith("__main__"):
            continue  # the LLM track needs its extra (transformers); tests/llm import it
        importlib.import_module(name)


def test_no_import_circles():
    edges = graph()
    # a package's __init__ and its own submodules may import each other (public re-exports)
    edges = {v: {w for w in ws if not is_package_init_edge(v, w)} for v, ws in edges.items()}
    assert cycles(edges) == []


def test_the_graph_sees_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_private_names_imported_across_modules():
    found = set()
    for name in MODULES:
        for target, names in imports(name):
            found |= {(name, target, n) for n in names if n.startswith("_") and not n.startswith("__")}
    assert found <= PENDING_PRIVATE, sorted(found - PENDING_PRIVATE)


@pytest.mark.parametrize("name", ["treemdp.specs", "treemdp.settings"])
def test_light_modules_need_no_torch(name):
    """The command line reads specs and settings before anything heavy is imported."""
    imported = {target for target, _ in imports(name)}
    source = MODULES[name].read_text()
    assert "import torch" not in source and imported <= {"treemdp.errors", "treemdp.specs", "treemdp.settings", "treemdp.imports"}
