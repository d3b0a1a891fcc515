"""Gates on paired evidence: a tie, an identical challenger or a gain within the noise never
passes; a real gain does; non-inferiority allows what the config allows and no more."""

from __future__ import annotations

import numpy as np

from ray_pipeline.config import GateRule, GateTestConfig
from ray_pipeline.registry.significance import identical, paired_gates

GATES = {"log_loss": GateRule(min_improvement=0.0), "roc_auc": GateRule(max_regression=0.01)}
TEST = GateTestConfig(resamples=400, level=0.95, seed=0)


def _holdout(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p_true = 1 / (1 + np.exp(-rng.normal(-0.5, 1.3, n)))
    return (rng.random(n) < p_true).astype(float), p_true


def test_a_tie_and_an_identical_challenger_are_refused():
    y, p = _holdout(3000)
    checks = paired_gates(y, p.copy(), p, GATES, TEST)
    by = {c.metric: c for c in checks}
    assert by["log_loss"].gain == 0 and not by["log_loss"].passed  # strict: +0.00% is no improvement
    assert by["roc_auc"].passed  # non-inferiority holds for a copy
    assert identical(p.copy(), p) and not identical(p + 1e-9, p)


def test_noise_is_refused_and_a_real_gain_passes_with_its_interval():
    y, p_true = _holdout(4000)
    rng = np.random.default_rng(1)
    logit = np.log(p_true / (1 - p_true))
    champion = 1 / (1 + np.exp(-(logit + rng.normal(0, 0.6, len(y)))))
    noisy = 1 / (1 + np.exp(-(logit + rng.normal(0, 0.6, len(y)))))  # as good as the champion, other noise
    better = 1 / (1 + np.exp(-(logit + rng.normal(0, 0.2, len(y)))))
    noise = {c.metric: c for c in paired_gates(y, noisy, champion, GATES, TEST)}
    assert not noise["log_loss"].passed and noise["log_loss"].lower <= 0 <= noise["log_loss"].upper
    real = {c.metric: c for c in paired_gates(y, better, champion, GATES, TEST)}
    assert all(c.passed for c in real.values()) and real["log_loss"].lower > 0
    assert "interval [" in real["log_loss"].line(TEST.level)
    # the same rows and seed give the same interval; a stricter minimum effect refuses the same gain
    again = paired_gates(y, better, champion, GATES, TEST)
    assert again[0].lower == real["log_loss"].lower
    strict = paired_gates(y, better, champion, {"log_loss": GateRule(min_improvement=real["log_loss"].upper)}, TEST)
    assert not strict[0].passed


def test_non_inferiority_refuses_a_clear_loss_beyond_the_margin():
    y, p_true = _holdout(4000, seed=2)
    rng = np.random.default_rng(3)
    worse = np.clip(p_true + rng.normal(0, 0.25, len(y)), 0.001, 0.999)
    auc = {c.metric: c for c in paired_gates(y, worse, p_true, GATES, TEST)}["roc_auc"]
    assert auc.upper < -0.01 and not auc.passed
