"""Run by test_multinode.py in its own process: a 3-node local Ray cluster (ray.cluster_utils)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray_pipeline.runtime import init_ray  # noqa: E402
from ray_pipeline.train.runner import train_model  # noqa: E402
from tests.test_train import _cfg, _linear_prepared  # noqa: E402


def main(workdir: str) -> None:
    """Train on two worker nodes (spread) and on one node (packed); print both results as JSON."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(2):
        cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    init_ray(address=cluster.address)
    prepared = _linear_prepared(rows=6_000)
    out = {}
    for name, strategy in (("spread", "STRICT_SPREAD"), ("packed", "STRICT_PACK")):
        run = train_model(
            _cfg(Path(workdir) / name), "logreg", workers=2, prepared=prepared, placement_strategy=strategy
        )
        out[name] = {"nodes": run.worker_nodes, "weights": run.model.weights.tolist(), "bias": run.model.bias}
    out["cluster_nodes"] = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    print("RESULT " + json.dumps(out))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
