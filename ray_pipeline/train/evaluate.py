"""Evaluation on the held-out (latest) split: the task's metrics, the Bayes-optimal floor, and plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ray_pipeline.train.models import OutputMap, untransform
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
    roc_curve,
)


def calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            total += mask.sum() * abs(y[mask].mean() - p[mask].mean())
    return float(total / max(len(y), 1))


def metrics(y: np.ndarray, p: np.ndarray, p_true: np.ndarray | None = None) -> dict[str, float]:
    """Log-loss, ROC AUC, PR AUC, Brier score, calibration error (and the Bayes floor if known)."""
    p = np.clip(p, 1e-15, 1 - 1e-15)
    both = len(np.unique(y)) == 2
    out = {
        "rows": int(len(y)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "brier": float(brier_score_loss(y, p)),
        "calibration_error": calibration_error(y, p),
        "positive_rate": float(y.mean()) if len(y) else float("nan"),
    }
    if p_true is not None and np.isfinite(p_true).all() and len(p_true):
        out["bayes_log_loss"] = float(log_loss(y, np.clip(p_true, 1e-15, 1 - 1e-15), labels=[0, 1]))
        out["excess_log_loss"] = out["log_loss"] - out["bayes_log_loss"]
    return out


def multiclass_metrics(y: np.ndarray, P: np.ndarray) -> dict[str, float]:
    """Log-loss, accuracy, macro-F1, AUC one-vs-rest per class (`auc_<i>`) and their macro mean
    (`roc_auc`, so the default gates read the same names as for binary)."""
    k = P.shape[1]
    y = y.astype(np.int64)
    P = np.clip(P, 1e-15, 1.0)
    P = P / P.sum(axis=1, keepdims=True)
    out = {
        "rows": int(len(y)),
        "log_loss": float(log_loss(y, P, labels=list(range(k)))) if len(y) else float("nan"),
        "accuracy": float(accuracy_score(y, P.argmax(axis=1))) if len(y) else float("nan"),
        "macro_f1": float(f1_score(y, P.argmax(axis=1), average="macro", labels=list(range(k)), zero_division=0))
        if len(y) else float("nan"),
    }  # fmt: skip
    aucs = []
    for c in range(k):
        hit = y == c
        auc = float(roc_auc_score(hit, P[:, c])) if 0 < hit.sum() < len(y) else float("nan")
        out[f"auc_{c}"] = auc
        aucs.append(auc)
    out["roc_auc"] = float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")
    return out


def regression_metrics(y: np.ndarray, v: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R^2 in the user's units."""
    if not len(y):
        return {"rows": 0, "rmse": float("nan"), "mae": float("nan"), "r2": float("nan")}
    return {
        "rows": int(len(y)),
        "rmse": float(np.sqrt(np.mean((y - v) ** 2))),
        "mae": float(mean_absolute_error(y, v)),
        "r2": float(r2_score(y, v)) if len(y) > 1 else float("nan"),
    }


def task_metrics(task: str, y: np.ndarray, p: np.ndarray, truth: np.ndarray | None = None) -> dict[str, float]:
    """The task's test metrics: `metrics` for binary, `multiclass_metrics`, `regression_metrics`;
    with a known truth, the floor no model can beat and the model's excess over it."""
    known = truth is not None and len(truth) == len(y) and len(y) > 0 and bool(np.isfinite(truth).all())
    if task == "multiclass":
        out = multiclass_metrics(y, p)
        if known:  # truth: the true probability of each row's own class
            out["bayes_log_loss"] = float(-np.mean(np.log(np.clip(truth, 1e-15, 1.0))))
            out["excess_log_loss"] = out["log_loss"] - out["bayes_log_loss"]
        return out
    if task == "regression":
        out = regression_metrics(y, p)
        if known:  # truth: the noise-free mean of each row's target
            out["noise_rmse"] = float(np.sqrt(np.mean((y - truth) ** 2)))
            out["excess_rmse"] = out["rmse"] - out["noise_rmse"]
        return out
    return metrics(y, p, truth if known else None)


def predict_split(model: Any, ds) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Labels, predictions and the ground truth (if the data has one) for a prepared split."""
    ys, ps, ts = [], [], []
    for batch in ds.iter_batches(batch_size=65536, batch_format="numpy"):
        ys.append(np.asarray(batch["y"], dtype=np.float64))
        ps.append(model.task_output(np.asarray(batch["x"])))
        if "truth" in batch:
            ts.append(np.asarray(batch["truth"], dtype=np.float64))
    task = getattr(model, "task", "binary")
    if not ys:
        return np.empty(0), np.empty((0, 0)) if task == "multiclass" else np.empty(0), None
    y = np.concatenate(ys)
    if task == "regression":  # the split holds the fitted target; metrics are in the user's units
        y = untransform(y, model.transform)
    return y, np.concatenate(ps), (np.concatenate(ts) if ts else None)


BOUND_MARGIN = 0.5  # a regression output stays within this share of the training range beyond it


def fit_output_map(model: Any, train: Any, valid: Any, metric: str = "rmse") -> OutputMap:
    """A regression model's OutputMap, fitted on its own splits (Ray Datasets; `output_map`)."""
    lo, hi = math.inf, -math.inf
    for batch in train.select_columns(["y"]).iter_batches(batch_size=65536, batch_format="numpy"):
        y = untransform(np.asarray(batch["y"], dtype=np.float64), model.transform)
        if len(y):
            lo, hi = min(lo, float(y.min())), max(hi, float(y.max()))
    model.output = None
    yv, raw, _ = predict_split(model, valid) if model.transform == "log1p" else (np.empty(0), np.empty(0), None)
    return output_map(model.transform, lo, hi, yv, raw, metric)


