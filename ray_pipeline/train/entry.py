"""The function every Ray Train worker runs: the model kind's loop, plus where it ran.

Its own module so the model loops (logreg.py, xgb.py) and the worker helpers they use (worker.py)
import one way: this module dispatches to the loops, the loops use the helpers.
"""

from __future__ import annotations

import time
from typing import Any

from ray_pipeline.train.worker import MemoryProbe, gather_rows, node_ids, quiet_report_log


def worker_loop(kind: str):
    """The worker loop for `kind`, returning rank 0's result plus every worker's node id (and
    memory figures when `measure_memory` is set)."""

    def loop(config: dict[str, Any]) -> dict[str, Any] | None:
        entered_at = time.time()  # wall clock: the driver splits Ray Train's fixed cost around it
        quiet_report_log()
        if kind == "xgboost":  # each worker imports the one loop it runs
            from ray_pipeline.train.xgb import train_loop
        else:
            from ray_pipeline.train.logreg import train_loop
        nodes = node_ids()
        probe = MemoryProbe() if config.get("measure_memory") else None
        out = train_loop(config)
        memory = gather_rows(probe.stop()) if probe is not None else None
        if out is None:
            return None
        return {**out, "worker_nodes": nodes, "entered_at": entered_at, "left_at": time.time(),
                **({"worker_memory_mb": memory} if memory else {})}

    return loop
