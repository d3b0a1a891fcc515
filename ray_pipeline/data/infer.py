"""`ray-pipeline init`: read a sample of a table, infer its schema, write a commented pipeline.yaml.

Every decision comes with its reason (printed, and written as a comment beside the key), and
every column left out is named with why, so a user can check the guess before the first run.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
import yaml

from ray_pipeline.config import DEFAULT_NULL_VALUES, PipelineConfig, SourceConfig, parse_config
from ray_pipeline.config.writer import Section, dump
from ray_pipeline.data.values import clean_series
from ray_pipeline.data.sources import IngestError, SourceFiles, resolve_source
from ray_pipeline.errors import UserError

SAMPLE_ROWS = 100_000
MAX_CATEGORIES = 20  # at most this many distinct values: a closed set, listed and one-hot encoded
ID_NAME = re.compile(r"(?i:(^|_)(id|uuid|guid|key)$)|[a-z]I[Dd]$|^[Ii][Dd]([A-Z_]|$)")  # id, user_id, customerID, idNum
NEW_LABELS = 1000  # the continuous-training trigger init proposes
# periods of calendar inputs by the unit in their name (CALENDAR_NAME's groups)
CYCLES = {"month": 12.0, "mnth": 12.0, "hour": 24.0, "hr": 24.0, "hour_of_day": 24.0, "minute": 60.0,
          "dayofweek": 7.0, "weekday": 7.0, "dow": 7.0, "day_of_week": 7.0, "day_of_year": 366.0,
          "day_of_month": 31.0, "quarter": 4.0, "week": 53.0, "week_of_year": 53.0}  # fmt: skip
TIME_NAME = re.compile(r"(time|date|_ts$|^ts$|timestamp|_at$)", re.IGNORECASE)
CALENDAR_NAME = re.compile(
    r"(?i)(^|_)(month|mnth|day|dayofweek|weekday|dow|hour|hr|minute|year|yr|week|quarter|season)(_of_[a-z]+)?$"
)


@dataclass
class Column:
    """What init decided for one column, and why."""

    name: str
    role: str  # feature / label / entity_key / event_timestamp / left out
    why: str
    spec: dict[str, Any] = field(default_factory=dict)  # data.schema.features entry for features
    encoding: str | None = None  # categorical encoding written to features.categorical
    sample_range: tuple[float, float] | None = None  # numeric: min and max seen (a comment, not a limit)
    cyclic: float | None = None  # a calendar input's period (features.numeric.NAME.cyclic)


@dataclass
class Inference:
    """The inferred config as YAML text, and the per-column decisions behind it."""

    yaml_text: str
    columns: list[Column]
    rows_sampled: int
    notes: list[str]
    config: PipelineConfig

    def render(self) -> str:
        """What init inferred and why, for people."""
        lines = [f"sampled {self.rows_sampled:,} rows"]
        for c in self.columns:
            lines.append(f"  {c.name:<24} {c.role:<16} {c.why}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def read_sample(src: SourceFiles, rows: int = SAMPLE_ROWS, seed: int = 0) -> tuple[pa.Table, int]:
    """A uniform sample of up to `rows` rows from every file and row group (in table order), with
    pyarrow's type inference; and the ragged CSV rows skipped while reading (ingest quarantines
    them). The first rows of a table with a year of records describe its first months only."""
    sampler = _BottomK(rows, seed)
    ragged = 0
    for path in src.files:
        try:
            if src.format == "parquet":
                for rb in pq.ParquetFile(path, filesystem=src.filesystem).iter_batches(batch_size=65_536):
                    sampler.add(pa.Table.from_batches([rb]))
                continue
            with src.filesystem.open_input_stream(path, compression="detect") as stream:
                if src.format == "json":
                    sampler.add(pajson.read_json(stream))
                    continue

                def skip(row: Any) -> str:
                    nonlocal ragged
                    ragged += 1
                    return "skip"

                # Text first: a column's type is inferred from the sample below, not from the first
                # block (a later block that disagrees would stop the read).
                reader = pacsv.open_csv(
                    stream,
                    parse_options=pacsv.ParseOptions(invalid_row_handler=skip),
                    convert_options=pacsv.ConvertOptions(null_values=DEFAULT_NULL_VALUES, strings_can_be_null=True,
                                                         column_types=_all_text(path, src)),  # fmt: skip
                )
                for rb in reader:
                    sampler.add(pa.Table.from_batches([rb]))
        except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
            raise IngestError(f"{src.display(path)}: cannot read as {src.format}: {exc}") from None
    sample = sampler.table()
    if sample is None or sample.num_rows == 0:
        raise IngestError(f"{src.location}: no rows to sample")
    if src.format == "csv":  # infer types on the sample, as pyarrow would on the file
        sink = pa.BufferOutputStream()
        pacsv.write_csv(sample, sink)
        sample = pacsv.read_csv(pa.BufferReader(sink.getvalue()), convert_options=pacsv.ConvertOptions(
            null_values=DEFAULT_NULL_VALUES, strings_can_be_null=True))  # fmt: skip
    return sample, ragged


def _all_text(path: str, src: SourceFiles) -> dict[str, pa.DataType]:
    """Every column of a CSV file as text (its header read once more)."""
    with src.filesystem.open_input_stream(path, compression="detect") as head:
        options = pacsv.ParseOptions(invalid_row_handler=lambda row: "skip")
        names = pacsv.open_csv(head, parse_options=options).schema.names
    return {n: pa.string() for n in names}


class _BottomK:
    """Uniform sampling without replacement over a stream of tables: every row gets a seeded random
    key and the `k` smallest keys are kept (a reservoir that takes whole batches)."""

    def __init__(self, k: int, seed: int) -> None:
        self.k, self.rng, self.seen = k, np.random.default_rng(seed), 0
        self.kept: pa.Table | None = None

    def add(self, batch: pa.Table) -> None:
        """Offer a batch of rows."""
        n = batch.num_rows
        keyed = batch.append_column("__key", pa.array(self.rng.random(n))).append_column(
            "__pos", pa.array(np.arange(self.seen, self.seen + n, dtype=np.int64)))  # fmt: skip
        self.seen += n
        both = keyed if self.kept is None else pa.concat_tables([self.kept, keyed], promote_options="permissive")
        if both.num_rows > self.k:
            both = both.take(np.argsort(both["__key"].to_numpy(), kind="stable")[: self.k])
        self.kept = both

    def table(self) -> pa.Table | None:
        """The sample in table order."""
        if self.kept is None:
            return None
        return self.kept.sort_by("__pos").drop_columns(["__key", "__pos"])


def _numbers_in_text(s: pd.Series) -> pd.Series | None:
    """Text that is numbers (blanks allowed) as floats, else None."""
    trimmed = clean_series(s)
    if trimmed.empty:
        return None
    values = pd.to_numeric(trimmed, errors="coerce")
    return values if values.notna().mean() >= 0.99 else None


def _is_time(s: pd.Series) -> bool:
    if pd.api.types.is_datetime64_any_dtype(s):
        return True
    if not (pd.api.types.is_object_dtype(s) or pd.api.types.is_string_dtype(s)):
        return False
    sample = s.dropna().astype(str).head(2000)
    if sample.empty or not sample.str.contains(r"\d{4}-\d{2}-\d{2}", regex=True).mean() > 0.95:
        return False
    parsed = pd.to_datetime(sample, errors="coerce", utc=True, format="ISO8601")
    return parsed.notna().mean() > 0.99


# A label column with at most this many distinct values (text, or whole numbers) is multiclass;
# a numeric column with more distinct values is a regression target.
MAX_CLASSES = 50
# A never-negative regression target skewed beyond this (sample skewness; 1 is the usual "highly
# skewed" line) is also fitted as log1p (`transform: auto`): squared error on the raw scale chases the
# largest values, while the log scale's inverse estimates the median; validation decides per model.
SKEWED = 1.0
# A class needs this many rows in the sample to be one: fewer cannot fill a stratified train,
# validation and test split, and are more often typos than classes (they are quarantined).
MIN_CLASS_ROWS = 5


def _label_rule(s: pd.Series, name: str, positive: list[str] | None, threshold: float | None,
                task: str | None = None) -> tuple[dict, str, list[str]]:  # fmt: skip
    """The label mapping for column `s`, why, and notes: the task inferred from the column (two
    values binary, a number with many values regression, text or few whole numbers multiclass)
    unless `task` says which."""
    notes: list[str] = []
    present = s.dropna()
    if present.empty:
        raise UserError(f"--label {name}: the column holds no values in the sample")
    if task not in (None, "binary", "multiclass", "regression"):
        raise UserError(f"--task {task!r}: expected binary, multiclass or regression")
    if (positive or threshold is not None) and task not in (None, "binary"):
        raise UserError(f"--positive/--threshold make a binary label; not with --task {task}")
    if task in ("multiclass", "regression") or (task is None and not positive and threshold is None):
        inferred = _task_rule(present, name, task)
        if inferred is not None:
            return inferred
    if threshold is not None:
        numbers = pd.to_numeric(present.astype(str).str.strip(), errors="coerce")
        if numbers.notna().mean() < 0.99:
            raise UserError(f"--label {name} --threshold: the column is not numeric (e.g. {present.iloc[0]!r})")
        share = float((numbers > threshold).mean())
        return {"column": name, "threshold": threshold}, f"label: 1 when {name} > {threshold:g} ({share:.1%} of rows)", notes
    text = present.map(lambda x: ("true" if x else "false") if isinstance(x, (bool, np.bool_)) else str(x).strip())
    text = text.map(lambda x: x[:-2] if re.fullmatch(r"-?\d+\.0", x) else x)  # 1.0 read from a float column
    counts = text.value_counts()
    if positive:
        missing = [p for p in positive if p not in counts.index]
        if missing:
            raise UserError(f"--positive {missing}: not among the values of {name}: {list(counts.index[:10])}")
        others = counts.drop(positive)
        if others.empty:
            raise UserError(f"--label {name}: every value is positive {positive}; a classifier needs both classes")
        negative = [others.index[0]]
        if len(others) > 1:
            rest = ", ".join(f"{v!r} ({n})" for v, n in others.iloc[1:6].items())
            notes.append(f"label {name} has {len(counts)} values; negative is {negative[0]!r} (the most frequent "
                         f"other value); rows holding {rest} will be quarantined: add them to label.negative "
                         "if they mean negative")  # fmt: skip
        share = counts[positive].sum() / counts.sum()
        why = f"label: 1 when {name} in {positive} ({share:.1%}), 0 when {negative}"
        return {"column": name, "positive": positive, "negative": negative}, why, notes
    values = set(counts.index)
    if values <= {"0", "1", "true", "false", "True", "False"}:
        return {"column": name}, f"label: already 0/1 ({len(values)} values)", notes
    if len(values) == 2:
        raise UserError(f"--label {name} holds {', '.join(repr(v) for v in counts.index)}: "
                         "say which value is the positive class with --positive")  # fmt: skip
    raise UserError(f"--label {name} holds {len(values)} values (e.g. {list(counts.index[:5])}): give --positive "
                     "VALUE (repeatable) or, for a numeric column, --threshold T")  # fmt: skip


def _label_text_values(present: pd.Series) -> pd.Series:
    text = present.map(lambda x: ("true" if x else "false") if isinstance(x, (bool, np.bool_)) else str(x).strip())
    return text.map(lambda x: x[:-2] if re.fullmatch(r"-?\d+\.0", x) else x)  # 1.0 read from a float column


def _task_rule(present: pd.Series, name: str, task: str | None) -> tuple[dict, str, list[str]] | None:
    """A multiclass or regression mapping for the label, or None when it is binary."""
    text = _label_text_values(present)
    counts = text.value_counts()
    numbers = pd.to_numeric(present.astype(str).str.strip(), errors="coerce")
    numeric = numbers.notna().mean() >= 0.99
    whole = numeric and bool((numbers.dropna() % 1 == 0).all())
    asked = task is not None  # the user's --task keeps every value as a class
    if task is None:
        if len(counts) <= 2:
            return None  # binary: the rules below
        if numeric and (not whole or len(counts) > MAX_CLASSES):
            task = "regression"
        elif len(counts) <= MAX_CLASSES:
            task = "multiclass"
        else:
            raise UserError(f"--label {name} holds {len(counts)} text values (more than {MAX_CLASSES} classes): "
                             "say --task multiclass to keep them all, or pick another label")  # fmt: skip
    if task == "regression":
        if not numeric:
            raise UserError(f"--label {name} --task regression: the column is not numeric (e.g. {present.iloc[0]!r})")
        values = numbers.dropna()
        skew = float(values.skew()) if len(values) > 2 else 0.0
        log1p = bool(values.min() >= 0 and skew > SKEWED)
        why = (f"regression: {name} is a number with {len(counts):,} distinct values in the sample "
               f"({values.min():g} .. {values.max():g}, mean {values.mean():g})")  # fmt: skip
        if log1p:
            why += (f"; skewed (skewness {skew:.1f}) and never negative: each model fitted raw and as log1p, the "
                    f"lower validation RMSE in {name}'s units kept")  # fmt: skip
        return {"column": name, "task": "regression", **({"transform": "auto"} if log1p else {})}, why, []
    notes = []
    rare = counts[counts < MIN_CLASS_ROWS] if not asked else counts.iloc[:0]
    if len(rare) and len(rare) < len(counts) - 1:
        counts = counts.drop(rare.index)
        listed = ", ".join(f"{v!r} ({n})" for v, n in rare.iloc[:6].items())
        notes.append(f"label {name}: {listed} seen fewer than {MIN_CLASS_ROWS} times, left out of the classes; "
                     "rows holding them will be quarantined: add them to label.classes to keep them")  # fmt: skip
    ordered = sorted(counts.index, key=lambda v: (float(v), v) if whole else (0.0, v))
    shares = ", ".join(f"{v} {counts[v] / counts.sum():.1%}" for v in ordered[:12])
    more = f", ... ({len(ordered)} classes)" if len(ordered) > 12 else ""
    why = f"multiclass: {len(ordered)} classes ({shares}{more})"
    classes: list[Any] = [int(v) for v in ordered] if whole else list(ordered)
    return {"column": name, "task": "multiclass", "classes": classes}, why, notes


def _describe_column(name: str, s: pd.Series, rows: int) -> Column:
    """Feature, key, time or left out, for a non-label column."""
    present = s.dropna()
    if isinstance(s.dtype, pd.StringDtype) or s.dtype == object:
        present = clean_series(s)  # values as ingest reads them: 'WD ' is 'WD', a blank is missing
    nulls = rows - len(present)
    nullable = nulls > 0
    null_note = f", {nulls / rows:.1%} missing" if nulls else ", never missing"
    if present.empty:
        return Column(name, "left out", "every value is missing in the sample")
    distinct = present.nunique()
    if distinct == 1:
        return Column(name, "left out", f"constant ({_plain(present.iloc[0])!r}): carries no signal")
    if _is_time(s):
        return Column(name, "event_timestamp", f"timestamps ({present.min()} .. {present.max()}){null_note}",
                      {"type": "timestamp", "nullable": nullable})  # fmt: skip
    is_text = not pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
    numbers = _numbers_in_text(s) if is_text else None
    unique_share = distinct / len(present)
    if ID_NAME.search(name) and unique_share > 0.5 and (is_text or pd.api.types.is_integer_dtype(s)):
        kind = "str" if is_text and numbers is None else "int"
        return Column(name, "entity_key", f"id-like name, {unique_share:.0%} distinct values", {"entity_type": kind})
    if is_text and numbers is None:
        if distinct <= MAX_CATEGORIES:
            cats = sorted(present.unique().tolist())
            return Column(name, "feature", f"category, {distinct} values{null_note}; one-hot",
                          {"type": "category", "categories": cats, "nullable": nullable}, "onehot")  # fmt: skip
        text = present.astype(str)
        if unique_share == 1.0 and not text.str.contains(r"\s").any() and text.str.len().max() <= 64:
            # every value distinct, short, no spaces: a key (free text has spaces; a key joins labels)
            return Column(name, "entity_key", f"every value distinct ({distinct:,} of {len(present):,}), short "
                          "tokens: a unique id", {"entity_type": "str"})  # fmt: skip
        if unique_share > 0.5:
            return Column(name, "left out", f"text with {unique_share:.0%} distinct values: an id or free text")
        return Column(name, "feature", f"category, {distinct} values{null_note}; the linear model gets its "
                      "frequency and smoothed mean target", {"type": "category", "nullable": nullable}, "target")  # fmt: skip
    if pd.api.types.is_bool_dtype(s):
        return Column(name, "feature", f"true/false{null_note}; one-hot",
                      {"type": "category", "categories": ["false", "true"], "nullable": nullable}, "onehot")  # fmt: skip
    values = numbers if numbers is not None else pd.to_numeric(present)
    integral = bool((values == np.round(values)).all())
    kind = "int" if integral else "float"
    how = "numbers stored as text" if numbers is not None else "numeric"
    return Column(name, "feature", f"{how} ({kind}), {values.min():g} .. {values.max():g}{null_note}",
                  {"type": kind, "nullable": nullable}, sample_range=(float(values.min()), float(values.max())))  # fmt: skip


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (printed as 2013, not np.int64(2013))."""
    return value.item() if isinstance(value, np.generic) else value


