"""The linear model's objective over a worker's shard, and its global value by one allreduce.

Three tasks share the packing: binary cross-entropy (the seed's, tuned below), softmax
cross-entropy for multiclass and squared error for regression (`shard_sums_task`). Parameters are
one flat vector, the (d + 1, K) matrix of weights with the bias as its last row, row by row (K = 1
for binary and regression, so the binary layout is (theta..., bias) as it always was).

One fused pass per evaluation: the shard is read in place (float32 on Train workers, never copied
whole) in cache-sized row chunks, and each chunk yields its share of the loss, the gradient and,
for Newton, the Hessian. The sums travel in a single float64 vector through one allreduce, so
every worker gets bit-identical totals and takes the same optimizer step.

Two precisions for the per-row arithmetic (the sums are float64 in both):
- float64 for Newton and L-BFGS: their line searches compare losses of nearby points, which needs
  the loss smooth to far below float32's 1e-7;
- float32 for the first-order optimizers (gd, sgd, adam), which only follow the gradient: the
  chunk is used as it is (no float64 copy), and float32 matrix products and exp/log1p are
  faster, for a gradient within 2e-7 of the float64 one (pass times in docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ray_pipeline.train.collective import allreduce

ClassWeights = tuple[float, ...]  # weight of a row per label class (binary: 0, 1; regression: one)


def _weight(y: np.ndarray, w: ClassWeights) -> float:
    if len(w) == 1:
        return w[0] * len(y)
    if len(w) == 2:
        positives = float(np.count_nonzero(y > 0.5))
        return w[0] * (len(y) - positives) + w[1] * positives
    counts = np.bincount(y.astype(np.int64), minlength=len(w))[: len(w)]
    return float(counts @ np.asarray(w, dtype=np.float64))


def outputs_of(task: str, w: ClassWeights) -> int:
    """Columns of the weight matrix: one per class for multiclass, else one."""
    return len(w) if task == "multiclass" else 1


# Bytes per feature column of a chunk: 8k rows in float64, 16k in float32. A chunk of tens of
# features stays in cache from the forward product (X @ theta) to the backward one (X.T @ r);
# smaller chunks pay per-call overhead, larger ones fall out of cache (docs/benchmarks.md).
CHUNK_BYTES = 65536


def shard_sums(
    X: np.ndarray,
    y: np.ndarray,
    w: ClassWeights,
    params: np.ndarray,
    hessian: bool = False,
    gradient: bool = True,
    dtype: type = np.float64,
) -> np.ndarray:
    """Sums over these rows, packed: gradient wrt (theta, bias) (zeros unless `gradient`), Hessian
    (if asked), BCE loss, weight. Per-row arithmetic in `dtype`, sums in float64. Rows weigh
    `w[label]`; the weights of a chunk only ever exist for that chunk (a per-row array would add
    half a float32 shard at 18 features), and not at all when both are 1."""
    d = X.shape[1]
    dt = np.dtype(dtype)
    theta, bias = params[:-1].astype(dt), dt.type(params[-1])
    weighted = tuple(w) != (1.0, 1.0)
    grad = np.zeros(d + 1)
    hess = np.zeros((d + 1, d + 1)) if hessian else None
    loss = 0.0
    rows = CHUNK_BYTES // dt.itemsize
    for s in range(0, len(y), rows):
        Xc = X[s : s + rows].astype(dt, copy=False)  # a view when the shard is already in dt
        yc = y[s : s + rows].astype(dt, copy=False)
        wc = np.where(yc > 0.5, dt.type(w[1]), dt.type(w[0])) if weighted else None
        z = Xc @ theta
        z += bias
        # One exp per row serves both the loss and the probability, without overflow:
        # BCE = softplus(z) - y z = max(z, 0) + log1p(e^-|z|) - y z, and max(z, 0) = (z + |z|) / 2.
        a = np.abs(z)
        e = np.exp(-a)
        term = z + a
        term *= 0.5
        term += np.log1p(e)
        term -= yc * z
        if wc is not None:
            term *= wc
        loss += float(np.add.reduce(term, dtype=np.float64))
        if not gradient:
            continue
        # sigmoid(z) = q = 1 / (1 + e) for z >= 0, else 1 - q: as q >= 0.5, p = 0.5 + sign(z) (q - 0.5),
        # exact up to half an ulp of 0.5 (np.where(z >= 0, q, e q) made the whole pass 35% slower).
        q = 1 / (1 + e)
        q -= 0.5
        p = np.copysign(q, z)
        p += 0.5
        r = p - yc
        if wc is not None:
            r *= wc
        grad[:-1] += Xc.T @ r
        grad[-1] += float(np.add.reduce(r, dtype=np.float64))
        if hess is not None:
            c = p * (1 - p)
            if wc is not None:
                c *= wc
            Xw = Xc * c[:, None]
            hess[:-1, :-1] += Xc.T @ Xw
            hess[:-1, -1] += Xw.sum(axis=0, dtype=np.float64)
            hess[-1, -1] += float(np.add.reduce(c, dtype=np.float64))
    if hess is not None:
        hess[-1, :-1] = hess[:-1, -1]  # the bias column was summed once; mirror it
    parts = [grad] + ([hess.ravel()] if hess is not None else []) + [np.array([loss, _weight(y, w)])]
    return np.concatenate(parts)


def shard_sums_task(
    task: str,
    X: np.ndarray,
    y: np.ndarray,
    w: ClassWeights,
    params: np.ndarray,
    hessian: bool = False,
    gradient: bool = True,
    dtype: type = np.float64,
) -> np.ndarray:
    """`shard_sums` for any task, same packing: gradient ((d + 1) K), Hessian (if asked), loss, weight.
    multiclass: softmax cross-entropy, rows weigh `w[class]`; regression: half the squared error."""
    if task == "binary":
        return shard_sums(X, y, w, params, hessian, gradient, dtype)
    d = X.shape[1]
    k = outputs_of(task, w)
    dt = np.dtype(dtype)
    W = params.reshape(d + 1, k).astype(dt)
    grad = np.zeros((d + 1, k))
    size = (d + 1) * k
    hess = np.zeros((d + 1, k, d + 1, k)) if hessian else None
    loss = 0.0
    rows = max(1, CHUNK_BYTES // dt.itemsize // max(k, 1))
    wv = np.asarray(w, dtype=dt)
    for s in range(0, len(y), rows):
        Xc = X[s : s + rows].astype(dt, copy=False)
        yc = y[s : s + rows]
        Z = Xc @ W[:-1]
        Z += W[-1]
        if task == "multiclass":
            cls = yc.astype(np.int64)
            top = Z.max(axis=1, keepdims=True)
            E = np.exp(Z - top)
            total = E.sum(axis=1, keepdims=True)
            at = np.arange(len(cls))
            term = (np.log(total[:, 0]) + top[:, 0]) - Z[at, cls]
            wc = wv[cls]
            term *= wc
            loss += float(np.add.reduce(term, dtype=np.float64))
            if not gradient:
                continue
            P = E / total
            R = P.copy()
            R[at, cls] -= 1
            R *= wc[:, None]
        else:  # regression: 0.5 (z - y)^2
            R = Z - yc.astype(dt, copy=False)[:, None]
            loss += 0.5 * float(np.add.reduce((R * R).ravel(), dtype=np.float64))
            if not gradient:
                continue
        grad[:-1] += Xc.T @ R
        grad[-1] += R.sum(axis=0, dtype=np.float64)
        if hess is not None:
            Xa = np.hstack([Xc.astype(np.float64), np.ones((len(Xc), 1))])
            if task == "multiclass":
                for a in range(k):
                    for b in range(k):
                        c = P[:, a] * ((a == b) - P[:, b]) * wc
                        hess[:, a, :, b] += Xa.T @ (Xa * c[:, None])
            else:
                hess[:, 0, :, 0] += Xa.T @ Xa
    parts = [grad.ravel()] + ([hess.reshape(size, size).ravel()] if hess is not None else [])
    return np.concatenate(parts + [np.array([loss, _weight(y, w)])])


Rows = tuple[np.ndarray, np.ndarray, ClassWeights]  # X, y, class weights


@dataclass
class Evaluation:
    """The objective at `params`: penalised mean train loss, its gradient (and Hessian), and the
    unpenalised mean validation loss. The optimizers step from one Evaluation to the next."""

    params: np.ndarray
    loss: float
    grad: np.ndarray
    hess: np.ndarray | None
    valid_loss: float


Objective = Callable[..., Evaluation]


def global_objective(train: Rows, valid: Rows, l2: float, dtype: type = np.float64, task: str = "binary") -> Objective:
    """f(params, hessian=False) -> Evaluation over all workers, with one allreduce: the train
    sums and the validation loss travel together. Per-row arithmetic in `dtype`."""
    k = outputs_of(task, train[2])
    size = (train[0].shape[1] + 1) * k
    bias = size - k  # the last k entries are the bias row

    def f(params: np.ndarray, hessian: bool = False) -> Evaluation:
        sums = np.concatenate([shard_sums_task(task, *train, params, hessian, dtype=dtype),
                               shard_sums_task(task, *valid, params, gradient=False, dtype=dtype)[-2:]])  # fmt: skip
        total = allreduce(sums)
        weight = max(total[-3], 1e-300)
        theta = params[:bias]
        grad = total[:size] / weight
        grad[:bias] += l2 * theta  # bias not penalised
        loss = total[-4] / weight + 0.5 * l2 * float(theta @ theta)
        hess = None
        if hessian:
            hess = total[size : size + size**2].reshape(size, size) / weight
            hess[:bias, :bias] += l2 * np.eye(bias)
        return Evaluation(params, loss, grad, hess, float(total[-2] / max(total[-1], 1e-300)))

    return f


def mean_loss(X: np.ndarray, y: np.ndarray, w: ClassWeights, params: np.ndarray, dtype: type = np.float64,
              task: str = "binary") -> float:  # fmt: skip
    """Unpenalised weighted mean loss over all workers' rows."""
    total = allreduce(shard_sums_task(task, X, y, w, params, gradient=False, dtype=dtype)[-2:])
    return float(total[0] / max(total[1], 1e-300))


def class_weights(class_weight: Any, global_pos: float, global_n: float) -> tuple[float, float]:
    """Weight of a row labelled 0 and of one labelled 1 (balanced uses global class counts)."""
    if class_weight is None:
        return 1.0, 1.0
    if class_weight == "balanced":
        return global_n / (2.0 * max(global_n - global_pos, 1.0)), global_n / (2.0 * max(global_pos, 1.0))
    return float(class_weight.get(0, 1.0)), float(class_weight.get(1, 1.0))


def task_weights(task: str, class_weight: Any, counts: np.ndarray) -> tuple[float, ...]:
    """Row weight per class from the global class counts: binary (w0, w1), multiclass one per
    class (balanced: n / (K count)), regression (1,)."""
    if task == "regression":
        return (1.0,)
    if task == "binary":
        return class_weights(class_weight, float(counts[1]), float(counts.sum()))
    k = len(counts)
    if class_weight is None:
        return (1.0,) * k
    if class_weight == "balanced":
        n = float(counts.sum())
        return tuple(n / (k * max(float(c), 1.0)) for c in counts)
    return tuple(float(class_weight.get(i, 1.0)) for i in range(k))
