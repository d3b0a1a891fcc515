"""What runs inside a Ray Train worker around the model loops: reading the shard, node ids, logging.

Kept free of the driver's heavy imports (config, features, plotting), so a worker process imports
only what the loops use (moving these here from train/runner.py did not measurably change the
fixed cost of a run, but there is no reason to load pydantic and matplotlib on every worker).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from ray_pipeline.raycompat import train_context_logger
from ray_pipeline.train import session
from ray_pipeline.train.collective import allreduce


def iter_batches(shard: tuple[list, int], n_features: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(features, labels) per Arrow record batch of a shard's blocks: float32 views straight into
    the object store (no copy), one block held at a time."""
    import ray

    for ref in shard[0]:
        block = ray.get(ref)
        for batch in block.to_batches():  # columns aligned, zero-copy slices
            x = batch.column("x")  # a Ray tensor column: large_list<float32> storage
            values = x.storage.flatten().to_numpy(zero_copy_only=False)
            yield values.reshape(len(x), n_features), batch.column("y").to_numpy(zero_copy_only=False)
        del block


def load_shard(shard: tuple[list, int], n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """A worker's rows as one (rows, n_features) float32 matrix and float32 labels, filled one
    block at a time so the process never holds more than its shard plus one block."""
    rows = shard[1]
    X = np.empty((rows, n_features), dtype=np.float32)
    y = np.empty(rows, dtype=np.float32)
    at = 0
    for xb, yb in iter_batches(shard, n_features):
        X[at : at + len(xb)], y[at : at + len(xb)] = xb, yb
        at += len(xb)
    if at != rows:
        raise RuntimeError(f"shard holds {at} rows, expected {rows}")
    return X, y


def gather_rows(values: list[float]) -> list[list[float]]:
    """Each worker's row of numbers, gathered on every worker with the allreduce."""
    ctx = session.get_context()
    rows = np.zeros((ctx.get_world_size(), len(values)))
    rows[ctx.get_world_rank()] = values
    return allreduce(rows.ravel()).reshape(rows.shape).tolist()


def node_ids() -> list[str]:
    """Node id of every worker, in rank order."""
    import ray

    raw = ray.get_runtime_context().get_node_id().encode()[:64]
    rows = gather_rows(list(raw) + [0] * (64 - len(raw)))
    return [bytes(int(b) for b in row if b).decode() for row in rows]


# How a search trial's loop reports each epoch's or round's validation loss to Ray Tune: "direct"
# (the loop runs in the trial's own process and calls Tune), "train" (the loop runs on Ray Train
# workers, reports to Ray Train every epoch or round, and TuneReportCallback forwards rank 0's).
TUNE_DIRECT, TUNE_VIA_TRAIN = "direct", "train"


def tune_report(config: dict[str, Any], step: int, valid_loss: float) -> None:
    """An epoch's or round's validation loss to Ray Tune, for a search trial whose loop runs in the
    trial's own process (its scheduler stops the trials that trail)."""
    if config.get("tune_report") == TUNE_DIRECT:
        import ray.tune

        ray.tune.report({"valid_loss": float(valid_loss), "step": step})


def past_deadline(config: dict[str, Any]) -> bool:
    """Whether an in-process search trial's loop has reached its search's deadline (a wall-clock
    time): it stops there and keeps its best epoch or round so far. Only a loop in one process
    checks the clock; ranks on Ray Train workers must all stop at the same step."""
    deadline = config.get("deadline")
    return deadline is not None and time.time() >= deadline


def quiet_report_log() -> None:
    """Silence Ray Train's per-report INFO line (the whole checkpoint repr, every report, every worker)."""
    import logging

    # That logger is named by file path, so RunConfig's LoggingConfig, which filters only "ray.train.*"
    # records, does not reach it.
    logger = train_context_logger()
    if logger is not None:  # a Ray version without it has its own logging
        logger.setLevel(logging.WARNING)


def _status_mb(field: str) -> float:
    """One memory figure of this process from /proc/self/status, in MB (0 where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class MemoryProbe:
    """Peak private memory (RssAnon, sampled every 20 ms) of this worker while it trains.

    Private memory is what the process itself holds: the object-store pages its shard was read
    from are shared memory, counted once for the node, and show up in VmHWM (also reported).
    """

    def __init__(self) -> None:
        import threading

        self.start_mb = _status_mb("RssAnon")
        self.peak_mb = self.start_mb
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_mb = max(self.peak_mb, _status_mb("RssAnon"))

    def stop(self) -> list[float]:
        """[private MB at start, peak private MB, peak RSS (VmHWM) MB]."""
        self._stop.set()
        self._thread.join()
        return [self.start_mb, max(self.peak_mb, _status_mb("RssAnon")), _status_mb("VmHWM")]
