"""`ray-pipeline retrain`: labeled traffic back into the data pipeline, retrain, compare, promote.

1. Logged predictions of complete windows joined with their labels; a run needs
   `min_new_labels` labels ingested since the last completed run. The newest `holdout_windows`
   windows holding labels are the comparison set; every labeled row before them becomes accepted
   rows of the data pipeline (the arrow back), once.
2. The feature stage rebuilds views and the training set; Ray Train retrains each configured model
   kind on everything before the holdout, newest rows included (validation for early stopping: a
   random slice of it; the holdout is the test split).
3. Challenger and champion are scored on the holdout, which neither trained on. A challenger that
   is a registered model again (same model files) or scores every row as the champion does is not
   registered. Otherwise the gates compare the two by a paired bootstrap on the same rows
   (registry/bootstrap.py); the challenger is registered as @challenger and promoted only when the
   interval clears every gate. Serving replicas hot-reload the alias move.
4. A record of every run (trigger, data used with rows and time ranges, metrics, gate report,
   decision, or the error and the stage it failed in) under feedback/runs/.
Two retrains never run at once: a lock in the registry database."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ray_pipeline.config import PipelineConfig
from ray_pipeline.errors import UserError
from ray_pipeline.monitor.labels import accepted_labels
from ray_pipeline.registry.bootstrap import identical, paired_gates
from ray_pipeline.registry.models import load, model_sha256, open_registry, register_run, same_model
from ray_pipeline.registry.store import Registry
from ray_pipeline.serve.predlog import read_log
from ray_pipeline.storage import join, matching_files, read_bytes, write_parquet, write_text
from ray_pipeline.train import evaluate

log = logging.getLogger(__name__)

LOCK_TTL_S = 6 * 3600  # a crashed retrain's lock expires after this


def labeled_traffic(cfg: PipelineConfig, until: datetime | None = None) -> pa.Table:
    """Answered predictions made before `until` with their labels (inputs as logged), oldest first."""
    log = read_log(cfg.resolve(cfg.serving.prediction_log))
    log = log.filter(pc.is_in(log["variant"], pa.array(["champion", "challenger"], pa.string())))
    log = log.filter(pc.is_valid(log["ts"]))
    if until is not None:
        log = log.filter(pc.less(pc.cast(log["ts"], pa.int64()), int(until.timestamp() * 1e6)))
    labels = accepted_labels(cfg).select(["request_id", "row", "label", "labeled_at"])
    return log.join(labels, keys=["request_id", "row"], join_type="inner").sort_by([("ts", "ascending")])


def key_mask(rows: pa.Table, keys: set[tuple[str, int]]) -> pa.Array:
    """Boolean mask of the rows whose (request_id, row) is in `keys` (typed even when `rows` is empty)."""
    pairs = zip(rows["request_id"].to_pylist(), rows["row"].to_pylist())
    return pa.array([(r, w) in keys for r, w in pairs], type=pa.bool_())


@dataclass
class Selection:
    """Which labeled rows a retrain compares on and which it feeds back."""

    holdout: pa.Table  # the newest labeled windows: neither model trained on them
    fresh: pa.Table  # older labeled rows not fed back before, with an entity: the arrow back
    no_entity: int  # older labeled rows that cannot join training (no entity key)
    holdout_start: int | None  # microseconds since the epoch


def select_rows(labeled: pa.Table, window_us: int, holdout_windows: int, fed: set[tuple[str, int]]) -> Selection:
    """Holdout = the newest `holdout_windows` windows that hold labels (windows without traffic do not
    count); every labeled row before them feeds back once."""
    ts = pc.cast(labeled["ts"], pa.int64()).to_numpy(zero_copy_only=False)
    windows = np.unique(ts // window_us)
    if windows.size == 0:
        return Selection(labeled, labeled, 0, None)
    holdout_start = int(windows[-holdout_windows:][0] * window_us)
    is_holdout = pa.array(ts >= holdout_start, type=pa.bool_())
    holdout, older = labeled.filter(is_holdout), labeled.filter(pc.invert(is_holdout))
    fresh = older.filter(pc.invert(key_mask(older, fed)))
    no_entity = fresh.filter(pc.is_null(fresh["entity"])).num_rows
    return Selection(holdout, fresh.filter(pc.is_valid(fresh["entity"])), no_entity, holdout_start)


def span(table: pa.Table, column: str) -> dict[str, Any]:
    """Rows and [from, to] of a time column (None for an empty or all-null column)."""
    lo_hi = pc.min_max(table[column]) if table.num_rows else None
    lo, hi = (lo_hi["min"].as_py(), lo_hi["max"].as_py()) if lo_hi is not None else (None, None)
    return {"rows": table.num_rows, "from": lo.isoformat() if lo else None, "to": hi.isoformat() if hi else None}


def _fed_keys(cfg: PipelineConfig) -> set[tuple[str, int]]:
    """(request_id, row) of every labeled row an earlier feedback run fed back."""
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


def retrain(cfg: PipelineConfig, reason: str = "manual", window_s: float | None = None,
            until: datetime | None = None, run_id: str | None = None) -> dict[str, Any]:  # fmt: skip
    """One feedback run; returns (and writes) its record. A run that fails records its error and the
    stage it failed in (decision "failed") instead of raising.

    `until`: end of the newest complete window (default: now less `grace_s`, floored to a window);
    labeled traffic after it is still arriving and never used. `run_id`: to redo an interrupted run
    under its own name (its files are replaced, nothing is written twice)."""
    schema = cfg.data.schema_
    if not (schema.entity_key and schema.event_timestamp):
        # Fed-back rows join training by entity and time, and the holdout is the latest windows.
        raise UserError("retrain needs data.schema.entity_key and data.schema.event_timestamp: labeled traffic "
                         "becomes training rows by them (send both with each record)")  # fmt: skip
    window_s = window_s or cfg.monitoring.window_s
    if until is None:
        now = datetime.now(timezone.utc).timestamp() - cfg.monitoring.grace_s
        until = datetime.fromtimestamp(now - now % window_s, tz=timezone.utc)
    name = cfg.registry.model_name
    run_id = run_id or f"feedback-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    record: dict[str, Any] = {"id": run_id, "trigger": reason, "started_at": datetime.now(timezone.utc).isoformat(),
                              "until": until.isoformat()}  # fmt: skip
    registry = open_registry(cfg)
    holder = registry.acquire_lock(f"retrain:{name}", run_id, LOCK_TTL_S)
    if holder is not None:
        record.update(decision="skipped", why=f"another retrain holds the lock: {holder}")
        return _write_record(cfg, record)
    started = time.perf_counter()
    try:
        _run(cfg, record, registry, window_s, until)
        record.pop("stage", None)
    except Exception as exc:  # recorded, not raised: the monitor alerts on it and keeps watching
        import traceback

        log.warning("feedback run %s failed in stage %s: %s", run_id, record.get("stage"), exc)
        record.update(decision="failed", error=f"{type(exc).__name__}: {exc}"[:2000],
                      traceback=traceback.format_exc()[-8000:])  # fmt: skip
    finally:
        registry.release_lock(f"retrain:{name}", run_id)
        record["wall_s"] = round(time.perf_counter() - started, 2)
        _write_record(cfg, record)
    return record


def _labels_through(cfg: PipelineConfig, run_id: str) -> str | None:
    """Ingest time of the newest label an earlier completed retrain saw (failed and skipped ones saw none)."""
    done = [r.get("data", {}).get("labels_through") for r in feedback_runs(cfg)
            if r.get("id") != run_id and r.get("decision") not in (None, "skipped", "failed")]  # fmt: skip
    return max((d for d in done if d), default=None)


def _run(cfg: PipelineConfig, record: dict[str, Any], registry: Registry, window_s: float, until: datetime) -> None:
    """The steps of one feedback run, filling `record` (`stage` says where it is)."""
    from ray_pipeline.data.sources import read_parquet
    from ray_pipeline.features.pipeline import build_features, training_set_path
    from ray_pipeline.train.data import prepare, time_range
    from ray_pipeline.train.runner import train_model

    fb = cfg.monitoring.feedback
    name, alias = cfg.registry.model_name, cfg.serving.alias
    record["stage"] = "select"
    labeled = labeled_traffic(cfg, until)
    record["labeled_rows"] = labeled.num_rows
    if labeled.num_rows < fb.min_labeled_rows:
        record.update(decision="skipped", why=f"{labeled.num_rows} labeled rows, need {fb.min_labeled_rows}")
        return
    since = _labels_through(cfg, record["id"])
    new = labeled if since is None else labeled.filter(pc.greater(labeled["labeled_at"], _utc_scalar(since)))
    record["new_labels"] = new.num_rows
    if new.num_rows < fb.min_new_labels:
        record.update(decision="skipped", why=f"{new.num_rows} labels ingested since the last retrain's "
                                              f"(through {since}), need {fb.min_new_labels}")  # fmt: skip
        return
    chosen = select_rows(labeled, int(window_s * 1e6), fb.holdout_windows, _fed_keys(cfg))
    holdout = chosen.holdout
    record["data"] = {
        "labels_through": pc.max(labeled["labeled_at"]).as_py().isoformat(),
        "holdout": {**span(holdout, "ts"), "events": span(holdout, "event_ts")},
        "fed_back_rows": chosen.fresh.num_rows,
        "not_fed_without_entity": chosen.no_entity,
    }
    if len(set(holdout["label"].to_pylist())) < 2:
        record.update(decision="skipped", why="the holdout window has no labels of both classes")
        return
    record["stage"] = "feed_back"
    if chosen.fresh.num_rows:  # the arrow back to the data pipeline
        write_parquet(_as_accepted(cfg, chosen.fresh), join(cfg.resolve(cfg.data.output.feedback), f"{record['id']}.parquet"))
        keys = join(cfg.resolve(cfg.monitoring.feedback_runs), "fed", f"{record['id']}.parquet")
        write_parquet(chosen.fresh.select(["request_id", "row"]), keys)
    record["stage"] = "features"
    build_features(cfg)
    training_set = read_parquet(training_set_path(cfg))
    event_col = cfg.data.schema_.event_timestamp
    if fb.lookback_s is not None:
        fed_events = pc.cast(pc.coalesce(labeled["event_ts"], labeled["ts"]), pa.int64())
        since_us = pc.max(fed_events).as_py() - int(fb.lookback_s * 1e6)
        training_set = training_set.map_batches(_since, fn_kwargs={"col": event_col, "since": since_us},
                                                batch_format="pyarrow")  # fmt: skip
        record["data"]["training_events_since"] = datetime.fromtimestamp(since_us / 1e6, tz=timezone.utc).isoformat()
    record["stage"] = "prepare"
    test_rows = holdout.rename_columns([cfg.data.schema_.label if c == "label" else c for c in holdout.column_names])
    prepared = prepare(training_set, cfg, holdout=test_rows)
    prepared.input_profile = _reference(cfg, holdout, prepared.spec)
    event_range = training_set.map_batches(time_range, fn_kwargs={"ts": event_col}, batch_format="pyarrow")
    lo, hi = event_range.min("lo"), event_range.max("hi")
    record["data"]["train"] = {"rows": prepared.rows["train"], "events_from": _iso(lo), "events_to": _iso(hi)}
    record["data"]["valid"] = {"rows": prepared.rows["valid"], "how": "random slice of the same range, "
                               f"stratified by label (seed {cfg.training.split.seed})"}  # fmt: skip
    y = np.asarray(holdout["label"].to_numpy(zero_copy_only=False), dtype=np.float64)
    record["stage"] = "train"
    champion = load(registry, f"models:/{name}@{alias}")
    p_champ = champion.predict_table(_holdout_inputs(holdout, champion.spec.input_columns))
    candidates = []
    for kind in fb.models:
        run = train_model(cfg, kind, prepared=prepared)
        p = run.model.predict_proba(evaluate_inputs(holdout, run))
        candidates.append((evaluate.metrics(y, p), p, run))
    record["models"] = {"champion": {"version": champion.version.version, "holdout": evaluate.metrics(y, p_champ)}}
    for m, _, run in candidates:
        record["models"][run.name] = {"kind": run.kind, "holdout": m, "run_dir": str(run.run_dir)}
    _, p_best, best = min(candidates, key=lambda c: c[0]["log_loss"])
    record["stage"] = "compare"
    twin = same_model(registry, name, model_sha256(best.run_dir))
    if twin is not None or identical(p_best, p_champ):
        same = twin.uri if twin is not None else champion.version.uri
        record.update(decision="identical", why=f"the retrained {best.kind} model is {same} again (same "
                      f"{'model files' if twin is not None else 'score on every holdout row'}); not registered")  # fmt: skip
        return
    passed, report, checks = holdout_gates(y, p_best, p_champ, cfg, f"{best.name} vs {champion.version.uri}")
    record.update(gate_report=report, gates=checks, gates_passed=passed)
    record["stage"] = "register"
    version = register_run(registry, name, best.run_dir)
    registry.set_alias(name, cfg.serving.traffic.challenger_alias, version.version, f"{record['id']}: {record['trigger']}",
                       "feedback")  # fmt: skip
    record["challenger"] = version.uri
    if passed and fb.promote:
        record["stage"] = "promote"
        change = registry.set_alias(name, alias, version.version, f"{record['id']}: gates passed on holdout", "feedback")
        record.update(decision="promoted", promoted=f"@{alias}: v{change.from_version} -> v{change.to_version}")
    else:
        record["decision"] = "refused" if not passed else "registered (promotion off)"


def _reference(cfg: PipelineConfig, holdout: pa.Table, spec: Any) -> dict[str, Any]:
    """The drift reference of a retrained version: the holdout window, the newest traffic its
    promotion is decided on. Its training rows are mostly older: against them the traffic that
    started the retrain would keep its input-drift alert firing after the promotion."""
    import ray.data

    from ray_pipeline.features.profile import input_profile
    from ray_pipeline.train.data import with_columns

    m = cfg.monitoring
    return input_profile(ray.data.from_arrow(with_columns(holdout, spec.input_columns)), spec, m.bins, m.top_k)


def holdout_gates(y: np.ndarray, p_new: np.ndarray, p_old: np.ndarray, cfg: PipelineConfig,
                  title: str) -> tuple[bool, str, list[dict[str, Any]]]:  # fmt: skip
    """The registry's gates on the holdout by paired bootstrap: (passed, report, checks)."""
    test = cfg.registry.gate_test
    checks = paired_gates(y, p_new, p_old, cfg.registry.gates, test)
    lines = [f"{title} on {len(y):,} holdout rows (paired bootstrap, {test.resamples} resamples, seed {test.seed}):"]
    lines += [c.line(test.level) for c in checks]
    return all(c.passed for c in checks), "\n".join(lines), [asdict(c) for c in checks]


