"""Read one window of the prediction log on Ray Data: each task reads a few log files and returns
mergeable partials (counts in the reference bins, category counts, latency sketches, labeled
scores); the driver merges them. A file that cannot be read is skipped, named and counted."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ray_pipeline.data.fold import fold_blocks
from ray_pipeline.features.colstats import KLL_K, categorical_partial, merge_categorical
from ray_pipeline.features.transform import as_float
from ray_pipeline.monitor import stats
from ray_pipeline.monitor.estimate import merge_scores, score_partial
from ray_pipeline.serve.predlog import REFUSED, STAGES, log_files
from ray_pipeline.storage import join

ANSWERED = ("champion", "challenger")  # variants whose rows were returned to callers
FILES_PER_TASK = 8


@dataclass
class WindowData:
    """Merged partials of one window."""

    start: datetime
    end: datetime
    files: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)  # version -> rows, inputs, score
    refused: dict[str, int] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)  # stage -> KLL sketch
    labeled: dict[str, dict[str, list]] = field(default_factory=dict)  # "vN/variant" -> y, p, k (row keys)

    @property
    def rows(self) -> int:
        """Predictions answered in the window."""
        return sum(v["rows"] for v in self.versions.values())


def window_files(log_dir: str, start: datetime, end: datetime) -> list[str]:
    """Log files in the hour partitions that overlap [start, end)."""
    out: list[str] = []
    hour = start.replace(minute=0, second=0, microsecond=0)
    while hour < end:
        out.extend(log_files(join(log_dir, f"date={hour:%Y-%m-%d}", f"hour={hour:%H}")))
        hour += timedelta(hours=1)
    return out


REQUIRED = {"ts", "score", "model_version", "variant"}


def _with_optional_columns(t: pa.Table) -> pa.Table:
    """Columns older logs (or other writers) may lack, as nulls: row 0, no status, no latency."""
    n = t.num_rows
    defaults = {"request_id": pa.nulls(n, pa.string()), "row": pa.array([0] * n, pa.int32()),
                "http_status": pa.nulls(n, pa.int16()),
                **{f"latency_{s}_ms": pa.nulls(n, pa.float64()) for s in STAGES}}  # fmt: skip
    for name, values in defaults.items():
        if name not in t.column_names:
            t = t.append_column(name, values)
    return t


def _version_partial(t: pa.Table, ref: dict[str, Any] | None) -> dict[str, Any]:
    part: dict[str, Any] = {"rows": t.num_rows, "numeric": {}, "categorical": {}, "score": None, "scores": None}
    if ref is None:
        return part
    if ref.get("task", "binary") == "binary":  # the score histogram quality is estimated from (monitor.estimate)
        part["scores"] = score_partial(as_float(t["score"], "score"))
    for name, r in ref["numeric"].items():
        x = as_float(t[name], name) if name in t.column_names else np.full(t.num_rows, np.nan)
        part["numeric"][name] = stats.numeric_counts(x, r)
    for name in ref["categorical"]:
        present = name in t.column_names
        part["categorical"][name] = categorical_partial(t[name]) if present else {"counts": {}, "missing": t.num_rows}
    part["score"] = stats.numeric_counts(as_float(t["score"], "score"), ref["score"])
    return part


def _labeled(t: pa.Table, labels: pa.Table) -> dict[str, dict[str, list[float]]]:
    joined = t.select(["request_id", "row", "score", "model_version", "variant"]).join(
        labels, keys=["request_id", "row"], join_type="inner"
    )
    out: dict[str, dict[str, list]] = {}
    for row in joined.to_pylist():  # k: the scored row's key, to pair a shadow's rows with the champion's
        slot = out.setdefault(f"v{row['model_version']}/{row['variant']}", {"y": [], "p": [], "k": []})
        slot["y"].append(float(row["label"]))
        slot["p"].append(float(row["score"]))
        slot["k"].append(f"{row['request_id']}/{row['row']}")
    return out


def partial_window(batch: dict[str, np.ndarray], start_us: int, end_us: int, refs: dict[str, Any],
                   labels: Any) -> dict[str, Any]:  # fmt: skip
    """Partials of the log files in `batch` (JSON-safe), for `fold_blocks`."""
    import ray
    from datasketches import kll_doubles_sketch

    label_table = ray.get(labels) if labels is not None else None
    out: dict[str, Any] = {"files": 0, "skipped": [], "versions": {}, "refused": {}, "latency": {}, "labeled": {}}
    sketches = {s: kll_doubles_sketch(KLL_K) for s in STAGES}
    for path in batch["path"]:
        out["files"] += 1
        try:
            t = pq.read_table(path)
        except Exception as exc:  # a corrupt or truncated file: skip it, say which and why
            out["skipped"].append({"file": str(path), "error": f"{type(exc).__name__}: {exc}"[:300]})
            continue
        missing = sorted(REQUIRED - set(t.column_names))
        if missing:  # not a prediction-log file: name it rather than guess
            out["skipped"].append({"file": str(path), "error": f"not a prediction log: no column(s) {missing}"})
            continue
        t = _with_optional_columns(t)
        ts = pc.cast(t["ts"], pa.int64())
        t = t.filter(pc.and_(pc.greater_equal(ts, start_us), pc.less(ts, end_us)))
        if not t.num_rows:
            continue
        variant = t["variant"]
        refused = t.filter(pc.equal(variant, REFUSED))
        for status in refused["http_status"].to_pylist():
            out["refused"][str(status)] = out["refused"].get(str(status), 0) + 1
        answered = t.filter(pc.is_in(variant, pa.array(ANSWERED)))
        for version in pc.unique(answered["model_version"]).to_pylist():
            part = _version_partial(answered.filter(pc.equal(answered["model_version"], version)), refs.get(str(version)))
            out["versions"][str(version)] = _merge_version(out["versions"].get(str(version)), part)
        first = answered.filter(pc.equal(answered["row"], 0))  # latency is per request: its first row
        for s in STAGES:
            v = as_float(first[f"latency_{s}_ms"], s)
            v = v[~np.isnan(v)]
            if v.size:
                sketches[s].update(v)
        if label_table is not None and label_table.num_rows:
            scored = t.filter(pc.is_in(variant, pa.array((*ANSWERED, "shadow"))))
            for key, slot in _labeled(scored, label_table).items():
                into = out["labeled"].setdefault(key, {"y": [], "p": [], "k": []})
                for name in into:
                    into[name] += slot[name]
    out["latency"] = {s: sk.serialize().hex() for s, sk in sketches.items() if not sk.is_empty()}
    return out


def _merge_version(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    if a is None:
        return b
    out = {"rows": a["rows"] + b["rows"], "numeric": {}, "categorical": {}, "score": None,
           "scores": merge_scores(a.get("scores"), b.get("scores"))}
    for k, v in b["numeric"].items():
        out["numeric"][k] = stats.merge_numeric(a["numeric"].get(k), v)
    for k, v in b["categorical"].items():
        out["categorical"][k] = merge_categorical([a["categorical"][k], v]) if k in a["categorical"] else v
    if b["score"] is not None:
        out["score"] = stats.merge_numeric(a["score"], b["score"])
    return out


def collect_window(log_dir: str, start: datetime, end: datetime, refs: dict[str, Any],
                   labels: pa.Table | None) -> WindowData:  # fmt: skip
    """Merged partials of the window [start, end) of the prediction log."""
    import ray
    import ray.data
    from datasketches import kll_doubles_sketch

    data = WindowData(start, end)
    files = window_files(log_dir, start, end)
    if not files:
        return data
    label_ref = ray.put(labels) if labels is not None and labels.num_rows else None
    start_us, end_us = int(start.timestamp() * 1e6), int(end.timestamp() * 1e6)
    blocks = -(-len(files) // FILES_PER_TASK)  # ceil: FILES_PER_TASK files per read task
    items = ray.data.from_items([{"path": f} for f in files], override_num_blocks=blocks)
    kwargs = {"start_us": start_us, "end_us": end_us, "refs": refs, "labels": label_ref}
    parts = fold_blocks(items, partial_window, list, kwargs, batch_format="numpy", batch_size=FILES_PER_TASK)
    sketches: dict[str, Any] = {}
    for p in parts:
        data.files += p["files"]
        data.skipped += p["skipped"]
        for v, part in p["versions"].items():
            data.versions[v] = _merge_version(data.versions.get(v), part)
        for status, n in p["refused"].items():
            data.refused[status] = data.refused.get(status, 0) + n
        for s, hexed in p["latency"].items():
            sk = kll_doubles_sketch.deserialize(bytes.fromhex(hexed))
            if s in sketches:
                sketches[s].merge(sk)
            else:
                sketches[s] = sk
        for key, slot in p["labeled"].items():
            into = data.labeled.setdefault(key, {"y": [], "p": [], "k": []})
            for name in into:
                into[name] += slot[name]
    data.latency = sketches
    return data
