"""Smoothed target encoding of a categorical column, for the linear model (`encoding: target`).

Each category's mean target (the probability of label 1, each class's share, or the mean fitted
regression target), shrunk towards the train split's mean with weight `target_smoothing`:
(sum + m * prior) / (count + m). A frequency code cannot tell a linear model which of a thousand
merchants is risky; this can. Fitted on the train split's labels, so the train split itself is
encoded out of fold: each row gets the means of the other folds (the row's own label never reaches
its own input), while validation, test, batch scoring and serving get the means of every row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ray_pipeline.data.values import clean_text

FOLDS = 5
_FOLD_KEY = "target-enc-folds"  # 16 bytes: the hash key that places a row in its fold


def row_folds(batch: pa.Table, folds: int = FOLDS) -> np.ndarray:
    """Each row's fold, from its content: the same row is in the same fold in every pass."""
    h = pd.util.hash_pandas_object(batch.to_pandas(), index=False, hash_key=_FOLD_KEY).to_numpy(np.uint64)
    return (h % np.uint64(folds)).astype(np.int64)


def label_matrix(y: np.ndarray, task: str, classes: int, log1p: bool) -> np.ndarray:
    """What is averaged per category: (n, 1) for binary and regression, (n, K) class indicators."""
    if task == "multiclass":
        return (y.astype(np.int64)[:, None] == np.arange(classes)[None, :]).astype(np.float64)
    y = y.astype(np.float64)
    return (np.log1p(y) if log1p else y)[:, None]


def target_partial(arr: pa.Array | pa.ChunkedArray, Y: np.ndarray, folds: np.ndarray) -> dict[str, Any]:
    """Per category (read as ingest reads it) and fold: the row count and the sum of `Y`; the block's
    own total (for the prior)."""
    codes, values = pd.factorize(np.asarray(clean_text(arr).to_pylist(), dtype=object))  # missing: -1
    present = codes >= 0
    cells = codes[present] * FOLDS + folds[present]  # one bin per (category, fold): one pass over the rows
    size = len(values) * FOLDS
    counts = np.bincount(cells, minlength=size).reshape(len(values), FOLDS)
    sums = np.stack([np.bincount(cells, weights=Y[present, j], minlength=size) for j in range(Y.shape[1])], axis=-1)
    sums = sums.reshape(len(values), FOLDS, Y.shape[1])
    out = {str(v): [counts[i].tolist(), sums[i].tolist()] for i, v in enumerate(values)}
    return {"categories": out, "rows": int(len(Y)), "sum": Y.sum(axis=0).tolist()}


def merge_target(parts: list[dict[str, Any]], keep: list[str], smoothing: float) -> dict[str, Any]:
    """The column's encodings from the block partials: the prior, the smoothed mean of each kept
    category over every train row, and per fold over the other folds' rows (FOLDS, categories, k)."""
    rows = sum(p["rows"] for p in parts)
    k = len(parts[0]["sum"]) if parts else 1
    prior = np.sum([p["sum"] for p in parts], axis=0) / max(rows, 1) if parts else np.zeros(k)
    counts = np.zeros((len(keep), FOLDS))
    sums = np.zeros((len(keep), FOLDS, k))
    index = {c: i for i, c in enumerate(keep)}
    for p in parts:
        for value, (c, s) in p["categories"].items():
            if value in index:
                counts[index[value]] += c
                sums[index[value]] += np.asarray(s, dtype=np.float64)
    m = smoothing
    full = (sums.sum(axis=1) + m * prior) / (counts.sum(axis=1) + m)[:, None]
    other_counts = counts.sum(axis=1, keepdims=True) - counts  # (categories, folds)
    other_sums = sums.sum(axis=1, keepdims=True) - sums  # (categories, folds, k)
    oof = (other_sums + m * prior) / (other_counts + m)[:, :, None]
    return {"prior": prior.tolist(), "targets": {c: full[i].tolist() for i, c in enumerate(keep)},
            "oof": np.transpose(oof, (1, 0, 2))}  # fmt: skip


def target_columns(text: pa.Array, targets: dict[str, list[float]], prior: list[float],
                   oof: np.ndarray | None = None, folds: np.ndarray | None = None) -> list[np.ndarray]:  # fmt: skip
    """The encoded columns (k of them) for cleaned category text: each category's smoothed mean, the
    prior for a missing or unseen one; with `oof` and each row's fold, the other folds' means."""
    keys = pa.array(list(targets), pa.string())
    idx = np.asarray(pc.index_in(text, value_set=keys).fill_null(-1).to_numpy(), dtype=np.int64)
    prior_row = np.asarray(prior, dtype=np.float64)
    if oof is not None and folds is not None and len(targets):
        found = oof[folds, np.maximum(idx, 0)]  # (n, k)
    elif len(targets):
        found = np.asarray(list(targets.values()), dtype=np.float64)[np.maximum(idx, 0)]
    else:
        found = np.broadcast_to(prior_row, (len(idx), len(prior_row)))
    values = np.where((idx >= 0)[:, None], found, prior_row[None, :])
    return [values[:, j] for j in range(values.shape[1])]
