"""`ray-pipeline init`: read a sample of a table, infer its schema, write a commented pipeline.yaml.

Every decision comes with its reason (printed, and written as a comment beside the key), and
every column left out is named with why, so a user can check the guess before the first run.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
import yaml

from ray_pipeline.config import DEFAULT_NULL_VALUES, PipelineConfig, SourceConfig, parse_config
from ray_pipeline.data.sources import IngestError, SourceFiles, resolve_source
from ray_pipeline.errors import UserError

SAMPLE_ROWS = 100_000
MAX_CATEGORIES = 20  # at most this many distinct values: a closed set, listed and one-hot encoded
ID_NAME = re.compile(r"(?i:(^|_)(id|uuid|guid|key)$)|[a-z]I[Dd]$")  # id, user_id, customerID, userId
TIME_NAME = re.compile(r"(time|date|_ts$|^ts$|timestamp|_at$)", re.IGNORECASE)


@dataclass
class Column:
    """What init decided for one column, and why."""

    name: str
    role: str  # feature / label / entity_key / event_timestamp / left out
    why: str
    spec: dict[str, Any] = field(default_factory=dict)  # data.schema.features entry for features
    encoding: str | None = None  # categorical encoding written to features.categorical
    sample_range: tuple[float, float] | None = None  # numeric: min and max seen (a comment, not a limit)


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


def read_sample(src: SourceFiles, rows: int = SAMPLE_ROWS) -> tuple[pa.Table, int]:
    """Up to `rows` rows from the first files, with pyarrow's type inference; and the ragged CSV
    rows skipped while reading (ingest will quarantine them)."""
    tables: list[pa.Table] = []
    ragged = 0
    have = 0
    for path in src.files:
        if have >= rows:
            break
        try:
            if src.format == "parquet":
                for rb in pq.ParquetFile(path, filesystem=src.filesystem).iter_batches(batch_size=rows - have):
                    tables.append(pa.Table.from_batches([rb]))
                    have += rb.num_rows
                    break
                continue
            with src.filesystem.open_input_stream(path, compression="detect") as stream:
                if src.format == "json":
                    head = stream.read(64 << 20)
                    cut = head.rfind(b"\n") if len(head) == 64 << 20 else len(head)
                    t = pajson.read_json(io.BytesIO(head[:cut]))
                else:

                    def skip(row: Any) -> str:
                        nonlocal ragged
                        ragged += 1
                        return "skip"

                    reader = pacsv.open_csv(
                        stream,
                        parse_options=pacsv.ParseOptions(invalid_row_handler=skip),
                        convert_options=pacsv.ConvertOptions(null_values=DEFAULT_NULL_VALUES, strings_can_be_null=True),
                    )
                    parts = []
                    for rb in reader:
                        parts.append(pa.Table.from_batches([rb]))
                        if sum(p.num_rows for p in parts) >= rows - have:
                            break
                    t = pa.concat_tables(parts) if parts else reader.schema.empty_table()
        except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
            raise IngestError(f"{src.display(path)}: cannot read as {src.format}: {exc}") from None
        t = t.slice(0, rows - have)
        tables.append(t)
        have += t.num_rows
    if not tables:
        raise IngestError(f"{src.location}: no rows to sample")
    return pa.concat_tables(tables, promote_options="permissive"), ragged


def _numbers_in_text(s: pd.Series) -> pd.Series | None:
    """Text that is numbers (blanks allowed) as floats, else None."""
    trimmed = s.astype("string").str.strip().replace("", pd.NA).dropna()
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


def _label_rule(s: pd.Series, name: str, positive: list[str] | None, threshold: float | None) -> tuple[dict, str, list[str]]:
    """The label mapping for column `s`, why, and notes."""
    notes: list[str] = []
    present = s.dropna()
    if present.empty:
        raise UserError(f"--label {name}: the column holds no values in the sample")
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


def _describe_column(name: str, s: pd.Series, rows: int) -> Column:
    """Feature, key, time or left out, for a non-label column."""
    present = s.dropna()
    if isinstance(s.dtype, pd.StringDtype) or s.dtype == object:
        present = present[present.astype(str).str.strip() != ""]
    nulls = rows - len(present)
    nullable = nulls > 0
    null_note = f", {nulls / rows:.1%} missing" if nulls else ", never missing"
    if present.empty:
        return Column(name, "left out", "every value is missing in the sample")
    distinct = present.nunique()
    if distinct == 1:
        return Column(name, "left out", f"constant ({present.iloc[0]!r}): carries no signal")
    if _is_time(s):
        return Column(name, "event_timestamp", f"timestamps ({present.min()} .. {present.max()})")
    is_text = not pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
    numbers = _numbers_in_text(s) if is_text else None
    unique_share = distinct / len(present)
    if ID_NAME.search(name) and unique_share > 0.5 and (is_text or pd.api.types.is_integer_dtype(s)):
        kind = "str" if is_text and numbers is None else "int"
        return Column(name, "entity_key", f"id-like name, {unique_share:.0%} distinct values", {"entity_type": kind})
    if is_text and numbers is None:
        if distinct <= MAX_CATEGORIES:
            cats = sorted(present.astype(str).str.strip().unique().tolist())
            return Column(name, "feature", f"category, {distinct} values{null_note}; one-hot",
                          {"type": "category", "categories": cats, "nullable": nullable}, "onehot")  # fmt: skip
        if unique_share > 0.5:
            return Column(name, "left out", f"text with {unique_share:.0%} distinct values: an id or free text")
        return Column(name, "feature", f"category, {distinct} values{null_note}; frequency-encoded",
                      {"type": "category", "nullable": nullable}, "frequency")  # fmt: skip
    if pd.api.types.is_bool_dtype(s):
        return Column(name, "feature", f"true/false{null_note}; one-hot",
                      {"type": "category", "categories": ["false", "true"], "nullable": nullable}, "onehot")  # fmt: skip
    values = numbers if numbers is not None else pd.to_numeric(present)
    integral = bool((values == np.round(values)).all())
    kind = "int" if integral else "float"
    how = "numbers stored as text" if numbers is not None else "numeric"
    return Column(name, "feature", f"{how} ({kind}), {values.min():g} .. {values.max():g}{null_note}",
                  {"type": kind, "nullable": nullable}, sample_range=(float(values.min()), float(values.max())))  # fmt: skip


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
) -> Inference:
    """Sample `data`, infer the schema and write nothing: returns the YAML text and the reasons."""
    src = resolve_source(SourceConfig(path=data), data)
    table, ragged = read_sample(src, sample_rows)
    frame = table.to_pandas()
    if label not in frame.columns:
        raise UserError(f"--label {label}: no such column in {src.location}; columns: {list(frame.columns)}")
    rows = len(frame)
    label_map, label_why, notes = _label_rule(frame[label], label, positive, threshold)
    columns = [Column(label, "label", label_why)]
    columns += [_describe_column(c, frame[c], rows) for c in frame.columns if c != label]
    key = _first(columns, "entity_key", ID_NAME)
    ts = _first(columns, "event_timestamp", TIME_NAME)
    features = [c for c in columns if c.role == "feature"]
    if not features:
        raise UserError(f"{src.location}: no usable feature columns; decisions: "
                         + "; ".join(f"{c.name}: {c.why}" for c in columns))  # fmt: skip
    if ragged:
        notes.append(f"{ragged} row(s) in the sample have the wrong number of fields: ingest quarantines them")
    text = _yaml(src, data, out, label_map, key, ts, features, columns, rows)
    cfg = parse_config(yaml.safe_load(text), os.path.abspath(out))  # what init writes must validate
    return Inference(text, columns, rows, notes, cfg)


def _data_path(data: str, out: str) -> str:
    if "://" in data:
        return data
    return os.path.relpath(os.path.abspath(data), os.path.dirname(os.path.abspath(out)) or ".")


def q(value: Any) -> str:
    """A value as inline YAML (quoted where YAML would misread it, e.g. Yes/No as booleans)."""
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("\n...").strip()


def _yaml(src, data, out, label_map, key, ts, features, columns, rows) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.splitext(os.path.basename(src.files[0]))[0]) or "model"
    work = f"{stem}-pipeline"
    left = [c for c in columns if c.role == "left out"]
    lines = [
        f"# Written by `ray-pipeline init` from {rows:,} sampled rows of {data}.",
        "# Check the guesses below, then: ray-pipeline run --config " + os.path.basename(out) + " --serve",
        "data:",
        "  source:",
        f"    path: {q(_data_path(data, out))}",
        f"    format: {src.format}",
        "  schema:",
    ]
    if key is not None:
        lines += [f"    entity_key: {q(key.name)}  # {key.why}", f"    entity_type: {key.spec['entity_type']}"]
    else:
        lines.append("    # no entity key: no id-like column (feature views and online lookups need one)")
    if ts is not None:
        lines.append(f"    event_timestamp: {q(ts.name)}  # {ts.why}; the split is by time")
    else:
        lines.append("    # no event timestamp: the split is random, stratified by the label")
    lines.append(f"    label: {q(label_map)}  # {columns[0].why}")
    lines.append("    features:")
    for c in features:
        lines.append(f"      {q(c.name)}: {q(c.spec)}  # {c.why}")
        if c.sample_range is not None:
            lo, hi = c.sample_range
            lines.append(f"      #   sample range {lo:g} .. {hi:g}: add min/max to quarantine values outside it")
    if left:
        lines.append("    # left out:")
        lines += [f"    #   {c.name}: {c.why}" for c in left]
    lines += [
        "  output:",
        f"    root: {work}/ingested",
        "features:",
        f"  store_root: {work}/features",
    ]
    onehot = [c.name for c in features if c.encoding == "onehot"]
    if onehot:
        lines.append("  categorical:")
        lines += [f"    {q(n)}: {{encoding: onehot}}" for n in onehot]
    lines += [
        "  online:",
        f"    path: {work}/features/online.db",
        "training:",
        f"  run_root: {work}/runs",
        "registry:",
        f"  db_path: {work}/registry.db",
        f"  artifact_root: {work}/artifacts",
        f"  model_name: {q(stem)}",
        "serving:",
        f"  prediction_log: {work}/predictions",
        "monitoring:",
        f"  root: {work}/monitoring",
    ]
    return "\n".join(lines) + "\n"
