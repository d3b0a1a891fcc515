"""Scale: ingest, feature fit + transform and both trainers on 1 and on 2 local `ray start` nodes.

Each worker node gets a fixed 1 CPU (`cluster/local/up.sh`, RP_WORKER_CPUS=1) and the head none
(it holds the driver and Ray's own services), so 2 nodes have twice the schedulable CPUs of 1.
Reported per stage: seconds on 1 node, on 2 nodes, and per-node efficiency
(t1 / t2) / 2, where 1.0 would be perfect scaling. On a 2-core machine the head's processes,
both raylets and the driver share the same two cores, so this measures the cost of going
multi-node (scheduling, object transfer between raylets, the collective over TCP), not a speed-up
a real second machine would give.

    python benchmarks/scale.py [--rows 300000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, demo_config_body, table, write_results  # noqa: E402

UP, DOWN = ROOT / "cluster" / "local" / "up.sh", ROOT / "cluster" / "local" / "down.sh"
STAGES = ("ingest", "features", "prepare (fit + transform)", "train logreg", "train xgboost")


def _config(workdir: Path, raw: Path, nodes: int):
    """demo.yaml on the generated rows, without feature views, training on one worker per node."""
    from ray_pipeline.config import parse_config

    body = demo_config_body(workdir)
    body["data"]["source"]["path"] = str(raw)
    body["data"]["output"]["root"] = str(workdir / "ingested")
    body["features"]["store_root"] = str(workdir / "features")
    body["training"].update(workers=nodes, cpus_per_worker=1.0, in_process_max_rows=0)
    body["training"]["logreg"]["optimizer"] = "newton"
    return parse_config(body)


def _cluster_env(state: Path) -> dict[str, str]:
    from ray_pipeline.runtime import free_port

    env = {**os.environ, "RP_CLUSTER_STATE": str(state), "RP_HEAD_PORT": str(free_port()),
           "RP_DASHBOARD_PORT": str(free_port()), "RP_HEAD_CPUS": "0", "RP_WORKER_CPUS": "1",
           "RAY": str(Path(sys.executable).with_name("ray"))}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    return env


def _stages(nodes: int, raw: Path, workdir: Path) -> dict[str, float]:
    """Seconds per stage, in a driver joined to the running cluster (this process: `--nodes`)."""
    from ray_pipeline.data.ingest import ingest
    from ray_pipeline.features.build import build_features
    from ray_pipeline.runtime import init_ray, shutdown_ray
    from ray_pipeline.train.data import prepare_training_set
    from ray_pipeline.train.runner import train_model

    init_ray(address=os.environ["RP_GCS_ADDRESS"], quiet=True)
    cfg = _config(workdir, raw, nodes)
    seconds: dict[str, float] = {}

    def timed(stage: str, fn):
        t0 = time.perf_counter()
        out = fn()
        seconds[stage] = time.perf_counter() - t0
        return out

    try:
        timed("ingest", lambda: ingest(cfg))
        timed("features", lambda: build_features(cfg))
        prepared = timed("prepare (fit + transform)", lambda: prepare_training_set(cfg))
        for kind in ("logreg", "xgboost"):
            run = timed(f"train {kind}", lambda: train_model(cfg, kind, prepared=prepared))
            assert len(set(run.worker_nodes)) == nodes, f"{kind}: workers on {run.worker_nodes}, wanted {nodes} nodes"
    finally:
        shutdown_ray()
    return seconds


def _run_on(nodes: int, raw: Path, workdir: Path) -> dict[str, float]:
    """Start `nodes` worker nodes of 1 CPU each, measure the stages in a fresh driver process, stop.

    A fresh process per cluster: Ray reads its authentication settings once per process, and this
    one started an embedded instance without a token to generate the rows.
    """
    state = workdir / "cluster"
    env = _cluster_env(state)
    subprocess.run([str(UP), str(nodes)], env=env, check=True, timeout=300, capture_output=True)
    try:
        driver = dict(env)
        for line in (state / "env").read_text().splitlines():
            key, value = line.removeprefix("export ").split("=", 1)
            driver[key] = value
        driver.pop("RAY_ADDRESS")  # the job API's address; the driver joins the GCS (RP_GCS_ADDRESS)
        out = subprocess.run([sys.executable, __file__, "--nodes", str(nodes), "--raw", str(raw),
                              "--workdir", str(workdir)], env=driver, capture_output=True, text=True, timeout=1800)  # fmt: skip
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if out.returncode != 0 or line is None:
            raise RuntimeError(f"{nodes} node(s): driver failed\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
        return json.loads(line.removeprefix("RESULT "))
    finally:
        subprocess.run([str(DOWN)], env=env, timeout=120, capture_output=True)


def main() -> None:
    """Both cluster sizes, one after the other, on the same generated rows."""
    from ray_pipeline.config import SyntheticConfig
    from ray_pipeline.synthetic.transactions import generate
    from ray_pipeline.runtime import init_ray, shutdown_ray

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--nodes", type=int, help=argparse.SUPPRESS)  # the driver of one cluster size
    parser.add_argument("--raw", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.nodes:
        print("RESULT " + json.dumps(_stages(args.nodes, args.raw, args.workdir)))
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    root = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    raw = root / "raw"
    init_ray(quiet=True)  # an embedded Ray only to generate the rows every run reads
    generate(SyntheticConfig(rows=args.rows, seed=11, format="parquet"), str(raw))
    shutdown_ray()
    by_nodes = {n: _run_on(n, raw, root / f"nodes-{n}") for n in (1, 2)}
    rows, efficiency = [], {}
    for stage in STAGES:
        one, two = by_nodes[1][stage], by_nodes[2][stage]
        efficiency[stage] = (one / two) / 2
        rows.append([stage, one, two, efficiency[stage]])
    print(f"{args.rows:,} rows; worker nodes of 1 CPU each; head 0 CPUs; 2 cores in all on this machine")
    print(table(rows, ["stage", "1 node (s)", "2 nodes (s)", "per-node efficiency"]))
    print("On one 2-core machine this is the cost of going multi-node, not a speed-up: see the docstring.")
    ratios = {f"{stage}_per_node_efficiency (higher is better, 1.0 = linear)": round(e, 3)
              for stage, e in efficiency.items()}  # fmt: skip
    figures = {"rows": args.rows, "seconds": {f"{n}_nodes": s for n, s in by_nodes.items()}}
    print(f"results -> {write_results('scale', figures, ratios)}")


if __name__ == "__main__":
    main()
