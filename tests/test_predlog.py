"""Prediction log files: partitions follow each row's own hour, and nothing buffered is lost."""

from __future__ import annotations

from datetime import datetime, timezone

from ray_pipeline.serve.predlog import PredictionLog, read_log


def _row(i: int) -> dict:
    return {"request_id": f"r{i}", "entity": None, "features": {"amount": float(i)}, "score": 0.5,
            "model_name": "fraud", "model_version": 1, "variant": "champion"}  # fmt: skip


def test_a_buffer_straddling_an_hour_is_split_by_row_time(tmp_path):
    log = PredictionLog(str(tmp_path), flush_rows=10_000, flush_s=3600)
    log.append([_row(1), _row(2)], at=datetime(2026, 11, 28, 10, 59, 59, tzinfo=timezone.utc))
    log.append([_row(3)], at=datetime(2026, 11, 28, 11, 0, 0, tzinfo=timezone.utc))
    assert log.close() == 3
    folders = sorted(str(f.parent.relative_to(tmp_path)) for f in tmp_path.rglob("part-*.parquet"))
    assert folders == ["date=2026-11-28/hour=10", "date=2026-11-28/hour=11"]
    table = read_log(str(tmp_path))
    assert sorted(table.column("request_id").to_pylist()) == ["r1", "r2", "r3"]
    assert log.close() == 0  # nothing left, nothing written twice
    assert read_log(str(tmp_path)).num_rows == 3
