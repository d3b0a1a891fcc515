"""Multiclass and regression training: ray-pipeline on Ray Train against scikit-learn, same matrices.

Data drawn from known truth (numpy, no FeatureSpec transform): 3 classes from a softmax of linear
scores, and a linear value plus Gaussian noise (sd 0.5), 16 inputs. Unpenalised on both sides:
- multiclass: ray-pipeline's softmax (Newton, 2 Ray Train workers) vs LogisticRegression (lbfgs,
  multinomial, no penalty);
- regression: ray-pipeline's squared error (Newton: one step) vs Ridge (alpha 1e-9, the closed form).
ray-pipeline's time is end to end (worker start, data loading, training; not ray.init); the
baselines' time is `fit` on float64 arrays already in memory. Goals as for binary: end to end
<= 1.0x the baseline, test loss ratio <= 1.001.

    python benchmarks/tasks.py [--rows 1000000]

Results go to benchmarks/results/tasks.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, write_results  # noqa: E402

D, K, NOISE = 16, 3, 0.5


def _data(task: str, n: int, rng: np.random.Generator, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = rng.normal(size=(n, D)).astype(np.float32)
    if task == "multiclass":
        Z = X @ truth
        P = np.exp(Z - Z.max(axis=1, keepdims=True))
        P /= P.sum(axis=1, keepdims=True)
        return X, (rng.random(n)[:, None] > np.cumsum(P, axis=1)).sum(axis=1).astype(np.float32)
    return X, (X @ truth + 3.0 + rng.normal(0, NOISE, n)).astype(np.float32)


def _prepared(task: str, rows: int, seed: int):
    """Train (rows), valid and test (rows / 4 each) as the Prepared a training run takes."""
    import ray.data

    from ray_pipeline.features.spec import FeatureSpec, LabelSpec, NumericSpec
    from ray_pipeline.train.data import Prepared

    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(D, K)) * 0.5 if task == "multiclass" else rng.normal(size=D)
    arrays = {s: _data(task, n, rng, truth) for s, n in (("train", rows), ("valid", rows // 4), ("test", rows // 4))}

    def ds(X: np.ndarray, y: np.ndarray):
        # rows picked by index, so inputs and labels stay paired (Dataset.zip relies on block order)
        return (ray.data.range(len(y), override_num_blocks=8)
                .map_batches(lambda b: {"x": X[b["id"]], "y": y[b["id"]]}).materialize())  # fmt: skip

    label = LabelSpec(column="y", task=task, classes=[f"c{i}" for i in range(K)] if task == "multiclass" else None)
    spec = FeatureSpec(rows=rows, categorical=[], label=label,
                       numeric=[NumericSpec(name=f"x{i}", log1p=False, clip=None, fill=0.0, missing_indicator=False,
                                            mean=0.0, std=1.0, count=rows, missing=0) for i in range(D)])  # fmt: skip
    counts = {s: len(a[1]) for s, a in arrays.items()}
    prepared = Prepared(spec, *(ds(*arrays[s]) for s in ("train", "valid", "test")), {"by": "synthetic"}, counts)
    return prepared, {s: (X.astype(np.float64), y.astype(np.float64)) for s, (X, y) in arrays.items()}


def _config(work: Path):
    from ray_pipeline.config import parse_config

    return parse_config({
        "data": {"source": {"path": "unused"}, "schema": {"label": "y", "features": {"a": {"type": "float"}}},
                 "output": {"root": str(work / "out")}},
        "training": {"run_root": str(work / "runs"), "workers": 2, "in_process_max_rows": 0,
                     "logreg": {"optimizer": "newton", "l2": 0.0, "epochs": 50}},
    })  # fmt: skip


def main() -> None:
    """Both tasks, both sides, one table; results saved beside the other benchmarks'."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    os.environ.setdefault("RAY_PIPELINE_PROGRESS", "0")

    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import log_loss

    from ray_pipeline.runtime import init_ray
    from ray_pipeline.train.runner import train_model

    init_ray(quiet=True)
    rows, figures, ratios = [], {}, {}
    for task in ("multiclass", "regression"):
        prepared, arrays = _prepared(task, args.rows, 7)
        run = train_model(_config(Path(tempfile.mkdtemp(prefix="bench-tasks-"))), "logreg", workers=2,
                          prepared=prepared)  # fmt: skip
        ours_s = run.timings["prepare_s"] + run.timings["fit_s"]
        (X, y), (Xt, yt) = arrays["train"], arrays["test"]
        t0 = time.perf_counter()
        if task == "multiclass":
            sk = LogisticRegression(penalty=None, max_iter=1000, tol=1e-8).fit(X, y)
            theirs_s = time.perf_counter() - t0
            ours, theirs = run.metrics["log_loss"], float(log_loss(yt, sk.predict_proba(Xt)))
            metric = "test log_loss"
        else:
            sk = Ridge(alpha=1e-9).fit(X, y)
            theirs_s = time.perf_counter() - t0
            ours, theirs = run.metrics["rmse"], float(np.sqrt(np.mean((sk.predict(Xt) - yt) ** 2)))
            metric = "test rmse"
        baseline = "LogisticRegression(lbfgs)" if task == "multiclass" else "Ridge"
        rows.append([task, f"ray-pipeline newton (2 workers, {len(run.history)} passes)", ours_s, metric, ours])
        rows.append([task, f"scikit-learn {baseline} fit", theirs_s, metric, theirs])
        figures[task] = {"rows": args.rows, "inputs": D, "ours_end_to_end_s": ours_s, "ours_loop_s": run.timings["loop_s"],
                         "passes": len(run.history), "ours": ours, "baseline": baseline, "baseline_fit_s": theirs_s,
                         "theirs": theirs, "metric": metric}  # fmt: skip
        ratios[f"{task}_end_to_end_ours_over_sklearn (goal <= 1.0)"] = round(ours_s / theirs_s, 3)
        ratios[f"{task}_{metric.split()[1]}_ours_over_sklearn (goal <= 1.001)"] = round(ours / theirs, 5)
    print(table(rows, ["task", "side", "seconds", "metric", "value"]))
    for k, v in ratios.items():
        print(f"{k}: {v}")
    print(f"-> {write_results('tasks', figures, ratios)}")


if __name__ == "__main__":
    main()
