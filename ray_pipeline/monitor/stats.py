"""Drift, data-quality and live-quality statistics of one window against a reference profile.

Everything here works on counts in the reference's bins, which merge exactly across blocks: a
window's statistics are the same whichever way its rows were split into Ray Data blocks. Numeric
inputs and scores: PSI, Kolmogorov-Smirnov, Jensen-Shannon distance and Wasserstein-1 (divided by
the reference std) on those bins. Categorical inputs: chi-square over the top categories + other,
PSI, L-infinity and the unseen rate. Library code where it exists: scipy for chi-square,
Jensen-Shannon and Wasserstein; scikit-learn for log-loss, ROC AUC and calibration.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Shares below this are floored for PSI and chi-square: an empty bin would make them infinite.
EPS = 1e-4
OTHER = "__other__"


def numeric_counts(x: np.ndarray, ref: dict[str, Any]) -> dict[str, Any]:
    """Counts of `x` (float64, NaN = missing) in the reference bins, nulls, and out-of-range values."""
    present = x[~np.isnan(x)]
    edges = np.asarray(ref["edges"], dtype=np.float64)
    counts = np.bincount(np.searchsorted(edges, present, side="right"), minlength=edges.size + 1)
    oor = 0
    if ref.get("min") is not None:
        oor = int(((present < ref["min"]) | (present > ref["max"])).sum())
    return {"counts": counts.tolist(), "nulls": int(x.size - present.size), "oor": oor}


def merge_numeric(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    """Sum two numeric partials."""
    if a is None:
        return b
    return {"counts": (np.asarray(a["counts"]) + np.asarray(b["counts"])).tolist(),
            "nulls": a["nulls"] + b["nulls"], "oor": a["oor"] + b["oor"]}  # fmt: skip


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else np.zeros_like(counts, dtype=np.float64)


def psi(p: np.ndarray, q: np.ndarray) -> float:
    """Population stability index of current shares `q` against reference shares `p`."""
    p, q = np.maximum(p, EPS), np.maximum(q, EPS)
    return float(np.sum((q - p) * np.log(q / p)))


def binned_numeric(ref: dict[str, Any], cur: dict[str, Any]) -> dict[str, float]:
    """PSI, KS, JS distance and std-normalised Wasserstein-1 on the reference bins, plus quality."""
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import wasserstein_distance

    counts = np.asarray(cur["counts"], dtype=np.float64)
    present = counts.sum()
    total = present + cur["nulls"]
    out = {"null_rate": cur["nulls"] / total if total else 0.0}
    out["null_rate_change"] = out["null_rate"] - ref["null_rate"]
    if not present or ref.get("min") is None:  # nothing to compare, or no reference values
        return out
    p, q = np.asarray(ref["shares"], dtype=np.float64), _shares(counts)
    out["out_of_range_rate"] = cur["oor"] / present
    out["psi"] = psi(p, q)
    out["ks"] = float(np.max(np.abs(np.cumsum(p) - np.cumsum(q))))
    out["js"] = float(jensenshannon(p, q, base=2))
    mids = bin_midpoints(ref)
    if ref.get("std"):
        out["wasserstein"] = float(wasserstein_distance(mids, mids, p + 1e-300, q + 1e-300)) / ref["std"]
    return out


def bin_midpoints(ref: dict[str, Any]) -> np.ndarray:
    """A representative value per reference bin (outer bins reach to the reference min / max)."""
    edges = np.asarray(ref["edges"], dtype=np.float64)
    lo, hi = ref["min"], ref["max"]
    bounds = np.concatenate([[lo], edges, [hi]])
    return (bounds[:-1] + bounds[1:]) / 2


def categorical_stats(ref: dict[str, Any], cur: dict[str, Any]) -> dict[str, float]:
    """Chi-square (statistic and p-value), PSI and L-infinity over top categories + other; unseen rate."""
    from scipy.stats import chisquare

    counts, nulls = cur["counts"], cur["missing"]
    present = sum(counts.values())
    total = present + nulls
    out = {"null_rate": nulls / total if total else 0.0}
    out["null_rate_change"] = out["null_rate"] - ref["null_rate"]
    if not present:
        return out
    top = list(ref["top"])
    p = np.asarray([ref["top"][k] for k in top] + [ref["other"]], dtype=np.float64)
    c = np.asarray([counts.get(k, 0) for k in top] + [present - sum(counts.get(k, 0) for k in top)], dtype=np.float64)
    q = c / present
    known = set(ref["known"])
    out["unseen_rate"] = sum(v for k, v in counts.items() if k not in known) / present
    out["psi"] = psi(p, q)
    out["linf"] = float(np.max(np.abs(q - p)))
    expected = np.maximum(p, EPS)
    expected = expected / expected.sum() * present
    stat = chisquare(c, expected)
    out["chi2"], out["chi2_p"] = float(stat.statistic), float(stat.pvalue)
    return out


def live_quality(y: np.ndarray, p: np.ndarray, task: str = "binary") -> dict[str, float]:
    """The task's quality of served scores against arrived labels: log-loss, ROC AUC and calibration
    (binary); accuracy and macro-F1 of the served class (multiclass); RMSE, MAE, R^2 (regression)."""
    from sklearn.metrics import f1_score, log_loss, roc_auc_score

    from ray_pipeline.train.evaluate import calibration_error  # here: scikit-learn's import, as above

    out = {"labeled_rows": float(len(y))}
    if len(y) == 0:
        return out
    if task == "multiclass":  # the log holds the served class, not its probabilities
        out["accuracy"] = float(np.mean(y == p))
        out["macro_f1"] = float(f1_score(y.astype(int), p.astype(int), average="macro"))
        return out
    if task == "regression":
        err = p - y
        out["rmse"], out["mae"] = float(np.sqrt(np.mean(err**2))), float(np.mean(np.abs(err)))
        if len(y) > 1 and np.var(y) > 0:
            out["r2"] = float(1.0 - np.mean(err**2) / np.var(y))
        return out
    p = np.clip(p, 1e-15, 1 - 1e-15)
    out["log_loss"] = float(log_loss(y, p, labels=[0, 1]))
    if len(np.unique(y)) == 2:
        out["roc_auc"] = float(roc_auc_score(y, p))
    out["calibration_error"] = calibration_error(y, p)
    out["mean_score"], out["positive_rate"] = float(np.mean(p)), float(np.mean(y))
    return out


def _entropy(rate: float) -> float:
    """Log-loss of a constant, calibrated prediction at a positive rate."""
    r = min(max(rate, 1e-15), 1 - 1e-15)
    return float(-(r * np.log(r) + (1 - r) * np.log(1 - r)))


def binary_shift_quality(live: dict[str, float], tested: dict[str, float]) -> dict[str, float]:
    """Quality figures that stay honest when the base rate moves: AUC drop against test, mean score
    against the positive rate, and log-loss relative to a constant prediction at the window's own
    positive rate (and that relative loss over the test split's). A raw log-loss ratio falls when
    positives get rarer even if the model got worse; these do not."""
    out: dict[str, float] = {}
    if "log_loss" not in live:
        return out
    if tested.get("log_loss"):
        out["log_loss_ratio"] = live["log_loss"] / tested["log_loss"]
    if "roc_auc" in live and np.isfinite(tested.get("roc_auc", np.nan)):
        out["roc_auc_drop"] = tested["roc_auc"] - live["roc_auc"]
    out["mean_score_gap"] = abs(live["mean_score"] - live["positive_rate"])
    out["relative_log_loss"] = live["log_loss"] / _entropy(live["positive_rate"])
    rate = tested.get("positive_rate")
    if tested.get("log_loss") and rate is not None and np.isfinite(rate):
        out["relative_log_loss_ratio"] = out["relative_log_loss"] / (tested["log_loss"] / _entropy(rate))
    return out


def error_ratio(task: str, live: dict[str, float], tested: dict[str, float]) -> float | None:
    """Live error over the version's test error: log-loss (binary), error rate (multiclass), RMSE
    (regression); None when either side is missing."""
    if task == "multiclass":
        now, then = 1.0 - live.get("accuracy", np.nan), 1.0 - tested.get("accuracy", np.nan)
    else:
        key = "rmse" if task == "regression" else "log_loss"
        now, then = live.get(key, np.nan), tested.get(key, np.nan)
    return float(now / then) if np.isfinite(now) and np.isfinite(then) and then > 0 else None


def verdict(value: float, thresholds: dict[str, float] | None) -> str | None:
    """ok / warn / drift from warn and alert thresholds (None when the metric has none)."""
    if thresholds is None or value is None or not np.isfinite(value):
        return None
    if value >= thresholds["alert"]:
        return "drift"
    return "warn" if value >= thresholds["warn"] else "ok"
