"""Prediction log: append-only Parquet, partitioned by date and hour, written in batches off the
request path and flushed on shutdown.

Each row holds the served version's input columns as typed columns (numbers as float64,
categories as strings, schema from its FeatureSpec), so monitoring reads them column-wise without
parsing; anything else a record carried goes to the `extra` JSON column. Requests the API refused
are logged as one row each with `variant = "refused"` and their HTTP status.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ray_pipeline.storage import join, matching_files, write_parquet

STAGES = ("lookup", "transform", "inference", "post")  # per-request latency, in milliseconds
REFUSED = "refused"

BASE_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("row", pa.int32()),  # position of the record in its request
        ("ts", pa.timestamp("us", tz="UTC")),  # when the prediction was made
        ("entity", pa.string()),
        ("event_ts", pa.timestamp("us", tz="UTC")),  # event time the caller sent with the record, if any
        ("score", pa.float64()),
        ("model_name", pa.string()),
        ("model_version", pa.int64()),
        ("variant", pa.string()),  # champion / challenger answered; shadow scored unseen; refused
        ("http_status", pa.int16()),
        *[(f"latency_{s}_ms", pa.float64()) for s in STAGES],
        ("extra", pa.string()),  # JSON of record fields that are not typed input columns
    ]
)
BASE_COLUMNS = set(BASE_SCHEMA.names)


def rows_table(base: dict[str, list[Any]], inputs: pa.Table | None, at: datetime) -> pa.Table:
    """One request's (or batch's) log rows: base columns (`ts` filled with `at`) beside typed inputs."""
    n = len(base["request_id"])
    cols: dict[str, Any] = {}
    for field in BASE_SCHEMA:
        values = [at] * n if field.name == "ts" else base.get(field.name, [None] * n)
        cols[field.name] = pa.array(values, field.type)
    if inputs is not None:
        for name in inputs.column_names:
            if name not in BASE_COLUMNS:  # a feature named like a log column stays in `extra` only
                cols[name] = inputs[name]
    return pa.table(cols)


class PredictionLog:
    """Buffers tables of rows; a background thread flushes them every `flush_s` or at `flush_rows`."""

    def __init__(self, directory: str, flush_rows: int = 1000, flush_s: float = 5.0) -> None:
        self.directory = str(directory)  # a directory or an object-store URI
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self.writer_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._tables: list[pa.Table | Callable[[], pa.Table]] = []
        self._buffered = 0
        self._lock = threading.Lock()
        self._seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def append_table(self, table: pa.Table | Callable[[], pa.Table], rows: int | None = None) -> None:
        """Queue rows built by `rows_table`, or a function that builds them (`rows` of them) at flush
        time, off the request path; never blocks on I/O."""
        with self._lock:
            self._tables.append(table)
            self._buffered += table.num_rows if isinstance(table, pa.Table) else (rows or 0)
            full = self._buffered >= self.flush_rows
        if full:
            threading.Thread(target=self.flush, daemon=True).start()

    def flush(self) -> int:
        """Write buffered rows to date=/hour= partitions (by each row's own time); returns rows written."""
        import pyarrow.compute as pc

        with self._lock:
            queued, self._tables, self._buffered = self._tables, [], 0
        tables = [t if isinstance(t, pa.Table) else t() for t in queued]
        if not tables:
            return 0
        table = pa.concat_tables(tables, promote_options="permissive")
        hours = pc.strftime(table["ts"], format="%Y-%m-%d/%H", locale="C")
        for key in pc.unique(hours).to_pylist():  # a buffer can straddle an hour boundary
            date, hour = key.split("/")
            part = table.filter(pc.equal(hours, key))
            with self._lock:
                self._seq += 1
                seq = self._seq
            name = f"part-{self.writer_id}-{seq:06d}.parquet"
            write_parquet(part, join(self.directory, f"date={date}", f"hour={hour}", name))  # readers never see half
        return table.num_rows

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()

    def close(self) -> int:
        """Stop the flusher and write what is left."""
        self._stop.set()
        return self.flush()


def log_files(directory: str) -> list[str]:
    """Every committed log file (paths or URIs), oldest partition first."""
    return matching_files(directory, "part-*.parquet")


def read_log(directory: str) -> pa.Table:
    """Every logged prediction (for tests and small logs; monitoring reads files on Ray Data)."""
    tables = [pq.read_table(f) for f in log_files(directory)]
    if not tables:
        return BASE_SCHEMA.empty_table()
    return pa.concat_tables(tables, promote_options="permissive")


def recent_log(directory: str, since: datetime, columns: list[str] | None = None) -> pa.Table:
    """Logged rows with `ts` at or after `since`, reading only the hour partitions that can hold them
    (a console refresh reads minutes of log, not all of it)."""
    import pyarrow.compute as pc

    hour = since.replace(minute=0, second=0, microsecond=0)
    now = datetime.now(since.tzinfo)
    tables = []
    while hour <= now:
        part = join(directory, f"date={hour:%Y-%m-%d}", f"hour={hour:%H}")
        for f in matching_files(part, "part-*.parquet"):
            try:
                t = pq.read_table(f, columns=columns) if columns else pq.read_table(f)
            except (OSError, pa.ArrowInvalid):
                continue  # a file being replaced; the next refresh reads it
            tables.append(t)
        hour += timedelta(hours=1)
    if not tables:
        return BASE_SCHEMA.empty_table() if columns is None else BASE_SCHEMA.empty_table().select(columns)
    table = pa.concat_tables(tables, promote_options="permissive")
    return table.filter(pc.greater_equal(table["ts"], pa.scalar(since, table.schema.field("ts").type)))


def new_request_id() -> str:
    """A unique id per HTTP request."""
    return uuid.uuid4().hex
