"""notebooks/walkthrough.ipynb runs top to bottom (in this process, on the session's Ray).

It uses only the public API (`import ray_pipeline as rp`). Its last section replays drifted traffic
through `rp.demo_loop`, the loop `make demo` runs and tests/test_cli.py's demo test checks end to
end: here that cell runs with the loop switched off (its parameter), and its call is checked against
`demo_loop`'s signature, so the loop runs once per test session, not twice."""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

import pytest

from ray_pipeline.runtime import free_port

pytestmark = pytest.mark.slow  # Ray Serve / Ray Train / the whole pipeline: `make test-fast` skips these

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"


def test_walkthrough_notebook_runs_end_to_end(ray_session, tmp_path, monkeypatch):
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["nbformat"] == 4
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert "parameters" in cells[0]["metadata"].get("tags", []), "first code cell holds the parameters"
    assert all(not c["outputs"] for c in cells), "commit the notebook without outputs"
    monkeypatch.chdir(NOTEBOOK.parent)  # the notebook's paths are relative to notebooks/
    ns: dict = {}
    for i, cell in enumerate(cells):
        exec(compile("".join(cell["source"]), f"walkthrough.ipynb code cell {i}", "exec"), ns)
        if i == 0:  # papermill-style: parameters injected after the parameters cell
            ns.update(ROWS=8_000, WORK=tmp_path / "walkthrough-data", PORT=free_port(), CLOSE_THE_LOOP=False)

    assert ns["ingested"].accepted + ns["ingested"].quarantined == 8_000
    assert len(ns["versions"]) == 2 and ns["champion"].version in (1, 2)
    assert ns["status"] == 200
    predictions = ns["answer"]["predictions"]
    assert len(predictions) == 3 and all(p["status"] == "ok" and 0 < p["probability"] < 1 for p in predictions)
    assert ns["answer"]["version"] == ns["champion"].version
    statuses = [p["status"] for p in ns["by_entity"]["predictions"]]
    assert ns["status_ids"] == 200 and statuses[2] == "unknown_entity" and set(statuses[:2]) <= {"ok", "expired"}
    scored = 3 + sum(s == "ok" for s in statuses)
    assert len(ns["log"]) == scored
    assert ns["answer"]["request_id"] in set(ns["log"]["request_id"])
    assert "loop" not in ns  # switched off, and the cell still ran (its import)
    _check_call(cells[-1], "demo_loop", ns["rp"].demo_loop, ns)
    imports = [n for c in cells for n in ast.walk(ast.parse("".join(c["source"])))
               if isinstance(n, (ast.Import, ast.ImportFrom))]  # fmt: skip
    modules = {a.name for n in imports if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module or "" for n in imports if isinstance(n, ast.ImportFrom)}
    project = {m for m in modules if m.startswith("ray_pipeline")}
    assert project == {"ray_pipeline"}, f"the notebook imports only the public API: {project}"


def _check_call(cell: dict, name: str, function, ns: dict) -> None:
    """The cell's call of `name` binds to `function`'s signature, its arguments being names the
    notebook defines (or attributes of them)."""
    calls = [n for n in ast.walk(ast.parse("".join(cell["source"]))) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute) and n.func.attr == name]  # fmt: skip
    assert len(calls) == 1, f"expected one rp.{name}(...) call in the last cell"
    call = calls[0]
    inspect.signature(function).bind(*call.args, **{k.arg: k.value for k in call.keywords})
    for node in [*call.args, *(k.value for k in call.keywords)]:
        root = node
        while isinstance(root, ast.Attribute):
            root = root.value
        assert isinstance(root, ast.Name) and root.id in ns, ast.unparse(node)
