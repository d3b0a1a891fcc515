"""Batch scoring: a registered model over a file or directory with Ray Data, written as Parquet.

Each block is typed like ingest types rows (numbers parsed, categories as text), scored with the
model's own FeatureSpec, and written beside a quarantine of rows that could not be scored. Rows
keep their file and row number, and the entity key and event time when the input has them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ray_pipeline.config import FeatureColumn, PipelineConfig, SourceConfig
from ray_pipeline.data import validate as v
from ray_pipeline.data.ingest import read_source, root_cause
from ray_pipeline.data.sources import IngestError, check_columns, read_pieces, resolve_source
from ray_pipeline.errors import UserError
from ray_pipeline.progress import bar
from ray_pipeline.registry.handoff import LoadedModel
from ray_pipeline.storage import filesystem, reset_dir
from ray_pipeline.train.explain import explain_rows

QUARANTINE = "_quarantine"  # under the output directory; the leading _ keeps Parquet readers out of it


@dataclass
class BatchResult:
    """What one scoring run read, scored and quarantined."""

    model: str
    read: int
    scored: int
    quarantined: int
    out: str
    quarantine: str
    seconds: float
    by_reason: dict[str, int] = field(default_factory=dict)

    def render(self) -> str:
        """Plain-text summary for people."""
        lines = [
            f"model        {self.model}",
            f"read         {self.read:>10,}",
            f"scored       {self.scored:>10,}  -> {self.out}",
            f"quarantined  {self.quarantined:>10,}  -> {self.quarantine}",
        ]
        lines += [f"  {reason:<22} {n:>10,}" for reason, n in sorted(self.by_reason.items(), key=lambda kv: -kv[1])]
        rate = self.read / self.seconds if self.seconds else 0.0
        lines.append(f"time         {self.seconds:.1f} s ({rate:,.0f} rows/s)")
        return "\n".join(lines)


def explanation_column(model: LoadedModel, X: np.ndarray, top_k: int) -> pa.Array:
    """Per row of the feature matrix `X` its explanation as JSON (the service's `explanation`
    object): the top_k columns by contribution, the bias and the rest, adding up to the margin."""
    return pa.array([json.dumps(e) for e in explain_rows(model.model, model.spec, X, top_k)], pa.string())


def _score_block(batch: pa.Table, model: LoadedModel, keys: list[str], out_dir: str, quarantine_dir: str,
                 explain: int = 0) -> pa.Table:  # fmt: skip
    """Type, score and write one block; return its counts (a Ray Data UDF)."""
    if batch.num_rows == 0:
        return pa.table({"key": pa.array([], pa.string()), "n": pa.array([], pa.int64())})
    spec = model.spec
    columns = {c.name: FeatureColumn(type="float") for c in spec.numeric}
    columns |= {c.name: FeatureColumn(type="category") for c in spec.categorical}
    columns |= {d.name: FeatureColumn(type="timestamp") for d in spec.dates}
    checked = v.validate_inputs(batch, columns, keys)
    good = checked.filter(pc.is_null(checked[v.REASON]))
    name = f"part-{pc.min(batch[v.ORDER]).as_py():020d}.parquet"
    if good.num_rows:
        pred = model.predict(good)  # once: scored, and explained when asked
        out = {"source_file": pc.cast(good[v.SOURCE], pa.string()), "row": good[v.ROW]}
        out |= {k: good[k] for k in keys if k in good.column_names}
        out |= pred.columns()
        if explain:
            out["explanation"] = explanation_column(model, pred.features, explain)
        out |= {"model_version": pa.array(np.full(good.num_rows, model.version.version, dtype=np.int64))}
        fs, path = filesystem(out_dir)
        pq.write_table(pa.table(out), f"{path}/{name}", filesystem=fs)
    bad = v.quarantine_part(checked)
    if bad.num_rows:
        fs, path = filesystem(quarantine_dir)
        pq.write_table(bad, f"{path}/{name}", filesystem=fs)
    reasons = [r for r in checked[v.REASON].to_pylist() if r is not None]
    counts = {"#read": batch.num_rows, "#scored": good.num_rows}
    for r in reasons:
        counts[r] = counts.get(r, 0) + 1
    return pa.table({"key": list(counts), "n": pa.array(list(counts.values()), pa.int64())})


def _check_out(out: str) -> None:
    """Refuse an output directory that holds anything but an earlier scoring run's files."""
    import pyarrow.fs as pafs

    fs, path = filesystem(out)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise UserError(f"--out {out}: is a file; give a directory for the Parquet output")
    if info.type == pafs.FileType.Directory:
        names = {i.base_name for i in fs.get_file_info(pafs.FileSelector(path))}
        other = sorted(n for n in names if not (n.startswith("part-") and n.endswith(".parquet")) and n != QUARANTINE)
        if other:
            raise UserError(f"--out {out}: directory holds other files ({other[:3]}); give a new or empty directory")


def score_files(cfg: PipelineConfig, model: LoadedModel, location: str, out: str, fmt: str | None = None,
                explain: int = 0) -> BatchResult:  # fmt: skip
    """Score every row of `location` (file, directory, glob or URI) with `model`; write Parquet to `out`
    (with an `explanation` column of the top `explain` columns per row when explain > 0)."""
    started = time.perf_counter()
    source = SourceConfig(path=location, format=fmt, null_values=cfg.data.source.null_values,
                          csv_delimiter=cfg.data.source.csv_delimiter)  # fmt: skip
    src = resolve_source(source, location)
    inputs = model.spec.input_columns
    # a file without a model input (or the event time its time parts read) stops here, naming file and column
    check_columns(src, source, [*inputs, *([model.spec.event_timestamp] if model.spec.time_parts else [])])
    schema = cfg.data.schema_
    keys = [c for c in (model.spec.entity_key or schema.entity_key, model.spec.event_timestamp or schema.event_timestamp) if c]
    pieces = read_pieces(src)
    ds = read_source(src, source, [*keys, *inputs], pieces)
    quarantine = out.rstrip("/") + "/" + QUARANTINE
    _check_out(out)
    reset_dir(out)
    reset_dir(quarantine)
    scored = ds.map_batches(
        _score_block,
        fn_kwargs={"model": model, "keys": keys, "out_dir": out, "quarantine_dir": quarantine, "explain": explain},
        batch_format="pyarrow",
    )
    counts: dict[str, int] = {}
    total = sum(p["rows"] for p in pieces) if src.format == "parquet" else None
    try:
        with bar("score", total, "rows") as update:
            for row in scored.iter_rows():
                counts[row["key"]] = counts.get(row["key"], 0) + int(row["n"])
                update(counts.get("#read", 0))
    except Exception as exc:  # Ray wraps worker errors: name the input and the cause
        root = root_cause(exc)
        raise IngestError(f"{location}: scoring failed: {type(root).__name__}: {str(root).strip()[:300]}") from exc
    n_read, n_scored = counts.pop("#read", 0), counts.pop("#scored", 0)
    return BatchResult(model.version.uri, n_read, n_scored, n_read - n_scored, out, quarantine,
                       time.perf_counter() - started, counts)  # fmt: skip
