"""Gates on paired evidence: challenger and champion scored on the same holdout rows, compared by a
paired bootstrap of the per-row loss (and of the AUC), so a tie, or a gain the rows cannot tell
from noise, never passes.

Each gate metric's relative gain (positive when the candidate is better) is resampled over rows;
a `min_improvement` rule passes only when the interval's lower bound is above it (strictly, so a
tie fails at 0), a `max_regression` rule (non-inferiority) when the lower bound is above minus it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from ray_pipeline.config import GateRule, GateTestConfig

EPS = 1e-15
# Metrics with a per-row value: the gain is a ratio of means (RMSE: of root means), resampled
# exactly. AUC and R^2 are not means over rows and are recomputed per resample.
PER_ROW = {"log_loss", "brier", "rmse", "mae"}
SUPPORTED = PER_ROW | {"roc_auc", "r2"}


def counterparts(task: str, metric: str = "rmse") -> dict[str, str]:
    """The metric each configured classification gate stands for in `task`: a regression version has
    no log-loss or AUC, so its gates check the error to beat (`metric`, the label's), the fit not to
    lose (R^2) and the other error; the report says so."""
    if task != "regression":
        return {}
    return {"log_loss": metric, "roc_auc": "r2", "brier": "rmse" if metric == "mae" else "mae"}


@dataclass(frozen=True)
class GateCheck:
    """One metric's paired comparison."""

    metric: str
    candidate: float
    current: float
    gain: float  # relative, positive when the candidate is better
    lower: float
    upper: float
    rule: str  # "superiority > X" or "non-inferiority > -X"
    passed: bool

    def line(self, level: float) -> str:
        """One report line: both values, the gain and its interval, the rule."""
        return (f"  {'PASS' if self.passed else 'FAIL'} {self.metric}: {self.candidate:.6g} vs {self.current:.6g}; "
                f"gain {self.gain:+.2%}, {level:.0%} interval [{self.lower:+.2%}, {self.upper:+.2%}]; "
                f"needs lower bound {self.rule}")  # fmt: skip


def row_losses(metric: str, y: np.ndarray, p: np.ndarray, task: str = "binary") -> np.ndarray:
    """Per-row loss: log-loss or Brier score (binary: p of label 1; multiclass: rows of class
    probabilities), squared or absolute error (regression: predicted values)."""
    if task == "regression":
        err = p - y
        return err**2 if metric == "rmse" else np.abs(err)
    if task == "multiclass":
        onehot = np.eye(p.shape[1])[y.astype(int)]
        if metric == "brier":
            return ((p - onehot) ** 2).sum(axis=1)
        return -np.log(np.clip((p * onehot).sum(axis=1), EPS, 1.0))
    if metric == "brier":
        return (p - y) ** 2
    q = np.clip(p, EPS, 1 - EPS)
    return -(y * np.log(q) + (1 - y) * np.log1p(-q))


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(p)
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _whole(metric: str, task: str, y: np.ndarray, p: np.ndarray) -> float:
    """AUC (multiclass: the mean of one-vs-rest AUCs) or R^2 on the rows given."""
    if metric == "r2":
        var = float(np.var(y))
        return 1.0 - float(np.mean((p - y) ** 2)) / var if var > 0 else float("nan")
    if task == "multiclass":
        return float(np.nanmean([_auc((y == k).astype(int), p[:, k]) for k in range(p.shape[1])]))
    return _auc(y, p)


def _resampled_gains(metric: str, y: np.ndarray, p_new: np.ndarray, p_old: np.ndarray, idx: np.ndarray,
                     task: str = "binary") -> tuple[float, float, float, np.ndarray]:  # fmt: skip
    """(candidate value, current value, gain, gains per resample)."""
    if metric in PER_ROW:
        root = np.sqrt if metric == "rmse" else (lambda a: a)
        new, old = row_losses(metric, y, p_new, task), row_losses(metric, y, p_old, task)
        m_new, m_old = float(root(new.mean())), float(root(old.mean()))
        r_new, r_old = root(new[idx].mean(axis=1)), root(old[idx].mean(axis=1))
        gains = (r_old - r_new) / np.maximum(r_old, EPS)
        return m_new, m_old, (m_old - m_new) / max(m_old, EPS), gains
    a_new, a_old = _whole(metric, task, y, p_new), _whole(metric, task, y, p_old)
    gains = []
    for i in idx:
        old = _whole(metric, task, y[i], p_old[i])
        gains.append((_whole(metric, task, y[i], p_new[i]) - old) / max(abs(old), EPS))
    gains = np.array(gains)
    return a_new, a_old, (a_new - a_old) / max(abs(a_old), EPS), gains[np.isfinite(gains)]


def paired_gates(y: np.ndarray, p_new: np.ndarray, p_old: np.ndarray, gates: dict[str, GateRule],
                 test: GateTestConfig, task: str = "binary", metric: str = "rmse") -> list[GateCheck]:  # fmt: skip
    """Every gate checked on the same rows by a seeded paired bootstrap (a regression task checks
    each classification gate's counterpart, its error being `metric`)."""
    y, p_new, p_old = (np.asarray(a, dtype=np.float64) for a in (y, p_new, p_old))
    counterpart = counterparts(task, metric)
    gates = {counterpart.get(name, name): rule for name, rule in gates.items()}
    unknown = sorted(set(gates) - SUPPORTED)
    if unknown:
        raise ValueError(f"registry.gates {unknown}: a holdout comparison supports {sorted(SUPPORTED)}")
    rng = np.random.default_rng(test.seed)
    idx = rng.integers(0, len(y), size=(test.resamples, len(y)))  # the same resamples for every metric
    alpha = (1 - test.level) / 2
    checks = []
    for metric, rule in gates.items():
        new, old, gain, gains = _resampled_gains(metric, y, p_new, p_old, idx, task)
        lower, upper = (float(np.quantile(gains, q)) for q in (alpha, 1 - alpha)) if gains.size else (np.nan, np.nan)
        if rule.max_regression is not None and rule.min_improvement == 0.0:
            bound, text = -rule.max_regression, f">= {-rule.max_regression:+.2%} (non-inferiority)"
            passed = bool(lower >= bound)
        else:
            bound, text = rule.min_improvement, f"> {rule.min_improvement:+.2%} (strict improvement)"
            passed = bool(lower > bound)
        checks.append(GateCheck(metric, new, old, gain, lower, upper, text, passed))
    return checks


def identical(p_new: np.ndarray, p_old: np.ndarray, tol: float = 1e-12) -> bool:
    """Whether two models gave the same score to every row (a retrain on the same data)."""
    return len(p_new) == len(p_old) and bool(np.all(np.abs(np.asarray(p_new) - np.asarray(p_old)) <= tol))
