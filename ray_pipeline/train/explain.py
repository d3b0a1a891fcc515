"""Why a model scores what it scores, in the user's own column names.

Per row: each input's contribution to the margin (the log-odds for binary, the predicted class's
logit for multiclass, the fitted target for regression), from XGBoost's TreeSHAP or the linear
model's weight x transformed input; the entries of one raw column (its one-hot values, its missing
indicator) are summed into that column. The contributions plus the bias equal the margin exactly.

Per version: the mean |contribution| of each column over the test split and, for XGBoost, the
strongest pairwise interactions on a sample of it; stored as importance.json with the model, so
the registry's checksum covers it. A training run gives it a time budget (a share of its fit time):
the rows explained are as many as fit in it, counted in the file (`rows` of `of_rows`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ray_pipeline.features.spec import FeatureSpec
from ray_pipeline.storage import join, write_bytes

IMPORTANCE_FILE = "importance.json"
# TreeSHAP interactions cost about d times the contributions per row, and a thousand rows made them
# the slowest step of an XGBoost training run: a few hundred rank the top pairs just as well.
INTERACTION_ROWS = 250
INTERACTION_PROBE = 10  # rows whose interactions time the rest
PROBE_ROWS = 256  # rows whose contributions time the rest (and the least a budget explains)
CONTRIBUTION_SHARE = 0.6  # of a budget; interactions get the rest (fetching rows is not counted)
TOP_INTERACTIONS = 5


def column_matrix(spec: FeatureSpec) -> tuple[list[str], np.ndarray]:
    """The raw columns in input order and the 0/1 matrix (entries x columns) that sums a feature
    vector's entries into them."""
    sources = spec.sources
    columns = list(dict.fromkeys(sources))
    agg = np.zeros((len(sources), len(columns)))
    for i, name in enumerate(sources):
        agg[i, columns.index(name)] = 1.0
    return columns, agg


def explained_output(model: Any, X: np.ndarray, method: str = "treeshap") -> tuple[np.ndarray, np.ndarray | None]:
    """Per row the contributions (n, d+1) of the output being explained, and for multiclass the
    class index explained (the predicted one). `method` saabas: XGBoost's path attribution."""
    contribs = model.contributions(X, approximate=True) if method == "saabas" and hasattr(model, "booster") \
        else model.contributions(X)  # fmt: skip
    if contribs.ndim == 3:  # multiclass: the predicted class's logit
        k = contribs.sum(axis=2).argmax(axis=1)
        return contribs[np.arange(len(k)), k], k
    return contribs, None


