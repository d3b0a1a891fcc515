"""Row-level validation of one batch against the schema: coerce types, flag bad rows with a reason.

`validate_batch` is a pure function on a pyarrow Table so Ray Data can run it on every block and
tests can call it directly. It never drops a row: each output row is either accepted (typed
values, `_reason` null) or rejected (`_reason`, `_field`, `_detail` set, its input values kept
as JSON text in `_original` for the quarantine).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ray_pipeline.config import FeatureColumn, LabelMapping, SchemaConfig
from ray_pipeline.data.values import as_text, clean_text, text_numbers

REASON, FIELD, DETAIL = "_reason", "_field", "_detail"
# Set by the reader: the file a row came from, its 1-based row number there, and a global order
# (file index, row) that makes "the first copy" of a duplicate well defined.
SOURCE, ROW, ORDER = "_source_file", "_row", "_order"
# Input values of rejected rows as JSON text, so accepted rows carry nothing extra.
ORIGINAL = "_original"
PASSTHROUGH = [SOURCE, ROW, ORDER]
META_COLUMNS = [REASON, FIELD, DETAIL, SOURCE, ROW]
INTERNAL = {REASON, FIELD, DETAIL, SOURCE, ROW, ORDER, ORIGINAL}

# Reason codes, in the order checks run; a row gets the first that applies to it.
REASONS = [
    "unparseable_row",
    "missing_entity",
    "missing_timestamp",
    "bad_timestamp",
    "missing_label",
    "invalid_label",
    "invalid_split",
    "invalid_type",
    "out_of_range",
    "unknown_category",
    "null_value",
    "duplicate",
]

TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")


class _Verdicts:
    """First-reason-wins bookkeeping for one batch; details are built only for flagged rows."""

    def __init__(self, n: int) -> None:
        self.open = np.ones(n, dtype=bool)
        self.reason = np.full(n, None, dtype=object)
        self.field = np.full(n, None, dtype=object)
        self.detail = np.full(n, None, dtype=object)

    def flag(self, mask: np.ndarray, reason: str, field: str, detail: str, quote: pa.Array | None = None) -> None:
        """Give rows in `mask` that have no verdict yet this one; `quote` appends their value."""
        idx = np.flatnonzero(mask & self.open)
        if not len(idx):
            return
        self.open[idx] = False
        self.reason[idx] = reason
        self.field[idx] = field
        if quote is None:
            self.detail[idx] = detail
        else:
            values = as_text(quote.take(pa.array(idx))).to_pylist()
            self.detail[idx] = [f"{detail}: {'null' if x is None else repr(x)}" for x in values]


def _np(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(arr.to_numpy(zero_copy_only=False))


def _trimmed(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Cleaned text (`values.clean_text`: trimmed, empty as null) and the mask of present values."""
    trimmed = clean_text(arr)
    return trimmed, _np(pc.is_valid(trimmed))


def _is_numeric(arr: pa.Array | pa.ChunkedArray) -> bool:
    t = arr.type
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _to_number(arr: pa.ChunkedArray, name: str, v: _Verdicts) -> tuple[np.ndarray, np.ndarray]:
    """Values as float64 (NaN where missing) and a mask of values present in the input."""
    if _is_numeric(arr):
        values = _np(pc.cast(arr, pa.float64())).astype(np.float64)
        present = ~_np(pc.is_null(arr, nan_is_null=True))
        return np.where(present, values, np.nan), present
    text, present = _trimmed(arr)
    try:
        values = _np(pc.cast(text, pa.float64())).astype(np.float64)
    except pa.ArrowInvalid:  # some value is not a number: parse leniently, flag those rows
        values = pd.to_numeric(pd.Series(text.to_pylist(), dtype=object), errors="coerce").to_numpy(np.float64)
        is_nan_text = _np(pc.fill_null(pc.equal(pc.utf8_lower(text), "nan"), False))
        v.flag(present & np.isnan(values) & ~is_nan_text, "invalid_type", name, f"{name}: not a number", text)
    # A NaN read from text ("nan") counts as missing, like a NaN in a Parquet float column.
    return values, present & ~np.isnan(values)