def output_map(transform: str, lo: float, hi: float, yv: np.ndarray, raw: np.ndarray, metric: str) -> OutputMap:
    """Bounds a margin around the train target's range [`lo`, `hi`]; for a log1p target, Duan's
    smearing factor from the validation residuals (`yv` in the user's units, `raw` the unsmeared
    output), kept when it lowers the validation error (`metric`) in the user's units (exp of a
    log-scale prediction estimates the median, not the mean: RMSE wants the mean, MAE the median)."""
    bounds = (lo - BOUND_MARGIN * (hi - lo), hi + BOUND_MARGIN * (hi - lo)) if lo <= hi else None
    plain = OutputMap(1.0, bounds)
    if transform != "log1p" or bounds is None or not len(yv):
        return plain
    z = np.log1p(raw)
    smeared = OutputMap(float(np.mean(np.exp(np.log1p(yv) - z))), bounds)
    errors = {m: regression_metrics(yv, np.clip(untransform(z, "log1p", m.smearing), *bounds))[metric]
              for m in (plain, smeared)}  # fmt: skip
    return min(errors, key=errors.get)


def save_plots(directory: Path, history: list[dict[str, float]], y: np.ndarray, p: np.ndarray, title: str,
               task: str = "binary") -> list[str]:  # fmt: skip
    """loss.png (train/valid per epoch or round); binary: roc.png and calibration.png; regression:
    predicted.png (predicted vs actual); multiclass: calibration.png of the predicted class."""
    # Figures without pyplot: nothing global changes (a notebook keeps its own backend).
    from matplotlib.figure import Figure
    from sklearn.calibration import calibration_curve

    def figure(size: tuple[float, float]):
        fig = Figure(figsize=size)
        return fig, fig.subplots()

    directory.mkdir(parents=True, exist_ok=True)
    files = []

    def save(fig, ax, name: str, xlabel: str, ylabel: str, what: str) -> None:
        ax.set(xlabel=xlabel, ylabel=ylabel, title=f"{title}: {what}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(directory / name, dpi=100)
        files.append(name)

    step = "epoch" if history and "epoch" in history[0] else "round"
    fig, ax = figure((6, 4))
    if all(h.get("train_loss") is not None for h in history):  # xgboost records it only with eval_train
        ax.plot([h[step] for h in history], [h["train_loss"] for h in history], label="train")
    ax.plot([h[step] for h in history], [h["valid_loss"] for h in history], label="valid")
    save(fig, ax, "loss.png", step, {"regression": "loss (squared error)"}.get(task, "log-loss"), "loss")

    if task == "regression":
        fig, ax = figure((5, 5))
        ax.scatter(y, p, s=4, alpha=0.4, label="test rows")
        lo, hi = (float(min(y.min(), p.min())), float(max(y.max(), p.max()))) if len(y) else (0.0, 1.0)
        ax.plot([lo, hi], [lo, hi], linestyle="--", color="grey", label="perfect")
        save(fig, ax, "predicted.png", "actual", "predicted", "predicted vs actual")
        return files
    if task == "multiclass":  # confidence of the predicted class against how often it is right
        y, p = (p.argmax(axis=1) == y).astype(np.float64), p.max(axis=1)
    elif len(np.unique(y)) == 2:
        fpr, tpr, _ = roc_curve(y, p)
        fig, ax = figure((5, 5))
        ax.plot(fpr, tpr, label=f"AUC {roc_auc_score(y, p):.4f}")
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
        save(fig, ax, "roc.png", "false positive rate", "true positive rate", "ROC")

    rate, mean_p = calibration_curve(y, p, n_bins=10)  # the bins calibration_error uses
    fig, ax = figure((5, 5))
    ax.plot(mean_p, rate, marker="o", label="model")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    save(fig, ax, "calibration.png", "mean predicted probability", "observed positive rate", "calibration")
    return files


def render(name: str, m: dict[str, float]) -> str:
    """One line per model for the CLI."""
    bayes = (
        f"  (Bayes-optimal {m['bayes_log_loss']:.4f}, excess {m['excess_log_loss']:.4f})"
        if "bayes_log_loss" in m
        else ""
    )
    if "rmse" in m:
        noise = f"  (noise floor {m['noise_rmse']:.4g}, excess {m['excess_rmse']:.4g})" if "noise_rmse" in m else ""
        return f"{name:<8} rmse {m['rmse']:.4g}{noise}  mae {m['mae']:.4g}  r2 {m['r2']:.4f}"
    if "macro_f1" in m:
        return (f"{name:<8} log_loss {m['log_loss']:.4f}{bayes}  accuracy {m['accuracy']:.4f}  "
                f"macro_f1 {m['macro_f1']:.4f}  roc_auc (one vs rest) {m['roc_auc']:.4f}")  # fmt: skip
    return (
        f"{name:<8} log_loss {m['log_loss']:.4f}{bayes}  roc_auc {m['roc_auc']:.4f}  pr_auc {m['pr_auc']:.4f}  "
        f"brier {m['brier']:.4f}  ece {m['calibration_error']:.4f}"
    )