def by_column(contribs: np.ndarray, spec: FeatureSpec) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Contributions (n, d+1) summed per raw column: (columns, (n, m) values, (n,) bias)."""
    columns, agg = column_matrix(spec)
    return columns, contribs[:, :-1] @ agg, contribs[:, -1]


def explain_rows(model: Any, spec: FeatureSpec, X: np.ndarray, top_k: int,
                 method: str = "treeshap") -> list[dict[str, Any]]:  # fmt: skip
    """Per row: the margin, the bias, the `top_k` columns by |contribution| and the rest's sum
    (so bias + contributions + rest = margin), and the class explained for multiclass."""
    contribs, k = explained_output(model, X, method)
    columns, values, bias = by_column(contribs, spec)
    classes = spec.label.classes if spec.label is not None else None
    out = []
    for i in range(len(X)):
        order = np.argsort(-np.abs(values[i]), kind="stable")
        top = order[:top_k]
        row: dict[str, Any] = {
            "margin": float(bias[i] + values[i].sum()),
            "bias": float(bias[i]),
            "contributions": [{"column": columns[j], "value": float(values[i, j])} for j in top],
            "rest": float(values[i, order[top_k:]].sum()),
        }
        if k is not None:
            row["class"] = classes[int(k[i])] if classes else int(k[i])
        out.append(row)
    return out


def _interactions(model: Any, spec: FeatureSpec, X: np.ndarray) -> list[dict[str, Any]]:
    """The strongest pairs of raw columns by mean |SHAP interaction| on `X` (XGBoost only)."""
    inter = model.interactions(X)
    if inter.ndim == 4:  # multiclass: averaged over the classes' logits
        inter = np.abs(inter).mean(axis=1)
    columns, agg = column_matrix(spec)
    mean = np.abs(inter[:, :-1, :-1]).mean(axis=0)
    pairs = agg.T @ mean @ agg  # entries -> columns on both sides
    found = [(float(pairs[a, b] + pairs[b, a]), columns[a], columns[b])
             for a in range(len(columns)) for b in range(a + 1, len(columns))]  # fmt: skip
    found.sort(reverse=True)
    return [{"columns": [a, b], "mean_abs": v} for v, a, b in found[:TOP_INTERACTIONS] if v > 0]


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - started


def global_importance(model: Any, spec: FeatureSpec, ds, budget_s: float | None = None) -> dict[str, Any]:
    """Mean |contribution| per raw column over a prepared split (a Ray Dataset with column `x`),
    ranked; the top interactions for XGBoost. With `budget_s`, on as many rows as fit in it (at
    least PROBE_ROWS): a probe's cost per row sets the sample; interactions get what is left."""
    columns, _ = column_matrix(spec)
    started = time.perf_counter()
    total_rows = ds.count()
    X = np.asarray(ds.limit(PROBE_ROWS).take_batch(PROBE_ROWS, batch_format="numpy")["x"]) \
        if total_rows else np.empty((0, len(spec.feature_names)))  # fmt: skip
    values, probe_s = _timed(lambda rows: by_column(explained_output(model, rows)[0], spec)[1], X)
    want = total_rows
    if budget_s is not None and len(X):
        want = min(total_rows, max(len(X), int(CONTRIBUTION_SHARE * budget_s * len(X) / max(probe_s, 1e-9))))
    sums, rows = np.abs(values).sum(axis=0), len(X)
    if want > len(X):  # the sample, a batch at a time (the probe's rows among them: counted once)
        sums, rows = np.zeros(len(columns)), 0
        for batch in ds.limit(want).iter_batches(batch_size=8192, batch_format="numpy"):
            part = by_column(explained_output(model, np.asarray(batch["x"]))[0], spec)[1]
            sums, rows = sums + np.abs(part).sum(axis=0), rows + len(part)
    mean = sums / max(rows, 1)
    ranked = sorted(zip(columns, np.ravel(mean).tolist()), key=lambda c: -c[1])
    out: dict[str, Any] = {
        "explained": "the predicted class's logit" if spec.task == "multiclass"
        else "the fitted target" if spec.task == "regression" else "the log-odds",  # fmt: skip
        "rows": rows,
        "of_rows": total_rows,
        "importance": [{"column": c, "mean_abs": v} for c, v in ranked],
        "interactions": [],
    }
    if hasattr(model, "interactions") and len(X):
        n = min(INTERACTION_ROWS, len(X))  # INTERACTION_ROWS <= PROBE_ROWS: the probe's rows
        if budget_s is not None:  # their cost per row from a few rows, in the rest of the budget
            _, probe_s = _timed(model.interactions, X[:INTERACTION_PROBE])
            n = min(n, int((1 - CONTRIBUTION_SHARE) * budget_s * INTERACTION_PROBE / max(probe_s, 1e-9)))
        if n >= INTERACTION_PROBE:  # fewer rows would rank pairs by noise: none then
            out["interactions"] = _interactions(model, spec, X[:n])
            out["interaction_rows"] = n
    out["seconds"] = round(time.perf_counter() - started, 3)
    return out


def save_importance(run_dir: str, model: Any, spec: FeatureSpec, ds, budget_s: float | None = None) -> dict[str, Any]:
    """Compute `global_importance` over `ds` (within `budget_s`) and write it as the run directory's
    importance.json; returns it."""
    import json

    found = global_importance(model, spec, ds, budget_s)
    write_bytes(join(run_dir, IMPORTANCE_FILE), json.dumps(found, indent=2).encode())
    return found
