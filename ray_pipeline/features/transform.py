"""Apply a FeatureSpec: one vectorized function for Ray Data batches and for single requests.

Offline (`transform` on a Dataset) and online (`transform_records`) both call `transform_table`,
so the same input gives bit-identical float32 vectors in training and in serving.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ray_pipeline.data.values import clean_text
from ray_pipeline.features.spec import TIME_PARTS, CategoricalSpec, DateSpec, FeatureSpec, NumericSpec
from ray_pipeline.features.target_encoding import row_folds, target_columns


def as_float(arr: pa.Array | pa.ChunkedArray, name: str) -> np.ndarray:
    """float64 values, NaN where missing or not finite."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    t = arr.type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)):
        raise TypeError(f"feature {name!r}: expected numbers, got {t}")
    values = np.asarray(pc.cast(arr, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False), dtype=np.float64)
    return np.where(np.isfinite(values), values, np.nan)


def numeric_columns(arr: pa.Array | pa.ChunkedArray, col: NumericSpec) -> list[np.ndarray]:
    """log1p -> clip -> impute -> standardize (a cyclic column: sin and cos of its angle, 0 and 0 when
    missing), plus the missing indicator if configured."""
    x = as_float(arr, col.name)
    if col.cyclic:
        return on_cycle(x, col.cyclic) + ([np.isnan(x).astype(np.float64)] if col.missing_indicator else [])
    if col.log1p:
        x = np.log1p(np.maximum(x, 0.0))  # negatives count as 0; NaN stays NaN
    if col.clip is not None:
        x = np.clip(x, col.clip[0], col.clip[1])
    missing = np.isnan(x)
    with np.errstate(over="ignore"):  # overflow saturates in transform_table
        x = (np.where(missing, col.fill, x) - col.mean) / col.std
    return [x, missing.astype(np.float64)] if col.missing_indicator else [x]


def categorical_columns(arr: pa.Array | pa.ChunkedArray, cat: CategoricalSpec, oof: np.ndarray | None = None,
                        folds: np.ndarray | None = None) -> list[np.ndarray]:  # fmt: skip
    """Frequency, one-hot, native or target encoding with the training categories; missing = null or
    empty (`oof`, `folds`: the train split's out-of-fold target means and each row's fold)."""
    # read as ingest reads it (numbers written as categories compare as text; 'WD ' is 'WD'; blank is missing)
    text = clean_text(arr)
    missing = np.asarray(pc.is_null(text).to_numpy(zero_copy_only=False), dtype=bool)
    if cat.encoding == "native":  # the category's code; unseen, rare and missing are missing
        idx = pc.index_in(text, value_set=pa.array(cat.codes, pa.string()))
        return [np.asarray(pc.cast(idx, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False), dtype=np.float64)]
    if cat.encoding == "onehot":
        idx = np.asarray(
            pc.index_in(text, value_set=pa.array(cat.onehot, pa.string())).fill_null(-1).to_numpy(), dtype=np.int64
        )
        return [(idx == j).astype(np.float64) for j in range(len(cat.onehot))]
    keys = pa.array(list(cat.frequencies), pa.string())
    freqs = np.fromiter(cat.frequencies.values(), dtype=np.float64, count=len(cat.frequencies))
    idx = np.asarray(pc.index_in(text, value_set=keys).fill_null(-1).to_numpy(), dtype=np.int64)
    value = np.where(idx >= 0, freqs[np.maximum(idx, 0)] if len(freqs) else 0.0, cat.unseen_value)
    frequency = [np.where(missing, cat.missing_value, value)]
    if cat.encoding == "target":
        return frequency + target_columns(text, cat.targets, cat.target_prior, oof, folds)
    return frequency


def time_part_columns(arr: pa.Array | pa.ChunkedArray, parts: list[str]) -> list[np.ndarray]:
    """Sin and cos of each part's angle on its cycle (UTC), 0 and 0 where the time is missing."""
    return cycle_columns(utc_times(arr), parts)