def _mark_seasonal(c: Column, why: str) -> None:
    c.spec["seasonal"] = True
    c.why += f"; {why}: its drift is reported, never a retrain trigger"


def _period(c: Column) -> float | None:
    """The cycle of a calendar input named like one (month: 12, hour: 24, ...) whose values fit in it."""
    found = CALENDAR_NAME.search(c.name)
    unit = found.group(2).lower() + (found.group(3) or "").lower() if found else ""
    period = CYCLES.get(unit)
    if period is None or c.sample_range is None:
        return None
    lo, hi = c.sample_range
    return period if 0 <= lo and hi <= period else None


def _calendar_columns(features: list[Column], frame: pd.DataFrame, ts: Column | None) -> None:
    """Mark calendar-like inputs: a calendar name (month, hour, ...) or integers that follow the event time;
    one that goes round a known cycle is encoded cyclically (its values past the training range keep
    their place: December next to January, not clipped to the last month seen)."""
    times = pd.to_datetime(frame[ts.name], errors="coerce", utc=True, format="ISO8601") if ts is not None else None
    for c in features:
        if c.spec.get("type") != "int":
            continue
        if CALENDAR_NAME.search(c.name):
            _mark_seasonal(c, "calendar-like name")
            c.cyclic = _period(c)
            if c.cyclic:
                c.why += f"; encoded as sin and cos of its place on a cycle of {c.cyclic:g}"
        elif times is not None:
            both = pd.DataFrame({"v": pd.to_numeric(frame[c.name], errors="coerce"), "t": times}).dropna()
            if len(both) > 10 and both["v"].nunique() > 1 and both["v"].corr(both["t"].astype("int64"), "spearman") >= 0.95:
                _mark_seasonal(c, f"values follow {ts.name}")


