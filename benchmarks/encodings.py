"""What XGBoost's native categories and the bounded importance change, side by side in one process:

1. XGBoost on the generator's table (merchant_id: thousands of merchants, each with its own risk in
   the truth; channel, merchant_category), trained once with the categories as codes it splits on
   (`training.xgboost.categorical: native`) and once with the linear model's frequency/one-hot
   encodings (`encoded`, what every run did before), on the same split: test log-loss and AUC.
2. importance.json on a 5-class table: within the run's budget (a tenth of the fit, at least 2 s)
   against every test row with interactions on 250 rows (what every run wrote before).

    .venv/bin/python benchmarks/encodings.py [--rows 60000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_PIPELINE_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import demo_config_body, table, write_results  # noqa: E402


def _prepared(rows: int, task: str, workdir: Path):
    """The generator's rows, split and prepared as `run` prepares them."""
    import ray.data

    from ray_pipeline.config import SyntheticConfig, parse_config
    from ray_pipeline.synthetic.transactions import generate_chunk
    from ray_pipeline.train.data import prepare

    body = demo_config_body(workdir)
    frame = generate_chunk(SyntheticConfig(rows=rows, chunk_rows=rows, seed=11, task=task), 0).to_pandas()
    if task == "multiclass":  # as ingest leaves it: the class index
        classes = sorted(frame["label"].unique().tolist())
        body["data"]["schema"]["label"] = {"column": "label", "task": task, "classes": classes}
        frame["label"] = frame["label"].map(classes.index).astype("int16")
    cfg = parse_config(body)
    return cfg, prepare(ray.data.from_pandas(frame).repartition(4), cfg)


def categories(rows: int, workdir: Path) -> list[list[object]]:
    """Native against encoded categories, same split, same settings."""
    from ray_pipeline.train.runner import train_model

    cfg, prepared = _prepared(rows, "binary", workdir / "cats")
    out = []
    for how in ("native", "encoded"):
        cfg.training.xgboost.categorical = how
        started = time.perf_counter()
        run = train_model(cfg, "xgboost", workers=0, prepared=prepared)
        out.append([how, run.metrics["log_loss"], run.metrics["roc_auc"], len(run.history),
                     round(time.perf_counter() - started, 2)])  # fmt: skip
    return out


def importance(rows: int, workdir: Path) -> list[list[object]]:
    """The run's bounded importance against all rows and 250 interaction rows."""
    from ray_pipeline.train import explain
    from ray_pipeline.train.data import for_model
    from ray_pipeline.train.runner import train_model

    cfg, prepared = _prepared(rows, "multiclass", workdir / "imp")
    run = train_model(cfg, "xgboost", workers=0, prepared=prepared)
    split = for_model(prepared, "xgboost", cfg.training)
    started = time.perf_counter()
    full = explain.global_importance(run.model, run.spec, split.test)
    full_s = time.perf_counter() - started
    return [["bounded (the run's)", run.timings["fit_s"], run.timings["importance_s"], int(run.timings["importance_rows"])],
            ["every row (before)", run.timings["fit_s"], full_s, full["rows"]]]  # fmt: skip


def main() -> None:
    """Both comparisons; writes benchmarks/results/encodings.json."""
    from ray_pipeline.runtime import init_ray

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=60_000)
    args = parser.parse_args()
    init_ray(None, quiet=True)
    with tempfile.TemporaryDirectory(prefix="encodings-") as tmp:
        cats = categories(args.rows, Path(tmp))
        print(table(cats, ["categories", "test log_loss", "test roc_auc", "rounds", "seconds"]))
        imp = importance(args.rows, Path(tmp))
        print(table(imp, ["importance", "fit s", "importance s", "rows"]))
    native, encoded = cats
    write_results("encodings", {"categories": cats, "importance": imp},
                  {"log_loss_native_over_encoded": native[1] / encoded[1],
                   "importance_bounded_over_full": imp[0][2] / imp[1][2]})  # fmt: skip


if __name__ == "__main__":
    main()
