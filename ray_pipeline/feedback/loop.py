"""`ray-pipeline retrain`: labeled traffic back into the data pipeline, retrain, compare, promote.

1. Logged predictions joined with their labels; the most recent `holdout_windows` windows are kept
   out as the comparison set, the rest become accepted rows of the data pipeline (the arrow back).
2. The feature stage rebuilds views and the point-in-time training set; Ray Train retrains each
   configured model kind (optionally only on events within `lookback_s`).
3. Challenger and champion are scored on the holdout, which neither trained on; the best new model
   is registered and set as @challenger, then promoted through the registry's gates on those
   holdout metrics. Serving replicas hot-reload the alias move.
4. A record of every run (trigger, data, metrics, gate report, decision) under feedback/runs/.
Two retrains never run at once: a lock in the registry database.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ray_pipeline.config import PipelineConfig
from ray_pipeline.errors import UserError
from ray_pipeline.monitor.labels import accepted_labels
from ray_pipeline.registry.models import gate_report, load, open_registry, register_run
from ray_pipeline.registry.store import Registry
from ray_pipeline.serve.predlog import read_log
from ray_pipeline.storage import join, matching_files, read_bytes, write_parquet, write_text

LOCK_TTL_S = 6 * 3600  # a crashed retrain's lock expires after this


def labeled_traffic(cfg: PipelineConfig) -> pa.Table:
    """Answered predictions with their labels (inputs as logged)."""
    log = read_log(cfg.resolve(cfg.serving.prediction_log))
    log = log.filter(pc.is_in(log["variant"], pa.array(["champion", "challenger"])))
    labels = accepted_labels(cfg).select(["request_id", "row", "label"])
    return log.join(labels, keys=["request_id", "row"], join_type="inner").sort_by([("ts", "ascending")])


def _fed_keys(cfg: PipelineConfig) -> set[tuple[str, int]]:
    files = matching_files(join(cfg.resolve(cfg.monitoring.feedback_runs), "fed"), "*.parquet")
    keys: set[tuple[str, int]] = set()
    for f in files:
        t = pq.read_table(f)
        keys |= set(zip(t["request_id"].to_pylist(), t["row"].to_pylist()))
    return keys


def _as_accepted(cfg: PipelineConfig, rows: pa.Table) -> pa.Table:
    """Logged rows as accepted rows of the data pipeline (the accepted files' exact schema)."""
    schema = cfg.data.schema_
    accepted_dir = cfg.resolve(cfg.data.output.accepted)
    first = next(iter(matching_files(accepted_dir, "*.parquet")), None)
    if first is None:
        raise FileNotFoundError(f"{accepted_dir}: no accepted rows yet; run ingest before the feedback loop")
    target = pq.read_schema(first)
    event_ts = pc.coalesce(rows["event_ts"], rows["ts"])
    source = {schema.entity_key: rows["entity"], schema.event_timestamp: event_ts, schema.label: rows["label"]}
    cols = []
    for f in target:
        value = source.get(f.name, rows[f.name] if f.name in rows.column_names else None)
        cols.append(pa.nulls(rows.num_rows, f.type) if value is None else pc.cast(value, f.type))
    return pa.Table.from_arrays(cols, schema=target.remove_metadata())


def _holdout_inputs(rows: pa.Table, columns: list[str]) -> pa.Table:
    cols = {c: rows[c] if c in rows.column_names else pa.nulls(rows.num_rows, pa.float64()) for c in columns}
    return pa.table(cols)


def retrain(cfg: PipelineConfig, reason: str = "manual", window_s: float | None = None) -> dict[str, Any]:
    """One feedback run; returns (and writes) its record."""
    schema = cfg.data.schema_
    if not (schema.entity_key and schema.event_timestamp):
        # Fed-back rows join training by entity and time, and the holdout is the latest windows.
        raise UserError("retrain needs data.schema.entity_key and data.schema.event_timestamp: labeled traffic "
                         "becomes training rows by them (send both with each record)")  # fmt: skip
    name = cfg.registry.model_name
    run_id = f"feedback-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    record: dict[str, Any] = {"id": run_id, "trigger": reason, "started_at": datetime.now(timezone.utc).isoformat()}
    registry = open_registry(cfg)
    holder = registry.acquire_lock(f"retrain:{name}", run_id, LOCK_TTL_S)
    if holder is not None:
        record.update(decision="skipped", why=f"another retrain holds the lock: {holder}")
        return _write_record(cfg, record)
    started = time.perf_counter()
    try:
        _run(cfg, record, registry, window_s or cfg.monitoring.window_s)
    finally:
        registry.release_lock(f"retrain:{name}", run_id)
        record["wall_s"] = round(time.perf_counter() - started, 2)
        _write_record(cfg, record)
    return record


def _run(cfg: PipelineConfig, record: dict[str, Any], registry: Registry, window_s: float) -> None:
    """The steps of one feedback run, filling `record`."""
    from ray_pipeline.data.sources import read_parquet
    from ray_pipeline.features.pipeline import build_features, training_set_path
    from ray_pipeline.train import evaluate
    from ray_pipeline.train.data import prepare
    from ray_pipeline.train.runner import train_model

    fb = cfg.monitoring.feedback
    name, alias = cfg.registry.model_name, cfg.serving.alias
    labeled = labeled_traffic(cfg)
    record["labeled_rows"] = labeled.num_rows
    if labeled.num_rows < fb.min_labeled_rows:
        record.update(decision="skipped", why=f"{labeled.num_rows} labeled rows, need {fb.min_labeled_rows}")
        return
    ts = pc.cast(labeled["ts"], pa.int64())
    newest = pc.max(ts).as_py()
    window_us = int(window_s * 1e6)
    holdout_start = newest - newest % window_us - (fb.holdout_windows - 1) * window_us
    is_holdout = pc.greater_equal(ts, holdout_start)
    holdout, older = labeled.filter(is_holdout), labeled.filter(pc.invert(is_holdout))
    fed = _fed_keys(cfg)
    fresh = older.filter(pa.array([(r, w) not in fed for r, w in zip(older["request_id"].to_pylist(),
                                                                     older["row"].to_pylist())]))  # fmt: skip
    no_entity = fresh.filter(pc.is_null(fresh["entity"]))
    fresh = fresh.filter(pc.is_valid(fresh["entity"]))
    record["data"] = {
        "holdout_rows": holdout.num_rows,
        "holdout_from": datetime.fromtimestamp(holdout_start / 1e6, tz=timezone.utc).isoformat(),
        "fed_back_rows": fresh.num_rows,
        "not_fed_without_entity": no_entity.num_rows,
    }
    if holdout.num_rows == 0 or len(set(holdout["label"].to_pylist())) < 2:
        record.update(decision="skipped", why="the holdout window has no labels of both classes")
        return
    if fresh.num_rows:  # the arrow back to the data pipeline
        write_parquet(_as_accepted(cfg, fresh), join(cfg.resolve(cfg.data.output.feedback), f"{record['id']}.parquet"))
        keys = join(cfg.resolve(cfg.monitoring.feedback_runs), "fed", f"{record['id']}.parquet")
        write_parquet(fresh.select(["request_id", "row"]), keys)
    build_features(cfg)
    training_set = read_parquet(training_set_path(cfg))
    event_col = cfg.data.schema_.event_timestamp
    if fb.lookback_s is not None:
        fed_events = pc.cast(pc.coalesce(labeled["event_ts"], labeled["ts"]), pa.int64())
        since = pc.max(fed_events).as_py() - int(fb.lookback_s * 1e6)
        training_set = training_set.map_batches(_since, fn_kwargs={"col": event_col, "since": since},
                                                batch_format="pyarrow")  # fmt: skip
        record["data"]["training_events_since"] = datetime.fromtimestamp(since / 1e6, tz=timezone.utc).isoformat()
    prepared = prepare(training_set, cfg)
    record["data"]["training_rows"] = prepared.rows
    y = np.asarray(holdout["label"].to_numpy(zero_copy_only=False), dtype=np.float64)
    champion = load(registry, f"models:/{name}@{alias}")
    p_champ = champion.predict_table(_holdout_inputs(holdout, champion.spec.input_columns))
    champ_metrics = evaluate.metrics(y, p_champ)
    candidates = []
    for kind in fb.models:
        run = train_model(cfg, kind, prepared=prepared)
        X = evaluate_inputs(holdout, run)
        candidates.append((evaluate.metrics(y, run.model.predict_proba(X)), run))
    record["models"] = {"champion": {"version": champion.version.version, "holdout": champ_metrics}}
    for m, run in candidates:
        record["models"][run.name] = {"kind": run.kind, "holdout": m, "test": run.metrics}
    best_metrics, best = min(candidates, key=lambda c: c[0]["log_loss"])
    version = register_run(registry, name, best.run_dir)
    registry.set_alias(name, cfg.serving.traffic.challenger_alias, version.version, f"{record['id']}: {record['trigger']}",
                       "feedback")  # fmt: skip
    passed, report = gate_report(replace(version, metrics=best_metrics),
                                 replace(champion.version, metrics=champ_metrics), cfg.registry.gates)  # fmt: skip
    record.update(challenger=version.uri, gate_report=report, gates_passed=passed)
    if passed and fb.promote:
        change = registry.set_alias(name, alias, version.version, f"{record['id']}: gates passed on holdout", "feedback")
        record.update(decision="promoted", promoted=f"@{alias}: v{change.from_version} -> v{change.to_version}")
    else:
        record["decision"] = "refused" if not passed else "registered (promotion off)"


def evaluate_inputs(rows: pa.Table, run: Any) -> np.ndarray:
    """A new run's feature matrix for logged rows."""
    from ray_pipeline.features.transform import transform_table

    return transform_table(_holdout_inputs(rows, run.spec.input_columns), run.spec)


def _since(batch: pa.Table, col: str, since: int) -> pa.Table:
    return batch.filter(pc.greater_equal(pc.cast(batch[col], pa.int64()), since))


def _write_record(cfg: PipelineConfig, record: dict[str, Any]) -> dict[str, Any]:
    write_text(join(cfg.resolve(cfg.monitoring.feedback_runs), "runs", f"{record['id']}.json"),
               json.dumps(record, indent=2, default=str))  # fmt: skip
    return record


def feedback_runs(cfg: PipelineConfig) -> list[dict[str, Any]]:
    """Every feedback run's record, oldest first."""
    runs = matching_files(join(cfg.resolve(cfg.monitoring.feedback_runs), "runs"), "*.json")
    return [json.loads(read_bytes(p)) for p in runs]
