"""Where a training run goes, by its estimated cost against the cluster's shape: in this process
with all the node's threads, or on Ray Train workers across the nodes, whichever the estimate says
finishes first.

Ray Train's start (controller, worker processes, placement group, the dataset hand-off) is a fixed
cost of seconds; the loop itself costs about rows x inputs x passes. On one node, workers share
the CPUs the driver's process would use anyway, so they only add that fixed cost: a run spreads
over workers when more nodes divide the loop by enough to pay for their start. The constants are
measured (benchmarks/train.py on 2 cores; docs/benchmarks.md) and kept coarse on purpose: the
choice only has to be right where the two sides differ by a lot.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from ray_pipeline.config import TrainingConfig

# CPU-seconds per train row x model input x pass (an XGBoost round; a linear-model epoch, or an
# iteration of lbfgs; Newton's pass also builds a Hessian, inputs times more).
PASS_COST_S = {"xgboost": 4.2e-9, "logreg": 8.6e-10}
# Ray Train's fixed cost per run (worker group start and teardown), seconds.
START_COST_S = {"xgboost": 5.3, "logreg": 4.7}
# A distributed pass costs this much more than the same pass in one process, plus a synchronisation
# of the worker group per pass (the allreduce; 2 workers against one process, per XGBoost round).
SPREAD_OVERHEAD, SYNC_PER_PASS_S = 1.3, 0.008


@dataclass(frozen=True)
class ClusterShape:
    """The nodes training can use: how many have CPUs, the smallest one's CPUs, and the driver's."""

    nodes: int
    cpus_per_node: float
    driver_cpus: float

    @classmethod
    def current(cls) -> ClusterShape:
        """The running Ray cluster's shape (alive nodes with CPUs)."""
        import ray

        here = ray.get_runtime_context().get_node_id()
        alive = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
        cpus = [float(n["Resources"]["CPU"]) for n in alive] or [1.0]
        driver = next((float(n["Resources"]["CPU"]) for n in alive if n["NodeID"] == here), 0.0)
        # An embedded Ray may advertise more logical CPUs than the machine has: threads need cores.
        driver = min(driver, float(len(os.sched_getaffinity(0))))
        return cls(nodes=max(1, len(alive)), cpus_per_node=min(cpus), driver_cpus=driver)


@dataclass(frozen=True)
class Placement:
    """Where one run trains: `workers` Ray Train workers (0: in this process) of `cpus_per_worker`
    CPUs each, with `threads` threads per loop; `why` in words for the run's output and lineage."""

    workers: int
    cpus_per_worker: float
    threads: int
    why: str
    estimate_s: float | None = None

    def lineage(self) -> dict[str, Any]:
        """The placement as the run's lineage keeps it."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def loop_seconds(kind: str, optimizer: str, rows: int, inputs: int, passes: int) -> float:
    """CPU-seconds the training loop is estimated to take in one process."""
    per_pass = rows * max(inputs, 1) * PASS_COST_S[kind]
    if kind == "logreg" and optimizer == "newton":
        per_pass *= max(inputs, 1) / 8  # the Hessian: n d^2 against the gradient's n d (8 lanes of BLAS)
    return per_pass * max(passes, 1)


def place(training: TrainingConfig, kind: str, optimizer: str, rows: int, inputs: int, passes: int,
          shape: ClusterShape, workers: int | None = None) -> Placement:  # fmt: skip
    """Where a `kind` run over `rows` x `inputs` (`passes` rounds or epochs at most) trains on a
    cluster of `shape`. `workers` (an explicit --workers) wins; so does `training.placement`, and
    the fixed `training.in_process_max_rows` where a config still sets it."""
    threads_here = max(1, int(shape.driver_cpus or shape.cpus_per_node))
    on_workers = Placement(training.workers, training.cpus_per_worker,
                           max(1, int(round(training.cpus_per_worker))), "")  # fmt: skip
    in_process = Placement(0, training.cpus_per_worker, threads_here, "")
    if workers is not None:
        chosen = on_workers if workers else in_process
        return Placement(workers, chosen.cpus_per_worker, chosen.threads, f"workers={workers} as set by the caller")
    if training.placement != "auto" or training.in_process_max_rows is not None:
        if training.placement == "in_process":
            return _why(in_process, "training.placement: in_process")
        if training.placement == "workers" or rows > (training.in_process_max_rows or 0):
            return _why(on_workers, f"training.placement: workers ({training.workers})"
                        if training.placement == "workers" else f"{rows:,} rows > in_process_max_rows")  # fmt: skip
        return _why(in_process, f"{rows:,} rows <= in_process_max_rows")
    if not training.workers:
        return _why(in_process, "training.workers: 0")
    cpu_s = loop_seconds(kind, optimizer, rows, inputs, passes)
    here_s = cpu_s / threads_here
    spread = min(training.workers, shape.nodes)  # workers past one per node add no CPUs to a loop
    spread_s = START_COST_S[kind] + cpu_s * SPREAD_OVERHEAD / (spread * shape.cpus_per_node) \
        + (SYNC_PER_PASS_S * passes if spread > 1 else 0.0)  # fmt: skip
    if shape.driver_cpus == 0:  # a driver on a node without CPUs (a head kept for Ray itself)
        one_s = START_COST_S[kind] + cpu_s / shape.cpus_per_node
        if spread > 1 and spread_s < one_s:
            return _why(on_workers, f"no CPUs here; ~{spread_s:.0f} s on {spread} nodes", spread_s)
        node = max(1, int(shape.cpus_per_node))
        return _why(Placement(1, float(node), node, ""), f"no CPUs here; one worker with a node's {node} threads", one_s)
    if spread > 1 and spread_s < here_s:
        return _why(on_workers, f"~{here_s:.0f} s in-process against ~{spread_s:.0f} s on {spread} nodes, "
                    "Ray Train's start included", spread_s)  # fmt: skip
    reason = (f"~{here_s:.1f} s in-process on {threads_here} thread(s); Ray Train's start alone costs "
              f"~{START_COST_S[kind]:g} s" + ("" if shape.nodes > 1 else " and one node adds no CPUs"))
    return _why(in_process, reason, here_s)


def _why(p: Placement, why: str, estimate_s: float | None = None) -> Placement:
    estimate = None if estimate_s is None else round(estimate_s, 2)
    return Placement(p.workers, p.cpus_per_worker, p.threads, why, estimate)
