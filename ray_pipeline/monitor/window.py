"""One window's monitoring rows: raw values of every statistic, with a verdict where thresholds exist."""

from __future__ import annotations

from typing import Any

import numpy as np

from ray_pipeline.config import MonitoringConfig
from ray_pipeline.monitor import stats
from ray_pipeline.monitor.collect import WindowData
from ray_pipeline.monitor.estimate import window_estimates
from ray_pipeline.serve.predlog import STAGES

ALL = "all"


def _thresholds(m: MonitoringConfig, metric: str, feature: str) -> dict[str, float] | None:
    t = m.feature_thresholds.get(feature, {}).get(metric) or m.thresholds.get(metric)
    return None if t is None else {"warn": t.warn, "alert": t.alert}


def window_rows(data: WindowData, refs: dict[str, Any], tested: dict[str, dict[str, Any]],
                m: MonitoringConfig, calibration: dict[str, list[dict[str, list[float]]]] | None = None,
                ) -> list[dict[str, Any]]:  # fmt: skip
    """Rows (metric, feature, model_version, value, verdict) for one window; empty windows say so.
    `calibration`: per version, the labeled windows its quality estimates are calibrated on."""
    rows: list[dict[str, Any]] = []

    def add(metric: str, feature: str, value: float, version: int | None = None, judge: bool = True) -> None:
        if value is None or not np.isfinite(value):
            return
        v = stats.verdict(value, _thresholds(m, metric, feature)) if judge else None
        rows.append({"metric": metric, "feature": feature, "model_version": version, "value": float(value),
                     "verdict": v})  # fmt: skip

    add("rows", ALL, float(data.rows), judge=False)
    for status, n in sorted(data.refused.items()):
        add("refused", status, float(n), judge=False)
    for version, part in sorted(data.versions.items()):
        v = int(version)
        add("rows", f"v{v}", float(part["rows"]), v, judge=False)
        ref = refs.get(version)
        if ref is None:
            continue  # no reference profile for this version: volume only
        enough = part["rows"] >= m.min_rows  # too few rows: values reported, no verdict
        for name, cur in part["numeric"].items():
            for metric, value in stats.binned_numeric(ref["numeric"][name], cur).items():
                add(metric, name, value, v, enough)
        for name, cur in part["categorical"].items():
            for metric, value in stats.categorical_stats(ref["categorical"][name], cur).items():
                add(metric, name, value, v, enough)
        if part["score"] is not None:
            for metric, value in stats.binned_numeric(ref["score"], part["score"]).items():
                if metric in ("psi", "ks", "js", "wasserstein"):
                    add(metric, "score", value, v, enough)
        binary = tested.get(version, {}).get("task", "binary") == "binary"
        realized = stats.live_quality(*version_labels(data.labeled, v)) if enough and binary else {}
        for metric, value in window_estimates(part, (calibration or {}).get(version, []), realized).items():
            add(metric, f"v{v}", value, v, judge=False)
    for stage in STAGES:
        sketch = data.latency.get(stage)
        if sketch is not None:
            add("latency_p50_ms", stage, sketch.get_quantile(0.5), judge=False)
            add("latency_p99_ms", stage, sketch.get_quantile(0.99), judge=False)
    for key, slot in sorted(data.labeled.items()):
        version = int(key.split("/")[0][1:])
        test = tested.get(str(version), {})
        task = test.get("task", "binary")
        quality = stats.live_quality(np.asarray(slot["y"]), np.asarray(slot["p"]), task)
        for metric, value in quality.items():
            add(metric, key, value, version, judge=False)
        if task == "binary":
            for metric, value in stats.binary_shift_quality(quality, test).items():
                add(metric, key, value, version, judge=False)
        add("error_ratio", key, stats.error_ratio(task, quality, test), version, judge=False)
    for metric, key, value, version in _challenger_gains(data, tested):
        add(metric, key, value, version, judge=False)
    return rows


def version_labels(labeled: dict[str, dict[str, list]], version: int | str,
                   shadow: bool = False) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Labels and scores of a version's labeled rows in a window: the rows it answered, and with
    `shadow` the rows it scored in shadow too."""
    slots = [s for k, s in labeled.items() if k.startswith(f"v{version}/") and (shadow or not k.endswith("/shadow"))]
    return (np.asarray([y for s in slots for y in s["y"]], dtype=np.float64),
            np.asarray([p for s in slots for p in s["p"]], dtype=np.float64))  # fmt: skip


def paired_rows(labeled: dict[str, dict[str, list]], first: str, second: str,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Labels and both scores of the labeled rows two slots ("vN/variant") both scored, by row key."""
    a, b = labeled.get(first), labeled.get(second)
    where = {k: i for i, k in enumerate(b["k"])} if a and b else {}
    pairs = [(i, where[k]) for i, k in enumerate(a["k"]) if k in where] if where else []
    if not pairs:
        return np.empty(0), np.empty(0), np.empty(0)
    ia, ib = (np.asarray(side, dtype=np.int64) for side in zip(*pairs))
    as_array = lambda slot, name: np.asarray(slot[name], dtype=np.float64)  # noqa: E731
    return as_array(a, "y")[ia], as_array(a, "p")[ia], as_array(b, "p")[ib]


def _challenger_gains(data: WindowData, tested: dict[str, dict[str, Any]]) -> list[tuple[str, str, float, int]]:
    """`challenger_gain` of each shadow version on the labeled rows it scored beside the champion:
    the share of the champion's live log-loss (binary) or RMSE (regression) it saves."""
    champion = [k for k in data.labeled if k.endswith("/champion")]
    out = []
    for key in data.labeled:
        if not key.endswith("/shadow") or len(champion) != 1:
            continue
        version = int(key.split("/")[0][1:])
        task = tested.get(str(version), {}).get("task", "binary")
        if task == "multiclass":
            continue  # the log holds served classes, no loss to compare
        y, p_champion, p_shadow = paired_rows(data.labeled, champion[0], key)
        if not y.size:
            continue
        mine, theirs = stats.live_quality(y, p_shadow, task), stats.live_quality(y, p_champion, task)
        loss = "rmse" if task == "regression" else "log_loss"
        if theirs.get(loss):
            out.append(("challenger_gain", key, 1.0 - mine[loss] / theirs[loss], version))
    return out
