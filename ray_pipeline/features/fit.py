"""Fit a FeatureSpec in one distributed pass: partial statistics per block, merged on the driver.

Each block yields counts, mean and M2 (merged with Chan's parallel update), a quantile summary
(merged as weighted points) per numeric column and value counts per categorical column. Only
these summaries reach the driver, never rows.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_pipeline.config import (
    CategoricalFeatureConfig,
    FeaturesConfig,
    NumericFeatureConfig,
    SchemaConfig,
)
from ray_pipeline.data.validate import as_text
from ray_pipeline.features.spec import CategoricalSpec, FeatureSpec, LabelSpec, NumericSpec
from ray_pipeline.features.transform import _as_float

# Points of each block's quantile summary: rank error per block about 1/(QUANTILE_POINTS-1).
QUANTILE_POINTS = 1001


def _numeric_partial(arr: pa.ChunkedArray, name: str, log1p: bool) -> dict[str, Any]:
    x = _as_float(arr, name)
    if log1p:
        x = np.log1p(np.maximum(x, 0.0))
    present = x[~np.isnan(x)]
    n = int(present.size)
    mean = float(present.mean()) if n else 0.0
    m2 = float(((present - mean) ** 2).sum()) if n else 0.0
    grid = np.linspace(0.0, 1.0, min(QUANTILE_POINTS, n)) if n else np.empty(0)
    points = np.quantile(present, grid).tolist() if n else []
    return {"n": n, "missing": int(x.size - n), "mean": mean, "m2": m2, "points": points}


def _categorical_partial(arr: pa.ChunkedArray) -> dict[str, Any]:
    text = as_text(arr)
    present = pc.filter(text, pc.fill_null(pc.not_equal(text, ""), False))
    counts = pc.value_counts(present)
    values = counts.field("values").to_pylist()
    return {
        "counts": dict(zip(values, counts.field("counts").to_pylist())),
        "missing": int(len(text) - len(present)),
    }


def partial_stats(batch: pa.Table, numeric: dict[str, bool], categorical: list[str]) -> pa.Table:
    """Statistics of one block as one JSON row (a Ray Data UDF)."""
    stats = {
        "rows": batch.num_rows,
        "numeric": {name: _numeric_partial(batch[name], name, log1p) for name, log1p in numeric.items()},
        "categorical": {name: _categorical_partial(batch[name]) for name in categorical},
    }
    return pa.table({"stats": [json.dumps(stats)]})


def _merge_numeric(parts: list[dict[str, Any]]) -> dict[str, Any]:
    n, mean, m2, missing = 0, 0.0, 0.0, 0
    points: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    for p in parts:
        missing += p["missing"]
        if p["n"] == 0:
            continue
        delta = p["mean"] - mean
        total = n + p["n"]
        mean += delta * p["n"] / total
        m2 += p["m2"] + delta * delta * n * p["n"] / total
        n = total
        pts = np.asarray(p["points"], dtype=np.float64)
        points.append(pts)
        weights.append(np.full(pts.size, p["n"] / pts.size))
    return {
        "n": n,
        "missing": missing,
        "mean": mean,
        "var": m2 / n if n else 0.0,
        "points": np.concatenate(points) if points else np.empty(0),
        "weights": np.concatenate(weights) if weights else np.empty(0),
    }


def _quantile(merged: dict[str, Any], q: float) -> float:
    """Weighted quantile of the merged summaries (interpolated between summary points)."""
    pts, w = merged["points"], merged["weights"]
    order = np.argsort(pts, kind="mergesort")
    pts, w = pts[order], w[order]
    cum = (np.cumsum(w) - 0.5 * w) / w.sum()
    return float(np.interp(q, cum, pts))


def _numeric_spec(name: str, cfg: NumericFeatureConfig, merged: dict[str, Any]) -> NumericSpec:
    n = merged["n"]
    clip = None
    if cfg.clip_quantiles is not None and n:
        clip = (_quantile(merged, cfg.clip_quantiles[0]), _quantile(merged, cfg.clip_quantiles[1]))
    if not n:
        fill = 0.0
    elif cfg.impute == "median":
        fill = _quantile(merged, 0.5)
    else:
        fill = merged["mean"]
    if clip is not None:
        fill = float(np.clip(fill, clip[0], clip[1]))
    std = float(np.sqrt(merged["var"]))
    standardize = cfg.standardize and n > 0
    return NumericSpec(
        name=name,
        log1p=cfg.log1p,
        clip=clip,
        fill=fill,
        missing_indicator=cfg.missing_indicator,
        mean=merged["mean"] if standardize else 0.0,
        std=std if standardize and std > 0 else 1.0,
        count=n,
        missing=merged["missing"],
    )


def _categorical_spec(
    name: str, cfg: CategoricalFeatureConfig, counts: dict[str, int], missing: int, rows: int
) -> CategoricalSpec:
    denom = max(rows, 1)
    kept = {k: c for k, c in counts.items() if c >= cfg.min_count}
    rare = sum(c for c in counts.values() if c < cfg.min_count) / denom
    missing_value = missing / denom if cfg.missing == "own" else 0.0
    unseen_value = {"zero": 0.0, "rare": rare, "missing": missing_value}[cfg.unseen]
    # Most frequent first, ties by name: a stable order for people and for one-hot columns.
    ordered = sorted(kept.items(), key=lambda kv: (-kv[1], kv[0]))
    onehot = [k for k, _ in ordered[: cfg.max_onehot]] if cfg.encoding == "onehot" else []
    shown = ordered if cfg.encoding == "frequency" else ordered[: cfg.max_onehot]
    return CategoricalSpec(
        name=name,
        encoding=cfg.encoding,
        frequencies={k: c / denom for k, c in shown},
        missing_value=missing_value,
        unseen_value=unseen_value,
        rare_frequency=rare,
        onehot=onehot,
    )


def feature_columns(schema: SchemaConfig, features: FeaturesConfig) -> tuple[list[str], list[str]]:
    """Numeric and categorical features that go to models: schema order, then feature views'."""
    excluded = set(features.exclude)
    used = [n for n in schema.features if n not in excluded]
    numeric = [n for n in used if schema.features[n].type != "category"]
    numeric += [f for view in features.views.values() for f in view.feature_names if f not in excluded]
    categorical = [n for n in used if schema.features[n].type == "category"]
    return numeric, categorical


