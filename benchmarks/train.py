"""Training: ray-pipeline on Ray Train against scikit-learn and single-process XGBoost, same features.

One feature matrix (FeatureSpec fitted on the train split of generated data) feeds every side:
- logistic regression: ray-pipeline (2 workers; gd, newton, lbfgs) vs LogisticRegression(lbfgs)
  and SGDClassifier with the same L2 penalty;
- XGBoost: Ray Train (2 workers x 1 thread, and 1 worker x 2 threads) vs xgboost.train in one
  process (2 threads; QuantileDMatrix as our workers use, and a plain DMatrix), same parameters.
For ray-pipeline: end to end (worker start, data loading, training; not ray.init), the fixed cost
(the same run on 1,000 rows), the training loop alone, and each worker's peak private memory
against the size of its float32 shard.

    python benchmarks/train.py [--rows 1000000]

Results go to benchmarks/results/train.json: the top level holds the 1M-row run under the keys
earlier versions wrote; `by_rows` keeps every row count measured (1M, 10M).
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
from common import demo_config_body, peak_rss_mb, table, write_results  # noqa: E402


def _config(workdir: Path):
    from ray_pipeline.config import parse_config

    return parse_config(demo_config_body(workdir))


def _prepared(cfg, rows: int, seed: int):
    from ray_pipeline.config import SyntheticConfig
    from ray_pipeline.data.sources import read_parquet
    from ray_pipeline.synthetic.transactions import generate
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


def _memory(run, rows: int, workers: int, d: int) -> dict:
    """Per-worker memory of a run against its shard: private MB at start and peak, VmHWM, and the
    extra private memory over the float32 shard's bytes."""
    shard_mb = rows / max(workers, 1) * d * 4 / 2**20
    per_worker = [
        {"private_start_mb": a, "private_peak_mb": b, "vmhwm_mb": c, "extra_over_shard": (b - a) / shard_mb}
        for a, b, c in (run.worker_memory_mb or [])
    ]
    return {"shard_mb": shard_mb, "workers": per_worker}


