"""The import graph of src/dinov3kit: no cycles, and lower layers never import higher ones.

Imports are read with `ast` (module level and inside functions alike: an import inside a function is
still an edge when it runs); `if TYPE_CHECKING:` blocks are left out. Importing `a.b.c` also runs the
`__init__` of `a.b`, so that counts as an edge too, except from inside `a.b` (a package is initialised
before its modules) and to the root package (the facade above everything).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dinov3kit"
#: The package's own `__init__` is the public facade above everything: an edge to it is not counted.
ROOT = "dinov3kit"

#: Modules (or packages) that must not import the ones listed: data flows files → weights → models;
#: pixels → processor → model → tools.
FORBIDDEN = {
    "dinov3kit.configs": ("dinov3kit.weights", "dinov3kit.models", "dinov3kit.pixels", "dinov3kit.auto", "dinov3kit.tools"),
    "dinov3kit.variants": ("dinov3kit.configs", "dinov3kit.weights", "dinov3kit.models"),
    "dinov3kit.source": ("dinov3kit.configs", "dinov3kit.weights", "dinov3kit.models", "dinov3kit.pixels"),
    "dinov3kit.pixels": ("dinov3kit.models", "dinov3kit.auto", "dinov3kit.pipeline", "dinov3kit.tools"),
    "dinov3kit.weights": ("dinov3kit.models", "dinov3kit.quantize", "dinov3kit.auto", "dinov3kit.pixels", "dinov3kit.tools"),
    "dinov3kit.models": ("dinov3kit.pixels", "dinov3kit.auto", "dinov3kit.pipeline", "dinov3kit.tools", "dinov3kit.serve"),
    "dinov3kit.tools": ("dinov3kit.cli", "dinov3kit.serve"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The dinov3kit modules that `path` imports (resolved relative imports, parent packages included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            for child in ast.iter_child_nodes(node):
                visit(child)
            return
        for target in targets:
            parts = target.split(".")
            for end in range(1, len(parts) + 1):
                candidate = ".".join(parts[:end])
                if candidate in modules and candidate != ROOT and not _inside(name, candidate):
                    found.add(candidate)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imported_modules(path, modules) for path in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def _inside(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_checker_finds_cycles_and_relative_imports(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    graph = import_graph()
    assert "dinov3kit.weights.files" in graph["dinov3kit.weights.loading"]
    assert "dinov3kit.weights" in graph["dinov3kit.auto"]  # importing weights.loading runs weights/__init__


def test_no_import_cycles():
    graph = import_graph()
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph) or [])


def _owner(module: str) -> str | None:
    return next((prefix for prefix in sorted(FORBIDDEN, key=len, reverse=True) if _inside(module, prefix)), None)


def test_the_rules_name_existing_modules():
    modules = set(import_graph())
    named = {*FORBIDDEN, *(higher for highers in FORBIDDEN.values() for higher in highers)}
    assert not sorted(name for name in named if name not in modules)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_higher_ones(layer):
    graph = import_graph()
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if _owner(module) == layer
        for target in targets
        if any(_inside(target, higher) for higher in FORBIDDEN[layer])
    )
    assert not wrong, wrong
