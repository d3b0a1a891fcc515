"""Prediction log files: partitions follow each row's own hour, and nothing buffered is lost."""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa
import pytest

from ray_pipeline.monitor.collect import window_files
from ray_pipeline.serve.predlog import PredictionLog, read_log, rows_table
from ray_pipeline.storage import list_files


def _rows(ids: list[int], at: datetime) -> pa.Table:
    n = len(ids)
    base = {"request_id": [f"r{i}" for i in ids], "row": [0] * n, "score": [0.5] * n, "model_name": ["fraud"] * n,
            "model_version": [1] * n, "variant": ["champion"] * n}  # fmt: skip
    return rows_table(base, pa.table({"amount": [float(i) for i in ids]}), at)


@pytest.fixture(params=["local", "s3"])
def log_root(request, tmp_path) -> str:
    """A local directory, or a prefix in a bucket on the session's S3 server."""
    return str(tmp_path / "log") if request.param == "local" else request.getfixturevalue("s3_bucket") + "/log"


def test_a_buffer_straddling_an_hour_is_split_by_row_time(log_root):
    log = PredictionLog(log_root, flush_rows=10_000, flush_s=3600)
    log.append_table(_rows([1, 2], datetime(2026, 11, 28, 10, 59, 59, tzinfo=timezone.utc)))
    # what a replica queues on the request path: a builder run by the flusher
    log.append_table(lambda: _rows([3], datetime(2026, 11, 28, 11, 0, 0, tzinfo=timezone.utc)), rows=1)
    assert log.close() == 3
    files = list_files(log_root)
    assert sorted(f.rsplit("/", 1)[0] for f in files) == ["date=2026-11-28/hour=10", "date=2026-11-28/hour=11"]
    assert all(f.rsplit("/", 1)[1].startswith("part-") for f in files)  # no temp files left behind
    table = read_log(log_root)
    assert sorted(table.column("request_id").to_pylist()) == ["r1", "r2", "r3"]
    assert log.close() == 0  # nothing left, nothing written twice
    assert read_log(log_root).num_rows == 3
    # monitoring finds a window's files by hour partition
    at_11 = window_files(log_root, datetime(2026, 11, 28, 11, 0, tzinfo=timezone.utc),
                         datetime(2026, 11, 28, 11, 30, tzinfo=timezone.utc))  # fmt: skip
    assert len(at_11) == 1 and at_11[0].startswith(log_root + "/date=2026-11-28/hour=11/part-")
