"""The README's layout section names every module of the package, and nothing that is gone."""

from __future__ import annotations

import re

from .conftest import ROOT


def test_readme_layout_matches_the_tree():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    listed = block.split("configs/", 1)[0]
    package = ROOT / "ray_pipeline"
    top = {p.stem for p in package.glob("*.py") if not p.stem.startswith("__")}
    named_top = set(re.findall(r"\b(\w+)\.py\b", listed))
    assert named_top == top, f"top-level modules: README {sorted(named_top)}, tree {sorted(top)}"
    for folder, names in re.findall(r"(\w+)/ \(([^)]*)\)", listed.replace("\n", " ")):
        tree = {p.stem for p in (package / folder).glob("*.py") if not p.stem.startswith("__")}
        named = {n.strip() for n in names.split(",")}
        assert named == tree, f"{folder}/: README {sorted(named)}, tree {sorted(tree)}"
    folders = {p.name for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert set(re.findall(r"(\w+)/ \(", listed)) == folders