def merge_partials(
    partials: list[dict[str, Any]],
    numeric: list[str],
    categorical: list[str],
    features: FeaturesConfig,
    passthrough: list[str],
) -> FeatureSpec:
    """Combine per-block statistics into a FeatureSpec."""
    rows = sum(p["rows"] for p in partials)
    num_specs = [
        _numeric_spec(
            name,
            features.numeric.get(name, NumericFeatureConfig()),
            _merge_numeric([p["numeric"][name] for p in partials]),
        )
        for name in numeric
    ]
    cat_specs = []
    for name in categorical:
        counts: dict[str, int] = {}
        missing = 0
        for p in partials:
            part = p["categorical"][name]
            missing += part["missing"]
            for key, c in part["counts"].items():
                counts[key] = counts.get(key, 0) + c
        cfg = features.categorical.get(name, CategoricalFeatureConfig())
        cat_specs.append(_categorical_spec(name, cfg, counts, missing, rows))
    return FeatureSpec(rows=rows, numeric=num_specs, categorical=cat_specs, passthrough=passthrough)


def fit(ds, schema: SchemaConfig, features: FeaturesConfig, passthrough: list[str] | None = None) -> FeatureSpec:
    """Fit a FeatureSpec on a Ray Dataset of accepted rows in one pass."""
    numeric, categorical = feature_columns(schema, features)
    log1p = {n: features.numeric.get(n, NumericFeatureConfig()).log1p for n in numeric}
    rows = ds.map_batches(
        partial_stats,
        fn_kwargs={"numeric": log1p, "categorical": categorical},
        batch_format="pyarrow",
    ).take_all()
    partials = [json.loads(r["stats"]) for r in rows]
    if passthrough is None:
        passthrough = [*schema.keys, schema.label]
    spec = merge_partials(partials, numeric, categorical, features, passthrough)
    label = schema.label_mapping
    return spec.model_copy(update={
        "entity_key": schema.entity_key,
        "event_timestamp": schema.event_timestamp,
        "label": LabelSpec(column=label.column, positive=label.positive_text or None,
                           negative=label.negative_text, threshold=label.threshold),
    })
