"""Feature store: point-in-time join against brute force, online stores (SQLite and a real Redis)."""

from __future__ import annotations

import subprocess
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ray_pipeline.config import FeatureViewConfig
from ray_pipeline.features.online import EXPIRED, MISSING, PRESENT, RedisOnlineStore, SQLiteOnlineStore
from ray_pipeline.features.pit import point_in_time_join
from ray_pipeline.features.store import daily_aggregates, materialize, read_view, register_definition, write_view
from ray_pipeline.runtime import free_port

from .conftest import require_binary
from .helpers import wait_until

T0 = pd.Timestamp("2024-01-01", tz="UTC")


def brute_force(events: pd.DataFrame, feats: pd.DataFrame, ttl: float | None) -> pd.DataFrame:
    """For each event, scan every feature row: the latest with ts <= event ts (within ttl)."""
    values = []
    for _, ev in events.iterrows():
        cand = feats[(feats["entity"] == ev["entity"]) & (feats["feature_ts"] <= ev["ts"])]
        if ttl is not None:
            cand = cand[ev["ts"] - cand["feature_ts"] <= pd.Timedelta(seconds=ttl)]
        if pd.isna(ev["ts"]) or cand.empty:
            values.append(None)
        else:
            latest = cand[cand["feature_ts"] == cand["feature_ts"].max()]
            values.append(latest["f"].iloc[-1])  # ties: the row written last
    return pd.Series(values, dtype="float64")


def _events(draw_rows) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "entity": pd.array([r[0] for r in draw_rows], dtype="Int64"),
            "ts": [T0 + pd.Timedelta(hours=r[1]) if r[1] is not None else pd.NaT for r in draw_rows],
            "row": np.arange(len(draw_rows)),
        }
    )


EVENT_ROWS = st.lists(st.tuples(st.integers(0, 4) | st.none(), st.integers(0, 48) | st.none()), min_size=1, max_size=60)
FEATURE_ROWS = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 48), st.floats(-5, 5)), max_size=60)


@pytest.mark.slow  # seconds, not milliseconds: `make test` runs it, `make test-fast` leaves it out
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(ev_rows=EVENT_ROWS, ft_rows=FEATURE_ROWS, ttl=st.none() | st.sampled_from([3600.0, 6 * 3600.0]))
def test_point_in_time_join_matches_brute_force(ray_session, ev_rows, ft_rows, ttl):
    import ray.data

    events = _events(ev_rows)
    feats = pd.DataFrame(
        {
            "entity": pd.array([r[0] for r in ft_rows], dtype="int64"),
            "feature_ts": pd.Series([T0 + pd.Timedelta(hours=r[1]) for r in ft_rows], dtype="datetime64[us, UTC]"),
            "f": pd.Series([r[2] for r in ft_rows], dtype="float64"),
        }
    )
    ev_ds = ray.data.from_pandas(events).repartition(3)
    ft_ds = ray.data.from_arrow(pa.Table.from_pandas(feats, preserve_index=False))
    out = point_in_time_join(ev_ds, ft_ds, "entity", "ts", ["f"], ttl_seconds=ttl, parts=3).to_pandas()
    assert len(out) == len(events)
    assert out["row"].tolist() == events["row"].tolist()  # input order, one row per input row
    expected = brute_force(events, feats, ttl)
    np.testing.assert_array_equal(out["f"].isna().to_numpy(), expected.isna().to_numpy())
    np.testing.assert_array_equal(out["f"].dropna().to_numpy(), expected.dropna().to_numpy())


def test_no_future_value_leaks(ray_session):
    import ray.data

    events = _events([(1, 10), (1, 20), (2, 5)])
    feats = pd.DataFrame(
        {
            "entity": [1, 1, 1, 2],
            "feature_ts": pd.to_datetime([T0 + pd.Timedelta(hours=h) for h in (9, 10, 11, 6)], utc=True),
            "f": [9.0, 10.0, 11.0, 6.0],
        }
    )
    out = point_in_time_join(
        ray.data.from_pandas(events), ray.data.from_pandas(feats), "entity", "ts", ["f"]
    ).to_pandas()
    assert out["f"].tolist()[:2] == [10.0, 11.0]  # exact-time value is known; later one is not
    assert pd.isna(out["f"].iloc[2])  # the only value for entity 2 comes after the event


def test_feature_name_clash_is_an_error(ray_session):
    import ray.data

    events = _events([(1, 1)]).assign(f=1.0)
    feats = pd.DataFrame({"entity": [1], "feature_ts": [T0], "f": [2.0]})
    with pytest.raises(ValueError, match=r"feature names \['f'\] already exist"):
        point_in_time_join(ray.data.from_pandas(events), ray.data.from_pandas(feats), "entity", "ts", ["f"])


