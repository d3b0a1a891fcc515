"""Run by test_local_cluster.py in its own process: a driver on the real local cluster that
cluster/local/up.sh started (RAY_ADDRESS and the token come from the environment).

    python multinode_train.py WORKDIR   # an uninterrupted run on one node, then a slow one spread
                                        # over two, which the test kills a node under (it prints
                                        # TRAINING first)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_pipeline.runtime import init_ray  # noqa: E402
from ray_pipeline.train.runner import train_model  # noqa: E402
from tests.helpers import linear_cfg, linear_prepared  # noqa: E402


def _result(run) -> dict:
    return {"nodes": run.worker_nodes, "weights": run.model.weights.tolist(), "bias": run.model.bias}


def nodeloss(workdir: Path) -> dict:
    """Full-batch gradient descent twice on the same data: uninterrupted with both workers on one
    node, then paused 0.3 s per epoch (checkpoint every 2) with workers spread over both worker
    nodes, for the test to kill one."""
    prepared = linear_prepared(rows=6_000)
    cfg = {"epochs": 40, "optimizer": "gd", "early_stopping_patience": 1000}
    baseline = train_model(linear_cfg(workdir / "baseline", **cfg), "logreg", workers=2, prepared=prepared,
                           placement_strategy="STRICT_PACK")  # fmt: skip
    slow = linear_cfg(workdir / "slow", **cfg)
    slow.training.checkpoint_every = 2
    print(f"TRAINING {workdir / 'slow' / 'runs'}", flush=True)
    started = time.time()
    run = train_model(slow, "logreg", workers=2, prepared=prepared, placement_strategy="SPREAD",
                      fault={"epoch_pause_s": 0.3})  # fmt: skip
    return {"baseline": _result(baseline), "interrupted": _result(run), "started": started,
            "finished": time.time(), "resumed_from": run.resumed_from, "resumed_at": run.resumed_at, "epochs": len(run.history)}


def main(workdir: str) -> None:
    init_ray(quiet=True)  # RAY_ADDRESS: the local cluster; workers' output stays in their logs
    out = nodeloss(Path(workdir))
    print("RESULT " + json.dumps(out), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
