"""Ingest: read a source with Ray Data, validate every row, write accepted and quarantined rows.

Counts are conserved by construction and checked at the end: read == accepted + quarantined.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from ray_pipeline.config import DataConfig, PipelineConfig
from ray_pipeline.data import validate as v
from ray_pipeline.data.sources import (
    IngestError,
    SourceFiles,
    check_columns,
    csv_read_options,
    resolve_source,
)

# Rows per duplicate-detection group: one group is held in one worker's memory at a time.
_DEDUP_BYTES_PER_GROUP = 64 * 1024 * 1024


@dataclass
class IngestResult:
    """What one ingest run read, accepted and quarantined, and where it wrote them."""

    source: str
    format: str
    files: int
    read: int
    accepted: int
    quarantined: int
    by_reason: dict[str, int] = field(default_factory=dict)
    by_field: dict[str, int] = field(default_factory=dict)
    accepted_path: str = ""
    quarantine_path: str = ""
    summary_path: str = ""
    seconds: float = 0.0
    finished_at: str = ""
    config_hash: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (also written to summary.json)."""
        return asdict(self)

    def render(self) -> str:
        """A plain-text summary for people."""
        rate = self.read / self.seconds if self.seconds else 0.0
        lines = [
            f"source       {self.source} ({self.files} {self.format} file(s))",
            f"read         {self.read:>12,}",
            f"accepted     {self.accepted:>12,}  -> {self.accepted_path}",
            f"quarantined  {self.quarantined:>12,}  -> {self.quarantine_path}",
        ]
        for reason, count in sorted(self.by_reason.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {reason:<24} {count:>10,}")
            for key, n in sorted(self.by_field.items(), key=lambda kv: -kv[1]):
                if key.startswith(reason + ":"):
                    lines.append(f"    {key.split(':', 1)[1]:<22} {n:>10,}")
        lines.append(f"time         {self.seconds:.1f} s ({rate:,.0f} rows/s)")
        return "\n".join(lines)


def _root_message(exc: BaseException) -> str:
    """The innermost cause of a (possibly Ray-wrapped) exception, on one line."""
    seen = exc
    while True:
        nxt = getattr(seen, "cause", None) or seen.__cause__
        if nxt is None or nxt is seen:
            break
        seen = nxt
    text = str(seen).strip().splitlines()
    return f"{type(seen).__name__}: {text[0] if text else ''}"


def _parse_json_lines(batch: pa.Table, text_columns: list[str]) -> pa.Table:
    """JSON lines to columns of text; a line that is not a JSON object is kept, flagged unparseable."""
    records: list[dict[str, Any]] = []
    bad: list[str | None] = []
    for line in batch["text"].to_pylist():
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            records.append(record)
            bad.append(None)
        except ValueError as exc:
            records.append({})
            bad.append(f"not a JSON object ({exc}): {line[:200]!r}")
    names = list(dict.fromkeys([*text_columns, *(k for r in records for k in r)]))

    def text(value: Any) -> str | None:
        if value is None:
            return None
        return value if isinstance(value, str) else json.dumps(value)

    cols = {n: pa.array([text(r.get(n)) for r in records], type=pa.string()) for n in names}
    cols["_unparseable"] = pa.array(bad, type=pa.string())
    cols["path"] = batch["path"]
    return pa.table(cols)


def read_source(src: SourceFiles, data: DataConfig, with_paths: bool):
    """The raw rows of `src` as a Ray Dataset (schema columns as text for CSV and JSON)."""
    import ray.data

    columns = data.schema_.columns
    common = {"filesystem": src.filesystem, "include_paths": with_paths}
    if src.format == "parquet":
        return ray.data.read_parquet(src.files, **common)
    if src.format == "csv":
        return ray.data.read_csv(src.files, **common, **csv_read_options(data.source, columns))
    lines = ray.data.read_text(src.files, filesystem=src.filesystem, include_paths=True)
    return lines.map_batches(
        _parse_json_lines, fn_kwargs={"text_columns": columns}, batch_format="pyarrow"
    )


def _dedup_groups(src: SourceFiles) -> int:
    infos = src.filesystem.get_file_info(src.files)
    total = sum(max(i.size or 0, 0) for i in infos)
    return max(2, min(512, math.ceil(total / _DEDUP_BYTES_PER_GROUP)))


def _add_bucket(batch: pa.Table, keys: list[str], groups: int) -> pa.Table:
    """Group id: a hash of the duplicate keys for accepted rows, round-robin for rejected ones."""
    n = batch.num_rows
    # Hash a text form of the keys: pandas turns an int column with nulls into floats, so the
    # same value could hash differently in two batches if the typed columns were hashed.
    frame = pd.DataFrame({k: pc.cast(batch[k], pa.string()).to_pandas() for k in keys})
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    valid = pc.is_null(batch[v.REASON]).to_numpy(zero_copy_only=False)
    bucket = np.where(valid, hashed % np.uint64(groups), np.arange(n) % groups).astype(np.int64)
    return batch.append_column("_bucket", pa.array(bucket))


def _mark_duplicates(group: pa.Table, dup_keys: list[str], dup_label: str) -> pa.Table:
    """Within one hash group: every accepted row equal on `keys` to an earlier one is a duplicate."""
    group = group.drop_columns(["_bucket"])
    valid = pc.is_null(group[v.REASON]).to_numpy(zero_copy_only=False)
    if not valid.any():
        return group
    keys = dup_keys
    frame = group.select([*keys, v.SOURCE]).to_pandas()
    frame["_valid"] = valid
    # "Earlier" means earlier source file name, then read order: stable and reproducible.
    order = frame.sort_values(v.SOURCE, kind="mergesort", na_position="first").index
    dup_sorted = frame.loc[order][valid[order]].duplicated(subset=keys, keep="first")
    dup = np.zeros(group.num_rows, dtype=bool)
    dup[dup_sorted.index[dup_sorted.to_numpy()]] = True
    if not dup.any():
        return group
    label = dup_label
    reason = np.where(dup, "duplicate", group[v.REASON].to_numpy(zero_copy_only=False))
    fld = np.where(dup, label, group[v.FIELD].to_numpy(zero_copy_only=False))
    detail = np.where(dup, f"same values in {label} as an earlier row", group[v.DETAIL].to_numpy(zero_copy_only=False))
    for name, values in ((v.REASON, reason), (v.FIELD, fld), (v.DETAIL, detail)):
        idx = group.column_names.index(name)
        group = group.set_column(idx, name, pa.array(values, type=pa.string()))
    return group


def _tally(batch: pa.Table) -> pa.Table:
    reasons = batch[v.REASON].to_pandas()
    fields = batch[v.FIELD].to_pandas()
    key = (reasons.fillna("") + ":" + fields.fillna("")).where(reasons.notna(), "")
    counts = key.value_counts()
    return pa.table({"key": counts.index.astype(str).tolist(), "n": counts.to_numpy().astype(np.int64)})


def _reset_dir(path: str) -> None:
    """Empty (or create) an output directory so a run never mixes with an earlier one."""
    fs, p = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
    if fs.get_file_info(p).type == pafs.FileType.Directory:
        fs.delete_dir_contents(p)
    else:
        fs.create_dir(p, recursive=True)


def _write_text(path: str, text: str) -> None:
    fs, p = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
    with fs.open_output_stream(p) as out:
        out.write(text.encode())


def ingest(cfg: PipelineConfig) -> IngestResult:
    """Read, validate and split the configured source; write accepted rows, quarantine and summary."""
    data = cfg.data
    schema = data.schema_
    started = time.perf_counter()
    src = resolve_source(data.source, cfg.resolve(data.source.path))
    columns_by_file = check_columns(src, data.source, schema.columns)

    extras = sorted({c for names in columns_by_file.values() for c in names} - set(schema.columns))
    policy = data.validation.extra_columns
    if policy == "reject" and extras:
        where = next(src.display(f) for f, names in columns_by_file.items() if set(names) & set(extras))
        raise IngestError(f"{where}: columns not in the schema: {extras} (validation.extra_columns: reject)")
    # Ray Data names the file column "path"; if the data has its own "path" column, keep that.
    with_paths = src.format == "json" or not any("path" in n for n in columns_by_file.values())

    dup = data.validation.duplicates
    keys = dup.keys or schema.columns
    if dup.enabled:
        for path, names in columns_by_file.items():
            absent = [k for k in keys if k not in names and k not in schema.columns]
            if absent and src.format != "json":
                raise IngestError(f"{src.display(path)}: validation.duplicates.keys names missing column(s) {absent}")
    ds = read_source(src, data, with_paths)
    validated = ds.map_batches(
        v.validate_batch,
        fn_kwargs={
            "schema": schema,
            "source_column": "path" if with_paths else None,
            "keep_extra": policy == "keep",
            "keep_originals": dup.enabled,
        },
        batch_format="pyarrow",
    )
    if dup.enabled:
        groups = _dedup_groups(src)
        validated = (
            validated.map_batches(_add_bucket, fn_kwargs={"keys": keys, "groups": groups}, batch_format="pyarrow")
            .groupby("_bucket", num_partitions=groups)
            .map_groups(_mark_duplicates, fn_kwargs={"dup_keys": keys, "dup_label": ",".join(dup.keys) if dup.keys else "*"}, batch_format="pyarrow")
        )
    accepted_path = cfg.resolve(data.output.accepted)
    quarantine_path = cfg.resolve(data.output.quarantine)
    try:
        # Materialize once: counts, accepted and quarantine writes all read the same blocks
        # instead of re-reading and re-validating the source three times.
        validated = validated.materialize()
        tallies = validated.map_batches(_tally, batch_format="pyarrow").take_all()
        _reset_dir(accepted_path)
        _reset_dir(quarantine_path)
        counts: dict[str, int] = {}
        for row in tallies:
            counts[row["key"]] = counts.get(row["key"], 0) + int(row["n"])
        n_accepted = counts.pop("", 0)
        if n_accepted:
            validated.map_batches(v.accepted_part, batch_format="pyarrow").write_parquet(accepted_path)
        if counts:
            validated.map_batches(v.quarantine_part, batch_format="pyarrow").write_parquet(quarantine_path)
    except IngestError:
        raise
    except Exception as exc:  # Ray wraps worker errors; surface the cause and the source.
        raise IngestError(f"{src.location}: reading as {src.format} failed: {_root_message(exc)}") from exc

    by_reason: dict[str, int] = {}
    for key, n in counts.items():
        reason = key.split(":", 1)[0]
        by_reason[reason] = by_reason.get(reason, 0) + n
    n_quarantined = sum(by_reason.values())
    n_read = validated.count()
    if n_read != n_accepted + n_quarantined:
        raise AssertionError(f"row accounting broken: read {n_read} != {n_accepted} + {n_quarantined}")

    result = IngestResult(
        source=src.location,
        format=src.format,
        files=len(src.files),
        read=n_read,
        accepted=n_accepted,
        quarantined=n_quarantined,
        by_reason=by_reason,
        by_field=dict(sorted(counts.items())),
        accepted_path=accepted_path,
        quarantine_path=quarantine_path,
        summary_path=cfg.resolve(data.output.summary),
        seconds=time.perf_counter() - started,
        finished_at=datetime.now(timezone.utc).isoformat(),
        config_hash=cfg.content_hash(),
    )
    _write_text(result.summary_path, json.dumps(result.to_dict(), indent=2))
    return result
