"""Quality figures that see a model go stale when the base rate moves, quality estimated from the
scores before labels arrive (confidence-based estimation), and alerts that go stale."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

from ray_pipeline.config import AlertRule
from ray_pipeline.monitor import alerts
from ray_pipeline.monitor.estimate import calibration_counts, estimate, score_partial, window_estimates
from ray_pipeline.monitor.stats import binary_shift_quality, live_quality


def _population(n: int, intercept: float, seed: int, slope: float = 1.5,
                shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Rows of one input x ~ N(shift, 1); P(y = 1 | x) = sigmoid(intercept + slope * x)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n) + shift
    p_true = 1 / (1 + np.exp(-(intercept + slope * x)))
    return x, (rng.random(n) < p_true).astype(float)


def _model(x: np.ndarray, intercept: float = -0.8, slope: float = 1.5) -> np.ndarray:
    return 1 / (1 + np.exp(-(intercept + slope * x)))


def test_base_rate_drop_turns_the_log_loss_ratio_the_wrong_way_but_not_the_shift_figures():
    """The flights case: positives fall from ~31% to ~13% and the inputs move; the stale model's mean
    score is .27, it ranks worse, yet its log-loss falls. The log-loss ratio says 'better'; the
    base-rate-aware figures say 'worse'."""
    x, y = _population(20_000, -0.8, 0)  # the model is right here
    test = live_quality(y, _model(x))
    x2, y2 = _population(20_000, -1.8, 1, slope=0.9, shift=-0.4)  # rarer positives, weaker relation
    live = live_quality(y2, _model(x2))
    assert 0.25 < test["positive_rate"] < 0.4 and 0.1 < live["positive_rate"] < 0.16 and live["mean_score"] > 0.25
    shifted = binary_shift_quality(live, test)
    assert shifted["log_loss_ratio"] < 0.9  # the old rule's figure: looks like an improvement
    assert shifted["roc_auc_drop"] > 0.05  # ranking got worse
    assert shifted["mean_score_gap"] > 0.1  # the model predicts twice as many positives as there are
    assert shifted["relative_log_loss_ratio"] > 1.3  # worse than at registration, relative to the base rate
    assert shifted["relative_log_loss"] > 1.0  # no better than predicting the window's base rate
    # the same model on the population it was fitted to: every figure at its resting value
    same = binary_shift_quality(test, test)
    assert abs(same["relative_log_loss_ratio"] - 1.0) < 1e-12 and abs(same["roc_auc_drop"]) < 1e-12


def _estimate(x: np.ndarray, calibrated_on: list | None = None) -> dict[str, float]:
    return estimate(score_partial(_model(x)), calibrated_on or [])


def test_estimates_from_calibrated_scores_match_the_realized_quality_under_covariate_shift():
    for seed, shift in [(3, 0.0), (4, 0.8), (5, -1.0)]:
        x, y = _population(20_000, -0.8, seed)
        x = x + shift  # covariate shift: P(y | x) holds, so a calibrated model's estimate holds too
        y = (np.random.default_rng(seed + 10).random(x.size) < _model(x)).astype(float)
        est = _estimate(x)
        p = _model(x)
        assert abs(est["estimated_roc_auc"] - roc_auc_score(y, p)) < 0.01, (shift, est)
        assert abs(est["estimated_log_loss"] - log_loss(y, p)) < 0.01, (shift, est)


def test_estimates_are_recalibrated_on_recent_labels_and_report_their_error():
    """Under a shift of P(y | x) the raw-score estimate is off; calibration on the newest labeled
    window brings it back, and the error against the realized figures is reported."""
    x, y = _population(20_000, -2.0, 6)  # fewer positives at every x than the model thinks
    p = _model(x)
    realized = live_quality(y, p)
    raw = window_estimates({"scores": score_partial(p)}, [], realized)
    assert abs(raw["estimated_log_loss_error"]) > 0.02  # off before calibration is checked
    x_prev, y_prev = _population(20_000, -2.0, 7)  # last window's labels: same relation
    recent = [calibration_counts(y_prev, _model(x_prev))]
    fixed = window_estimates({"scores": score_partial(p)}, recent, realized)
    assert abs(fixed["estimated_log_loss_error"]) < 0.01 and abs(fixed["estimated_roc_auc_error"]) < 0.02, fixed
    assert window_estimates({"scores": None}, recent, realized) == {}


def test_a_firing_alert_without_values_resolves_as_stale():
    rule = AlertRule(name="drift", metric="psi", op=">", threshold=0.25)
    state: dict = {}
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)

    def window(k: int, rows: list) -> list:
        start = t0 + timedelta(hours=k)
        return alerts.evaluate([rule], rows, state, start, start + timedelta(hours=1), stale_windows=2)

    row = {"metric": "psi", "feature": "x", "model_version": 1, "value": 0.9, "verdict": "drift"}
    assert [e["status"] for e in window(0, [row])] == ["firing"]
    assert window(1, []) == []  # one quiet window: still firing
    stale = window(2, [])
    assert [(e["status"], e.get("stale")) for e in stale] == [("resolved", True)]
    assert alerts.active(state) == []
    assert [e["status"] for e in window(3, [row])] == ["firing"]  # fresh evidence fires it again
