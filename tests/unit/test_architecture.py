"""The house's rules, checked on the source: no import cycle, no private name used outside the
module that defines it. (Layers are checked by import-linter, contracts in pyproject.toml.)"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "callbox"


def _module_cycles() -> list[list[str]]:
    """Strongly connected groups of modules (type-only imports included)."""
    graph = grimp.build_graph("callbox", exclude_type_checking_imports=False)
    modules = sorted(graph.modules)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan, recursion depth = longest import chain
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in modules:
        if module not in index:
            visit(module)
    return groups


def test_no_import_cycles() -> None:
    assert _module_cycles() == []


# namedtuple's public methods carry an underscore so as not to clash with field names.
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make"}


def _is_private(name: str) -> bool:
    dunder = name.startswith("__") and name.endswith("__")
    return name.startswith("_") and not dunder and name not in NAMEDTUPLE_API


def _defined_names(tree: ast.Module) -> set[str]:
    """Every name this module defines: functions, classes, assignments, attributes it sets."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return names


def _private_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    own = _defined_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found += [f"{path.name}:{node.lineno} imports {alias.name}"
                      for alias in node.names if _is_private(alias.name)]
        elif (isinstance(node, ast.Attribute) and _is_private(node.attr)
              and node.attr not in own):
            found.append(f"{path.name}:{node.lineno} uses .{node.attr}")
    return found


def test_no_private_name_used_outside_its_module() -> None:
    paths = sorted(SRC.rglob("*.py")) + sorted((ROOT / "tests").rglob("*.py"))
    uses = [use for path in paths for use in _private_uses(path)]
    assert uses == []


def test_the_checks_catch_what_they_look_for(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("from x import _hidden\nimport y\ny.thing._inner()\n"
                      "class A:\n    def _mine(self): return self._mine\n")
    assert _private_uses(sample) == ["sample.py:1 imports _hidden", "sample.py:3 uses ._inner"]
