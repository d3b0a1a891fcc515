"""Prediction log files: partitions follow each row's own hour, and nothing buffered is lost."""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa

from ray_pipeline.serve.predlog import PredictionLog, read_log, rows_table


def _rows(ids: list[int], at: datetime) -> pa.Table:
    n = len(ids)
    base = {"request_id": [f"r{i}" for i in ids], "row": [0] * n, "score": [0.5] * n, "model_name": ["fraud"] * n,
            "model_version": [1] * n, "variant": ["champion"] * n}  # fmt: skip
    return rows_table(base, pa.table({"amount": [float(i) for i in ids]}), at)


def test_a_buffer_straddling_an_hour_is_split_by_row_time(tmp_path):
    log = PredictionLog(str(tmp_path), flush_rows=10_000, flush_s=3600)
    log.append_table(_rows([1, 2], datetime(2026, 11, 28, 10, 59, 59, tzinfo=timezone.utc)))
    # what a replica queues on the request path: a builder run by the flusher
    log.append_table(lambda: _rows([3], datetime(2026, 11, 28, 11, 0, 0, tzinfo=timezone.utc)), rows=1)
    assert log.close() == 3
    folders = sorted(str(f.parent.relative_to(tmp_path)) for f in tmp_path.rglob("part-*.parquet"))
    assert folders == ["date=2026-11-28/hour=10", "date=2026-11-28/hour=11"]
    table = read_log(str(tmp_path))
    assert sorted(table.column("request_id").to_pylist()) == ["r1", "r2", "r3"]
    assert log.close() == 0  # nothing left, nothing written twice
    assert read_log(str(tmp_path)).num_rows == 3