# Event-time parts init proposes as inputs, with the span of event time a model needs to learn each cycle
# from (two turns of it), and the calendar-input periods that already carry it.
TIME_PART_SPANS = {"hour": (2 * 86400.0, 24.0), "weekday": (14 * 86400.0, 7.0), "day_of_year": (730 * 86400.0, 366.0)}


def _time_parts(frame: pd.DataFrame, ts: Column | None, features: list[Column]) -> tuple[list[str], str]:
    """The parts of the event time worth giving models (features.time_parts), and why: a part needs two
    turns of its cycle in the sample, times that vary within the day for the hour, and no calendar input
    that already carries it (a `month` column with the data, say)."""
    if ts is None:
        return [], ""
    times = pd.to_datetime(frame[ts.name], errors="coerce", utc=True, format="ISO8601").dropna()
    if len(times) < 2:
        return [], ""
    span = (times.max() - times.min()).total_seconds()
    given = {c.cyclic for c in features if c.cyclic}
    parts = [p for p, (need, period) in TIME_PART_SPANS.items() if span >= need and period not in given]
    if "hour" in parts and not ((times.dt.hour != 0) | (times.dt.minute != 0)).any():
        parts.remove("hour")  # dates without a time of day
    return parts, f"{ts.name} spans {span / 86400:,.0f} days"