SECONDS_PER_DAY = 86400.0


def days_since_epoch(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Days since 1970-01-01 UTC as float64 (NaN where missing), from timestamps or ISO 8601 text."""
    ts = utc_times(arr)
    micros = pc.cast(ts, pa.int64())
    values = np.asarray(pc.cast(micros, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False), np.float64)
    return values / (SECONDS_PER_DAY * 1e6)


def date_columns(arr: pa.Array | pa.ChunkedArray, col: DateSpec) -> list[np.ndarray]:
    """A timestamp input's entries: standardized days since 1970 (missing: the training mean, so 0),
    sin and cos of each calendar part (0 and 0 where missing), and the missing indicator if kept."""
    ts = utc_times(arr)
    days = days_since_epoch(ts)
    missing = np.isnan(days)
    out = [(np.where(missing, col.mean, days) - col.mean) / col.std, *cycle_columns(ts, col.parts)]
    return out + ([missing.astype(np.float64)] if col.missing_indicator else [])


def cycle_columns(ts: pa.Array | pa.ChunkedArray, parts: list[str]) -> list[np.ndarray]:
    """Sin and cos of each calendar part of UTC times `ts` on its cycle, 0 and 0 where missing."""
    values = {
        "hour": lambda: pc.add(pc.hour(ts), pc.divide(pc.cast(pc.minute(ts), pa.float64()), 60.0)),
        "weekday": lambda: pc.day_of_week(ts),  # Monday = 0
        "day_of_year": lambda: pc.subtract(pc.day_of_year(ts), 1),
        "month": lambda: pc.subtract(pc.month(ts), 1),
    }
    return [c for part in parts for c in on_cycle(as_float(values[part](), part), TIME_PARTS[part])]


def on_cycle(x: np.ndarray, period: float) -> list[np.ndarray]:
    """Sin and cos of each value's angle on a cycle of `period`; 0 and 0 (no direction) where missing."""
    missing = np.isnan(x)
    angle = 2 * np.pi * np.where(missing, 0.0, x) / period
    return [np.where(missing, 0.0, np.sin(angle)), np.where(missing, 0.0, np.cos(angle))]


def transform_table(table: pa.Table, spec: FeatureSpec, dtype: type = np.float32,
                    oof: dict[str, np.ndarray] | None = None) -> np.ndarray:  # fmt: skip
    """The (rows, features) matrix for `table`, columns in `spec.feature_names` order (with time
    parts, `table` also holds the event time column). `oof`: the train split's out-of-fold target
    means per column (features/target_encoding.py), for the train split's own rows only."""
    absent = [c for c in spec.input_columns if c not in table.column_names]
    if spec.time_parts and spec.event_timestamp not in table.column_names:
        absent.append(spec.event_timestamp)
    if absent:
        raise KeyError(f"input is missing feature column(s) {absent}")
    parts: list[np.ndarray] = []
    for col in spec.numeric:
        parts.extend(numeric_columns(table[col.name], col))
    folds = row_folds(table) if oof and any(c.encoding == "target" for c in spec.categorical) else None
    for cat in spec.categorical:
        held_out = oof.get(cat.name) if oof and cat.encoding == "target" else None
        parts.extend(categorical_columns(table[cat.name], cat, held_out, folds))
    for col in spec.dates:
        parts.extend(date_columns(table[col.name], col))
    if spec.time_parts:
        parts.extend(time_part_columns(table[spec.event_timestamp], spec.time_parts))
    if not parts:
        return np.empty((table.num_rows, 0), dtype=dtype)
    # Saturate at the output type's range instead of overflowing to inf (an extreme input over a
    # tiny training std can overflow even float64): a model never sees a non-finite input.
    limit = np.finfo(dtype).max
    return np.clip(np.column_stack(parts), -limit, limit).astype(dtype, copy=False)


def transform_batch(batch: pa.Table, spec: FeatureSpec) -> pa.Table:
    """Passthrough columns plus one float32 column per feature (a Ray Data UDF)."""
    matrix = transform_table(batch, spec)
    out = {c: batch[c] for c in spec.passthrough if c in batch.column_names}
    for j, name in enumerate(spec.feature_names):
        out[name] = pa.array(matrix[:, j])
    return pa.table(out)


def transform(ds, spec: FeatureSpec):
    """The Ray Dataset of features for `ds` (streaming, vectorized per block)."""
    return ds.map_batches(transform_batch, fn_kwargs={"spec": spec}, batch_format="pyarrow")


def with_event_time(table: pa.Table, spec: FeatureSpec, times: list[Any]) -> pa.Table:
    """`table` with the event time column a spec with time parts reads (`times`: one per row)."""
    if not spec.time_parts or spec.event_timestamp in table.column_names:
        return table
    # datetimes, pandas times or ISO 8601 text
    return table.append_column(spec.event_timestamp, utc_times(pa.array([None if t is None else t for t in times])))


def utc_times(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Times as timestamp[us, UTC]: from timestamps or ISO 8601 text, naive ones taken as UTC (as ingest does)."""
    utc = pa.timestamp("us", tz="UTC")
    if values.type == utc:
        return values
    if values.null_count == len(values):  # no times at all (a column older rows did not carry), whatever its type
        return pa.nulls(len(values), utc)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type) or pa.types.is_null(values.type):
        return pa.array(pd.to_datetime(values.to_pandas(), utc=True, format="ISO8601"), utc)
    if pa.types.is_timestamp(values.type) and values.type.tz is None:
        values = pc.assume_timezone(values, "UTC")
    return pc.cast(values, utc)


def record_times(values: list[Any], name: str) -> pa.Array:
    """One timestamp input of records (datetimes, dates or ISO 8601 text; naive is UTC) as timestamp[us, UTC]."""
    # a number is not a time here (ingest does not read one as a time either)
    bad = next((v for v in values if v is not None and not isinstance(v, date | str)), None)
    parsed = pd.to_datetime(pd.Series(values, dtype=object), utc=True, format="ISO8601", errors="coerce")
    if bad is None:
        unparsed = parsed.isna().to_numpy() & np.array([v is not None for v in values], dtype=bool)
        bad = values[int(np.argmax(unparsed))] if unparsed.any() else None
    if bad is not None:
        raise TypeError(f"feature {name!r}: expected an ISO 8601 time, got {bad!r}")
    return pc.cast(pa.Array.from_pandas(parsed), pa.timestamp("us", tz="UTC"), safe=False)


def records_table(records: Iterable[Mapping[str, Any]], spec: FeatureSpec) -> pa.Table:
    """Raw records as a table of the spec's input columns (absent keys are missing values)."""
    rows = list(records)
    cols: dict[str, pa.Array] = {}
    for col in spec.numeric:
        values = [r.get(col.name) for r in rows]
        bad = next((v for v in values if v is not None and not isinstance(v, int | float)), None)
        if bad is not None:
            raise TypeError(f"feature {col.name!r}: expected a number, got {bad!r}")
        cols[col.name] = pa.array([None if v is None else float(v) for v in values], pa.float64())
    for cat in spec.categorical:
        cols[cat.name] = pa.array(
            [None if r.get(cat.name) is None else str(r.get(cat.name)) for r in rows], pa.string()
        )
    for d in spec.dates:
        cols[d.name] = record_times([r.get(d.name) for r in rows], d.name)
    return pa.table(cols) if cols else pa.table({"_": pa.nulls(len(rows))})


def transform_records(records: Iterable[Mapping[str, Any]], spec: FeatureSpec) -> tuple[np.ndarray, list[str]]:
    """Feature vectors (float32) and their names for a handful of raw records, as at serving time
    (the event time, for a spec with time parts, from each record's own field)."""
    rows = list(records)
    table = with_event_time(records_table(rows, spec), spec, [r.get(str(spec.event_timestamp)) for r in rows])
    return transform_table(table, spec), spec.feature_names