def _check_numeric(arr: pa.ChunkedArray, name: str, col: FeatureColumn, v: _Verdicts) -> pa.Array:
    values, present = _to_number(arr, name, v)
    text = arr  # quoted in details only for flagged rows (casting whole columns to text is slow)
    finite = np.isfinite(values)
    v.flag(present & ~finite, "out_of_range", name, f"{name}: not a finite number", text)
    if col.type == "int":
        fractional = present & finite & (values != np.round(values))
        v.flag(fractional, "invalid_type", name, f"{name}: not an integer", text)
    with np.errstate(invalid="ignore"):
        if col.min is not None:
            v.flag(present & (values < col.min), "out_of_range", name, f"{name}: below min {col.min}", text)
        if col.max is not None:
            v.flag(present & (values > col.max), "out_of_range", name, f"{name}: above max {col.max}", text)
    if not col.nullable:
        v.flag(~present, "null_value", name, f"{name}: missing and the column is not nullable")
    ok = present & finite
    if col.type == "int":
        return pa.array(np.where(ok, values, 0).astype(np.int64), mask=~ok)
    return pa.array(np.where(ok, values, np.nan), mask=~ok)


def _check_category(arr: pa.ChunkedArray, name: str, col: FeatureColumn, v: _Verdicts) -> pa.Array:
    # read as init reads its sample: 'WD ' is the category 'WD', a blank is missing
    text, present = _trimmed(arr)
    if col.categories is not None:
        allowed = _np(pc.is_in(text, value_set=pa.array(col.categories, pa.string())))
        v.flag(present & ~allowed, "unknown_category", name, f"{name}: not an allowed category", arr)
    if not col.nullable:
        v.flag(~present, "null_value", name, f"{name}: missing and the column is not nullable")
    return text


def _check_entity(arr: pa.ChunkedArray, schema: SchemaConfig, v: _Verdicts) -> pa.Array:
    name = schema.entity_key
    text, present = _trimmed(arr)
    v.flag(~present, "missing_entity", name, f"{name}: entity key is missing")
    if schema.entity_type == "str":
        return text
    if pa.types.is_integer(arr.type):
        ids = pc.cast(arr, pa.int64())
        return ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    values, present = _to_number(arr, name, v)
    integral = present & np.isfinite(values) & (values == np.round(values))
    v.flag(present & ~integral, "invalid_type", name, f"{name}: not an integer id", arr)
    return pa.array(np.where(integral, values, 0).astype(np.int64), mask=~integral)


def _check_timestamp(arr: pa.ChunkedArray, name: str, v: _Verdicts) -> pa.Array:
    ts = _parse_times(arr, name, v)
    v.flag(_np(pc.is_null(ts)), "missing_timestamp", name, f"{name}: event timestamp is missing")
    return ts


def _check_time_feature(arr: pa.ChunkedArray, name: str, col: FeatureColumn, v: _Verdicts) -> pa.Array:
    ts = _parse_times(arr, name, v)
    if not col.nullable:
        v.flag(_np(pc.is_null(ts)), "null_value", name, f"{name}: missing and the column is not nullable")
    return ts


