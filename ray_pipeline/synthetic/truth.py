"""Ground-truth figures of an accepted synthetic dataset, computed in one distributed pass."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ray_pipeline.data.sources import read_parquet
from ray_pipeline.synthetic.transactions import bayes_log_loss


@dataclass(frozen=True)
class GroundTruth:
    """Label rate against the mean true probability, and the Bayes-optimal log-loss."""

    rows: int
    label_rate: float
    mean_p_true: float
    bayes_log_loss: float

    def render(self) -> str:
        """One block of text for the demo's output."""
        return (
            f"ground truth rows {self.rows:,}: label rate {self.label_rate:.4f}, "
            f"mean p_true {self.mean_p_true:.4f}, Bayes-optimal log-loss {self.bayes_log_loss:.4f}"
        )


def _partial(batch: pa.Table, label: str) -> pa.Table:
    y = batch[label].to_numpy(zero_copy_only=False).astype(np.float64)
    p = batch["p_true"].to_numpy(zero_copy_only=False).astype(np.float64)
    loss = bayes_log_loss(y, p) * len(y) if len(y) else 0.0
    return pa.table({"n": [len(y)], "y": [y.sum()], "p": [p.sum()], "loss": [loss]})


def ground_truth_summary(accepted_path: str, label: str) -> GroundTruth:
    """Label rate, mean p_true and Bayes log-loss of the Parquet rows at `accepted_path`."""
    from ray.data.aggregate import Sum

    ds = read_parquet(accepted_path, columns=[label, "p_true"])
    parts = ds.map_batches(_partial, fn_kwargs={"label": label}, batch_format="pyarrow")
    total = parts.aggregate(*[Sum(k, alias_name=k) for k in ("n", "y", "p", "loss")])
    n = int((total or {}).get("n") or 0)
    if n == 0:
        return GroundTruth(0, float("nan"), float("nan"), float("nan"))
    return GroundTruth(n, total["y"] / n, total["p"] / n, total["loss"] / n)
