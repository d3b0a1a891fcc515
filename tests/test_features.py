"""Feature fit/transform: statistics match pandas, and offline == online == a pandas reference."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from datasketches import kll_doubles_sketch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ray_pipeline.config import (
    CategoricalFeatureConfig,
    FeaturesConfig,
    NumericFeatureConfig,
    SchemaConfig,
)
from ray_pipeline.features import FeatureSpec, fit, transform, transform_records, transform_table
from ray_pipeline.features.colstats import KLL_K
from ray_pipeline.features.fit import merge_partials, partial_stats
from ray_pipeline.features.spec import native_spec

SCHEMA = SchemaConfig(
    entity_key="id",
    event_timestamp="ts",
    label="y",
    features={
        "x": {"type": "float"},
        "k": {"type": "int"},
        "c": {"type": "category"},
        "d": {"type": "category"},
        "t": {"type": "timestamp"},
    },
)


def _fit_local(frame: pd.DataFrame, features: FeaturesConfig, blocks: int = 3,
               oof: dict | None = None) -> FeatureSpec:  # fmt: skip
    """Fit without Ray: the same partial statistics per block, merged (as `fit` does); a binary
    label `y` (every other row, unless the frame has one) for target-encoded columns."""
    if "y" not in frame:
        frame = frame.assign(y=(np.arange(len(frame)) % 2).astype("int8"))
    table = pa.Table.from_pandas(frame, preserve_index=False)
    size = max(1, -(-len(frame) // blocks))
    encoded = [n for n in ("c", "d") if features.categorical.get(n, CategoricalFeatureConfig()).encoding == "target"]
    target = {"columns": encoded, "label": "y", "task": "binary", "classes": 0, "log1p": False}
    dates = ["t"] if "t" in frame else []
    partials = [
        json.loads(json.dumps(partial_stats(table.slice(i, size), {"x": features.numeric.get("x", NumericFeatureConfig()).log1p,
                                                                    "k": features.numeric.get("k", NumericFeatureConfig()).log1p},
                                            ["c", "d"], target, dates)))
        for i in range(0, max(len(frame), 1), size)
    ]  # fmt: skip
    return merge_partials(partials, ["x", "k"], ["c", "d"], features, [], oof, dates)


def reference(frame: pd.DataFrame, spec: FeatureSpec) -> np.ndarray:
    """The transform written plainly with pandas, from the spec's documented math."""
    cols = []
    for col in spec.numeric:
        x = pd.to_numeric(frame[col.name], errors="coerce").astype("float64")
        x = x.where(np.isfinite(x))
        if col.cyclic:  # sin and cos of the place on the cycle; both 0 when missing
            angle = 2 * np.pi * x.fillna(0.0) / col.cyclic
            cols += [np.where(x.isna(), 0.0, np.sin(angle)), np.where(x.isna(), 0.0, np.cos(angle))]
            if col.missing_indicator:
                cols.append(x.isna().astype("float64").to_numpy())
            continue
        if col.log1p:
            x = np.log1p(x.clip(lower=0.0))
        if col.clip is not None:
            x = x.clip(col.clip[0], col.clip[1])
        miss = x.isna()
        x = (x.fillna(col.fill) - col.mean) / col.std
        cols.append(x.to_numpy())
        if col.missing_indicator:
            cols.append(miss.astype("float64").to_numpy())
    for cat in spec.categorical:
        s = frame[cat.name].astype(object).map(lambda v: v.strip() if isinstance(v, str) else v)  # 'a ' is 'a'
        missing = s.isna() | (s == "")
        if cat.encoding == "native":  # the category's place in `codes`; unseen and missing: NaN
            cols.append(s.map(lambda v: cat.codes.index(v) if v in cat.codes else np.nan).astype("float64")
                        .where(~missing, np.nan).to_numpy())  # fmt: skip
            continue
        if cat.encoding == "onehot":
            for value in cat.onehot:
                cols.append(((s == value) & ~missing).astype("float64").to_numpy())
            continue
        enc = s.map(lambda v: cat.frequencies.get(v, cat.unseen_value) if v is not None else 0.0).astype("float64")
        cols.append(enc.where(~missing, cat.missing_value).to_numpy())
        if cat.encoding == "target":  # each category's smoothed mean target; missing and unseen: the prior
            for j, prior in enumerate(cat.target_prior):
                mean = s.map(lambda v: cat.targets[v][j] if v in cat.targets else prior).astype("float64")
                cols.append(mean.where(~missing, prior).to_numpy())
    for date in spec.dates:  # days since 1970 standardized (missing: the mean), calendar parts as sin and cos
        t = pd.to_datetime(frame[date.name], utc=True)
        days = (t - pd.Timestamp("1970-01-01", tz="UTC")) / pd.Timedelta(days=1)
        cols.append(((days.fillna(date.mean) - date.mean) / date.std).to_numpy())
        values = {"month": t.dt.month - 1, "weekday": t.dt.dayofweek, "hour": t.dt.hour + t.dt.minute / 60}
        periods = {"month": 12.0, "weekday": 7.0, "hour": 24.0}
        for part in date.parts:
            angle = 2 * np.pi * values[part].astype("float64").fillna(0.0) / periods[part]
            cols += [np.where(t.isna(), 0.0, np.sin(angle)), np.where(t.isna(), 0.0, np.cos(angle))]
        if date.missing_indicator:
            cols.append(t.isna().astype("float64").to_numpy())
    limit = np.finfo(np.float64).max
    return np.clip(np.column_stack(cols), -limit, limit)  # outputs saturate, as documented


