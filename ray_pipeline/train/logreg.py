"""Logistic regression (binary cross-entropy) by data-parallel gradient descent on Ray Train.

Every worker holds its shard as numpy and computes the loss and gradient sums of its rows; an
allreduce (XGBoost's collective, set up by Ray Train's XGBoostConfig backend) sums them, so all
workers apply the same update theta <- theta - alpha * grad L and stay identical. Full-batch
gradient descent therefore gives the same weights for any number of workers (up to the order
of floating-point sums).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

STATE_JSON, STATE_NPZ = "state.json", "arrays.npz"


def allreduce(values: np.ndarray, op: str = "sum") -> np.ndarray:
    """Sum (or max) across Ray Train workers; the identity outside a distributed run."""
    import xgboost.collective as coll

    if not coll.is_distributed():
        return values
    return coll.allreduce(np.ascontiguousarray(values, dtype=np.float64), coll.Op.SUM if op == "sum" else coll.Op.MAX)


def loss_and_grad(
    X: np.ndarray, y: np.ndarray, w: np.ndarray, theta: np.ndarray, bias: float
) -> tuple[np.ndarray, float, float, float]:
    """Sums over these rows: gradient wrt theta and bias, weighted BCE loss, total weight."""
    z = X @ theta + bias
    p = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid without overflow
    loss = w * (np.logaddexp(0.0, z) - y * z)  # -[y log p + (1-y) log(1-p)], stable
    g = w * (p - y)
    return X.T @ g, float(g.sum()), float(loss.sum()), float(w.sum())


def learning_rate(base: float, schedule: str, epoch: int, epochs: int) -> float:
    """Step size for `epoch` under the configured schedule."""
    if schedule == "inverse_time":
        return base / (1.0 + 0.1 * epoch)
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))
    return base


def sample_weights(y: np.ndarray, class_weight: Any, global_pos: float, global_n: float) -> np.ndarray:
    """Per-row weights from the class-weight setting (balanced uses global class counts)."""
    if class_weight is None:
        return np.ones_like(y)
    if class_weight == "balanced":
        w1 = global_n / (2.0 * max(global_pos, 1.0))
        w0 = global_n / (2.0 * max(global_n - global_pos, 1.0))
    else:
        w0, w1 = float(class_weight.get(0, 1.0)), float(class_weight.get(1, 1.0))
    return np.where(y > 0.5, w1, w0)


@dataclass
class _State:
    epoch: int
    theta: np.ndarray
    bias: float
    velocity: np.ndarray
    m: np.ndarray
    v: np.ndarray
    step: int
    best_loss: float
    best_theta: np.ndarray
    best_bias: float
    best_epoch: int
    stale: int
    history: list[dict[str, float]]
    resumed_from: int | None = None

    @classmethod
    def fresh(cls, d: int) -> "_State":
        zeros = np.zeros(d + 1)
        return cls(
            0, np.zeros(d), 0.0, zeros.copy(), zeros.copy(), zeros.copy(), 0, math.inf, np.zeros(d), 0.0, 0, 0, []
        )

    def save(self, directory: str) -> None:
        np.savez(
            os.path.join(directory, STATE_NPZ),
            theta=self.theta, velocity=self.velocity, m=self.m, v=self.v, best_theta=self.best_theta,
        )  # fmt: skip
        meta = {k: getattr(self, k) for k in ("epoch", "bias", "step", "best_loss", "best_bias", "best_epoch", "stale")}
        meta["history"] = self.history
        Path(directory, STATE_JSON).write_text(json.dumps(meta))

    @classmethod
    def load(cls, directory: str) -> "_State":
        arrays = np.load(os.path.join(directory, STATE_NPZ), allow_pickle=False)
        meta = json.loads(Path(directory, STATE_JSON).read_text())
        return cls(
            epoch=meta["epoch"], theta=arrays["theta"], bias=meta["bias"], velocity=arrays["velocity"],
            m=arrays["m"], v=arrays["v"], step=meta["step"], best_loss=meta["best_loss"],
            best_theta=arrays["best_theta"], best_bias=meta["best_bias"], best_epoch=meta["best_epoch"],
            stale=meta["stale"], history=meta["history"], resumed_from=meta["epoch"],
        )  # fmt: skip


def _apply(state: _State, grad: np.ndarray, lr: float, cfg: dict[str, Any]) -> None:
    """One optimizer update with the globally summed gradient (theta and bias packed together)."""
    params = np.append(state.theta, state.bias)
    if cfg["optimizer"] == "gd":
        params -= lr * grad
    elif cfg["optimizer"] == "sgd":
        state.velocity = cfg["momentum"] * state.velocity + grad
        params -= lr * state.velocity
    else:  # adam
        state.step += 1
        b1, b2, eps = 0.9, 0.999, 1e-8
        state.m = b1 * state.m + (1 - b1) * grad
        state.v = b2 * state.v + (1 - b2) * grad * grad
        m_hat = state.m / (1 - b1**state.step)
        v_hat = state.v / (1 - b2**state.step)
        params -= lr * m_hat / (np.sqrt(v_hat) + eps)
    state.theta, state.bias = params[:-1], float(params[-1])


def _global_step(X, y, w, state: _State, l2: float) -> tuple[np.ndarray, float]:
    """Allreduced gradient of the penalised mean loss, and that loss, at the current parameters."""
    gw, gb, loss, weight = loss_and_grad(X, y, w, state.theta, state.bias)
    total = allreduce(np.concatenate([gw, [gb, loss, weight]]))
    weight = max(total[-1], 1e-300)
    grad = total[:-2] / weight
    grad[:-1] += l2 * state.theta
    mean_loss = total[-2] / weight + 0.5 * l2 * float(state.theta @ state.theta)
    return grad, mean_loss


def _valid_loss(X, y, w, state: _State) -> float:
    _, _, loss, weight = loss_and_grad(X, y, w, state.theta, state.bias)
    total = allreduce(np.array([loss, weight]))
    return float(total[0] / max(total[1], 1e-300))


def train_loop(config: dict[str, Any]) -> dict[str, Any] | None:
    """Ray Train worker loop; rank 0 returns the best weights and the loss history."""
    import ray.train

    from ray_pipeline.progress import Reporter
    from ray_pipeline.train.data import shard_arrays

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    d = config["n_features"]
    X, y = shard_arrays(ray.train.get_dataset_shard("train"))
    Xv, yv = shard_arrays(ray.train.get_dataset_shard("valid"))
    X, Xv = (a if a.size else np.empty((0, d)) for a in (X, Xv))
    counts = allreduce(np.array([y.sum(), len(y)]))
    w = sample_weights(y, config["class_weight"], counts[0], counts[1])
    wv = sample_weights(yv, config["class_weight"], counts[0], counts[1])

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = _State.load(directory)
    else:
        state = _State.fresh(d)

    epochs, l2 = config["epochs"], config["l2"]
    local_batch = max(1, config["batch_size"] // ctx.get_world_size())
    steps = int(allreduce(np.array([math.ceil(len(y) / local_batch)]), op="max")[0])
    stop = False
    loop_started = time.perf_counter()
    progress = Reporter(config.get("progress_key") if rank == 0 else None)
    for epoch in range(state.epoch, epochs):
        fail = config.get("fail_at_epoch")
        if fail is not None and epoch == fail and rank == ctx.get_world_size() - 1:
            marker = Path(config["fail_marker"])
            if not marker.exists():  # fail once, like a lost node; the restarted group must resume
                marker.write_text(f"killed rank {rank} at epoch {epoch}\n")
                os._exit(1)
        lr = learning_rate(config["learning_rate"], config["lr_schedule"], epoch, epochs)
        if config["optimizer"] == "gd":
            grad, train_loss = _global_step(X, y, w, state, l2)
            _apply(state, grad, lr, config)
        else:
            order = np.random.default_rng([config["seed"], epoch, rank]).permutation(len(y))
            losses = []
            for s in range(steps):
                idx = order[s * local_batch : (s + 1) * local_batch]
                grad, batch_loss = _global_step(X[idx], y[idx], w[idx], state, l2)
                _apply(state, grad, lr, config)
                losses.append(batch_loss)
            train_loss = float(np.mean(losses)) if losses else math.nan
        valid_loss = _valid_loss(Xv, yv, wv, state)
        state.epoch = epoch + 1
        state.history.append({"epoch": epoch + 1, "train_loss": train_loss, "valid_loss": valid_loss, "lr": lr})
        if valid_loss < state.best_loss - config["tol"]:
            state.best_loss, state.best_theta, state.best_bias = valid_loss, state.theta.copy(), state.bias
            state.best_epoch, state.stale = epoch + 1, 0
        else:
            state.stale += 1
            stop = state.stale >= config["patience"]
        progress(epoch + 1, epochs, force=stop or epoch == epochs - 1)
        if rank == 0 and (epoch % config["log_every"] == 0 or stop or epoch == epochs - 1):
            print(f"epoch {epoch + 1:4d}  train_loss {train_loss:.6f}  valid_loss {valid_loss:.6f}  lr {lr:.4g}")
        if (epoch + 1) % config["checkpoint_every"] == 0 or stop or epoch == epochs - 1:
            metrics = {"epoch": epoch + 1, "train_loss": train_loss, "valid_loss": valid_loss}
            if rank == 0:
                with tempfile.TemporaryDirectory() as tmp:
                    state.save(tmp)
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report(metrics)
        if stop:
            break
    if rank != 0:
        return None
    return {
        "theta": state.best_theta.tolist(),
        "bias": state.best_bias,
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "history": state.history,
        "resumed_from": state.resumed_from,
        "loop_s": time.perf_counter() - loop_started,
    }
