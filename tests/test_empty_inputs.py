"""The crash class behind the first natural-drift retrain: every stage that filters, joins or
concatenates labeled, logged or fed-back rows takes empty tables and all-null columns (property
tests), and a retrain that fails anyway records its error and stage."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ray_pipeline.config import parse_config
from ray_pipeline.feedback.selection import select_rows, span
from ray_pipeline.monitor.collect import WindowData
from ray_pipeline.monitor.window import window_rows

from .test_monitoring import T0, config

WINDOW_US = 60_000_000
LABELED = pa.schema([("request_id", pa.string()), ("row", pa.int32()), ("ts", pa.timestamp("us", tz="UTC")),
                     ("entity", pa.string()), ("event_ts", pa.timestamp("us", tz="UTC")), ("amount", pa.float64()),
                     ("channel", pa.string()), ("label", pa.int8()), ("labeled_at", pa.timestamp("us", tz="UTC"))])  # fmt: skip

rows_strategy = st.lists(
    st.tuples(st.integers(0, 5 * WINDOW_US), st.one_of(st.none(), st.sampled_from(["a", "b"])),
              st.one_of(st.none(), st.floats(0, 100)), st.integers(0, 1), st.booleans()),
    max_size=30,
)  # fmt: skip


def _labeled(rows: list[tuple]) -> pa.Table:
    t0 = int(T0.timestamp() * 1e6)
    return pa.table({
        "request_id": [f"r{i}" for i in range(len(rows))], "row": [0] * len(rows),
        "ts": [t0 + r[0] for r in rows], "entity": [r[1] for r in rows], "event_ts": [None] * len(rows),
        "amount": [r[2] for r in rows], "channel": [None] * len(rows), "label": [r[3] for r in rows],
        "labeled_at": [t0] * len(rows),
    }, schema=LABELED)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(rows=rows_strategy, holdout_windows=st.integers(1, 3))
def test_feedback_selection_takes_empty_and_all_null_tables(rows, holdout_windows):
    labeled = _labeled(rows)
    fed = {(f"r{i}", 0) for i, r in enumerate(rows) if r[4]}
    chosen = select_rows(labeled, WINDOW_US, holdout_windows, fed)
    if not rows:
        assert chosen.holdout.num_rows == 0 and chosen.fresh.num_rows == 0 and chosen.holdout_start is None
        return
    ts = np.array([r[0] for r in rows]) + int(T0.timestamp() * 1e6)
    windows = np.unique(ts // WINDOW_US)
    assert chosen.holdout_start == windows[-holdout_windows:][0] * WINDOW_US
    # the holdout is exactly the newest labeled windows; the rest feed back once, with an entity
    assert chosen.holdout.num_rows == int((ts >= chosen.holdout_start).sum())
    older = [i for i, t in enumerate(ts) if t < chosen.holdout_start]
    expected = [i for i in older if not rows[i][4] and rows[i][1] is not None]
    assert sorted(chosen.fresh["request_id"].to_pylist(), key=lambda r: int(r[1:])) == [f"r{i}" for i in expected]
    assert chosen.no_entity == sum(1 for i in older if not rows[i][4] and rows[i][1] is None)
    assert span(chosen.holdout, "event_ts") == {"rows": chosen.holdout.num_rows, "from": None, "to": None}


def test_window_rows_of_an_empty_window_say_zero_rows():
    cfg = parse_config(config(Path("/nonexistent")))
    rows = window_rows(WindowData(T0, T0 + timedelta(seconds=60)), {}, {}, cfg.monitoring)
    assert rows == [{"metric": "rows", "feature": "all", "model_version": None, "value": 0.0, "verdict": None}]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(labels=st.lists(st.tuples(st.one_of(st.none(), st.just("")), st.one_of(st.none(), st.sampled_from(["0", "1", "x"]))),
                       max_size=8))  # fmt: skip
def test_labels_ingest_takes_empty_files_and_all_null_columns_without_an_empty_log(labels, tmp_path_factory):
    from ray_pipeline.monitor.labels import ingest_labels

    tmp = tmp_path_factory.mktemp("labels")
    cfg = parse_config(config(tmp))
    path = tmp / "labels.csv"
    path.write_text("request_id,label\n" + "".join(f"{r or ''},{y or ''}\n" for r, y in labels))
    result = ingest_labels(cfg, str(path))
    assert result.read == len(labels) and result.accepted == 0  # no request is in an empty log
    assert sum(result.quarantined.values()) == len(labels)  # nothing is lost: every row has a reason


def test_build_features_takes_fed_back_rows_with_all_null_inputs(ray_session, tmp_path):
    from ray_pipeline.data.ingest import ingest
    from ray_pipeline.features.build import build_features
    from ray_pipeline.feedback.selection import _as_accepted
    from ray_pipeline.storage import write_parquet

    body = config(tmp_path)
    body["data"]["source"] = {"path": str(tmp_path / "raw.csv")}
    body["features"] = {"store_root": str(tmp_path / "features")}
    cfg = parse_config(body)
    (tmp_path / "raw.csv").write_text("customer_id,ts,y,amount,channel\n" + "".join(
        f"{i},2026-11-01T00:00:{i:02d}Z,{i % 2},{i}.5,pos\n" for i in range(20)))  # fmt: skip
    ingest(cfg)
    for n in (0, 5):  # no rows, then rows whose every input is null
        fed = _labeled([(i * 1000, "1", None, i % 2, False) for i in range(n)])
        write_parquet(_as_accepted(cfg, fed), str(tmp_path / "out" / "feedback" / f"fed-{n}.parquet"))
        assert build_features(cfg).rows == 20 + n


def test_a_failed_retrain_records_its_error_and_stage(ray_session, tmp_path, monkeypatch):
    from ray_pipeline.feedback.records import feedback_runs
    from ray_pipeline.monitor.job import feedback_events
    from ray_pipeline.workflow import retrain

    cfg = parse_config(config(tmp_path, feedback={"min_labeled_rows": 1, "min_new_labels": 1}))
    labeled = _labeled([(i * 1000, "c1", 1.0, i % 2, False) for i in range(10)])
    monkeypatch.setattr(retrain, "labeled_traffic", lambda cfg, until=None: labeled)

    def broken(cfg):
        raise OSError("disk full")

    monkeypatch.setattr(retrain, "build_features", broken)
    record = retrain.retrain(cfg, until=datetime(2030, 1, 1, tzinfo=timezone.utc))
    assert record["decision"] == "failed" and record["stage"] == "features" and "disk full" in record["error"]
    assert feedback_runs(cfg)[-1]["error"] == record["error"]
    state: dict = {}
    fired = feedback_events(state, record, T0)
    assert [e["status"] for e in fired] == ["firing"] and fired[0]["rule"] == "feedback_failed"
    resolved = feedback_events(state, {"id": "next", "decision": "refused"}, T0)
    assert [e["status"] for e in resolved] == ["resolved"]


def test_labeled_traffic_of_an_empty_log_is_empty(tmp_path):
    from ray_pipeline.feedback.selection import labeled_traffic

    cfg = parse_config(config(tmp_path))
    assert labeled_traffic(cfg, until=T0).num_rows == 0
