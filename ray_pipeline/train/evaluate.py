"""Evaluation on the held-out (latest) split: metrics, the Bayes-optimal floor, and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score, roc_curve


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


def predict_split(model: Any, ds) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Labels, predictions and p_true (if present) for a prepared split."""
    ys, ps, ts = [], [], []
    for batch in ds.iter_batches(batch_size=65536, batch_format="numpy"):
        ys.append(np.asarray(batch["y"], dtype=np.float64))
        ps.append(model.predict_proba(np.asarray(batch["x"])))
        if "p_true" in batch:
            ts.append(np.asarray(batch["p_true"], dtype=np.float64))
    if not ys:
        return np.empty(0), np.empty(0), None
    return np.concatenate(ys), np.concatenate(ps), (np.concatenate(ts) if ts else None)


def save_plots(directory: Path, history: list[dict[str, float]], y: np.ndarray, p: np.ndarray, title: str) -> list[str]:
    """loss.png (train/valid per epoch or round), roc.png and calibration.png."""
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
    save(fig, ax, "loss.png", step, "log-loss", "loss")

    if len(np.unique(y)) == 2:
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
    return (
        f"{name:<8} log_loss {m['log_loss']:.4f}{bayes}  roc_auc {m['roc_auc']:.4f}  pr_auc {m['pr_auc']:.4f}  "
        f"brier {m['brier']:.4f}  ece {m['calibration_error']:.4f}"
    )


