"""Import boundaries: the RELAY hub and the HTTP handlers get `Services`, never the platform;
the agents SDK does not depend on the platform. Every import counts, type-only ones too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def modules_under(package: str) -> list[Path]:
    files = sorted((SRC / package.replace(".", "/")).rglob("*.py"))
    assert files, package
    return files


@pytest.mark.parametrize(("package", "forbidden"), [
    ("callbox.server.relay", "callbox.server.app"),
    ("callbox.server.http", "callbox.server.app"),
    ("callbox.agents", "callbox.server"),
])
def test_a_package_does_not_import_what_is_above_it(package: str, forbidden: str) -> None:
    for path in modules_under(package):
        bad = {name for name in imported_modules(path)
               if name == forbidden or name.startswith(forbidden + ".")}
        assert not bad, f"{path.relative_to(SRC)} imports {sorted(bad)}"


def test_services_know_nothing_of_who_uses_them() -> None:
    for name in ("services.py", "auth.py"):
        imports = imported_modules(SRC / "callbox" / "server" / name)
        users = ("callbox.server.app", "callbox.server.relay", "callbox.server.http")
        assert not [m for m in imports if m.startswith(users)], name