def _label_less_values(frame: pd.DataFrame, label: str, features: list[Column]) -> list[str]:
    """Notes on category values seen only in rows without a label: ingest quarantines those rows,
    so no model trains on the values and serving will meet them as unseen."""
    unlabeled = ~frame.index.isin(clean_series(frame[label]).index)
    if not unlabeled.any():
        return []
    notes = []
    for c in features:
        if c.spec.get("type") != "category":
            continue
        values = clean_series(frame[c.name])
        mask = values.index.isin(frame.index[unlabeled])
        only = sorted(set(values[mask]) - set(values[~mask]))
        if only:
            shown = ", ".join(repr(v) for v in only[:5]) + (f" and {len(only) - 5} more" if len(only) > 5 else "")
            notes.append(f"{c.name}: {shown} occur(s) only in rows without a {label}: ingest quarantines those "
                         "rows, so no model learns these values and serving will meet them as unseen")  # fmt: skip
    return notes


def _first(columns: list[Column], role: str, prefer: re.Pattern) -> Column | None:
    found = [c for c in columns if c.role == role]
    found.sort(key=lambda c: not prefer.search(c.name))
    chosen = found[0] if found else None
    for c in found[1:]:
        c.role, c.why = "left out", f"{c.why}; {chosen.name} is the {role}"
    return chosen


