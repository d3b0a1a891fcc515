"""Reference profile of a model's inputs and scores, computed at training time and stored inside
the registered version (so its checksum manifest covers it).

Per numeric input: quantile-bin edges and the share of rows per bin, null rate, min, max, mean and
std; per categorical input: the top categories' shares plus "other", the null rate and the share of
values the model treats as unseen; the distribution of scores on the test split. Inputs are
profiled in one Ray Data pass: each block yields the column statistics the FeatureSpec fit uses
too (`features/colstats.py`: moments and a KLL sketch per numeric column, value counts per
categorical column); the driver merges those partials, never rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ray_pipeline.data.fold import fold_blocks
from ray_pipeline.errors import UserError
from ray_pipeline.features.colstats import categorical_partial, merge_categorical, merge_numeric, numeric_partial
from ray_pipeline.features.spec import FeatureSpec
from ray_pipeline.features.transform import as_float

PROFILE_FILE = "reference_profile.json"
PROFILE_VERSION = 1


def partial_profile(batch: pa.Table, numeric: list[str], categorical: list[str]) -> dict[str, Any]:
    """One block's mergeable profile (JSON-safe), for `fold_blocks`: the listed columns it holds."""
    names = set(batch.column_names)
    return {
        "rows": batch.num_rows,
        "numeric": {c: numeric_partial(as_float(batch[c], c)) for c in numeric if c in names},
        "categorical": {c: categorical_partial(batch[c]) for c in categorical if c in names},
    }


def _merge(parts: list[dict[str, Any]], numeric: list[str], categorical: list[str]) -> dict[str, Any]:
    """Partials merged per column, over the blocks that hold it."""
    return {
        "rows": sum(p["rows"] for p in parts),
        "numeric": {c: merge_numeric([p["numeric"][c] for p in parts if c in p["numeric"]]) for c in numeric},
        "categorical": {c: merge_categorical([p["categorical"][c] for p in parts if c in p["categorical"]])
                        for c in categorical},  # fmt: skip
    }


def _numeric_entry(m: dict[str, Any], bins: int) -> dict[str, Any]:
    n, nulls, sketch = m["n"], m["missing"], m["sketch"]
    total = n + nulls
    entry: dict[str, Any] = {"null_rate": nulls / total if total else 0.0, "count": n}
    if n == 0:
        return {**entry, "edges": [], "shares": [1.0], "min": None, "max": None, "mean": None, "std": None}
    edges = np.unique(sketch.get_quantiles([i / bins for i in range(1, bins)]))
    edges = edges[(edges > sketch.get_min_value()) | (edges == edges.min())]
    shares = np.asarray(sketch.get_pmf(edges.tolist()), dtype=np.float64)  # [-inf,e1), [e1,e2), ..., [ek,inf)
    return {**entry, "edges": edges.tolist(), "shares": (shares / shares.sum()).tolist(),
            "min": sketch.get_min_value(), "max": sketch.get_max_value(), "mean": m["mean"], "std": m["var"] ** 0.5,
            "rank_error": sketch.normalized_rank_error(True)}  # fmt: skip


def _categorical_entry(m: dict[str, Any], known: set[str], top_k: int) -> dict[str, Any]:
    counts, nulls = m["counts"], m["missing"]
    n = sum(counts.values())
    total = n + nulls
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    top = {k: v / n for k, v in ordered[:top_k]} if n else {}
    unseen = sum(v for k, v in counts.items() if k not in known)
    return {"null_rate": nulls / total if total else 0.0, "count": n, "top": top,
            "other": max(0.0, 1.0 - sum(top.values())) if n else 0.0,
            "unseen_rate": unseen / n if n else 0.0, "known": sorted(known)}  # fmt: skip


def score_entry(scores: np.ndarray, bins: int, classes: int | None = None) -> dict[str, Any]:
    """Quantile bins of the test split's scores (exact: they are on the driver already); with
    `classes`, the scores are predicted class indices and each class is its own bin (the drift of
    the predicted class shares)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return {"null_rate": 0.0, "count": 0, "edges": [], "shares": [1.0], "min": None, "max": None,
                "mean": None, "std": None}  # fmt: skip
    if classes is not None:
        edges = np.arange(classes - 1) + 0.5
    else:
        edges = np.unique(np.quantile(scores, [i / bins for i in range(1, bins)]))
    counts = np.bincount(np.searchsorted(edges, scores, side="right"), minlength=edges.size + 1)
    return {"null_rate": 0.0, "count": int(scores.size), "edges": edges.tolist(),
            "shares": (counts / counts.sum()).tolist(), "min": float(scores.min()), "max": float(scores.max()),
            "mean": float(scores.mean()), "std": float(scores.std())}  # fmt: skip


def build_profile(ds, spec: FeatureSpec, test_scores: np.ndarray, bins: int = 10, top_k: int = 20) -> dict[str, Any]:
    """The reference profile of `ds` (raw training rows) and the test split's scores."""
    return with_scores(input_profile(ds, spec, bins, top_k), test_scores)


def with_scores(inputs: dict[str, Any], test_scores: np.ndarray, classes: int | None = None) -> dict[str, Any]:
    """An input profile (shared by every model trained on the same split) plus one model's scores."""
    return {**inputs, "score": score_entry(test_scores, inputs["bins"], classes)}


def input_profile(ds, spec: FeatureSpec, bins: int = 10, top_k: int = 20, unlabeled: Any = None) -> dict[str, Any]:
    """The inputs' part of the profile: one Ray Data pass over `ds` (raw training rows) and, given,
    one over `unlabeled` (ingested rows without a label: the columns it holds describe them too)."""
    numeric = [c.name for c in spec.numeric]
    categorical = [c.name for c in spec.categorical]
    kwargs = {"numeric": numeric, "categorical": categorical}
    parts = fold_blocks(ds, partial_profile, list, kwargs)
    # unlabeled rows hold the schema's inputs only (not feature views'): each column merges the rows that have it
    more = fold_blocks(unlabeled, partial_profile, list, kwargs) if unlabeled is not None else []
    merged = _merge(parts + more, numeric, categorical)
    extra = sum(p["rows"] for p in more)
    merged["rows"] -= extra
    known = {c.name: set(c.frequencies) | set(c.onehot) for c in spec.categorical}
    return {
        "version": PROFILE_VERSION,
        "rows": merged["rows"],
        **({"unlabeled_rows": extra} if extra else {}),
        "bins": bins,
        "feature_spec_hash": spec.content_hash(),
        "numeric": {c: _numeric_entry(merged["numeric"][c], bins) for c in numeric},
        "categorical": {c: _categorical_entry(merged["categorical"][c], known[c], top_k) for c in categorical},
    }


def save_profile(profile: dict[str, Any], directory: str | Path) -> Path:
    """Write the profile into a run (or version) directory."""
    path = Path(directory) / PROFILE_FILE
    path.write_text(json.dumps(profile, indent=1) + "\n")
    return path


def load_profile(directory: str | Path) -> dict[str, Any]:
    """Read a version's profile; a clear error when the version predates profiles."""
    path = Path(directory) / PROFILE_FILE
    if not path.exists():
        raise FileNotFoundError(f"{directory}: no {PROFILE_FILE} (registered before monitoring existed?)")
    profile = json.loads(path.read_text())
    if profile.get("version") != PROFILE_VERSION:
        raise UserError(f"{path}: profile version {profile.get('version')} is not supported")
    return profile
