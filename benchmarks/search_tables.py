"""Untuned vs searched on users' own tables (tests/tables.py: churn, missing values, flights,
multiclass membership, regression prices): each table goes through `init` and `run` as a new user's
would, then a search per model kind on the same split; test metrics side by side.

    python benchmarks/search_tables.py [--trials 12] [--rows 4000]

Prints, per table and model kind, the untuned (first) trial's and the best trial's validation
metric (the search picks on it: the best can only match or beat the untuned one) and both
models' test metrics (log-loss and ROC AUC, or RMSE for regression).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import table, write_results  # noqa: E402

from tests import tables  # noqa: E402

# table -> (frame builder, `init` label options)
TABLES = {
    "churn": (tables.churn_table, ["--label", "Churn", "--positive", "Yes"]),
    "missing": (tables.missing_table, ["--label", "y"]),
    "flights": (tables.flights_table, ["--label", "arr_delay", "--threshold", "15"]),
    "membership": (tables.membership_table, ["--label", "tier"]),
    "prices": (tables.prices_table, ["--label", "price"]),
}


def main() -> None:
    """Each table: init, run (untuned), search each model kind; print and save the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--rows", type=int, default=4000)
    args = parser.parse_args()
    os.environ.setdefault("RAY_PIPELINE_PROGRESS", "0")

    from typer.testing import CliRunner

    from ray_pipeline.cli import app
    from ray_pipeline.config import load_config
    from ray_pipeline.runtime import init_ray
    from ray_pipeline.train.rundir import read_run
    from ray_pipeline.train.search import defaults, run_search, space_of
    from ray_pipeline.workflow.pipeline import run_pipeline

    init_ray()
    work = Path(tempfile.mkdtemp(prefix="bench-search-tables-"))
    rows, figures = [], {}
    for name, (build, label) in TABLES.items():
        csv, config = work / f"{name}.csv", work / f"{name}.yaml"
        build(args.rows).to_csv(csv, index=False)
        told = CliRunner().invoke(app, ["init", "--data", str(csv), *label, "--out", str(config)])
        assert told.exit_code == 0, told.output
        cfg = load_config(config)
        cfg.training.search.trials = args.trials
        done = run_pipeline(cfg, echo=lambda line: None)
        task = done.prepared.spec.task
        for run in done.runs:
            search = run_search(cfg, run.kind, done.prepared)
            first = defaults(cfg, run.kind, space_of(cfg, run.kind, task))
            untuned, best = next(t for t in search.trials if t.params == first), search.best
            searched = read_run(best.run_dir).metrics
            keys = ["rmse"] if task == "regression" else ["log_loss"] + (["roc_auc"] if task == "binary" else [])
            row = {"task": task, "valid_untuned": untuned.valid_metric, "valid_searched": best.valid_metric,
                   **{f"test_{k}_untuned": run.metrics[k] for k in keys},
                   **{f"test_{k}_searched": searched[k] for k in keys}, "best_params": best.params,
                   "finished": sum(t.status == "finished" for t in search.trials), "trials": len(search.trials)}  # fmt: skip
            figures[f"{name}/{run.kind}"] = row
            rows.append([name, run.kind, search.metric, untuned.valid_metric, best.valid_metric,
                         *(f"{run.metrics[k]:.4f} -> {searched[k]:.4f}" for k in keys[:2]),
                         *([""] if len(keys) < 2 else []), f"{row['finished']}/{row['trials']}"])  # fmt: skip
    print(table(rows, ["table", "model", "metric", "valid untuned", "valid searched", "test loss untuned -> searched",
                       "test ROC AUC untuned -> searched", "finished trials"]))  # fmt: skip
    never_worse = all(r["valid_searched"] <= r["valid_untuned"] for r in figures.values())
    ratios = {"searched_never_worse_on_validation": never_worse}
    print(f"searched best never worse than untuned on validation: {never_worse}")
    print(f"results: {write_results('search_tables', figures, ratios)}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
