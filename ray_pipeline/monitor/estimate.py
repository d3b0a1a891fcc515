"""Quality before the labels arrive: confidence-based performance estimation (CBPE, as NannyML
names it) for binary models. If the served scores are calibrated, a row scored p is positive with
probability p, so the expected confusion counts at every threshold, hence the expected ROC AUC and
log-loss, follow from the scores alone.

Assumptions, stated where the estimates are shown: the model is calibrated on the traffic being
scored; P(y | x) has not changed since calibration was last checked (covariate shift only). Under
concept drift or a shift of the base rate the estimate is wrong, and the error is reported beside
it once the labels arrive. Calibration is checked, and corrected, on the version's most recent
labeled windows (for a retrained version, first the window that judged it): Platt scaling of the
scores' logit, pulled towards no correction when labels are few; before any label, the scores as
they are.

Everything is held as counts and sums over fixed score bins, which merge exactly across Ray Data
blocks and keep the monitor's saved state small.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

HIST_BINS = 1000  # score histogram of a window: ties only within 0.001 of score
CAL_BINS = 50  # calibration bins of the labeled rows
PRIOR_ROWS = 20.0  # the calibration's pull towards the scores as they are, in labeled rows
EPS = 1e-15
CALIBRATION_FILE = "calibration.json"  # in a version's directory: the labeled window that judged it


def score_partial(p: np.ndarray) -> dict[str, list[float]]:
    """Counts, sum of log(p) and of log(1 - p) per histogram bin (p: binary scores, NaN skipped)."""
    p = np.clip(p[np.isfinite(p)], EPS, 1 - EPS)
    idx = np.minimum((p * HIST_BINS).astype(np.int64), HIST_BINS - 1)
    return {"n": np.bincount(idx, minlength=HIST_BINS).tolist(),
            "log_p": np.bincount(idx, np.log(p), minlength=HIST_BINS).tolist(),
            "log_q": np.bincount(idx, np.log1p(-p), minlength=HIST_BINS).tolist()}  # fmt: skip


def merge_scores(a: dict[str, list[float]] | None, b: dict[str, list[float]] | None) -> dict[str, list[float]] | None:
    """Sum two score partials."""
    if a is None or b is None:
        return a or b
    return {k: (np.asarray(a[k]) + np.asarray(b[k])).tolist() for k in a}


def calibration_counts(y: np.ndarray, p: np.ndarray) -> dict[str, list[float]]:
    """Labeled rows per calibration bin: rows, positives and the summed logit of their scores."""
    p = np.clip(p, 1e-6, 1 - 1e-6)
    idx = np.minimum((p * CAL_BINS).astype(np.int64), CAL_BINS - 1)
    return {"n": np.bincount(idx, minlength=CAL_BINS).tolist(),
            "pos": np.bincount(idx, y.astype(np.float64), minlength=CAL_BINS).tolist(),
            "sum_logit": np.bincount(idx, np.log(p / (1 - p)), minlength=CAL_BINS).tolist()}  # fmt: skip


def platt(windows: list[dict[str, list[float]]]) -> tuple[float, float]:
    """Slope and intercept of P(y = 1) = sigmoid(a * logit(score) + b) on the labeled windows' bins
    (Newton steps, with a pull towards a = 1, b = 0 worth PRIOR_ROWS rows: few labels change little)."""
    n = np.sum([w["n"] for w in windows], axis=0).astype(np.float64)
    pos = np.sum([w["pos"] for w in windows], axis=0)
    x = np.sum([w["sum_logit"] for w in windows], axis=0) / np.maximum(n, 1)
    keep = n > 0
    n, pos, x = n[keep], pos[keep], x[keep]
    theta = np.array([1.0, 0.0])
    prior = PRIOR_ROWS * 0.25  # the curvature PRIOR_ROWS rows at p = 0.5 would add
    for _ in range(25):
        mu = 1 / (1 + np.exp(-(theta[0] * x + theta[1])))
        r = pos - n * mu
        grad = np.array([(r * x).sum(), r.sum()]) - prior * (theta - [1.0, 0.0])
        w = n * mu * (1 - mu)
        hess = np.array([[(w * x * x).sum(), (w * x).sum()], [(w * x).sum(), w.sum()]]) + prior * np.eye(2)
        step = np.linalg.solve(hess, grad)
        theta += step
        if np.abs(step).max() < 1e-8:
            break
    return float(theta[0]), float(theta[1])


def calibrated(scores: np.ndarray, windows: list[dict[str, list[float]]]) -> np.ndarray:
    """The probability that a row scored `scores` is positive, per the labeled `windows` (none: the score)."""
    if not windows or sum(sum(w["n"]) for w in windows) == 0:
        return scores
    a, b = platt(windows)
    p = np.clip(scores, 1e-6, 1 - 1e-6)
    return 1 / (1 + np.exp(-(a * np.log(p / (1 - p)) + b)))


def estimate(scores: dict[str, list[float]], windows: list[dict[str, list[float]]]) -> dict[str, float]:
    """Expected ROC AUC and log-loss of a window's scores, before its labels."""
    n = np.asarray(scores["n"], dtype=np.float64)
    total = n.sum()
    if total == 0:
        return {}
    mean_p = np.where(n > 0, np.exp(np.asarray(scores["log_p"]) / np.maximum(n, 1)), 0.0)  # geometric bin mean
    centers = np.where(n > 0, mean_p, (np.arange(HIST_BINS) + 0.5) / HIST_BINS)
    q = calibrated(centers, windows)
    pos, neg = n * q, n * (1 - q)
    out = {"estimated_log_loss": float(-(q * np.asarray(scores["log_p"]) + (1 - q) * np.asarray(scores["log_q"])).sum()
                                       / total)}  # fmt: skip
    if pos.sum() > 0 and neg.sum() > 0:
        below = np.cumsum(neg) - neg  # negatives scored in lower bins
        out["estimated_roc_auc"] = float((pos * below + 0.5 * pos * neg).sum() / (pos.sum() * neg.sum()))
    return out


def window_estimates(part: dict[str, Any], windows: list[dict[str, list[float]]],
                     realized: dict[str, float]) -> dict[str, float]:  # fmt: skip
    """Estimates for one version's window and, where the labels are in, their error (estimate - realized)."""
    if part.get("scores") is None:
        return {}
    out = estimate(part["scores"], windows)
    for name in ("roc_auc", "log_loss"):
        if f"estimated_{name}" in out and name in realized:
            out[f"estimated_{name}_error"] = out[f"estimated_{name}"] - realized[name]
    return out


def save_calibration(directory: str | Path, y: np.ndarray, p: np.ndarray) -> None:
    """Keep the labeled rows a retrained version was judged on (as calibration counts) with it."""
    (Path(directory) / CALIBRATION_FILE).write_text(json.dumps(calibration_counts(y, p)) + "\n")


def load_calibration(directory: str | Path) -> list[dict[str, list[float]]]:
    """The calibration a version was registered with (none for a version trained from ingest)."""
    path = Path(directory) / CALIBRATION_FILE
    return [json.loads(path.read_text())] if path.exists() else []