# ---------------------------------------------------------------------------------------------
# property tests: offline == online exactly, == pandas reference within 1e-9
# ---------------------------------------------------------------------------------------------

CATS = st.sampled_from(["a", "b", "c", "é", "", "long category name", "zz"]) | st.none() | st.text(max_size=3)
TRAIN_FLOATS = st.floats(min_value=-1e6, max_value=1e6) | st.none()
ANY_FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.none() | st.sampled_from([1e300, -1e300, 0.0])
INTS = st.integers(min_value=-(2**40), max_value=2**40) | st.none()
TIMES = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1)) | st.none()


def _frames(x, k) -> st.SearchStrategy[pd.DataFrame]:
    row = st.fixed_dictionaries({"x": x, "k": k, "c": CATS, "d": CATS, "t": TIMES})
    return st.lists(row, min_size=1, max_size=40).map(
        lambda rows: pd.DataFrame(
            {
                "x": pd.array([r["x"] for r in rows], dtype="Float64").astype("float64"),
                "k": pd.array([r["k"] for r in rows], dtype="Int64"),
                "c": pd.Series([r["c"] for r in rows], dtype=object),
                "d": pd.Series([r["d"] for r in rows], dtype=object),
                "t": pd.to_datetime(pd.Series([r["t"] for r in rows], dtype=object)).dt.tz_localize("UTC"),
            }
        )
    )


FEATURE_CONFIGS = st.builds(
    lambda log1p, impute, ind, std, clip, unseen, missing, min_count, enc, cycle: FeaturesConfig(
        numeric={
            "x": NumericFeatureConfig(
                log1p=log1p, impute=impute, missing_indicator=ind, standardize=std, clip_quantiles=clip
            ),
            "k": NumericFeatureConfig(cyclic=cycle, missing_indicator=ind),
        },
        categorical={
            "c": CategoricalFeatureConfig(unseen=unseen, missing=missing, min_count=min_count),
            "d": CategoricalFeatureConfig(encoding=enc, max_onehot=3),
        },
    ),  # fmt: skip
    st.booleans(),
    st.sampled_from(["mean", "median"]),
    st.booleans(),
    st.booleans(),
    st.none() | st.just((0.05, 0.95)),
    st.sampled_from(["zero", "rare", "missing"]),
    st.sampled_from(["own", "zero"]),
    st.integers(1, 3),
    st.sampled_from(["frequency", "onehot", "target"]),
    st.none() | st.sampled_from([12.0, 7.0]),  # k as a calendar input (month, weekday)
)


