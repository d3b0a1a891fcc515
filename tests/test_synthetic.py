"""Synthetic generator: determinism, the shape of the data, ground truth and drift options."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from ray_pipeline.config import SyntheticConfig
from ray_pipeline.synthetic import transactions as syn

START = datetime(2024, 1, 1, tzinfo=timezone.utc)
DRIFT_AT = datetime(2024, 2, 15, tzinfo=timezone.utc)


def _frame(**kwargs) -> pd.DataFrame:
    spec = SyntheticConfig(rows=40_000, chunk_rows=40_000, seed=3, start=START, days=90, **kwargs)
    return syn.generate_chunk(spec, 0).to_pandas()


@pytest.fixture(scope="module")
def base() -> pd.DataFrame:
    return _frame()


def test_same_seed_same_rows_other_seed_other_rows():
    spec = SyntheticConfig(rows=5_000, chunk_rows=2_000, seed=11)
    a = syn.generate_chunk(spec, 1)
    assert a.equals(syn.generate_chunk(spec, 1))
    assert a.num_rows == 2_000
    assert syn.generate_chunk(spec, 2).num_rows == 1_000  # last chunk is the remainder
    other = syn.generate_chunk(spec.model_copy(update={"seed": 12}), 1)
    assert not a.equals(other)
    assert a["event_id"].to_pylist()[0] == 2_000  # ids are global row numbers


def test_columns_types_and_shape(base):
    numeric = [c for c in syn.NUMERIC_FEATURES if pd.api.types.is_numeric_dtype(base[c])]
    assert len(numeric) >= 6
    assert len(syn.CATEGORICAL_FEATURES) >= 3
    assert base["merchant_id"].nunique() >= 1000
    # Long-tailed categories: the top merchant is far more frequent than the median one.
    freq = base["merchant_id"].value_counts()
    assert freq.iloc[0] > 20 * freq.median()
    # Repeat entities.
    assert base["customer_id"].value_counts().iloc[0] > 10
    assert base["customer_id"].nunique() < len(base) / 2
    # Heavy tails: amount's max is many times its median and its kurtosis is large.
    assert base["amount"].max() > 20 * base["amount"].median()
    assert base["amount"].kurt() > 10
    for col in syn.MISSING_FEATURES:
        assert 0.04 < base[col].isna().mean() < 0.06, col
    for col in set(syn.NUMERIC_FEATURES) - set(syn.MISSING_FEATURES):
        assert base[col].notna().all(), col
    ts = base["event_ts"]
    assert ts.min() >= pd.Timestamp(START) and ts.max() < pd.Timestamp(START) + pd.Timedelta(days=90)
    assert (base["hour_of_day"] == ts.dt.hour).all()


def test_label_follows_p_true(base):
    n = len(base)
    p = base["p_true"].to_numpy()
    se = np.sqrt(np.sum(p * (1 - p))) / n
    assert abs(base["label"].mean() - p.mean()) < 4 * se
    # Calibration by decile of p_true: each bin's label rate matches its mean probability.
    bins = pd.qcut(base["p_true"], 10, labels=False)
    for _, group in base.groupby(bins):
        gp = group["p_true"].to_numpy()
        gse = np.sqrt(np.sum(gp * (1 - gp))) / len(group)
        assert abs(group["label"].mean() - gp.mean()) < 5 * gse


def test_p_true_is_a_function_of_observed_columns(base):
    cols = {c: base[c].to_numpy(dtype=float) for c in syn.NUMERIC_FEATURES}
    cols.update({c: base[c].to_numpy(dtype=object) for c in syn.CATEGORICAL_FEATURES})
    recomputed = 1 / (1 + np.exp(-syn.true_logit(cols, syn.COEFFICIENTS)))
    np.testing.assert_allclose(recomputed, base["p_true"].to_numpy(), rtol=1e-12)
    assert syn.bayes_log_loss(base["label"].to_numpy(), base["p_true"].to_numpy()) < np.log(2)


def test_interaction_is_not_linear(base):
    """Night-time online rows carry an extra effect no additive term explains."""
    night_online = (base["hour_of_day"] <= 5) & (base["channel"] == "online")
    logit = np.log(base["p_true"] / (1 - base["p_true"]))
    online, night = base["channel"] == "online", base["hour_of_day"] <= 5
    m = lambda mask: logit[mask].mean()  # noqa: E731
    # Difference-in-differences of mean logits isolates the interaction (about 1.5).
    did = (m(night_online) - m(online & ~night)) - (m(night & ~online) - m(~night & ~online))
    assert 1.2 < did < 1.8


def test_covariate_shift_moves_only_rows_after_start(base):
    drifted = _frame(drift={"start": DRIFT_AT, "covariate_shift": {"amount": {"loc": 1.0, "scale": 1.5}}})
    after = base["event_ts"] >= pd.Timestamp(DRIFT_AT)
    pd.testing.assert_frame_equal(base[~after], drifted[~after])
    log_before = np.log(base.loc[after, "amount"])
    log_after = np.log(drifted.loc[after, "amount"])
    assert log_after.mean() - log_before.mean() == pytest.approx(1.0, abs=0.05)
    assert log_after.std() / log_before.std() == pytest.approx(1.5, abs=0.05)
    assert (drifted.loc[after, "distance_km"].dropna() == base.loc[after, "distance_km"].dropna()).all()


def test_new_categories_appear_only_after_start(base):
    drifted = _frame(drift={"start": DRIFT_AT, "new_categories": {"merchant_category": 0.3}})
    after = drifted["event_ts"] >= pd.Timestamp(DRIFT_AT)
    unseen = ~drifted["merchant_category"].isin(syn.MERCHANT_CATEGORIES)
    assert not unseen[~after].any()
    assert unseen[after].mean() == pytest.approx(0.3, abs=0.02)
    assert drifted.loc[unseen, "merchant_category"].str.startswith("new_merchant_category_").all()
    pd.testing.assert_frame_equal(base[~after], drifted[~after])


def test_concept_drift_changes_p_true_after_start_only(base):
    drifted = _frame(drift={"start": DRIFT_AT, "concept_drift": {"intercept": -1.0}})
    after = base["event_ts"] >= pd.Timestamp(DRIFT_AT)
    pd.testing.assert_frame_equal(base[~after], drifted[~after])
    features = [*syn.NUMERIC_FEATURES, *syn.CATEGORICAL_FEATURES]
    pd.testing.assert_frame_equal(base.loc[after, features], drifted.loc[after, features])
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    delta = logit(drifted.loc[after, "p_true"]) - logit(base.loc[after, "p_true"])
    np.testing.assert_allclose(delta, -1.0 - syn.COEFFICIENTS["intercept"], atol=1e-9)
    assert drifted.loc[after, "label"].mean() > base.loc[after, "label"].mean() + 0.1


def test_unknown_drift_targets_are_rejected():
    with pytest.raises(ValueError, match="covariate_shift: unknown features \\['colour'\\]"):
        _frame(drift={"start": DRIFT_AT, "covariate_shift": {"colour": {"loc": 1}}})
    with pytest.raises(ValueError, match="concept_drift: unknown coefficients"):
        _frame(drift={"start": DRIFT_AT, "concept_drift": {"nope": 1}})


def test_corruption_makes_each_kind_of_bad_row():
    clean = _frame()
    dirty = _frame(corruption_rate=0.05)
    same = (clean == dirty) | (clean.isna() & dirty.isna())
    changed = ~same.all(axis=1)
    assert 0.035 < changed.mean() < 0.06
    assert (dirty["amount"] < 0).sum() > 100
    assert (dirty["credit_score"] == 9999).sum() > 100
    assert dirty["label"].isna().sum() > 100
    assert dirty["event_ts"].isna().sum() > 100
    assert dirty["customer_id"].isna().sum() > 100
    assert (dirty["channel"] == "carrier_pigeon").sum() > 100
    assert dirty.duplicated().sum() > 50


def test_generate_with_ray_matches_chunks_and_is_deterministic(ray_session, tmp_path):
    spec = SyntheticConfig(rows=25_000, chunk_rows=10_000, seed=5)
    first = syn.generate(spec, str(tmp_path / "a"))
    syn.generate(spec, str(tmp_path / "b"))
    a = pd.read_parquet(tmp_path / "a").sort_values("event_id", ignore_index=True)
    b = pd.read_parquet(tmp_path / "b").sort_values("event_id", ignore_index=True)
    assert first.rows == len(a) == 25_000
    pd.testing.assert_frame_equal(a, b)
    expected = pd.concat([syn.generate_chunk(spec, i).to_pandas() for i in range(3)], ignore_index=True)
    pd.testing.assert_frame_equal(a, expected)


def test_generate_csv(ray_session, tmp_path):
    spec = SyntheticConfig(rows=3_000, chunk_rows=1_000, seed=5, format="csv")
    syn.generate(spec, str(tmp_path / "csv"))
    files = sorted((tmp_path / "csv").glob("*.csv"))
    assert files
    frame = pd.concat(pd.read_csv(f) for f in files)
    assert len(frame) == 3_000 and "p_true" in frame.columns


def _task_frame(task: str) -> pd.DataFrame:
    spec = SyntheticConfig(rows=40_000, chunk_rows=40_000, seed=3, start=START, days=90, task=task)
    return syn.generate_chunk(spec, 0).to_pandas()


def _columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    cols = {c: frame[c].to_numpy(dtype=float) for c in syn.NUMERIC_FEATURES}
    cols.update({c: frame[c].to_numpy(dtype=object) for c in syn.CATEGORICAL_FEATURES})
    return cols


def test_task_modes_share_the_inputs_and_change_only_the_label(base):
    for task in ("multiclass", "regression"):
        frame = _task_frame(task)
        inputs = ["event_id", "customer_id", "event_ts", *syn.NUMERIC_FEATURES, *syn.CATEGORICAL_FEATURES]
        pd.testing.assert_frame_equal(frame[inputs], base[inputs])


def test_multiclass_outcome_follows_the_true_softmax():
    frame = _task_frame("multiclass")
    probs = syn.class_probabilities(syn.true_logit(_columns(frame), syn.COEFFICIENTS), _columns(frame))
    assert set(frame["label"]) == set(syn.CLASSES)
    k = frame["label"].map({c: i for i, c in enumerate(syn.CLASSES)}).to_numpy()
    # p_true is the truth's probability of each row's own class.
    np.testing.assert_allclose(frame["p_true"].to_numpy(), probs[np.arange(len(k)), k], rtol=1e-12)
    n = len(frame)
    for i, cls in enumerate(syn.CLASSES):
        p = probs[:, i]
        se = np.sqrt(np.sum(p * (1 - p))) / n
        assert abs((k == i).mean() - p.mean()) < 4 * se, cls
        # Calibrated within each quintile of the class's own probability.
        bins = pd.qcut(p, 5, labels=False, duplicates="drop")
        for b in np.unique(bins):
            m = bins == b
            gse = np.sqrt(np.sum(p[m] * (1 - p[m]))) / m.sum()
            assert abs((k[m] == i).mean() - p[m].mean()) < 5 * gse, (cls, b)
    # The truth's loss sits well below the loss of the class shares alone.
    shares = np.bincount(k, minlength=3) / n
    assert syn.bayes_multiclass_log_loss(frame["p_true"].to_numpy()) < -np.mean(np.log(shares[k])) - 0.05


def test_regression_target_is_the_true_mean_plus_noise_of_known_size():
    frame = _task_frame("regression")
    mean = syn.LOSS_OFFSET + syn.LOSS_SCALE * syn.true_logit(_columns(frame), syn.COEFFICIENTS)
    np.testing.assert_allclose(frame["y_true"].to_numpy(), mean, rtol=1e-12)
    residual = frame["label"].to_numpy() - mean
    n = len(frame)
    assert abs(residual.mean()) < 4 * syn.NOISE_SD / np.sqrt(n)
    floor = syn.noise_rmse(frame["label"].to_numpy(), frame["y_true"].to_numpy())
    assert abs(floor - syn.NOISE_SD) < 4 * syn.NOISE_SD / np.sqrt(2 * n)
    assert abs(np.corrcoef(residual, mean)[0, 1]) < 4 / np.sqrt(n)  # the noise does not depend on the inputs
    assert frame["label"].std() > 2 * syn.NOISE_SD  # the inputs explain most of the variance


def test_a_corrupt_label_is_null_in_every_task_mode():
    for task in ("binary", "multiclass", "regression"):
        spec = SyntheticConfig(rows=20_000, chunk_rows=20_000, seed=5, task=task, corruption_rate=0.05)
        frame = syn.generate_chunk(spec, 0).to_pandas()
        assert 20 < frame["label"].isna().sum() < 500, task
