"""Which labeled traffic a feedback retrain uses, and the arrow back to the data pipeline.

Logged predictions of complete windows joined with their labels. The newest `holdout_windows`
windows holding labels are the comparison set (neither model trains on them); every labeled row
before them becomes accepted rows of the data pipeline, exactly once. A run needs
`min_new_labels` labels ingested since the last completed run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ray_pipeline.config import PipelineConfig
from ray_pipeline.feedback.records import feedback_runs
from ray_pipeline.monitor.labels import accepted_labels
from ray_pipeline.serve.predlog import read_log
from ray_pipeline.storage import join, matching_files, write_parquet


def labeled_traffic(cfg: PipelineConfig, until: datetime | None = None) -> pa.Table:
    """Answered predictions made before `until` with their labels (inputs as logged), oldest first."""
    log = read_log(cfg.serving.prediction_log)
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


def fed_keys(cfg: PipelineConfig) -> set[tuple[str, int]]:
    """(request_id, row) of every labeled row an earlier feedback run fed back."""
    files = matching_files(join(cfg.monitoring.feedback_runs, "fed"), "*.parquet")
    keys: set[tuple[str, int]] = set()
    for f in files:
        t = pq.read_table(f)
        keys |= set(zip(t["request_id"].to_pylist(), t["row"].to_pylist()))
    return keys


def _as_accepted(cfg: PipelineConfig, rows: pa.Table) -> pa.Table:
    """Logged rows as accepted rows of the data pipeline (the accepted files' exact schema)."""
    schema = cfg.data.schema_
    accepted_dir = cfg.data.output.accepted
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


def feed_back(cfg: PipelineConfig, fresh: pa.Table, run_id: str) -> None:
    """Write `fresh` as accepted rows of the data pipeline, and its keys so no later run feeds them again."""
    if not fresh.num_rows:
        return
    write_parquet(_as_accepted(cfg, fresh), join(cfg.data.output.feedback, f"{run_id}.parquet"))
    write_parquet(fresh.select(["request_id", "row"]), join(cfg.monitoring.feedback_runs, "fed", f"{run_id}.parquet"))


def new_labels(cfg: PipelineConfig, labeled: pa.Table, run_id: str) -> tuple[pa.Table, str | None]:
    """The labeled rows ingested after the newest label an earlier completed retrain saw, and that time."""
    since = _labels_through(cfg, run_id)
    if since is None:
        return labeled, None
    return labeled.filter(pc.greater(labeled["labeled_at"], _utc_scalar(since))), since


def _labels_through(cfg: PipelineConfig, run_id: str) -> str | None:
    """Ingest time of the newest label an earlier completed retrain saw (failed and skipped ones saw none)."""
    done = [r.get("data", {}).get("labels_through") for r in feedback_runs(cfg)
            if r.get("id") != run_id and r.get("decision") not in (None, "skipped", "failed")]  # fmt: skip
    return max((d for d in done if d), default=None)


def _utc_scalar(iso: str) -> pa.Scalar:
    """An ISO time as an Arrow UTC timestamp scalar (to compare with `labeled_at`)."""
    return pa.scalar(datetime.fromisoformat(iso), pa.timestamp("us", tz="UTC"))