def test_daily_aggregates_and_view_roundtrip(ray_session, tmp_path):
    import ray.data

    ts = [T0 + pd.Timedelta(hours=h) for h in (1, 2, 30, 5)]
    events = pd.DataFrame({"cid": [7, 7, 7, 8], "ts": pd.to_datetime(ts, utc=True), "amount": [1.0, 3.0, 10.0, None]})
    view = FeatureViewConfig(entity="cid", daily_aggregates={"amount": ["count", "mean", "max"]})
    agg = daily_aggregates(ray.data.from_pandas(events), "cid", "ts", view).to_pandas()
    agg = agg.sort_values(["cid", "feature_ts"]).reset_index(drop=True)
    assert agg["cid"].tolist() == [7, 7, 8]
    assert agg["feature_ts"].tolist() == [
        T0 + pd.Timedelta(days=1),
        T0 + pd.Timedelta(days=2),
        T0 + pd.Timedelta(days=1),
    ]
    assert agg["amount_count_1d"].tolist() == [2, 1, 0]
    assert agg["amount_mean_1d"].tolist()[:2] == [2.0, 10.0] and pd.isna(agg["amount_mean_1d"].iloc[2])

    root = str(tmp_path / "store")
    assert write_view(ray.data.from_pandas(agg), root, "cust", view) == 1
    assert write_view(ray.data.from_pandas(agg), root, "cust", view) == 1  # same definition, same version
    changed = view.model_copy(update={"ttl_seconds": 3600.0})
    assert register_definition(root, "cust", changed) == 2
    assert (tmp_path / "store" / "views" / "cust" / "definitions" / "v1.json").exists()
    back = read_view(root, "cust").to_pandas().sort_values(["cid", "feature_ts"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(back, agg, check_dtype=False)


# ---------------------------------------------------------------------------------------------
# online stores
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server on a free loopback port for this test session."""
    binary = require_binary("redis-server", "redis-server")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    def up() -> bool:
        try:
            return client.ping()
        except redis.ConnectionError:
            return False

    if not wait_until(up, 5, every=0.05):
        proc.kill()
        pytest.fail("redis-server did not start")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = SQLiteOnlineStore(tmp_path / "online.db")
    else:
        s = RedisOnlineStore(request.getfixturevalue("redis_url"), prefix=f"t{time.monotonic_ns()}")
    yield s
    s.close()


def _us(t: datetime) -> int:
    return int(t.timestamp() * 1e6)


def test_online_store_newer_wins_and_statuses(store):
    day = datetime(2024, 1, 2, tzinfo=timezone.utc)
    assert store.write("v", [("1", _us(day), {"a": 1.0, "b": "x"}), ("2", _us(day), {"a": 2.0, "b": None})]) == 2
    # An older value never replaces a newer one; a newer one does.
    assert store.write("v", [("1", _us(day - timedelta(days=1)), {"a": -1.0, "b": "old"})]) == 0
    assert store.write("v", [("2", _us(day + timedelta(hours=1)), {"a": 3.0, "b": "y"})]) == 1
    rows = store.get("v", [1, "2", 3], ["a", "b"], ttl_seconds=86400, now=day + timedelta(hours=12))
    assert [r.status for r in rows] == [PRESENT, PRESENT, MISSING]
    assert rows[0].values == {"a": 1.0, "b": "x"} and rows[1].values == {"a": 3.0, "b": "y"}
    later = store.get("v", [1, 2], ["a"], ttl_seconds=86400, now=day + timedelta(hours=24, minutes=30))
    assert [r.status for r in later] == [EXPIRED, PRESENT]
    assert later[0].values == {"a": None}
    assert store.get("other_view", [1], ["a"])[0].status == MISSING


def test_materialize_writes_latest_per_entity_in_window(ray_session, store):
    import ray.data

    view = FeatureViewConfig(entity="cid", features=["f"], ttl_seconds=None)
    ts = pd.to_datetime([T0 + pd.Timedelta(days=d) for d in (1, 2, 3, 1, 5)], utc=True)
    rows = pd.DataFrame({"cid": [1, 1, 1, 2, 2], "feature_ts": ts, "f": [1.0, 2.0, 3.0, 10.0, 50.0]})
    ds = ray.data.from_pandas(rows).repartition(3)
    counts = materialize(
        ds, store, "mv", view, start=T0.to_pydatetime(), end=(T0 + pd.Timedelta(days=3)).to_pydatetime()
    )
    got = {r.entity: r.values["f"] for r in store.get("mv", [1, 2], ["f"])}
    assert got == {"1": 2.0, "2": 10.0}  # day 3 and day 5 are outside [start, end)
    assert counts["written"] >= 2
    materialize(ds, store, "mv", view)
    assert {r.entity: r.values["f"] for r in store.get("mv", [1, 2], ["f"])} == {"1": 3.0, "2": 50.0}
    # Materializing an older window again changes nothing.
    materialize(ds, store, "mv", view, end=(T0 + pd.Timedelta(days=2)).to_pydatetime())
    assert {r.entity: r.values["f"] for r in store.get("mv", [1, 2], ["f"])} == {"1": 3.0, "2": 50.0}
