"""What a search buys on the demo's data: the demo pipeline (configs/demo.yaml: 200,000 generated
rows, feature views, point-in-time training set) trains XGBoost with its fixed settings, then a
search on Ray Tune tries others on the same split; both are scored on the test split against the
Bayes-optimal log-loss the generator knows.

    python benchmarks/search_quality.py [--trials 24] [--algorithm tpe] [--budget-s 1800]

Prints untuned vs searched test log-loss, its excess over the Bayes-optimal one (in % of it), the
search's wall time and trials, and the best parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, table, write_results  # noqa: E402

# The space searched: the default one plus the number of rounds (early stopping picks the best
# round of each trial, so a low learning rate gets the rounds it needs).
ROUNDS = {"kind": "int", "low": 100, "high": 1000}


def main() -> None:
    """Demo data -> untuned XGBoost -> search -> both scored against the truth; print and save."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--algorithm", default="tpe", choices=["tpe", "random"])
    parser.add_argument("--budget-s", type=float, default=1800)
    parser.add_argument("--rows", type=int, default=0, help="rows to generate (0: the demo's)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_PIPELINE_PROGRESS", "0")

    import yaml

    from ray_pipeline.config import load_config
    from ray_pipeline.config.training import ParamRange
    from ray_pipeline.synthetic.transactions import generate
    from ray_pipeline.runtime import init_ray
    from ray_pipeline.train.rundir import read_run
    from ray_pipeline.train.search import run_search
    from ray_pipeline.workflow.pipeline import run_pipeline
    from ray_pipeline.workflow.search import keep_best, render_search

    init_ray()
    work = Path(tempfile.mkdtemp(prefix="bench-search-quality-"))
    (work / "configs").mkdir()
    body = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    if args.rows:
        body["synthetic"]["rows"] = args.rows
    body["training"]["search"] = {"trials": args.trials, "algorithm": args.algorithm, "scheduler": "asha",
                                  "time_budget_s": args.budget_s, "seed": 0, "grace": 20}  # fmt: skip
    config = work / "configs" / "demo.yaml"  # relative paths land under `work`, as the demo's in the repo
    config.write_text(yaml.safe_dump(body, sort_keys=False))
    cfg = load_config(config)
    cfg.training.search.xgboost = {**cfg.training.search.xgboost, "num_boost_round": ParamRange(**ROUNDS)}
    generate(cfg.synthetic, cfg.data.source.path)

    done = run_pipeline(cfg, models=["xgboost"], echo=lambda line: None)
    untuned = read_run(done.runs[0].run_dir).metrics
    prepared = done.prepared  # the split the untuned model trained on
    t0 = time.perf_counter()
    search = run_search(cfg, "xgboost", prepared)
    wall = time.perf_counter() - t0
    print(render_search(search))
    keep_best(cfg, search, prepared)  # indexes the trials, as `tune` does
    best = read_run(search.best.run_dir).metrics

    bayes = untuned["bayes_log_loss"]
    rows, figures = [], {}
    for label, m in (("untuned (configs/demo.yaml)", untuned), ("searched", best)):
        excess = (m["log_loss"] / bayes - 1) * 100
        rows.append([label, m["log_loss"], bayes, f"{excess:.2f}%", m["roc_auc"]])
        figures[label] = {"test_log_loss": m["log_loss"], "bayes_log_loss": bayes, "excess_pct": round(excess, 3),
                          "roc_auc": m["roc_auc"]}  # fmt: skip
    print(table(rows, ["XGBoost", "test log-loss", "Bayes-optimal", "excess", "ROC AUC"]))
    finished = [t for t in search.trials if t.status == "finished"]
    figures["search"] = {"trials": len(search.trials), "finished": len(finished), "wall_s": round(wall, 1),
                         "algorithm": args.algorithm, "scheduler": "asha", "budget_s": args.budget_s,
                         "rows": cfg.synthetic.rows, "best_params": search.best.params if search.best else None}  # fmt: skip
    print(json.dumps(figures["search"], default=str))
    ratios = {"searched_excess_pct_of_bayes (goal <= 1.0)": figures["searched"]["excess_pct"],
              "untuned_excess_pct_of_bayes": figures["untuned (configs/demo.yaml)"]["excess_pct"]}  # fmt: skip
    for key, value in ratios.items():
        print(f"{key}: {value}")
    print(f"results: {write_results('search_quality', figures, ratios)}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