def _parse_times(arr: pa.ChunkedArray, name: str, v: _Verdicts) -> pa.Array:
    """Times as timestamp[us, UTC] (null where missing); text that is not ISO 8601 is flagged."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_date(arr.type):
        arr = pc.cast(arr, pa.timestamp("us"))
    if pa.types.is_timestamp(arr.type):
        # Naive timestamps are taken as UTC; aware ones are converted to it.
        return pc.cast(arr if arr.type.tz else pc.assume_timezone(arr, "UTC"), TIMESTAMP_TYPE)
    text, present = _trimmed(arr)
    try:  # fast path: every value is ISO 8601 with a zone
        return pc.cast(text, TIMESTAMP_TYPE)
    except pa.ArrowInvalid:
        pass
    parsed = pd.to_datetime(pd.Series(text.to_pylist(), dtype=object), errors="coerce", utc=True, format="ISO8601")
    bad = present & parsed.isna().to_numpy()
    v.flag(bad, "bad_timestamp", name, f"{name}: not an ISO 8601 timestamp", text)
    # NaT (missing or unparseable) becomes null; sub-microsecond digits are truncated.
    return pc.cast(pa.Array.from_pandas(parsed), TIMESTAMP_TYPE, safe=False)


def _check_feature(arr: pa.ChunkedArray, name: str, col: FeatureColumn, v: _Verdicts) -> pa.Array:
    """One feature column typed by its schema type, its offending rows flagged in `v`."""
    check = {"category": _check_category, "timestamp": _check_time_feature}.get(col.type, _check_numeric)
    return check(arr, name, col, v)


_TRUE, _FALSE = ["1", "true", "True", "TRUE"], ["0", "false", "False", "FALSE"]
SPLITS = ("train", "valid", "test")


def _among(text: pa.Array, values: list[str]) -> np.ndarray:
    return _np(pc.fill_null(pc.is_in(text, value_set=pa.array(values, pa.string())), False)).astype(bool)


def label_values(arr: pa.Array | pa.ChunkedArray, mapping: LabelMapping) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The target per value under `mapping` (0/1 for binary, the class index for multiclass, the
    number for regression), a mask of present values and a mask of values that fit the mapping
    (ingest, and labels arriving later for monitoring, share this)."""
    text, present = _trimmed(arr)
    if mapping.task == "multiclass":
        classes = mapping.classes_text
        index = _np(pc.fill_null(pc.index_in(text, value_set=pa.array(classes, pa.string())), -1)).astype(np.int64)
        fits = present & (index >= 0)
        return np.where(fits, index, 0).astype(np.int16), present, fits
    if mapping.task == "regression":
        values = _np(pc.cast(arr, pa.float64())).astype(np.float64) if _is_numeric(arr) else text_numbers(text)
        fits = present & np.isfinite(values)
        if mapping.transform in ("log1p", "auto"):  # log(1 + y) needs y > -1
            with np.errstate(invalid="ignore"):
                fits &= values > -1
        return np.where(fits, values, 0.0), present, fits
    if mapping.threshold is not None:
        values = _np(pc.cast(arr, pa.float64())).astype(np.float64) if _is_numeric(arr) else text_numbers(text)
        fits = present & np.isfinite(values)
        with np.errstate(invalid="ignore"):
            return (fits & (values > mapping.threshold)).astype(np.int8), present, fits
    if mapping.positive is None:  # plain 0/1: numbers (1, 1.0) or true/false
        if _is_numeric(arr):
            num = _np(pc.cast(arr, pa.float64())).astype(np.float64)
        else:
            words = np.where(_among(text, _TRUE), 1.0, np.where(_among(text, _FALSE), 0.0, np.nan))
            rest = present & np.isnan(words)
            num = words if not rest.any() else np.where(rest, text_numbers(text), words)
        pos, neg = present & (num == 1.0), present & (num == 0.0)
        return pos.astype(np.int8), present, pos | neg
    pos = present & _among(text, mapping.positive_text)
    negative = mapping.negative_text
    neg = present & (~pos if negative is None else _among(text, negative))
    return pos.astype(np.int8), present, pos | neg


def _check_label(arr: pa.ChunkedArray, mapping: LabelMapping, v: _Verdicts) -> pa.Array:
    name = mapping.column
    values, present, fits = label_values(arr, mapping)
    v.flag(~present, "missing_label", name, f"{name}: label is missing")
    if mapping.task == "multiclass":
        expected = f"one of the classes {mapping.classes_text}"
    elif mapping.task == "regression":
        expected = "a finite number" + (" above -1 (the target is fitted as log1p)" if mapping.transform != "none" else "")
    elif mapping.threshold is not None:
        expected = f"a number (positive when > {mapping.threshold:g})"
    elif mapping.positive is None:
        expected = "0 or 1"
    else:
        negative = mapping.negative_text
        expected = f"one of positive {mapping.positive_text}" + (f" or negative {negative}" if negative else "")
    v.flag(present & ~fits, "invalid_label", name, f"{name}: label is not {expected}", arr)
    return pa.array(values, mask=~fits)


def _check_split(arr: pa.ChunkedArray, name: str, v: _Verdicts) -> pa.Array:
    text, present = _trimmed(arr)
    lowered = pc.utf8_lower(text)
    known = _np(pc.fill_null(pc.is_in(lowered, value_set=pa.array(SPLITS)), False))
    v.flag(~known, "invalid_split", name, f"{name}: not one of {', '.join(SPLITS)}", arr)
    return lowered


