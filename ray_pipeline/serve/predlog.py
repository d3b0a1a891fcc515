"""Prediction log: append-only Parquet, partitioned by date and hour, written in batches off the
request path and flushed on shutdown."""

from __future__ import annotations

import json
import os
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("entity", pa.string()),
        ("features", pa.string()),  # the raw record as JSON
        ("score", pa.float64()),
        ("model_name", pa.string()),
        ("model_version", pa.int64()),
        ("variant", pa.string()),  # champion / challenger answered; shadow was scored but not returned
    ]
)


class PredictionLog:
    """Buffers rows; a background thread flushes them every `flush_s` or at `flush_rows`."""

    def __init__(self, directory: str, flush_rows: int = 1000, flush_s: float = 5.0) -> None:
        self.directory = Path(directory)
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self.writer_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def append(self, rows: list[dict[str, Any]], at: datetime | None = None) -> None:
        """Queue rows (request_id, entity, features, score, model_name, model_version, variant); never blocks on I/O."""
        now = at or datetime.now(timezone.utc)
        with self._lock:
            for row in rows:
                self._rows.append({**row, "ts": now, "features": json.dumps(row["features"], default=str)})
            full = len(self._rows) >= self.flush_rows
        if full:
            threading.Thread(target=self.flush, daemon=True).start()

    def flush(self) -> int:
        """Write buffered rows to date=/hour= partitions (by each row's own time); returns rows written."""
        with self._lock:
            rows, self._rows = self._rows, []
        by_hour: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in rows:  # a buffer can straddle an hour boundary
            by_hour.setdefault((f"{row['ts']:%Y-%m-%d}", f"{row['ts']:%H}"), []).append(row)
        for (date, hour), part in by_hour.items():
            with self._lock:
                self._seq += 1
                seq = self._seq
            folder = self.directory / f"date={date}" / f"hour={hour}"
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".part-{self.writer_id}-{seq:06d}.parquet.tmp"
            pq.write_table(pa.Table.from_pylist(part, schema=SCHEMA), tmp)
            os.replace(tmp, folder / f"part-{self.writer_id}-{seq:06d}.parquet")  # readers never see half a file
        return len(rows)

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()

    def close(self) -> int:
        """Stop the flusher and write what is left."""
        self._stop.set()
        return self.flush()


def read_log(directory: str) -> pa.Table:
    """Every logged prediction (for monitoring and tests)."""
    files = sorted(Path(directory).rglob("part-*.parquet"))
    if not files:
        return SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(f, schema=SCHEMA) for f in files])


def new_request_id() -> str:
    """A unique id per HTTP request."""
    return uuid.uuid4().hex