def _table(frame: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(frame, preserve_index=False)


@pytest.mark.slow  # seconds, not milliseconds: `make test` runs it, `make test-fast` leaves it out
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(train=_frames(TRAIN_FLOATS, INTS), test=_frames(ANY_FLOATS, INTS), features=FEATURE_CONFIGS,
       native=st.booleans())
def test_transform_equals_records_and_pandas_reference(train, test, features, native):
    spec = _fit_local(train, features)
    if native:  # as XGBoost takes the categories: codes, unseen and missing as NaN
        spec = native_spec(spec)
    batch = transform_table(_table(test), spec)
    assert batch.dtype == np.float32 and batch.shape == (len(test), len(spec.feature_names))
    codes = [t == "c" for t in spec.feature_types]
    assert np.isfinite(batch[:, ~np.array(codes, dtype=bool)]).all()
    # Online path, one request per row, gives the same bits as the batch path (times as datetimes, or as
    # ISO 8601 text with an offset, as a request sends them).
    records = test.astype(object).where(test.notna(), None).to_dict("records")
    for i, record in enumerate(records):
        if i % 2 and record["t"] is not None:
            record["t"] = record["t"].tz_convert(timezone(timedelta(hours=5, minutes=30))).isoformat()
        single, names = transform_records([record], spec)
        assert names == spec.feature_names
        np.testing.assert_array_equal(single[0], batch[i])
    wide = transform_table(_table(test), spec, dtype=np.float64)
    np.testing.assert_allclose(wide, reference(test, spec), rtol=1e-12, atol=1e-9)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(train=_frames(TRAIN_FLOATS, INTS), test=_frames(ANY_FLOATS, INTS), features=FEATURE_CONFIGS)
def test_ray_data_transform_equals_records(ray_session, train, test, features):
    import ray.data

    spec = _fit_local(train, features).model_copy(update={"passthrough": ["row"]})
    frame = test.assign(row=np.arange(len(test)))
    out = transform(ray.data.from_arrow(_table(frame)).repartition(2), spec).to_pandas()
    out = out.sort_values("row").reset_index(drop=True)
    offline = out[spec.feature_names].to_numpy()
    online, _ = transform_records(frame.astype(object).where(frame.notna(), None).to_dict("records"), spec)
    np.testing.assert_array_equal(offline, online)


# ---------------------------------------------------------------------------------------------
# fit on Ray Data: statistics equal pandas' over the whole dataset
# ---------------------------------------------------------------------------------------------


def _demo_frame(rows: int = 30_000) -> pd.DataFrame:
    from ray_pipeline.config import SyntheticConfig
    from ray_pipeline.synthetic.transactions import generate_chunk

    spec = SyntheticConfig(rows=rows, chunk_rows=rows, seed=9)
    return generate_chunk(spec, 0).to_pandas()


def test_fit_on_ray_matches_pandas(ray_session, demo_config_dict):
    import ray.data

    from ray_pipeline.config import parse_config

    demo_config_dict["features"] = {
        "numeric": {"amount": {"log1p": True, "clip_quantiles": [0.01, 0.99]}, "credit_score": {"impute": "median"}},
        "categorical": {"channel": {"encoding": "onehot"}, "merchant_id": {"min_count": 5, "unseen": "rare"}},
    }
    cfg = parse_config(demo_config_dict)
    frame = _demo_frame()
    ds = ray.data.from_pandas(frame).repartition(7)
    spec = fit(ds, cfg.data.schema_, cfg.features)
    assert spec.rows == len(frame)

    by_name = {c.name: c for c in spec.numeric}
    for name, col in by_name.items():
        values = frame[name].astype(float)
        if col.log1p:
            values = np.log1p(values.clip(lower=0))
        assert col.count == values.notna().sum() and col.missing == values.isna().sum()
        assert col.mean == pytest.approx(values.mean(), rel=1e-9)
        assert col.std == pytest.approx(values.std(ddof=0), rel=1e-9)
    # Quantiles from the KLL sketch: within its stated rank error (99% confidence; observed ~4x less).
    rank_error = kll_doubles_sketch.get_normalized_rank_error(KLL_K, False)
    lo, hi = by_name["amount"].clip
    logged = np.log1p(frame["amount"])
    assert (logged < lo).mean() == pytest.approx(0.01, abs=rank_error)
    assert (logged > hi).mean() == pytest.approx(0.01, abs=rank_error)
    scores, median = frame["credit_score"].dropna(), by_name["credit_score"].fill  # integers: ties
    assert (scores < median).mean() <= 0.5 + rank_error and (scores <= median).mean() >= 0.5 - rank_error

    cats = {c.name: c for c in spec.categorical}
    counts = frame["merchant_category"].value_counts()
    for key, freq in cats["merchant_category"].frequencies.items():
        assert freq == pytest.approx(counts[key] / len(frame), rel=1e-12)
    merchants = frame["merchant_id"].value_counts()
    assert set(cats["merchant_id"].frequencies) == set(merchants[merchants >= 5].index)
    assert cats["merchant_id"].unseen_value == pytest.approx(merchants[merchants < 5].sum() / len(frame))
    assert cats["channel"].onehot == list(frame["channel"].value_counts().index)
    assert "channel=pos" in spec.feature_names


def test_spec_json_roundtrip_hash_and_tamper(tmp_path):
    frame = pd.DataFrame({"x": [1.0, 2.0, None], "k": [1, 2, 3], "c": ["a", "b", "a"], "d": ["q", None, "q"]})
    spec = _fit_local(frame, FeaturesConfig())
    path = spec.save(tmp_path / "spec.json")
    loaded = FeatureSpec.load(path)
    assert loaded == spec and loaded.content_hash() == spec.content_hash()
    text = path.read_text()
    assert json.loads(text)["numeric"][0]["mean"] == 1.5  # readable by a person
    path.write_text(text.replace('"mean": 1.5', '"mean": 1.6'))
    with pytest.raises(ValueError, match="does not match its content_hash"):
        FeatureSpec.load(path)


def test_unseen_missing_and_rare_policies():
    train = pd.DataFrame({"x": [1.0] * 6, "k": [1] * 6, "c": ["a", "a", "a", "b", None, "r"], "d": ["q"] * 6})
    for unseen, expected in (("zero", 0.0), ("rare", 2 / 6), ("missing", 1 / 6)):
        features = FeaturesConfig(categorical={"c": CategoricalFeatureConfig(unseen=unseen, min_count=2)})
        spec = _fit_local(train, features)
        c = next(cat for cat in spec.categorical if cat.name == "c")
        assert c.frequencies == {"a": 3 / 6}  # b and r are rare (below min_count 2)
        out, names = transform_records([{"c": "new"}, {"c": None}, {"c": ""}, {"c": "a"}, {"c": "b"}], spec)
        col = out[:, names.index("c__freq")]
        np.testing.assert_allclose(col, np.float32([expected, 1 / 6, 1 / 6, 0.5, expected]))


def test_records_with_wrong_types_are_rejected_by_name():
    spec = _fit_local(pd.DataFrame({"x": [1.0], "k": [1], "c": ["a"], "d": ["q"]}), FeaturesConfig())
    with pytest.raises(TypeError, match="feature 'x': expected a number, got 'abc'"):
        transform_records([{"x": "abc"}], spec)


def test_a_cyclic_calendar_input_keeps_its_place_past_the_training_range():
    """Months 1-6 in training, 7-12 served: each month gets its own point on the cycle (not clipped
    to June), December sits next to January, and the spec written before `cyclic` keeps its hash."""
    train = pd.DataFrame({"x": [1.0] * 6, "k": [1, 2, 3, 4, 5, 6], "c": ["a"] * 6, "d": ["q"] * 6})
    spec = _fit_local(train, FeaturesConfig(numeric={"k": NumericFeatureConfig(cyclic=12)}))
    assert [n for n in spec.feature_names if n.startswith("k")] == ["k__sin", "k__cos"]
    out, names = transform_records([{"k": m} for m in range(1, 13)] + [{"k": None}], spec)
    months = out[:, [names.index("k__sin"), names.index("k__cos")]].astype(np.float64)
    assert len({tuple(np.round(p, 5)) for p in months[:12]}) == 12  # twelve distinct months
    step = np.linalg.norm(months[1] - months[0])
    assert np.isclose(np.linalg.norm(months[11] - months[0]), step, atol=1e-6)  # Dec -> Jan is one month
    np.testing.assert_array_equal(months[12], [0.0, 0.0])  # missing: no direction
    plain = _fit_local(train, FeaturesConfig())
    assert "cyclic" not in json.loads(plain.to_json())["numeric"][1]



TIMES = st.datetimes(min_value=pd.Timestamp("1990-01-01").to_pydatetime(), max_value=pd.Timestamp("2060-12-31").to_pydatetime())


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(times=st.lists(TIMES | st.none(), min_size=1, max_size=30))
def test_event_time_parts_are_the_same_offline_online_and_in_pandas(ray_session, times):
    """Time parts from the event time: a Ray Data block of timestamps, records carrying ISO 8601 text
    (as a request's JSON does) and the plain pandas reference give the same sin/cos pairs."""
    import ray.data

    parts = ["hour", "weekday", "day_of_year", "month"]
    base = _fit_local(pd.DataFrame({"x": [1.0], "k": [1], "c": ["a"], "d": ["q"]}), FeaturesConfig(time_parts=parts))
    spec = base.model_copy(update={"event_timestamp": "ts", "time_parts": parts, "passthrough": ["row"]})
    assert spec.feature_names[-8:] == [f"ts__{p}__{f}" for p in parts for f in ("sin", "cos")]
    assert spec.sources[-8:] == ["ts"] * 8 and spec.content_hash() != base.content_hash()
    frame = pd.DataFrame({"x": [1.0] * len(times), "k": [1] * len(times), "c": ["a"] * len(times),
                          "d": ["q"] * len(times), "ts": pd.to_datetime(times, utc=True), "row": range(len(times))})  # fmt: skip
    out = transform(ray.data.from_arrow(_table(frame)).repartition(2), spec).to_pandas().sort_values("row")
    offline = out[spec.feature_names].to_numpy()
    records = [{"x": 1.0, "k": 1, "c": "a", "d": "q", "ts": None if t is None else t.isoformat()} for t in times]
    online, _ = transform_records(records, spec)
    np.testing.assert_array_equal(offline, online)
    ts = frame["ts"]
    values = {"hour": ts.dt.hour + ts.dt.minute / 60, "weekday": ts.dt.weekday, "day_of_year": ts.dt.dayofyear - 1,
              "month": ts.dt.month - 1}  # fmt: skip
    periods = {"hour": 24, "weekday": 7, "day_of_year": 365.25, "month": 12}
    expected = []
    for p in parts:
        angle = 2 * np.pi * values[p].fillna(0).to_numpy(dtype=float) / periods[p]
        expected += [np.where(ts.isna(), 0.0, np.sin(angle)), np.where(ts.isna(), 0.0, np.cos(angle))]
    np.testing.assert_allclose(online[:, -8:], np.column_stack(expected), atol=1e-6)


def test_time_parts_need_an_event_time_and_a_spec_without_them_keeps_its_hash():
    from ray_pipeline.features.fit import time_parts

    with pytest.raises(Exception, match="no event_timestamp"):
        time_parts(SCHEMA.model_copy(update={"event_timestamp": None}), FeaturesConfig(time_parts=["hour"]))
    plain = _fit_local(pd.DataFrame({"x": [1.0], "k": [1], "c": ["a"], "d": ["q"]}), FeaturesConfig())
    assert "time_parts" not in json.loads(plain.to_json())
    with pytest.raises(KeyError, match="'ts'"):
        transform_table(pa.table({"x": [1.0], "k": [1], "c": ["a"], "d": ["q"]}),
                        plain.model_copy(update={"event_timestamp": "ts", "time_parts": ["hour"]}))  # fmt: skip


def test_target_encoding_is_out_of_fold_on_the_train_split():
    """A train row's target encoding comes from the other folds' rows only (its own label never
    reaches its input); every other row, and serving, gets the smoothed mean over all train rows."""
    from ray_pipeline.features.target_encoding import FOLDS, row_folds

    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame({"x": rng.normal(size=n), "k": pd.array(rng.integers(0, 9, n), dtype="Int64"),
                          "c": pd.Series(rng.choice(["a", "b", "c"], n), dtype=object),
                          "d": pd.Series([f"id{i}" for i in range(n)], dtype=object),  # every value once
                          "y": (rng.random(n) < 0.3).astype("int8")})  # fmt: skip
    m = 20.0
    features = FeaturesConfig(categorical={"c": CategoricalFeatureConfig(encoding="target", target_smoothing=m),
                                           "d": CategoricalFeatureConfig(encoding="target", target_smoothing=m)})  # fmt: skip
    oof: dict = {}
    spec = _fit_local(frame, features, oof=oof)
    table = _table(frame)
    held_out = transform_table(table, spec, dtype=np.float64, oof=oof)
    everyone = transform_table(table, spec, dtype=np.float64)
    names = spec.feature_names
    c_col, d_col = names.index("c__target"), names.index("d__target")
    prior = frame["y"].mean()
    assert spec.categorical[0].target_prior == [pytest.approx(prior)]
    # a category seen once: out of fold it is the prior; in full it leans towards its own label
    np.testing.assert_allclose(held_out[:, d_col], prior)
    np.testing.assert_allclose(everyone[:, d_col], (frame["y"] + m * prior) / (1 + m))
    folds = row_folds(table)
    assert set(folds.tolist()) == set(range(FOLDS))
    for i in rng.choice(n, 25, replace=False):  # recomputed from the other folds' rows by hand
        others = (frame["c"] == frame["c"][i]) & (folds != folds[i])
        expected = (frame["y"][others].sum() + m * prior) / (others.sum() + m)
        assert held_out[i, c_col] == pytest.approx(expected)
        full = frame["c"] == frame["c"][i]
        assert everyone[i, c_col] == pytest.approx((frame["y"][full].sum() + m * prior) / (full.sum() + m))
    # the same rows by record (as served): the full means, never the out-of-fold ones
    records = frame.drop(columns="y").astype(object).where(frame.drop(columns="y").notna(), None).to_dict("records")
    online, _ = transform_records(records[:5], spec)
    np.testing.assert_array_equal(online, everyone[:5].astype(np.float32))
