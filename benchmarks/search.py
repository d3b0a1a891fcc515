"""Hyperparameter search throughput: the same small-table XGBoost search with trials side by side
(one CPU each, the rule `tune` uses) against one trial at a time, in one process on one Ray.

    python benchmarks/search.py [--rows 20000] [--trials 8]

Prints trials per hour, the search's wall time, the CPU time the trials' processes used over it
(utilisation = CPU seconds / (wall seconds x CPUs)) and where each trial ran.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import demo_config_body, table, write_results  # noqa: E402


def _cpu_seconds() -> float:
    """CPU time of every process on this machine so far (user + system, from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system = (int(x) for x in fields[:3])
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    """Prepare one split, search it twice (parallel, then serial), print and save the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("RAY_PIPELINE_PROGRESS", "0")

    import ray.data

    from ray_pipeline.config import SyntheticConfig, parse_config
    from ray_pipeline.synthetic.transactions import generate_chunk
    from ray_pipeline.runtime import init_ray
    from ray_pipeline.train.data import prepare
    from ray_pipeline.train.search import run_search

    runtime = init_ray()
    work = Path(tempfile.mkdtemp(prefix="bench-search-"))
    body = demo_config_body(work)
    body["training"]["xgboost"].update(num_boost_round=100, early_stopping_rounds=10)
    body["training"]["search"] = {"algorithm": "random", "scheduler": "fifo", "seed": 1}
    frame = generate_chunk(SyntheticConfig(rows=args.rows, chunk_rows=args.rows, seed=2), 0).to_pandas()
    results, where = {}, {}
    for label, concurrent in (("parallel", 0), ("one at a time", 1)):
        body["training"]["search"]["max_concurrent"] = concurrent
        cfg = parse_config(body)
        prepared = prepare(ray.data.from_pandas(frame), cfg)
        cpu0, t0 = _cpu_seconds(), time.perf_counter()
        search = run_search(cfg, "xgboost", prepared, args.trials)
        wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
        done = [t for t in search.trials if t.status == "finished"]
        results[label] = {"trials": len(done), "wall_s": round(wall, 2), "trials_per_hour": round(len(done) / wall * 3600),
                          "cpu_utilisation": round(cpu / (wall * runtime.num_cpus), 3),
                          "best_valid_log_loss": min(t.valid_metric for t in done)}  # fmt: skip
        where[label] = sorted({n[:12] for t in done for n in t.nodes})
    rows = [[k, r["trials"], r["wall_s"], r["trials_per_hour"], r["cpu_utilisation"], r["best_valid_log_loss"],
             ", ".join(where[k])] for k, r in results.items()]  # fmt: skip
    print(table(rows, ["trials", "finished", "wall s", "trials/hour", "CPU utilisation", "best valid log-loss",
                       "nodes"]))  # fmt: skip
    ratios = {"trials_per_hour_parallel_over_one_at_a_time (higher is better)":
              round(results["parallel"]["trials_per_hour"] / results["one at a time"]["trials_per_hour"], 3)}  # fmt: skip
    for key, value in ratios.items():
        print(f"{key}: {value}")
    print(f"results: {write_results('search', results, ratios)}")


if __name__ == "__main__":
    main()
