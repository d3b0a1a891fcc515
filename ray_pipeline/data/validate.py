"""Row-level validation of one batch against the schema: coerce types, flag bad rows with a reason.

`validate_batch` is a pure function on a pyarrow Table so Ray Data can run it on every block and
tests can call it directly. It never drops a row: each output row is either accepted (typed
values, `_reason` null) or rejected (`_reason`, `_field`, `_detail` set, original text kept in
`_orig_<column>`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ray_pipeline.config import FeatureColumn, SchemaConfig

REASON, FIELD, DETAIL, SOURCE = "_reason", "_field", "_detail", "_source_file"
ORIG_PREFIX = "_orig_"
META_COLUMNS = [REASON, FIELD, DETAIL, SOURCE]

# Reason codes, in the order checks run; a row gets the first that applies to it.
REASONS = [
    "unparseable_row",
    "missing_entity",
    "missing_timestamp",
    "bad_timestamp",
    "missing_label",
    "invalid_label",
    "invalid_type",
    "out_of_range",
    "unknown_category",
    "null_value",
    "duplicate",
]

TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")


class _Verdicts:
    """First-reason-wins bookkeeping for one batch."""

    def __init__(self, n: int) -> None:
        self.reason = np.full(n, None, dtype=object)
        self.field = np.full(n, None, dtype=object)
        self.detail = np.full(n, None, dtype=object)

    def flag(self, mask: np.ndarray, reason: str, field: str, detail: pd.Series | str) -> None:
        new = mask & pd.isna(self.reason)
        if not new.any():
            return
        self.reason[new] = reason
        self.field[new] = field
        if isinstance(detail, str):
            self.detail[new] = detail
        else:
            self.detail[new] = np.asarray(detail, dtype=object)[new]


def _as_text(arr: pa.ChunkedArray | pa.Array) -> pd.Series:
    """Original values as text (what the quarantine keeps and what error details quote)."""
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        return pd.Series(arr.to_pylist(), dtype=object)
    return pd.Series(pc.cast(arr, pa.string()).to_pylist(), dtype=object)


def _quote(text: pd.Series) -> pd.Series:
    return text.map(lambda v: repr(v) if v is not None else "null")


def _to_number(arr: pa.ChunkedArray, name: str, v: _Verdicts) -> tuple[np.ndarray, np.ndarray]:
    """Values as float64 (NaN where missing) and a mask of values present in the input."""
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_boolean(arr.type):
        values = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
        present = ~np.asarray(pc.is_null(arr, nan_is_null=True).to_numpy(zero_copy_only=False))
        return np.where(present, values, np.nan), present
    text = _as_text(arr)
    stripped = text.str.strip()
    present = (stripped.notna() & (stripped != "")).to_numpy()
    values = pd.to_numeric(stripped.where(present, None), errors="coerce").to_numpy(np.float64)
    # A NaN read from text ("nan") counts as missing; text that is not a number is a type error.
    bad = present & np.isnan(values) & ~stripped.str.lower().isin(["nan"]).to_numpy()
    v.flag(bad, "invalid_type", name, f"{name}: not a number: " + _quote(text))
    present = present & ~np.isnan(values)
    return values, present


def _check_numeric(arr: pa.ChunkedArray, name: str, col: FeatureColumn, v: _Verdicts) -> pa.Array:
    values, present = _to_number(arr, name, v)
    text = _quote(_as_text(arr))
    finite = np.isfinite(values)
    v.flag(present & ~finite, "out_of_range", name, f"{name}: not a finite number: " + text)
    if col.type == "int":
        fractional = present & finite & (values != np.round(values))
        v.flag(fractional, "invalid_type", name, f"{name}: not an integer: " + text)
    if col.min is not None:
        v.flag(present & (values < col.min), "out_of_range", name, f"{name}: below min {col.min}: " + text)
    if col.max is not None:
        v.flag(present & (values > col.max), "out_of_range", name, f"{name}: above max {col.max}: " + text)
    if not col.nullable:
        v.flag(~present, "null_value", name, f"{name}: missing and the column is not nullable")
    ok = present & finite
    if col.type == "int":
        return pa.array(np.where(ok, values, 0).astype(np.int64), mask=~ok)
    return pa.array(np.where(ok, values, np.nan), mask=~ok)


def _check_category(arr: pa.ChunkedArray, name: str, col: FeatureColumn, v: _Verdicts) -> pa.Array:
    text = _as_text(arr)
    present = text.notna().to_numpy()
    if col.categories is not None:
        unknown = present & ~text.isin(col.categories).to_numpy()
        v.flag(unknown, "unknown_category", name, f"{name}: not an allowed category: " + _quote(text))
    if not col.nullable:
        v.flag(~present, "null_value", name, f"{name}: missing and the column is not nullable")
    return pa.array(text.where(present, None).tolist(), type=pa.string())


def _check_entity(arr: pa.ChunkedArray, schema: SchemaConfig, v: _Verdicts) -> pa.Array:
    name = schema.entity_key
    text = _as_text(arr)
    present = (text.notna() & (text.str.strip() != "")).to_numpy()
    v.flag(~present, "missing_entity", name, f"{name}: entity key is missing")
    if schema.entity_type == "str":
        return pa.array(text.str.strip().where(present, None).tolist(), type=pa.string())
    if pa.types.is_integer(arr.type):
        return pc.cast(arr, pa.int64())
    values, present = _to_number(arr, name, v)
    integral = present & np.isfinite(values) & (values == np.round(values))
    v.flag(present & ~integral, "invalid_type", name, f"{name}: not an integer id: " + _quote(text))
    return pa.array(np.where(integral, values, 0).astype(np.int64), mask=~integral)


def _check_timestamp(arr: pa.ChunkedArray, name: str, v: _Verdicts) -> pa.Array:
    if pa.types.is_timestamp(arr.type):
        # Naive timestamps are taken as UTC; aware ones are converted to it.
        ts = arr if arr.type.tz else pc.assume_timezone(arr, "UTC")
        ts = pc.cast(ts, TIMESTAMP_TYPE)
        v.flag(np.asarray(pc.is_null(ts).to_numpy(zero_copy_only=False)), "missing_timestamp", name,
               f"{name}: event timestamp is missing")
        return ts.combine_chunks() if isinstance(ts, pa.ChunkedArray) else ts
    if pa.types.is_date(arr.type):
        arr = pc.cast(pc.cast(arr, pa.timestamp("us")), pa.string())
    text = _as_text(arr)
    stripped = text.str.strip()
    present = (stripped.notna() & (stripped != "")).to_numpy()
    v.flag(~present, "missing_timestamp", name, f"{name}: event timestamp is missing")
    parsed = pd.to_datetime(stripped.where(present, None), errors="coerce", utc=True, format="ISO8601")
    bad = present & parsed.isna().to_numpy()
    v.flag(bad, "bad_timestamp", name, f"{name}: not an ISO 8601 timestamp: " + _quote(text))
    # NaT (missing or unparseable) becomes null; sub-microsecond digits are truncated.
    return pc.cast(pa.Array.from_pandas(parsed), TIMESTAMP_TYPE, safe=False)


def _check_label(arr: pa.ChunkedArray, name: str, v: _Verdicts) -> pa.Array:
    text = _as_text(arr)
    present_in = (text.notna() & (text.str.strip() != "")).to_numpy()
    v.flag(~present_in, "missing_label", name, f"{name}: label is missing")
    values, present = _to_number(arr, name, v)
    binary = present & np.isin(values, [0.0, 1.0])
    v.flag(present_in & ~binary, "invalid_label", name, f"{name}: label is not 0 or 1: " + _quote(text))
    return pa.array(np.where(binary, values, 0).astype(np.int8), mask=~binary)


def validate_batch(
    batch: pa.Table,
    schema: SchemaConfig,
    source_column: str | None = None,
    keep_extra: bool = True,
    keep_originals: bool = False,
) -> pa.Table:
    """Typed schema columns (+ extras) and verdict columns for every input row, in input order.

    `keep_originals` keeps `_orig_*` text for accepted rows too (needed when a later step, such
    as duplicate detection, may still reject them).
    """
    n = batch.num_rows
    v = _Verdicts(n)
    missing = [c for c in schema.columns if c not in batch.column_names]
    if missing:
        # Sources are checked per file before reading; a batch without a column means a JSON
        # file where no row in this batch has the key, so every row lacks it.
        for c in missing:
            batch = batch.append_column(c, pa.nulls(n, pa.string()))

    if "_unparseable" in batch.column_names:
        bad = np.asarray(batch["_unparseable"].to_numpy(zero_copy_only=False), dtype=object)
        v.flag(pd.notna(bad), "unparseable_row", "*", bad)
        batch = batch.drop_columns(["_unparseable"])

    typed: dict[str, pa.Array] = {}
    typed[schema.entity_key] = _check_entity(batch[schema.entity_key], schema, v)
    typed[schema.event_timestamp] = _check_timestamp(batch[schema.event_timestamp], schema.event_timestamp, v)
    typed[schema.label] = _check_label(batch[schema.label], schema.label, v)
    for name, col in schema.features.items():
        check = _check_category if col.type == "category" else _check_numeric
        typed[name] = check(batch[name], name, col, v)

    special = set(schema.columns) | {source_column}
    extras = [c for c in batch.column_names if c not in special]
    out = {c: typed[c] for c in schema.columns}
    if keep_extra:
        out.update({c: batch[c] for c in extras})

    rejected = pd.notna(v.reason)
    for c in [*schema.columns, *(extras if keep_extra else [])]:
        text = _as_text(batch[c])
        keep = np.ones(n, dtype=bool) if keep_originals else rejected
        out[ORIG_PREFIX + c] = pa.array(text.where(keep, None).tolist(), type=pa.string())
    out[REASON] = pa.array(v.reason, type=pa.string())
    out[FIELD] = pa.array(v.field, type=pa.string())
    out[DETAIL] = pa.array(v.detail, type=pa.string())
    if source_column and source_column in batch.column_names:
        out[SOURCE] = pc.cast(batch[source_column], pa.string())
    else:
        out[SOURCE] = pa.nulls(n, pa.string())
    return pa.table(out)


def accepted_part(validated: pa.Table) -> pa.Table:
    """Rows that passed, without verdict or original-text columns."""
    keep = pc.is_null(validated[REASON])
    cols = [c for c in validated.column_names if not c.startswith("_")]
    return validated.filter(keep).select(cols)


def quarantine_part(validated: pa.Table) -> pa.Table:
    """Rows that failed, with their original text under the original column names and the reason."""
    bad = validated.filter(pc.is_valid(validated[REASON]))
    originals = [c for c in bad.column_names if c.startswith(ORIG_PREFIX)]
    out = {c[len(ORIG_PREFIX):]: bad[c] for c in originals}
    out.update({c: bad[c] for c in META_COLUMNS})
    return pa.table(out)
