"""Delayed ground truth: labels keyed by request id (and row) or by (entity, event time), validated
like ingestion. Accepted labels are stored keyed by (request_id, row) and joined to the prediction
log by monitoring and the feedback loop; bad ones go to a quarantine with a reason."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ray_pipeline.config import LabelMapping, PipelineConfig
from ray_pipeline.data.validate import label_values
from ray_pipeline.errors import UserError
from ray_pipeline.serve.predlog import read_log
from ray_pipeline.storage import exists, filesystem, join, matching_files, write_parquet

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
LABEL_SCHEMA = pa.schema([("request_id", pa.string()), ("row", pa.int32()), ("label", pa.int8()),
                          ("labeled_at", pa.timestamp("us", tz="UTC"))])  # fmt: skip


def label_schema(cfg: PipelineConfig) -> pa.Schema:
    """The accepted-label schema: a class index (int8) for classification, a float for regression."""
    if cfg.data.schema_.label_mapping.task == "regression":
        return LABEL_SCHEMA.set(2, pa.field("label", pa.float64()))
    return LABEL_SCHEMA


@dataclass
class LabelResult:
    """Counts of one `labels ingest`."""

    read: int
    accepted: int
    quarantined: dict[str, int]
    accepted_path: str | None
    quarantine_path: str | None

    def render(self) -> str:
        """Plain-text summary."""
        lines = [f"read {self.read:,}; accepted {self.accepted:,} -> {self.accepted_path}"]
        for reason, n in sorted(self.quarantined.items()):
            lines.append(f"  quarantined {reason}: {n:,} -> {self.quarantine_path}")
        return "\n".join(lines)


def _read(path: str) -> pa.Table:
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson

    if not exists(path):
        raise FileNotFoundError(f"{path}: labels file not found")
    fs, p = filesystem(path)
    try:
        if p.endswith(".parquet"):
            t = pq.read_table(p, filesystem=fs)
        elif p.endswith((".json", ".jsonl")):
            with fs.open_input_stream(p) as f:
                t = pajson.read_json(f)
        else:  # every column as text: the label is checked here, not coerced by the reader
            options = pacsv.ConvertOptions(column_types={}, strings_can_be_null=True, auto_dict_encode=False)
            with fs.open_input_stream(p) as f:
                t = pacsv.read_csv(f, convert_options=options)
            t = t.cast(pa.schema([(f.name, pa.string()) for f in t.schema]))
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path}: cannot read labels: {exc}") from None
    return t


def label_files(cfg: PipelineConfig) -> list[str]:
    """The accepted-label files (each ingest adds one; files never change)."""
    return matching_files(join(cfg.monitoring.labels, "accepted"), "part-*.parquet")


def accepted_labels(cfg: PipelineConfig) -> pa.Table:
    """Every accepted label so far (request_id, row, label, labeled_at)."""
    files, schema = label_files(cfg), label_schema(cfg)
    if not files:
        return schema.empty_table()
    return pa.concat_tables([pq.read_table(f, schema=schema) for f in files])


def ingest_labels(cfg: PipelineConfig, path: str) -> LabelResult:
    """Validate a labels file against the prediction log; write accepted labels and a quarantine."""
    schema = cfg.data.schema_
    t = _read(path)
    label_col = schema.label if schema.label in t.column_names else "label"
    if label_col not in t.column_names:
        raise UserError(f"{path}: no label column ({schema.label!r} or 'label'); columns: {t.column_names}")
    by_request = "request_id" in t.column_names
    if not by_request and not (schema.entity_key and schema.event_timestamp):
        raise UserError(f"{path}: labels need a request_id column (the data has no entity key and event time to join on)")
    if not by_request and not {schema.entity_key, schema.event_timestamp} <= set(t.column_names):
        raise UserError(
            f"{path}: labels need a request_id column, or {schema.entity_key!r} and {schema.event_timestamp!r}"
        )
    # The data's label column speaks the data's language (e.g. Yes/No, a delay to threshold) and
    # is mapped as ingest maps it; a column named `label` holds 0/1.
    mapping = schema.label_mapping if label_col == schema.label else LabelMapping(column="label")
    mapped, _, fits = label_values(t[label_col], mapping)
    log = read_log(cfg.serving.prediction_log)
    log = log.filter(pc.is_in(log["variant"], pa.array(["champion", "challenger"])))
    by_id: dict[str, list[int]] = {}
    for rid, row in zip(log["request_id"].to_pylist(), log["row"].to_pylist()):
        by_id.setdefault(rid, []).append(row)
    by_event: dict[tuple[str, int], list[tuple[str, int]]] = {}
    if not by_request:
        ts = pc.cast(log["event_ts"], pa.int64()).to_pylist()
        for rid, row, ent, t_us in zip(log["request_id"].to_pylist(), log["row"].to_pylist(),
                                       log["entity"].to_pylist(), ts):  # fmt: skip
            if ent is not None and t_us is not None:
                by_event.setdefault((ent, t_us), []).append((rid, row))
    seen = {(r, w) for r, w in zip(*(accepted_labels(cfg).column(c).to_pylist() for c in ("request_id", "row")))}
    good: list[tuple[str, int, float]] = []
    bad: list[dict[str, str | int | None]] = []
    for i, rec in enumerate(t.to_pylist(), start=1):
        reason, detail, key = _check(rec, label_col, bool(fits[i - 1]), mapping, by_request, by_id, by_event, schema)
        if reason is None and key in seen:
            reason, detail = "duplicate", f"a label for request {key[0]} row {key[1]} was already given"
        if reason is not None:
            bad.append({**{k: None if v is None else str(v) for k, v in rec.items()}, "_reason": reason,
                        "_detail": detail, "_source_file": str(path), "_row": i})  # fmt: skip
            continue
        seen.add(key)
        good.append((key[0], key[1], mapped[i - 1].item()))
    root = cfg.monitoring.labels
    accepted_path = quarantine_path = None
    now = datetime.now(timezone.utc)
    if good:
        accepted_path = join(root, "accepted", f"part-{uuid.uuid4().hex}.parquet")
        table = pa.table({"request_id": [g[0] for g in good], "row": [g[1] for g in good],
                          "label": [g[2] for g in good], "labeled_at": [now] * len(good)}, schema=label_schema(cfg))  # fmt: skip
        write_parquet(table, accepted_path)
    if bad:
        quarantine_path = join(root, "quarantine", f"part-{uuid.uuid4().hex}.parquet")
        write_parquet(pa.Table.from_pylist(bad), quarantine_path)
    reasons: dict[str, int] = {}
    for b in bad:
        reasons[str(b["_reason"])] = reasons.get(str(b["_reason"]), 0) + 1
    return LabelResult(t.num_rows, len(good), reasons, accepted_path, quarantine_path)


def _check(rec, label_col, fits, mapping, by_request, by_id, by_event, schema):  # noqa: ANN001, ANN202 - one row's checks
    raw = rec.get(label_col)
    if by_request:
        rid = rec.get("request_id")
        if rid is None or str(rid).strip() == "":
            return "missing_key", "request_id is empty", None
        rows = by_id.get(str(rid))
        if rows is None:
            return "unknown_request", f"request_id {rid!r} is not in the prediction log", None
        row = rec.get("row")
        if row is None or str(row).strip() == "":
            if len(rows) != 1:
                return "ambiguous", f"request {rid} scored {len(rows)} rows: give `row`", None
            row = rows[0]
        try:
            row = int(str(row))
        except ValueError:
            return "invalid_type", f"row: not an integer: {row!r}", None
        if row not in rows:
            return "unknown_request", f"request {rid} has no scored row {row}", None
        key = (str(rid), row)
    else:
        ent, ts = rec.get(schema.entity_key), rec.get(schema.event_timestamp)
        if ent is None or ts is None:
            return "missing_key", f"{schema.entity_key} or {schema.event_timestamp} is empty", None
        try:
            when = ts if isinstance(ts, datetime) else datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
        except ValueError:
            return "bad_timestamp", f"{schema.event_timestamp}: not ISO 8601: {ts!r}", None
        when = when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when
        # exact integer microseconds: timestamp() * 1e6 is a float and misses ~80% of keys by 1 us
        matches = by_event.get((str(ent), (when - EPOCH) // timedelta(microseconds=1)))
        if not matches:
            return "unknown_request", f"no logged prediction for {schema.entity_key}={ent} at {ts}", None
        if len(matches) > 1:
            return "ambiguous", f"{len(matches)} logged predictions for {schema.entity_key}={ent} at {ts}", None
        key = matches[0]
    if raw is None or str(raw).strip() == "":
        return "missing_label", f"{label_col} is empty", None
    if not fits:
        wanted = mapping.describe() if mapping.task != "binary" else f"a label where 1 means {mapping.describe()}"
        return "invalid_label", f"{label_col}: expected {wanted}, got {raw!r}", None
    return None, None, key

