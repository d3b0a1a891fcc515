"""notebooks/walkthrough.ipynb runs top to bottom (in this process, on the session's Ray)."""

from __future__ import annotations

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
            ns.update(ROWS=8_000, WORK=tmp_path / "walkthrough-data", PORT=free_port(), PER_WINDOW=1500, WINDOW_S=4.0)

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
    loop = ns["loop"]  # drifted traffic raised the alert and the feedback loop decided
    assert loop.windows_to_alert in (1, 2) and loop.decision in ("promoted", "refused")
