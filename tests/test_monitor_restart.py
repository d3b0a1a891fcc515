"""`monitor --watch` killed with SIGKILL mid-window and mid-retrain, restarted with the same state,
loses and duplicates nothing; SIGTERM stops it between windows with its state saved. The monitor
runs as the real CLI in a subprocess attached to the session's Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from .helpers import ray_lines
from .test_natural_drift import base_model, deliver_labels, drift_config_body, period, serve_period

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent / "ray-pipeline"
ROWS = 800
WINDOW_S = 60.0  # windows of the last few minutes: the watch has nothing older to catch up on
SERVED = [3, 4, 5]
# fires on every window with traffic, so each one asks for a retrain (only one has new labels)
RULES = [{"name": "traffic", "metric": "rows", "feature": "all", "op": ">", "threshold": 0}]
FEEDBACK = {"triggers": {"rules": ["traffic"]}, "min_labeled_rows": 200, "min_new_labels": 200, "cooldown_s": 0}


def _watch(config: Path, address: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_ADDRESS": address}
    return subprocess.Popen([str(BIN), "monitor", "--config", str(config), "--watch"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _until(what, proc: subprocess.Popen, seconds: float = 240):
    deadline = time.time() + seconds
    while time.time() < deadline:
        found = what()
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(f"the monitor exited ({proc.returncode}):\n{proc.stdout.read()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"timed out:\n{proc.stdout.read() if proc.stdout else ''}")


def _state(tmp: Path) -> dict:
    try:
        return json.loads((tmp / "monitoring" / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def test_killed_monitor_resumes_without_losing_or_duplicating(ray_session, tmp_path):
    from ray_pipeline.config import parse_config
    from ray_pipeline.feedback.records import feedback_runs

    body = drift_config_body(tmp_path, rules=RULES, feedback=FEEDBACK, window_s=WINDOW_S)
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(body))
    cfg = parse_config(body)
    now = time.time()
    start = datetime.fromtimestamp(now - now % WINDOW_S - (SERVED[-1] + 1) * WINDOW_S, tz=timezone.utc)
    registry = base_model(cfg, [period(k, ROWS, start, WINDOW_S) for k in range(3)])
    for k in SERVED:
        rows = period(k, ROWS, start, WINDOW_S)
        serve_period(cfg, registry, rows, k)
        deliver_labels(cfg, rows, tmp_path / f"labels-{k}.csv")
    table_dir = tmp_path / "monitoring" / "table"

    # 1. SIGKILL mid-window: as soon as the first window's table file exists, before its state is saved
    proc = _watch(config, ray_session.address)
    _until(lambda: table_dir.exists() and any(table_dir.iterdir()), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    # 2. SIGKILL mid-retrain: the position and the pending retrain are saved before it starts
    proc = _watch(config, ray_session.address)
    pending = _until(lambda: _state(tmp_path).get("loop", {}).get("pending"), proc)
    interrupted = pending["id"]
    fed_file = tmp_path / "ingested" / "feedback" / f"{interrupted}.parquet"
    _until(fed_file.exists, proc)  # inside the retrain: rows fed back, features being rebuilt
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    # 3. restarted: finishes that retrain under its own id, then the windows left; SIGTERM stops it
    proc = _watch(config, ray_session.address)
    last_end = (start + timedelta(seconds=(SERVED[-1] + 1) * WINDOW_S)).isoformat()
    _until(lambda: _state(tmp_path).get("next", "") >= last_end and "pending" not in _state(tmp_path).get("loop", {}), proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert f"finished the interrupted feedback run {interrupted}" in out and "SIGTERM" in out and "state saved" in out
    assert not ray_lines(out), out  # a retrain inside `monitor --watch`: still only the monitor's own lines

    # nothing lost: every window once, with all its rows; the interrupted retrain completed once.
    # Read as the table's readers do: a write the first kill cut short left a hidden temp file.
    windows = [p for p in table_dir.iterdir() if not p.name.startswith(".")]
    rows_per_window = {p.name: [r["value"] for r in pq.read_table(p).to_pylist()
                                if r["metric"] == "rows" and r["feature"] == "all"] for p in windows}  # fmt: skip
    busy = sorted(v for v in rows_per_window.values() if v != [0.0])
    assert busy == [[ROWS]] * len(SERVED), rows_per_window
    records = feedback_runs(cfg)
    assert Counter(r["id"] for r in records)[interrupted] == 1
    trained = [r for r in records if r.get("decision") not in ("skipped",)]
    assert [r["id"] for r in trained] == [interrupted] and trained[0]["decision"] != "failed", trained
    # nothing duplicated: alerts, fed-back rows, registered models
    alert_ids = [json.loads(line)["id"] for line in (tmp_path / "monitoring" / "alerts" / "log.jsonl").read_text().splitlines()]
    assert len(alert_ids) == len(set(alert_ids))
    assert sum(1 for i in alert_ids if i.startswith("traffic:") and i.endswith(":firing")) == 1
    fed = [(r, w) for f in (tmp_path / "monitoring" / "feedback" / "fed").glob("*.parquet")
           for r, w in zip(*(pq.read_table(f).column(c).to_pylist() for c in ("request_id", "row")))]  # fmt: skip
    # periods 3 and 4; period 5, the holdout, too when the promoted recipe was refitted on it
    expected = (3 if trained[0].get("refit") else 2) * ROWS
    assert len(fed) == len(set(fed)) == expected, trained[0]["decision"]
    fed_rows = sum(pq.read_metadata(f).num_rows for f in (tmp_path / "ingested" / "feedback").glob("*.parquet"))
    assert fed_rows == expected
    digests = [v.lineage["model_sha256"] for v in registry.versions("churn")]
    assert len(digests) == len(set(digests))
