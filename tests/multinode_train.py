"""Run by test_local_cluster.py in its own process: a driver on the real local cluster that
cluster/local/up.sh started (RAY_ADDRESS and the token come from the environment).

    python multinode_train.py placement WORKDIR   # two worker nodes (spread) vs one node (packed)
    python multinode_train.py loss WORKDIR        # uninterrupted run, then the same run the test
                                                  # interrupts by killing a worker node
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
from tests.test_train import _cfg, _linear_prepared  # noqa: E402


def _result(run) -> dict:
    return {"nodes": run.worker_nodes, "weights": run.model.weights.tolist(), "bias": run.model.bias,
            "resumed_from": run.resumed_from, "fit_s": run.timings["fit_s"]}  # fmt: skip


def placement(workdir: Path) -> dict:
    """Train on two worker nodes (spread) and on one node (packed)."""
    prepared = _linear_prepared(rows=6_000)
    out = {}
    for name, strategy in (("spread", "STRICT_SPREAD"), ("packed", "STRICT_PACK")):
        out[name] = _result(train_model(_cfg(workdir / name), "logreg", workers=2, prepared=prepared,
                                        placement_strategy=strategy))  # fmt: skip
    return out


def _wait_until_no_train_workers(seconds: float = 120) -> None:
    """A finished run's worker actors linger for a moment; wait until none is alive."""
    from ray.util.state import list_actors

    deadline = time.monotonic() + seconds
    while list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]):
        if time.monotonic() > deadline:
            raise TimeoutError("Train workers of the finished run are still alive")
        time.sleep(0.5)


def loss(workdir: Path) -> dict:
    """The same full-batch run twice; the test kills a worker node during the second."""
    prepared = _linear_prepared(rows=6_000)
    settings = {"epochs": 60, "early_stopping_patience": 1000}  # 20 checkpoints: room to kill mid-run
    base = _result(train_model(_cfg(workdir / "base", **settings), "logreg", workers=2, prepared=prepared,
                               placement_strategy="SPREAD"))  # fmt: skip
    _wait_until_no_train_workers()  # so the test's state-API probe sees only the next run's workers
    print(f"KILL_AFTER_CHECKPOINT_IN {workdir / 'interrupted' / 'runs'}", flush=True)
    started = time.perf_counter()
    hit = _result(train_model(_cfg(workdir / "interrupted", **settings), "logreg", workers=2, prepared=prepared,
                              placement_strategy="SPREAD"))  # fmt: skip
    hit["wall_s"] = time.perf_counter() - started
    return {"base": base, "interrupted": hit}


def main(mode: str, workdir: str) -> None:
    init_ray()  # RAY_ADDRESS: the local cluster
    out = {"placement": placement, "loss": loss}[mode](Path(workdir))
    out["cluster_nodes"] = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    print("RESULT " + json.dumps(out), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
