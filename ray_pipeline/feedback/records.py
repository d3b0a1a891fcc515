"""Feedback run records: one JSON per retrain under `monitoring.feedback_runs`/runs/ (trigger, the
data it used, metrics, gate report, decision, or the error and the stage it failed in)."""

from __future__ import annotations

import json
from typing import Any

from ray_pipeline.config import PipelineConfig
from ray_pipeline.storage import join, matching_files, read_bytes, read_text, write_text


def record_path(cfg: PipelineConfig, run_id: str) -> str:
    """Where a feedback run's record is written."""
    return join(cfg.monitoring.feedback_runs, "runs", f"{run_id}.json")


def write_record(cfg: PipelineConfig, record: dict[str, Any]) -> dict[str, Any]:
    """Write (or replace) a run's record; returns it."""
    write_text(record_path(cfg, record["id"]), json.dumps(record, indent=2, default=str))
    return record


def feedback_runs(cfg: PipelineConfig) -> list[dict[str, Any]]:
    """Every feedback run's record, oldest first."""
    runs = matching_files(join(cfg.monitoring.feedback_runs, "runs"), "*.json")
    return [json.loads(read_bytes(p)) for p in runs]


def finish_race_record(cfg: PipelineConfig, run_id: str, outcome: str, race: dict[str, Any], line: str) -> None:
    """Write a race's end into the record of the retrain that started it (decision and evidence)."""
    path = record_path(cfg, run_id)
    record = json.loads(read_bytes(path))
    record.update(decision=outcome, race={**record.get("race", {}), **race}, race_report=line)
    if outcome == "promoted":
        record["promoted"] = f"{record['challenger']} after its race in shadow"
        record["served"] = record["challenger"]
    write_record(cfg, record)


def version_race(cfg: PipelineConfig, uri: str) -> dict[str, Any] | None:
    """How the newest race of the challenger `uri` went (or goes): run, decision, report, evidence."""
    raced = [r for r in feedback_runs(cfg) if r.get("challenger") == uri and isinstance(r.get("race"), dict)]
    if not raced:
        return None
    record = raced[-1]
    race = {"run": record["id"], "decision": record["decision"], "evidence": record["race"],
            "report": record.get("race_report") or record.get("why")}
    if record["decision"] == "racing":  # still running: its evidence so far is in the loop's saved state
        text = read_text(cfg.monitoring.state)
        held = (json.loads(text) if text else {}).get("loop", {}).get("race") or {}
        if held.get("run") == record["id"]:
            race.update(evidence=held["race"], report=held.get("report") or race["report"])
    return race