def _fixed_cost(cfg, kind: str, tiny, runs: int = 3):
    """The median of `runs` 2-worker fits of 1,000 rows (one fit moves by about 0.5 s on 2 cores),
    and every run's seconds."""
    from ray_pipeline.train.runner import train_model

    fits = sorted((train_model(cfg, kind, workers=2, prepared=tiny) for _ in range(runs)), key=lambda r: r.timings["fit_s"])
    return fits[len(fits) // 2], [round(r.timings["fit_s"], 3) for r in fits]


def _merge_results(rows: int, figures: dict, ratios: dict) -> tuple[dict, dict]:
    """Keep every row count's figures in one file; the top level stays the 1M-row run."""
    import json

    from common import RESULTS

    path = RESULTS / "train.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    by_rows = old.get("by_rows", {})
    by_rows[str(rows)] = {"ratios": ratios, **figures}
    if rows != 1_000_000 and "1000000" in by_rows:
        figures, ratios = {k: v for k, v in by_rows["1000000"].items() if k != "ratios"}, by_rows["1000000"]["ratios"]
    return {**figures, "by_rows": by_rows}, ratios


def main() -> None:
    """Run every side on the same matrices; print the table and save the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    os.environ.setdefault("RAY_PIPELINE_PROGRESS", "0")

    import xgboost
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.metrics import log_loss, roc_auc_score

    from ray_pipeline.config import LogRegConfig
    from ray_pipeline.runtime import init_ray
    from ray_pipeline.train.runner import resolve_optimizer, train_model

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    cfg = _config(work)
    init_ray(quiet=True)
    prepared = _prepared(cfg, args.rows, 3)
    tiny = _prepared(cfg, 1_000, 4)
    n, d = prepared.rows["train"], len(prepared.spec.feature_names)
    # the platform's default (demo.yaml pins gd to show the update rule)
    default_optimizer = resolve_optimizer(LogRegConfig().optimizer, d)
    cfg.training.logreg.optimizer = default_optimizer
    rows, figures = [], {}

    # --- ray-pipeline first, so the driver's peak memory is the pipeline's, not the baselines' ---
    overhead, overhead_runs = _fixed_cost(cfg, "logreg", tiny)
    # What a table this small gets by default (training.in_process_max_rows): Ray Train local mode.
    overhead_local = train_model(cfg, "logreg", prepared=tiny)
    runs = {}
    for optimizer in ("gd", "newton", "lbfgs"):
        cfg.training.logreg.optimizer = optimizer
        runs[optimizer] = train_model(cfg, "logreg", workers=2, prepared=prepared, measure_memory=True)
    cfg.training.logreg.optimizer = default_optimizer
    ours = runs[default_optimizer]
    ray_xgb = train_model(cfg, "xgboost", workers=2, prepared=prepared, measure_memory=True)
    cpus = cfg.training.cpus_per_worker
    cfg.training.cpus_per_worker = 2.0  # one worker with both cores: XGBoost threads instead of workers
    ray_xgb_1 = train_model(cfg, "xgboost", workers=1, prepared=prepared)
    cfg.training.cpus_per_worker = cpus
    xgb_overhead, xgb_overhead_runs = _fixed_cost(cfg, "xgboost", tiny)
    xgb_overhead_local = train_model(cfg, "xgboost", prepared=tiny)
    driver_peak_mb = peak_rss_mb()

    # --- baselines on the same matrices ------------------------------------------------------
    X, y = _arrays(prepared.train)
    Xt, yt = _arrays(prepared.test)
    l2 = cfg.training.logreg.l2
    t0 = time.perf_counter()
    lbfgs = LogisticRegression(C=1 / (l2 * n), max_iter=1000, tol=1e-8).fit(X, y)
    lbfgs_s = time.perf_counter() - t0
    lbfgs_ll = log_loss(yt, lbfgs.predict_proba(Xt)[:, 1])
    t0 = time.perf_counter()
    sgd = SGDClassifier(loss="log_loss", alpha=l2, max_iter=50, tol=1e-6, random_state=0).fit(X, y)
    sgd_s = time.perf_counter() - t0
    sgd_ll = log_loss(yt, np.clip(sgd.predict_proba(Xt)[:, 1], 1e-15, 1 - 1e-15))

    gd = runs["gd"]
    epoch_s = gd.timings["loop_s"] / max(len(gd.history), 1)
    bandwidth = memory_bandwidth_gbps()
    bandwidth_floor = n * d * 4 / (bandwidth * 1e9)  # rows x features x 4 bytes / measured bandwidth
    rows.append(["logreg fixed cost (1,000 rows, 2 workers; median of 3)", overhead.timings["fit_s"], overhead.metrics["log_loss"]])
    rows.append(["logreg fixed cost (1,000 rows, in-process: the default at this size)", overhead_local.timings["fit_s"],
                 overhead_local.metrics["log_loss"]])  # fmt: skip
    for optimizer, run in runs.items():
        mark = " (default)" if optimizer == default_optimizer else ""
        rows += [
            [f"logreg ray-pipeline {optimizer}{mark}, 2 workers: end to end", run.timings["fit_s"], run.metrics["log_loss"]],
            [f"  training loop ({len(run.history)} iterations)", run.timings["loop_s"], run.metrics["log_loss"]],
        ]  # fmt: skip
    rows += [
        ["logreg scikit-learn lbfgs", lbfgs_s, lbfgs_ll],
        ["logreg scikit-learn SGDClassifier", sgd_s, sgd_ll],
    ]
    figures["logreg"] = {
        "default_optimizer": default_optimizer,
        "ray_pipeline": {**ours.timings, "test_log_loss": ours.metrics["log_loss"], "epochs": len(ours.history)},
        "ray_pipeline_1000_rows": {**overhead.timings, "fit_s_runs": overhead_runs},
        "optimizers": {
            name: {**run.timings, "test_log_loss": run.metrics["log_loss"], "iterations": len(run.history),
                   "memory": _memory(run, n, 2, d)}
            for name, run in runs.items()
        },  # fmt: skip
        "gd_epoch_s": epoch_s,
        "sklearn_lbfgs": {"seconds": lbfgs_s, "test_log_loss": lbfgs_ll},
        "sklearn_sgd": {"seconds": sgd_s, "test_log_loss": sgd_ll},
        "memory_bandwidth_gbps": bandwidth,
        "epoch_bandwidth_floor_s": bandwidth_floor,
    }

    # --- XGBoost --------------------------------------------------------------------------
    xo = cfg.training.xgboost
    Xv, yv = _arrays(prepared.valid)
    params = {"objective": "binary:logistic", "eval_metric": "logloss", "tree_method": "hist", "nthread": 2,
              "seed": 0, **xo.params}  # fmt: skip
    singles = {}
    for matrix in ("QuantileDMatrix", "DMatrix"):
        t0 = time.perf_counter()
        if matrix == "QuantileDMatrix":
            dtrain = xgboost.QuantileDMatrix(X.astype(np.float32), label=y, nthread=2)
            dvalid = xgboost.QuantileDMatrix(Xv.astype(np.float32), label=yv, ref=dtrain, nthread=2)
        else:
            dtrain = xgboost.DMatrix(X.astype(np.float32), label=y, nthread=2)
            dvalid = xgboost.DMatrix(Xv.astype(np.float32), label=yv, nthread=2)
        t1 = time.perf_counter()
        booster = xgboost.train(params, dtrain, xo.num_boost_round, evals=[(dvalid, "valid")],
                                early_stopping_rounds=xo.early_stopping_rounds, verbose_eval=False)  # fmt: skip
        loop = time.perf_counter() - t1
        p = booster.predict(xgboost.DMatrix(Xt.astype(np.float32)), iteration_range=(0, booster.best_iteration + 1))
        singles[matrix] = {"seconds": time.perf_counter() - t0, "loop_s": loop, "rounds": booster.num_boosted_rounds(),
                           "auc": roc_auc_score(yt, p), "log_loss": log_loss(yt, p)}  # fmt: skip
        del dtrain, dvalid
    single = singles["QuantileDMatrix"]  # the stronger single-process baseline, and what our workers build
    per_round = {
        "ray_2x1": ray_xgb.timings["loop_s"] / len(ray_xgb.history),
        "ray_1x2": ray_xgb_1.timings["loop_s"] / len(ray_xgb_1.history),
        **{f"single_{k}": v["loop_s"] / v["rounds"] for k, v in singles.items()},
    }
    rows += [
        ["xgboost fixed cost (1,000 rows, 2 workers; median of 3)", xgb_overhead.timings["fit_s"], xgb_overhead.metrics["log_loss"]],
        ["xgboost fixed cost (1,000 rows, in-process: the default at this size)", xgb_overhead_local.timings["fit_s"],
         xgb_overhead_local.metrics["log_loss"]],
        ["xgboost Ray Train 2 workers x 1 thread: end to end", ray_xgb.timings["fit_s"], ray_xgb.metrics["log_loss"]],
        [f"  training loop ({len(ray_xgb.history)} rounds, {per_round['ray_2x1'] * 1e3:.1f} ms/round)",
         ray_xgb.timings["loop_s"], ray_xgb.metrics["log_loss"]],
        ["xgboost Ray Train 1 worker x 2 threads: end to end", ray_xgb_1.timings["fit_s"], ray_xgb_1.metrics["log_loss"]],
        [f"  training loop ({len(ray_xgb_1.history)} rounds, {per_round['ray_1x2'] * 1e3:.1f} ms/round)",
         ray_xgb_1.timings["loop_s"], ray_xgb_1.metrics["log_loss"]],
    ]  # fmt: skip
    for matrix, v in singles.items():
        rows.append([f"xgboost single process, 2 threads, {matrix} ({v['rounds']} rounds, "
                     f"{v['loop_s'] / v['rounds'] * 1e3:.1f} ms/round)", v["seconds"], v["log_loss"]])  # fmt: skip
    figures["xgboost"] = {
        "ray_train": {**ray_xgb.timings, "rounds": len(ray_xgb.history), "auc": ray_xgb.metrics["roc_auc"],
                      "memory": _memory(ray_xgb, n, 2, d)},
        "ray_train_1_worker_2_threads": {**ray_xgb_1.timings, "rounds": len(ray_xgb_1.history),
                                         "auc": ray_xgb_1.metrics["roc_auc"]},
        "ray_train_1000_rows": {**xgb_overhead.timings, "fit_s_runs": xgb_overhead_runs},
        "single_process": single,
        "single_process_dmatrix": singles["DMatrix"],
        "per_round_s": per_round,
    }  # fmt: skip
    figures["driver_peak_rss_mb"] = driver_peak_mb

    print(table(rows, ["run", "seconds", "test log-loss"]))
    bayes = ours.metrics.get("bayes_log_loss")
    print(f"\nBayes-optimal test log-loss {bayes:.4f}; rows {n:,} train x {d} features; "
          f"driver peak RSS before the baselines {driver_peak_mb:,.0f} MB")  # fmt: skip
    for name, run in [*runs.items(), ("xgboost", ray_xgb)]:
        mem = _memory(run, n, 2, d)
        extra = ", ".join(f"{w['private_peak_mb'] - w['private_start_mb']:,.0f} MB ({w['extra_over_shard']:.2f}x)"
                          for w in mem["workers"])  # fmt: skip
        print(f"{name}: workers' private memory added while training: {extra}; shard {mem['shard_mb']:,.0f} MB")
    worst = max(w["extra_over_shard"] for r in [*runs.values(), ray_xgb] for w in _memory(r, n, 2, d)["workers"])
    ratios = {
        "logreg_end_to_end_time_ours_over_lbfgs (lower is better)": round(ours.timings["fit_s"] / lbfgs_s, 3),
        "logreg_test_log_loss_ours_over_lbfgs (lower is better)": round(ours.metrics["log_loss"] / lbfgs_ll, 5),
        "logreg_epoch_time_over_bandwidth_floor (lower is better)": round(epoch_s / bandwidth_floor, 2),
        "logreg_fixed_cost_s (lower is better)": round(overhead.timings["fit_s"], 2),
        "xgb_fixed_cost_s (lower is better)": round(xgb_overhead.timings["fit_s"], 2),
        "logreg_fixed_cost_in_process_s (lower is better)": round(overhead_local.timings["fit_s"], 2),
        "xgb_fixed_cost_in_process_s (lower is better)": round(xgb_overhead_local.timings["fit_s"], 2),
        "xgb_per_round_time_ray_over_single (lower is better)": round(per_round["ray_2x1"] / per_round["single_QuantileDMatrix"], 3),
        "xgb_per_round_time_ray_1_worker_over_single (lower is better)": round(
            per_round["ray_1x2"] / per_round["single_QuantileDMatrix"], 3
        ),
        "xgb_end_to_end_time_ray_over_single (lower is better)": round(ray_xgb.timings["fit_s"] / single["seconds"], 3),
        "xgb_auc_ray_minus_single (closer to 0 is better)": round(ray_xgb.metrics["roc_auc"] - single["auc"], 5),
        "worker_private_memory_over_shard_max (lower is better)": round(worst, 2),
    }  # fmt: skip
    for key, value in ratios.items():
        print(f"{key}: {value}")
    merged, top_ratios = _merge_results(args.rows, {"rows": args.rows, "train_rows": n, **figures}, ratios)
    path = write_results("train", merged, top_ratios)
    print(f"results -> {path}")


if __name__ == "__main__":
    main()
