"""The loop on real drift at full size: IMDb movies 1940-2005 (tests/movies.py), every movie. Per
window: the served version's live AUC and log-loss, both estimated from the scores before the
labels and the estimation error, beside the baselines run in the same process: the base model never
retrained (stale) and scikit-learn models retrained on every earlier window (logistic regression,
histogram gradient boosting). Writes benchmarks/results/real_drift.json.

    .venv/bin/python benchmarks/real_drift.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_PIPELINE_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from common import write_results  # noqa: E402


def main() -> None:
    """Run the scenario on every movie and print the per-window table."""
    from ray_pipeline.runtime import init_ray
    from tests.movies import HEADER, run_loop

    init_ray(None, quiet=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="real-drift-") as tmp:
        print(HEADER)
        table = run_loop(Path(tmp), None, ["logreg", "xgboost"])
    wall = time.perf_counter() - started
    mean = {k: float(np.mean([r[k] for r in table])) for k in ("auc", "stale_auc", "oracle_logistic", "oracle_trees")}
    errors = [abs(r["auc_error"]) for r in table if r["auc_error"] is not None]
    print(f"mean AUC: served {mean['auc']:.4f}, stale {mean['stale_auc']:.4f}, oracle logistic "
          f"{mean['oracle_logistic']:.4f}, oracle trees {mean['oracle_trees']:.4f}; estimated AUC error: median "
          f"{np.median(errors):.3f}, max {max(errors):.3f}; {wall:.0f} s")  # fmt: skip
    ratios = {"served_over_oracle_logistic": mean["auc"] / mean["oracle_logistic"],
              "served_over_oracle_trees": mean["auc"] / mean["oracle_trees"], "served_over_stale": mean["auc"] / mean["stale_auc"]}
    write_results("real_drift", {"wall_s": round(wall, 1), "mean_auc": mean, "windows": table,
                                 "estimated_auc_abs_error": {"median": float(np.median(errors)), "max": max(errors)}},
                  ratios)  # fmt: skip


if __name__ == "__main__":
    main()
