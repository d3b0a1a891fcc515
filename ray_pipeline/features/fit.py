"""Fit a FeatureSpec in one distributed pass: partial statistics per block, merged on the driver.

Each block yields count, mean, M2 and a KLL quantile sketch per numeric column and value counts
per categorical column (`features/colstats.py`). Only these summaries reach the driver, never rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from ray_pipeline.config import (
    CategoricalFeatureConfig,
    FeaturesConfig,
    NumericFeatureConfig,
    SchemaConfig,
)
from ray_pipeline.data.fold import fold_blocks
from ray_pipeline.errors import UserError
from ray_pipeline.features.colstats import categorical_partial, merge_categorical, merge_numeric, numeric_partial
from ray_pipeline.features.spec import CategoricalSpec, DateSpec, FeatureSpec, LabelSpec, NumericSpec
from ray_pipeline.features.target_encoding import label_matrix, merge_target, row_folds, target_partial
from ray_pipeline.features.transform import as_float, days_since_epoch


def _numeric_partial(arr: pa.ChunkedArray, name: str, log1p: bool) -> dict[str, Any]:
    x = as_float(arr, name)
    return numeric_partial(np.log1p(np.maximum(x, 0.0)) if log1p else x)


def _date_partial(arr: pa.ChunkedArray) -> dict[str, Any]:
    days = days_since_epoch(arr)
    # a time of day other than midnight anywhere: the hour is a part worth giving
    timed = bool(np.any(np.mod(days[~np.isnan(days)], 1.0) != 0))
    return {"days": numeric_partial(days), "timed": timed}


def partial_stats(batch: pa.Table, numeric: dict[str, bool], categorical: list[str],
                  target: dict[str, Any] | None = None, dates: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Statistics of one block (JSON-safe), for `fold_blocks`; `target`: the target-encoded columns
    and how to read the label (column, task, classes, log1p); `dates`: the timestamp inputs."""
    out = {
        "rows": batch.num_rows,
        "numeric": {name: _numeric_partial(batch[name], name, log1p) for name, log1p in numeric.items()},
        "categorical": {name: categorical_partial(batch[name]) for name in categorical},
        "dates": {name: _date_partial(batch[name]) for name in dates or []},
    }
    if target and target["columns"]:
        y = batch[target["label"]].to_numpy(zero_copy_only=False)
        Y = label_matrix(np.asarray(y), target["task"], target["classes"], target["log1p"])
        folds = row_folds(batch)
        out["target"] = {name: target_partial(batch[name], Y, folds) for name in target["columns"]}
    return out


def _numeric_spec(name: str, cfg: NumericFeatureConfig, merged: dict[str, Any]) -> NumericSpec:
    n = merged["n"]
    clip = None
    if cfg.clip_quantiles is not None and n:
        clip = (merged["sketch"].get_quantile(cfg.clip_quantiles[0]), merged["sketch"].get_quantile(cfg.clip_quantiles[1]))
    if not n:
        fill = 0.0
    elif cfg.impute == "median":
        fill = merged["sketch"].get_quantile(0.5)
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
        cyclic=cfg.cyclic,
    )


def _date_spec(name: str, parts: list[dict[str, Any]]) -> DateSpec:
    merged = merge_numeric([p["days"] for p in parts])
    std = float(np.sqrt(merged["var"]))
    timed = any(p["timed"] for p in parts)
    return DateSpec(name=name, mean=merged["mean"], std=std if std > 0 else 1.0,
                    parts=["month", "weekday", *(["hour"] if timed else [])],
                    missing_indicator=merged["missing"] > 0, count=merged["n"], missing=merged["missing"])  # fmt: skip


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
    shown = ordered[: cfg.max_onehot] if cfg.encoding == "onehot" else ordered
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
    numeric = [n for n in used if schema.features[n].type in ("float", "int")]
    numeric += [f for view in features.views.values() for f in view.feature_names if f not in excluded]
    categorical = [n for n in used if schema.features[n].type == "category"]
    return numeric, categorical


