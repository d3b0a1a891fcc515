"""What runs inside a Ray Train worker around the model loops: reading the shard, node ids, logging.

Kept free of the driver's heavy imports (config, features, plotting): every worker process imports
this module when it unpickles the loop, and those imports were part of each run's fixed cost.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def allreduce(values: np.ndarray, op: str = "sum") -> np.ndarray:
    """Sum (or max) across Ray Train workers; the identity outside a distributed run."""
    import xgboost.collective as coll

    if not coll.is_distributed():
        return values
    return coll.allreduce(np.ascontiguousarray(values, dtype=np.float64), coll.Op.SUM if op == "sum" else coll.Op.MAX)


def load_shard(shard: tuple[list, int], n_features: int, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """A worker's rows as one (rows, n_features) matrix of `dtype` and float64 labels, filled one
    block at a time so the process never holds more than its shard plus one block."""
    import ray

    refs, rows = shard
    X = np.empty((rows, n_features), dtype=dtype)
    y = np.empty(rows, dtype=np.float64)
    at = 0
    for ref in refs:
        block = ray.get(ref)  # zero-copy view of the object store
        n = block.num_rows
        if n:
            for chunk in block["x"].chunks:  # a Ray tensor column: large_list<float32> storage
                values = chunk.storage.flatten().to_numpy(zero_copy_only=False)
                k = len(chunk)
                X[at : at + k] = values.reshape(k, n_features)
                at += k
            y[at - n : at] = block["y"].to_numpy()
        del block
    if at != rows:
        raise RuntimeError(f"shard holds {at} rows, expected {rows}")
    return X, y


def node_ids() -> list[str]:
    """Node id of every worker, gathered with the allreduce (rank r fills row r)."""
    import ray
    import ray.train

    ctx = ray.train.get_context()
    rows = np.zeros((ctx.get_world_size(), 64))
    raw = ray.get_runtime_context().get_node_id().encode()[:64]
    rows[ctx.get_world_rank(), : len(raw)] = list(raw)
    gathered = allreduce(rows.ravel()).reshape(rows.shape)
    return [bytes(int(b) for b in row if b).decode() for row in gathered]


def quiet_report_log() -> None:
    """Silence Ray Train's per-report INFO line (the whole checkpoint repr, every report, every worker)."""
    import logging

    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # a Ray version without that module has its own logging
        return
    # That logger is named by file path, so RunConfig's LoggingConfig, which filters only "ray.train.*"
    # records, does not reach it (ray 2.60).
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def worker_loop(kind: str):
    """The worker loop for `kind`, returning rank 0's result plus every worker's node id."""

    def loop(config: dict[str, Any]) -> dict[str, Any] | None:
        quiet_report_log()
        if kind == "xgboost":
            from ray_pipeline.train.xgb import train_loop
        else:
            from ray_pipeline.train.logreg import train_loop
        nodes = node_ids()
        out = train_loop(config)
        return None if out is None else {**out, "worker_nodes": nodes}

    return loop