def infer_config(
    data: str,
    label: str,
    positive: list[str] | None = None,
    threshold: float | None = None,
    out: str = "pipeline.yaml",
    sample_rows: int = SAMPLE_ROWS,
    task: str | None = None,
    exclude: list[str] | None = None,
) -> Inference:
    """Sample `data`, infer the schema and write nothing: returns the YAML text and the reasons.
    `exclude` names columns to leave out whatever they hold (a leak of the label, an audit column)."""
    src = resolve_source(SourceConfig(path=data), data)
    table, ragged = read_sample(src, sample_rows)
    frame = table.to_pandas()
    if label not in frame.columns:
        raise UserError(f"--label {label}: no such column in {src.location}; columns: {list(frame.columns)}")
    excluded = set(exclude or [])
    unknown = sorted(excluded - set(frame.columns))
    if unknown:
        raise UserError(f"--exclude {unknown}: no such column in {src.location}; columns: {list(frame.columns)}")
    if label in excluded:
        raise UserError(f"--exclude {label}: that is the --label column")
    rows = len(frame)
    label_map, label_why, notes = _label_rule(frame[label], label, positive, threshold, task)
    columns = [Column(label, "label", label_why)]
    columns += [Column(c, "left out", "excluded by --exclude") if c in excluded else _describe_column(c, frame[c], rows)
                for c in frame.columns if c != label]  # fmt: skip
    key = _first(columns, "entity_key", ID_NAME)
    times = {c.name: c.why for c in columns if c.role == "event_timestamp"}
    ts = _first(columns, "event_timestamp", TIME_NAME)
    for c in columns:  # the other timestamps are inputs: a signup date's age and season carry signal
        if c.name in times and c is not ts:
            c.role = "feature"
            c.why = (f"{times[c.name]}; {ts.name} is the event time, so this one is an input: its days since 1970, "
                     "month and weekday (hour when it has times)")  # fmt: skip
    features = [c for c in columns if c.role == "feature"]
    _calendar_columns(features, frame, ts)
    parts, span = _time_parts(frame, ts, features)
    if parts:
        notes.append(f"models also get the {', '.join(parts)} of {ts.name} ({span}; features.time_parts), each as sin "
                     f"and cos: send {ts.name} with every record you score")  # fmt: skip
    if not features:
        raise UserError(f"{src.location}: no usable feature columns; decisions: "
                         + "; ".join(f"{c.name}: {c.why}" for c in columns))  # fmt: skip
    if key is not None and ts is not None:
        notes.append(f"the feedback loop retrains on every {NEW_LABELS:,} new labels (monitoring.feedback.triggers."
                     "new_labels) and promotes a retrained model only when it beats the served one on the newest "
                     "labeled window")  # fmt: skip
    notes += _label_less_values(frame, label, features)
    if ragged:
        notes.append(f"{ragged} row(s) have the wrong number of fields: ingest quarantines them")
    text = _yaml(src, data, out, label_map, key, ts, features, columns, rows, parts, span)
    cfg = parse_config(yaml.safe_load(text), os.path.abspath(out))  # what init writes must validate
    return Inference(text, columns, rows, notes, cfg)