def timestamp_inputs(schema: SchemaConfig, features: FeaturesConfig) -> list[str]:
    """Timestamp features that go to models (their days and calendar parts), in schema order."""
    excluded = set(features.exclude)
    return [n for n, c in schema.features.items() if c.type == "timestamp" and n not in excluded]


def time_parts(schema: SchemaConfig, features: FeaturesConfig) -> list[str]:
    """The event-time parts models get (`features.time_parts`), checked against the schema."""
    if features.time_parts and not schema.event_timestamp:
        raise UserError("features.time_parts: the schema has no event_timestamp to take them from")
    return list(dict.fromkeys(features.time_parts))


def merge_partials(
    partials: list[dict[str, Any]],
    numeric: list[str],
    categorical: list[str],
    features: FeaturesConfig,
    passthrough: list[str],
    oof: dict[str, np.ndarray] | None = None,
    dates: list[str] | None = None,
) -> FeatureSpec:
    """Combine per-block statistics into a FeatureSpec (`oof`, filled when given: each target-encoded
    column's out-of-fold means for the train split's own rows)."""
    oof = {} if oof is None else oof
    rows = sum(p["rows"] for p in partials)
    num_specs = [
        _numeric_spec(
            name,
            features.numeric.get(name, NumericFeatureConfig()),
            merge_numeric([p["numeric"][name] for p in partials]),
        )
        for name in numeric
    ]
    cat_specs = []
    for name in categorical:
        merged = merge_categorical([p["categorical"][name] for p in partials])
        cfg = features.categorical.get(name, CategoricalFeatureConfig())
        cat = _categorical_spec(name, cfg, merged["counts"], merged["missing"], rows)
        if cfg.encoding == "target":
            encoded = merge_target([p["target"][name] for p in partials if "target" in p], list(cat.frequencies),
                                   cfg.target_smoothing)  # fmt: skip
            cat = cat.model_copy(update={"targets": encoded["targets"], "target_prior": encoded["prior"]})
            oof[name] = encoded["oof"]
        cat_specs.append(cat)
    date_specs = [_date_spec(name, [p["dates"][name] for p in partials]) for name in dates or []]
    return FeatureSpec(rows=rows, numeric=num_specs, categorical=cat_specs, passthrough=passthrough, dates=date_specs)


def fit(ds, schema: SchemaConfig, features: FeaturesConfig, passthrough: list[str] | None = None,
        oof: dict[str, np.ndarray] | None = None) -> FeatureSpec:  # fmt: skip
    """Fit a FeatureSpec on a Ray Dataset of accepted rows in one pass (`oof`: filled with the
    target-encoded columns' out-of-fold means for these rows, see `merge_partials`)."""
    numeric, categorical = feature_columns(schema, features)
    dates = timestamp_inputs(schema, features)
    log1p = {n: features.numeric.get(n, NumericFeatureConfig()).log1p for n in numeric}
    label = schema.label_mapping
    encoded = [n for n in categorical if features.categorical.get(n, CategoricalFeatureConfig()).encoding == "target"]
    target = {"columns": encoded, "label": schema.label, "task": label.task, "classes": len(label.classes_text or []),
              "log1p": label.transform != "none"}  # the target as the first fit reads it (auto: log1p first)
    partials = fold_blocks(ds, partial_stats, list, {"numeric": log1p, "categorical": categorical, "target": target,
                                                     "dates": dates})  # fmt: skip
    if passthrough is None:
        passthrough = [*schema.keys, schema.label]
    spec = merge_partials(partials, numeric, categorical, features, passthrough, oof, dates)
    inputs = set(spec.input_columns)
    return spec.model_copy(update={
        # what ingest quarantines when missing, serving refuses when missing (never imputed in silence)
        "required": [n for n, c in schema.features.items() if not c.nullable and n in inputs],
        "entity_key": schema.entity_key,
        "event_timestamp": schema.event_timestamp,
        "time_parts": time_parts(schema, features),
        "label": LabelSpec(column=label.column, task=label.task, positive=label.positive_text or None,
                           negative=label.negative_text, threshold=label.threshold,
                           classes=label.classes_text or None,
                           transform="log1p" if label.transform == "auto" else label.transform,  # auto: log1p first
                           metric=label.metric),
    })
