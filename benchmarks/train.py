"""Training: ray-pipeline on Ray Train against scikit-learn and single-process XGBoost, same features.

One feature matrix (FeatureSpec fitted on the train split of generated data) feeds every side:
- logistic regression: ray-pipeline (2 workers, full-batch GD) vs LogisticRegression(lbfgs) and
  SGDClassifier with the same L2 penalty;
- XGBoost: Ray Train (2 workers x 1 thread) vs xgboost.train (2 threads), same parameters.
For ray-pipeline: end to end (worker start, data loading, training; not ray.init), the fixed
overhead (the same run on 1,000 rows), and the training loop alone.

    python benchmarks/train.py [--rows 1000000]
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

ROOT = Path(__file__).resolve().parents[1]


def _config(workdir: Path):
    from ray_pipeline.config import load_config

    raw = load_config(ROOT / "configs" / "demo.yaml").model_dump(by_alias=True)
    raw["features"]["views"] = {}
    raw["features"]["numeric"] = {
        k: v for k, v in raw["features"]["numeric"].items() if k in raw["data"]["schema"]["features"]
    }
    raw["training"]["run_root"] = str(workdir / "runs")
    raw["training"]["checkpoint_every"] = 100
    from ray_pipeline.config import parse_config

    return parse_config(raw)


def _prepared(cfg, rows: int, seed: int):
    from ray_pipeline.config import SyntheticConfig
    from ray_pipeline.data.sources import read_parquet
    from ray_pipeline.data.synthetic import generate
    from ray_pipeline.train.data import prepare

    out = tempfile.mkdtemp(prefix="bench-train-raw-")
    generate(SyntheticConfig(rows=rows, seed=seed), out)
    return prepare(read_parquet(out), cfg)


def _arrays(ds) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for batch in ds.iter_batches(batch_size=262144, batch_format="numpy"):
        xs.append(np.asarray(batch["x"], dtype=np.float64))
        ys.append(np.asarray(batch["y"], dtype=np.float64))
    return np.concatenate(xs), np.concatenate(ys)


def memory_bandwidth_gbps(megabytes: int = 512) -> float:
    """Read bandwidth of this machine: best of 3 sums over a large float32 array (GB/s)."""
    data = np.ones(megabytes * 1024 * 1024 // 4, dtype=np.float32)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - t0)
    return data.nbytes / best / 1e9


def main() -> None:
    """Run every side on the same matrices; print the table and save the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    os.environ.setdefault("RAY_PIPELINE_PROGRESS", "0")

    import xgboost
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.metrics import log_loss, roc_auc_score

    from ray_pipeline.runtime import init_ray
    from ray_pipeline.train.runner import train_model

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    cfg = _config(work)
    init_ray()
    prepared = _prepared(cfg, args.rows, 3)
    tiny = _prepared(cfg, 1_000, 4)
    X, y = _arrays(prepared.train)
    Xt, yt = _arrays(prepared.test)
    n = len(y)
    l2 = cfg.training.logreg.l2
    rows, figures = [], {}

    # --- logistic regression ------------------------------------------------------------
    overhead = train_model(cfg, "logreg", workers=2, prepared=tiny)
    ours = train_model(cfg, "logreg", workers=2, prepared=prepared)
    t0 = time.perf_counter()
    lbfgs = LogisticRegression(C=1 / (l2 * n), max_iter=1000, tol=1e-8).fit(X, y)
    lbfgs_s = time.perf_counter() - t0
    lbfgs_ll = log_loss(yt, lbfgs.predict_proba(Xt)[:, 1])
    t0 = time.perf_counter()
    sgd = SGDClassifier(loss="log_loss", alpha=l2, max_iter=50, tol=1e-6, random_state=0).fit(X, y)
    sgd_s = time.perf_counter() - t0
    sgd_ll = log_loss(yt, np.clip(sgd.predict_proba(Xt)[:, 1], 1e-15, 1 - 1e-15))
    epochs = len(ours.history)
    epoch_s = ours.timings["loop_s"] / max(epochs, 1)
    bandwidth = memory_bandwidth_gbps()
    bandwidth_floor = n * X.shape[1] * 4 / (bandwidth * 1e9)  # rows x features x 4 bytes / measured bandwidth
    rows += [
        ["logreg ray-pipeline 2 workers: end to end", ours.timings["fit_s"], ours.metrics["log_loss"]],
        ["  fixed overhead (1,000 rows)", overhead.timings["fit_s"], overhead.metrics["log_loss"]],
        [f"  training loop ({epochs} epochs)", ours.timings["loop_s"], ours.metrics["log_loss"]],
        ["logreg scikit-learn lbfgs", lbfgs_s, lbfgs_ll],
        ["logreg scikit-learn SGDClassifier", sgd_s, sgd_ll],
    ]
    figures["logreg"] = {
        "ray_pipeline": {
            **ours.timings,
            "test_log_loss": ours.metrics["log_loss"],
            "epochs": epochs,
            "epoch_s": epoch_s,
        },
        "ray_pipeline_1000_rows": overhead.timings,
        "sklearn_lbfgs": {"seconds": lbfgs_s, "test_log_loss": lbfgs_ll},
        "sklearn_sgd": {"seconds": sgd_s, "test_log_loss": sgd_ll},
        "memory_bandwidth_gbps": bandwidth,
        "epoch_bandwidth_floor_s": bandwidth_floor,
    }

    # --- XGBoost --------------------------------------------------------------------------
    xo = cfg.training.xgboost
    ray_xgb = train_model(cfg, "xgboost", workers=2, prepared=prepared)
    xgb_overhead = train_model(cfg, "xgboost", workers=2, prepared=tiny)
    Xv, yv = _arrays(prepared.valid)
    params = {"objective": "binary:logistic", "eval_metric": "logloss", "tree_method": "hist", "nthread": 2,
              "seed": 0, **xo.params}  # fmt: skip
    t0 = time.perf_counter()
    dtrain = xgboost.DMatrix(X.astype(np.float32), label=y)
    dvalid = xgboost.DMatrix(Xv.astype(np.float32), label=yv)
    t1 = time.perf_counter()
    booster = xgboost.train(params, dtrain, xo.num_boost_round, evals=[(dvalid, "valid")],
                            early_stopping_rounds=xo.early_stopping_rounds, verbose_eval=False)  # fmt: skip
    single_loop = time.perf_counter() - t1
    single_s = time.perf_counter() - t0
    p_single = booster.predict(xgboost.DMatrix(Xt.astype(np.float32)), iteration_range=(0, booster.best_iteration + 1))
    single_auc, single_ll = roc_auc_score(yt, p_single), log_loss(yt, p_single)
    ray_rounds = len(ray_xgb.history)
    single_rounds = booster.num_boosted_rounds()
    rows += [
        ["xgboost Ray Train 2 workers: end to end", ray_xgb.timings["fit_s"], ray_xgb.metrics["log_loss"]],
        ["  fixed overhead (1,000 rows)", xgb_overhead.timings["fit_s"], xgb_overhead.metrics["log_loss"]],
        [f"  training loop ({ray_rounds} rounds)", ray_xgb.timings["loop_s"], ray_xgb.metrics["log_loss"]],
        [f"xgboost single process, 2 threads ({single_rounds} rounds)", single_s, single_ll],
    ]
    figures["xgboost"] = {
        "ray_train": {**ray_xgb.timings, "rounds": ray_rounds, "auc": ray_xgb.metrics["roc_auc"]},
        "ray_train_1000_rows": xgb_overhead.timings,
        "single_process": {"seconds": single_s, "loop_s": single_loop, "rounds": single_rounds, "auc": single_auc},
    }

    print(table(rows, ["run", "seconds", "test log-loss"]))
    bayes = ours.metrics.get("bayes_log_loss")
    print(f"\nBayes-optimal test log-loss {bayes:.4f}; rows {n:,} train x {X.shape[1]} features")
    ratios = {
        "logreg_end_to_end_time_ours_over_lbfgs (lower is better)": round(ours.timings["fit_s"] / lbfgs_s, 3),
        "logreg_test_log_loss_ours_over_lbfgs (lower is better)": round(ours.metrics["log_loss"] / lbfgs_ll, 5),
        "logreg_epoch_time_over_bandwidth_floor (lower is better)": round(epoch_s / bandwidth_floor, 2),
        "xgb_per_round_time_ray_over_single (lower is better)": round(
            (ray_xgb.timings["loop_s"] / ray_rounds) / (single_loop / single_rounds), 3
        ),
        "xgb_end_to_end_time_ray_over_single (lower is better)": round(ray_xgb.timings["fit_s"] / single_s, 3),
        "xgb_auc_ray_minus_single (closer to 0 is better)": round(ray_xgb.metrics["roc_auc"] - single_auc, 5),
    }
    for key, value in ratios.items():
        print(f"{key}: {value}")
    path = write_results("train", {"rows": args.rows, "train_rows": n, **figures}, ratios)
    print(f"results -> {path}")


if __name__ == "__main__":
    main()
