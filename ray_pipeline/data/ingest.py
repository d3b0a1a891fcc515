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

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ray_pipeline.config import PipelineConfig, SourceConfig
from ray_pipeline.data import validate as v
from ray_pipeline.data.dedup import add_row_hashes, find_duplicates, mark_duplicates
from ray_pipeline.data.sources import (
    IngestError,
    SourceFiles,
    check_columns,
    read_parquet,
    read_piece,
    read_pieces,
    resolve_source,
)
from ray_pipeline.errors import UserError
from ray_pipeline.progress import bar
from ray_pipeline.storage import filesystem, join, matching_files, read_bytes, reset_dir, write_text

_DEDUP_BYTES_PER_PART = 64 * 1024 * 1024


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


def root_cause(exc: BaseException) -> BaseException:
    """The innermost cause of a (possibly Ray-wrapped) exception."""
    seen = exc
    while True:
        nxt = getattr(seen, "cause", None) or seen.__cause__
        if nxt is None or nxt is seen:
            return seen
        seen = nxt


def _parse_json_lines(batch: pa.Table, text_columns: list[str]) -> pa.Table:
    """JSON lines to columns of text; a line that is not a JSON object is kept, flagged unparseable."""
    records: list[dict[str, Any]] = []
    bad: list[str | None] = []
    for line in batch["text"].to_pylist():
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise UserError("not a JSON object")
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
    for c in v.PASSTHROUGH:
        cols[c] = batch[c]
    return pa.table(cols)


def read_source(src: SourceFiles, source: SourceConfig, text_columns: list[str], pieces: list[dict[str, Any]] | None = None):
    """The raw rows of `src` as a Ray Dataset, one read task per piece; `text_columns` are read as
    text from CSV and JSON, and each row carries its file, row number and order (validate.PASSTHROUGH)."""
    import ray.data

    pieces = pieces if pieces is not None else read_pieces(src)
    ds = ray.data.from_items(pieces, override_num_blocks=len(pieces)).map_batches(
        read_piece,
        batch_size=1,
        fn_kwargs={"src": src, "source": source, "text_columns": text_columns},
    )
    if src.format == "json":
        ds = ds.map_batches(_parse_json_lines, fn_kwargs={"text_columns": text_columns}, batch_format="pyarrow")
    return ds


def _dedup_partitions(src: SourceFiles) -> int:
    """Reduce tasks for duplicate detection: about one per 64 MB of input, at least 2."""
    infos = src.filesystem.get_file_info(src.files)
    total = sum(max(i.size or 0, 0) for i in infos)
    return max(2, min(256, math.ceil(total / _DEDUP_BYTES_PER_PART)))


def _write_split(batch: pa.Table, accepted_dir: str, quarantine_dir: str) -> pa.Table:
    """Write one block's accepted and quarantined rows; return its counts (a Ray Data UDF).

    File names come from the block's first order number, so a retried task overwrites its own
    files instead of adding copies.
    """
    if batch.num_rows == 0:
        return pa.table({"key": pa.array([], pa.string()), "n": pa.array([], pa.int64())})
    name = f"part-{pc.min(batch[v.ORDER]).as_py():020d}.parquet"
    accepted = v.accepted_part(batch)
    quarantine = v.quarantine_part(batch)
    for part, folder in ((accepted, accepted_dir), (quarantine, quarantine_dir)):
        if part.num_rows:
            fs, path = filesystem(folder)
            pq.write_table(part, f"{path}/{name}", filesystem=fs)
    reasons = batch[v.REASON].to_pandas()
    key = (reasons.fillna("") + ":" + batch[v.FIELD].to_pandas().fillna("")).where(reasons.notna(), "")
    counts = key.value_counts()
    keys = [*counts.index.astype(str), "#read", "#accepted", "#quarantined"]
    values = [*counts.to_numpy(), batch.num_rows, accepted.num_rows, quarantine.num_rows]
    return pa.table({"key": keys, "n": pa.array(values, pa.int64())})