def _utc_scalar(iso: str) -> pa.Scalar:
    """An ISO time as an Arrow UTC timestamp scalar (to compare with `labeled_at`)."""
    return pa.scalar(datetime.fromisoformat(iso), pa.timestamp("us", tz="UTC"))


def _iso(us: int | None) -> str | None:
    return None if us is None else datetime.fromtimestamp(us / 1e6, tz=timezone.utc).isoformat()


def evaluate_inputs(rows: pa.Table, run: Any) -> np.ndarray:
    """A new run's feature matrix for logged rows."""
    from ray_pipeline.features.transform import transform_table

    return transform_table(_holdout_inputs(rows, run.spec.input_columns), run.spec)


def _since(batch: pa.Table, col: str, since: int) -> pa.Table:
    return batch.filter(pc.greater_equal(pc.cast(batch[col], pa.int64()), since))


def record_path(cfg: PipelineConfig, run_id: str) -> str:
    """Where a feedback run's record is written."""
    return join(cfg.resolve(cfg.monitoring.feedback_runs), "runs", f"{run_id}.json")


def _write_record(cfg: PipelineConfig, record: dict[str, Any]) -> dict[str, Any]:
    write_text(record_path(cfg, record["id"]), json.dumps(record, indent=2, default=str))
    return record


def feedback_runs(cfg: PipelineConfig) -> list[dict[str, Any]]:
    """Every feedback run's record, oldest first."""
    runs = matching_files(join(cfg.resolve(cfg.monitoring.feedback_runs), "runs"), "*.json")
    return [json.loads(read_bytes(p)) for p in runs]
