"""Why a model scores what it scores, in the user's own column names.

Per row: each input's contribution to the margin (the log-odds for binary, the predicted class's
logit for multiclass, the fitted target for regression), from XGBoost's TreeSHAP or the linear
model's weight x transformed input; the entries of one raw column (its one-hot values, its missing
indicator) are summed into that column. The contributions plus the bias equal the margin exactly.

Per version: the mean |contribution| of each column over the test split (one Ray Data pass) and,
for XGBoost, the strongest pairwise interactions on a sample of it; stored as importance.json
with the model, so the registry's checksum covers it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ray_pipeline.features.spec import FeatureSpec

IMPORTANCE_FILE = "importance.json"
# TreeSHAP interactions cost about d times the contributions per row, and a thousand rows made them
# the slowest step of an XGBoost training run: a few hundred rank the top pairs just as well.
INTERACTION_ROWS = 300
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


def _batch_sums(batch: dict[str, np.ndarray], model: Any, spec: FeatureSpec) -> dict[str, np.ndarray]:
    contribs, _ = explained_output(model, np.asarray(batch["x"]))
    _, values, _ = by_column(contribs, spec)
    return {"abs_sum": np.abs(values).sum(axis=0, keepdims=True), "rows": np.array([len(values)])}


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


def global_importance(model: Any, spec: FeatureSpec, ds) -> dict[str, Any]:
    """Mean |contribution| per raw column over a prepared split (a Ray Dataset with column `x`),
    ranked; the top interactions for XGBoost."""
    sums = ds.map_batches(_batch_sums, fn_kwargs={"model": model, "spec": spec}, batch_format="numpy",
                          batch_size=8192).take_all()  # fmt: skip
    columns, _ = column_matrix(spec)
    total = np.zeros(len(columns))
    rows = 0
    for part in sums:
        total += np.asarray(part["abs_sum"], dtype=np.float64)
        rows += int(part["rows"])
    mean = total / max(rows, 1)
    ranked = sorted(zip(columns, mean.tolist()), key=lambda c: -c[1])
    out: dict[str, Any] = {
        "explained": "the predicted class's logit" if spec.task == "multiclass"
        else "the fitted target" if spec.task == "regression" else "the log-odds",  # fmt: skip
        "rows": rows,
        "importance": [{"column": c, "mean_abs": v} for c, v in ranked],
        "interactions": [],
    }
    if hasattr(model, "interactions") and rows:
        sample = ds.limit(INTERACTION_ROWS).take_batch(INTERACTION_ROWS, batch_format="numpy")
        out["interactions"] = _interactions(model, spec, np.asarray(sample["x"]))
    return out


def save_importance(run_dir: str, model: Any, spec: FeatureSpec, ds) -> None:
    """Compute `global_importance` over `ds` and write it as the run directory's importance.json."""
    import json

    from ray_pipeline.storage import join, write_bytes

    write_bytes(join(run_dir, IMPORTANCE_FILE), json.dumps(global_importance(model, spec, ds), indent=2).encode())