def ingest(cfg: PipelineConfig) -> IngestResult:
    """Read, validate and split the configured source; write accepted rows, quarantine and summary."""
    data = cfg.data
    schema = data.schema_
    started = time.perf_counter()
    src = resolve_source(data.source, data.source.path)
    columns_by_file = check_columns(src, data.source, schema.columns)

    extras = sorted({c for names in columns_by_file.values() for c in names} - set(schema.columns))
    policy = data.validation.extra_columns
    if policy == "reject" and extras:
        where = next(src.display(f) for f, names in columns_by_file.items() if set(names) & set(extras))
        raise IngestError(f"{where}: columns not in the schema: {extras} (validation.extra_columns: reject)")

    dup = data.validation.duplicates
    keys = dup.keys or schema.columns
    if dup.enabled:
        for path, names in columns_by_file.items():
            absent = [k for k in keys if k not in names and k not in schema.columns]
            if absent and src.format != "json":
                raise IngestError(f"{src.display(path)}: validation.duplicates.keys names missing column(s) {absent}")
    pieces = read_pieces(src)
    ds = read_source(src, data.source, schema.columns, pieces)
    validated = ds.map_batches(
        v.validate_batch,
        fn_kwargs={"schema": schema, "keep_extra": policy == "keep"},
        batch_format="pyarrow",
    )
    accepted_path = data.output.accepted
    quarantine_path = data.output.quarantine
    reset_dir(accepted_path)
    reset_dir(quarantine_path)
    try:
        if dup.enabled:
            # Duplicates need a look at the whole dataset before any row is written: hash and
            # keep the validated blocks, find later copies, then mark them on the way out.
            validated = validated.map_batches(
                add_row_hashes, fn_kwargs={"keys": keys}, batch_format="pyarrow"
            ).materialize()
            later = find_duplicates(validated, _dedup_partitions(src))
            label = ",".join(dup.keys) if dup.keys else "*"
            validated = validated.map_batches(
                mark_duplicates, fn_kwargs={"later": later, "label": label}, batch_format="pyarrow"
            )
        # One streaming pass writes both outputs and counts them; the counts feed the progress bar.
        written = validated.map_batches(
            _write_split,
            fn_kwargs={"accepted_dir": accepted_path, "quarantine_dir": quarantine_path},
            batch_format="pyarrow",
        )
        total = sum(p["rows"] for p in pieces) if src.format == "parquet" else None
        tallies, done = [], 0
        with bar("ingest", total, "rows") as update:
            for row in written.iter_rows():
                tallies.append(row)
                if row["key"] == "#read":
                    done += int(row["n"])
                    update(done)
    except Exception as exc:  # Ray wraps worker errors; surface the cause and name the source.
        root = root_cause(exc)
        first_line = (str(root).strip().splitlines() or [""])[0]
        if isinstance(root, IngestError):
            raise IngestError(first_line) from exc
        raise IngestError(f"{src.location}: ingest failed: {type(root).__name__}: {first_line}") from exc

    counts: dict[str, int] = {}
    for row in tallies:
        counts[row["key"]] = counts.get(row["key"], 0) + int(row["n"])
    n_read, n_written_ok, n_written_bad = (counts.pop(k, 0) for k in ("#read", "#accepted", "#quarantined"))
    n_accepted = counts.pop("", 0)
    by_reason: dict[str, int] = {}
    for key, n in counts.items():
        reason = key.split(":", 1)[0]
        by_reason[reason] = by_reason.get(reason, 0) + n
    n_quarantined = sum(by_reason.values())
    # Parquet footers give an independent count of the rows that should have come out.
    expected = sum(p["rows"] for p in pieces) if src.format == "parquet" else n_read
    if not (n_read == expected == n_accepted + n_quarantined == n_written_ok + n_written_bad):
        raise AssertionError(
            f"row accounting broken: source {expected}, read {n_read}, accepted {n_accepted} "
            f"+ quarantined {n_quarantined}, written {n_written_ok} + {n_written_bad}"
        )

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
        summary_path=data.output.summary,
        seconds=time.perf_counter() - started,
        finished_at=datetime.now(timezone.utc).isoformat(),
        config_hash=cfg.content_hash(),
    )
    body = json.dumps(result.to_dict(), indent=2)
    write_text(result.summary_path, body)
    # one file per run as well: the console lists ingest runs, the summary holds only the last
    write_text(join(data.output.root, "runs", f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}.json"), body)
    return result


def ingest_runs(cfg: PipelineConfig, limit: int = 20) -> list[dict[str, Any]]:
    """The newest ingest runs' summaries, newest first."""
    files = matching_files(join(cfg.data.output.root, "runs"), "*.json")
    return [json.loads(read_bytes(f)) for f in reversed(files[-limit:])]


def quarantine_sample(cfg: PipelineConfig, limit: int = 20) -> list[dict[str, Any]]:
    """Up to `limit` quarantined rows of the last ingest, each with its reason, field and detail."""
    import pyarrow.dataset as pads

    files = matching_files(cfg.data.output.quarantine, "*.parquet")
    if not files:
        return []
    fs, _ = filesystem(files[0])
    dataset = pads.dataset([filesystem(f)[1] for f in files], filesystem=fs, format="parquet")
    return dataset.head(limit).to_pylist()


def _typed_unlabeled(batch: pa.Table, columns: dict[str, Any]) -> pa.Table:
    """A block of quarantined rows: those set aside only for a missing label, their inputs typed as
    ingest types them (a row with a bad input as well is left out)."""
    batch = batch.filter(pc.equal(batch[v.REASON], "missing_label"))
    typed = v.validate_inputs(batch.select([c for c in columns if c in batch.column_names]), columns, [])
    return typed.filter(pc.is_null(typed[v.REASON])).select(list(columns))


def unlabeled_rows(cfg: PipelineConfig, inputs: list[str]):
    """The last ingest's rows without a label (quarantined for it: no model trains on them) as a Ray
    Dataset of the schema `inputs` among them, typed; None when there are none. Input drift compares
    traffic with every ingested row, labeled or not (features/profile.py)."""
    features = cfg.data.schema_.features
    columns = {c: features[c] for c in inputs if c in features}
    if not columns or not matching_files(cfg.data.output.quarantine, "*.parquet"):
        return None
    ds = read_parquet(cfg.data.output.quarantine, columns=[*columns, v.REASON])
    return ds.map_batches(_typed_unlabeled, fn_kwargs={"columns": columns}, batch_format="pyarrow")


WAITING = ("missing_label",)  # quarantined, but not bad: rows whose label has not arrived


def check_quarantine_share(cfg: PipelineConfig, result: IngestResult) -> None:
    """Stop (UserError) when ingest quarantined more than `data.max_quarantine_share` of the rows it
    read, naming the top reasons and a few quarantined rows; rows only missing a label do not count."""
    bad = {r: n for r, n in result.by_reason.items() if r not in WAITING}
    share = sum(bad.values()) / result.read if result.read else 0.0
    limit = cfg.data.max_quarantine_share
    if share <= limit:
        return
    parts = []
    for reason, n in sorted(bad.items(), key=lambda kv: -kv[1])[:3]:
        fields = [f"{key.split(':', 1)[1]} {m:,}" for key, m in result.by_field.items() if key.startswith(reason + ":")]
        parts.append(f"{reason} {n:,}" + (f" ({', '.join(fields[:5])})" if fields else ""))
    reasons = "; ".join(parts)
    rows = [r for r in quarantine_sample(cfg, 200) if r.get(v.REASON) not in WAITING][:3]
    sample = "\n".join(f"  row {r.get(v.ROW)} of {r.get(v.SOURCE)}: {r.get(v.DETAIL)}" for r in rows)
    raise UserError(
        f"{result.source}: ingest quarantined {sum(bad.values()):,} of {result.read:,} rows ({share:.1%}), more "
        f"than data.max_quarantine_share ({limit:.0%}); training on the rest would hide it. Top reasons: {reasons}.\n"
        f"{sample}\nFix the schema or the data (see {result.quarantine_path}), or raise data.max_quarantine_share."
    )