def validate_batch(batch: pa.Table, schema: SchemaConfig, keep_extra: bool = True) -> pa.Table:
    """Typed schema columns (+ extras) and verdict columns for every input row, in input order."""
    n = batch.num_rows
    v = _Verdicts(n)
    missing = [c for c in schema.columns if c not in batch.column_names]
    if missing:
        # Sources are checked per file before reading; a batch without a column means a JSON
        # file where no row in this batch has the key, so every row lacks it.
        for c in missing:
            batch = batch.append_column(c, pa.nulls(n, pa.string()))

    batch = _flag_unparseable(batch, v)

    typed: dict[str, pa.Array] = {}
    if schema.entity_key:
        typed[schema.entity_key] = _check_entity(batch[schema.entity_key], schema, v)
    if schema.event_timestamp:
        typed[schema.event_timestamp] = _check_timestamp(batch[schema.event_timestamp], schema.event_timestamp, v)
    typed[schema.label] = _check_label(batch[schema.label], schema.label_mapping, v)
    if schema.split_column:
        typed[schema.split_column] = _check_split(batch[schema.split_column], schema.split_column, v)
    for name, col in schema.features.items():
        typed[name] = _check_feature(batch[name], name, col, v)

    special = set(schema.columns) | INTERNAL
    extras = [c for c in batch.column_names if c not in special]
    out = {c: typed[c] for c in schema.columns}
    if keep_extra:
        out.update({c: batch[c] for c in extras})

    return _with_verdicts(out, batch, v, [*schema.columns, *extras])


def _flag_unparseable(batch: pa.Table, v: _Verdicts) -> pa.Table:
    """Flag rows the reader could not parse (their reason is in `_unparseable`); drop that column."""
    if "_unparseable" not in batch.column_names:
        return batch
    why = as_text(batch["_unparseable"])
    v.flag(_np(pc.is_valid(why)), "unparseable_row", "*", "")
    v.detail[~v.open] = np.asarray(why.to_pylist(), dtype=object)[~v.open]
    return batch.drop_columns(["_unparseable"])


def _with_verdicts(out: dict[str, pa.Array], batch: pa.Table, v: _Verdicts, shown: list[str]) -> pa.Table:
    """`out` plus the verdict columns, rejected rows' input text (`shown` columns) and the reader's tags."""
    rejected = np.flatnonzero(~v.open)
    original = np.full(batch.num_rows, None, dtype=object)
    if len(rejected):
        take = pa.array(rejected)
        texts = {c: as_text(batch[c].take(take)).to_pylist() for c in shown}
        original[rejected] = [json.dumps({c: texts[c][i] for c in texts}) for i in range(len(rejected))]
    out[ORIGINAL] = pa.array(original, type=pa.string())
    out[REASON] = pa.array(v.reason, type=pa.string())
    out[FIELD] = pa.array(v.field, type=pa.string())
    out[DETAIL] = pa.array(v.detail, type=pa.string())
    for c in PASSTHROUGH:
        if c in batch.column_names:
            out[c] = batch[c]
    return pa.table(out)


def validate_inputs(batch: pa.Table, columns: dict[str, FeatureColumn], keep: list[str]) -> pa.Table:
    """Model inputs typed as ingest types them, plus the `keep` columns as read, with the same
    verdict columns as `validate_batch` (batch scoring: a bad row is quarantined, not scored)."""
    n = batch.num_rows
    v = _Verdicts(n)
    batch = _flag_unparseable(batch, v)
    out: dict[str, pa.Array] = {c: batch[c] for c in keep if c in batch.column_names}
    for name, col in columns.items():
        arr = batch[name] if name in batch.column_names else pa.nulls(n, pa.string())
        out[name] = _check_feature(arr, name, col, v)
    return _with_verdicts(out, batch, v, [c for c in [*keep, *columns] if c in batch.column_names])


def accepted_part(validated: pa.Table) -> pa.Table:
    """Rows that passed, without verdict or original-text columns."""
    keep = pc.is_null(validated[REASON])
    cols = [c for c in validated.column_names if c not in INTERNAL]
    return validated.filter(keep).select(cols)


def quarantine_part(validated: pa.Table) -> pa.Table:
    """Rows that failed, as text under their column names (input values as read), plus the reason.

    Rows rejected after validation (duplicates) have no stored input: their values were valid,
    so their typed values written as text stand for them.
    """
    bad = validated.filter(pc.is_valid(validated[REASON]))
    names = [c for c in bad.column_names if c not in INTERNAL]
    stored = [json.loads(x) if x is not None else None for x in bad[ORIGINAL].to_pylist()]
    out: dict[str, pa.Array] = {}
    for c in names:
        typed = as_text(bad[c]).to_pylist()
        out[c] = pa.array([row.get(c) if row is not None else t for row, t in zip(stored, typed)], type=pa.string())
    for c in META_COLUMNS:
        if c in bad.column_names:
            out[c] = pc.cast(bad[c], pa.string()) if c == SOURCE else bad[c]
    return pa.table(out)