def write_config(data: str, label: str, out: str | os.PathLike, overwrite: bool = False, **options: Any) -> Inference:
    """`infer_config` for `data`, written to `out` (an existing file only with `overwrite`); `options`
    are infer_config's (positive, threshold, task, exclude)."""
    path = Path(out)
    if path.exists() and not overwrite:
        raise UserError(f"{path}: exists; overwrite it explicitly (--force)")
    inferred = infer_config(data, label, out=str(path), **options)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(inferred.yaml_text)
    return inferred


def _data_path(data: str, out: str) -> str:
    if "://" in data:
        return data
    return os.path.relpath(os.path.abspath(data), os.path.dirname(os.path.abspath(out)) or ".")


def _yaml(src, data, out, label_map, key, ts, features, columns, rows, parts, span) -> str:
    # A directory names the pipeline (its files are parts, often with generated names).
    named = data.rstrip("/") if os.path.isdir(data) else src.files[0]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.splitext(os.path.basename(named))[0]) or "model"
    work = f"{stem}-pipeline"
    left = [c for c in columns if c.role == "left out"]
    doc = Section()
    data_ = doc.section("data")
    data_.section("source").set("path", _data_path(data, out)).set("format", src.format)
    schema = data_.section("schema")
    if key is not None:
        schema.set("entity_key", key.name, key.why).set("entity_type", key.spec["entity_type"])
    else:
        schema.comment("no entity key: no id-like column (feature views and online lookups need one)")
    if ts is not None:
        schema.set("event_timestamp", ts.name, f"{ts.why}; the split is by time")
    else:
        schema.comment("no event timestamp: the split is random, stratified by the label")
    schema.set("label", label_map, columns[0].why, inline=True)
    inputs = schema.section("features")
    for c in features:
        why = c.why
        if c.sample_range is not None:
            lo, hi = c.sample_range
            why += f"; sample range {lo:g} .. {hi:g}: add min/max to quarantine values outside it"
        inputs.set(c.name, c.spec, why, inline=True)
    if left:
        data_.comment("left out:", *(f"  {c.name}: {c.why}" for c in left))
    data_.section("output").set("root", f"{work}/ingested")
    feats = doc.section("features").set("store_root", f"{work}/features")
    if parts:
        feats.set("time_parts", parts, f"of {ts.name}, each cyclic ({span}); requests send {ts.name}", inline=True)
    cyclic = [c for c in features if c.cyclic]
    if cyclic:
        numeric = feats.section("numeric")
        for c in cyclic:
            numeric.set(c.name, {"cyclic": c.cyclic}, inline=True)
    encoded = [c for c in features if c.encoding in ("onehot", "target")]
    if encoded:
        categorical = feats.section("categorical")
        for c in encoded:
            categorical.set(c.name, {"encoding": c.encoding}, inline=True)
    feats.section("online").set("path", f"{work}/features/online.db")
    doc.section("training").set("run_root", f"{work}/runs")
    doc.section("registry").set("db_path", f"{work}/registry.db").set("artifact_root", f"{work}/artifacts") \
        .set("model_name", stem)  # fmt: skip
    doc.section("serving").set("prediction_log", f"{work}/predictions")
    monitoring = doc.section("monitoring").set("root", f"{work}/monitoring")
    if key is not None and ts is not None:  # labeled traffic can join training: the loop keeps learning
        feedback = monitoring.section("feedback")
        feedback.section("triggers").set("new_labels", {"labels": NEW_LABELS},
                                         f"retrain on every {NEW_LABELS:,} new labels; the gates decide whether it "
                                         "serves", inline=True)  # fmt: skip
        feedback.set("models", ["logreg", "xgboost"],
                     "each kind `run` trains competes; the best that beats the served one wins", inline=True)
    header = [f"Written by `ray-pipeline init` from {rows:,} sampled rows of {data}.",
              f"Check the guesses below, then: ray-pipeline run --config {os.path.basename(out)} --serve"]
    return dump(doc, header)
