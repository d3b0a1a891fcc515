"""No module of the package imports another module's underscore name: what a module shares is
public, so its private helpers can change without a search through the rest of the tree."""

from __future__ import annotations

import ast

from .conftest import ROOT


def private_imports(source: str, path: str = "<source>") -> list[str]:
    """`from ray_pipeline.x import _y` (or a relative one) in `source`, as `path:line: name`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom):
            continue
        ours = node.level > 0 or (node.module or "").split(".")[0] == "ray_pipeline"
        for alias in node.names if ours else []:
            if alias.name.startswith("_") and not alias.name.startswith("__"):
                found.append(f"{path}:{node.lineno}: {alias.name}")
        parts = (node.module or "").split(".")
        if ours and any(p.startswith("_") and not p.startswith("__") for p in parts):
            found.append(f"{path}:{node.lineno}: {node.module}")
    return found


def test_no_module_imports_another_modules_private_name():
    package = ROOT / "ray_pipeline"
    found = [hit for path in sorted(package.rglob("*.py"))
             for hit in private_imports(path.read_text(), str(path.relative_to(ROOT)))]  # fmt: skip
    assert found == []


def test_the_check_catches_a_private_import():
    assert private_imports("from ray_pipeline.registry.store import Registry, _helper\n") == ["<source>:1: _helper"]
    assert private_imports("from .store import _version\n") == ["<source>:1: _version"]
    module = "ray_pipeline.registry._db"
    assert private_imports(f"from {module} import Database\n") == [f"<source>:1: {module}"]
    assert private_imports("from os import _exit\nfrom ray_pipeline import __version__\n") == []


def test_the_registry_modules_reach_the_database_through_its_public_api():
    registry = ROOT / "ray_pipeline" / "registry"
    uses = [f"{p.name}: {word}" for p in sorted(registry.glob("*.py")) if p.name != "database.py"
            for word in ("._read(", "._transaction(", "._writer", "._reader") if word in p.read_text()]  # fmt: skip
    assert uses == []
