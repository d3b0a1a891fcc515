"""A search trial judged by k-fold cross-validation on a small table, not on one validation split.

On a table of a few thousand rows the validation split is a few hundred: a search that picks the
lowest of many trials on it picks the trial that fits those rows' noise best, and a longer search
does worse than a short one. Below `training.search.cv_max_rows` (train + valid rows of a random
split) each trial's settings are also fitted on k folds of train + valid, in the trial's process,
and the mean of the k held-out errors (log-loss, or `label.metric` in the label's units) is the
number the search compares. The trial's own run (trained on train, stopped early on valid) is what
it registers, as without folds. A split by time keeps its one validation split: it is the newest
rows, the ones that say how the model does next.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ray_pipeline.config.training import SearchConfig
from ray_pipeline.train import evaluate
from ray_pipeline.train.data import Prepared
from ray_pipeline.train.models import transform_target, untransform
from ray_pipeline.train.runner import TrainRun, model_from, run_direct
from ray_pipeline.train.worker import load_shard

# Loop settings a fold leaves out: where a trial reports, its bar, the run's own bookkeeping.
NOT_FOR_FOLDS = ("workers", "output", "tune_report", "progress_key", "deadline")


@dataclass
class Folds:
    """Train + valid rows of a split as the loops read them (columns x, y; y fitted as `transform`)
    and each row's fold."""

    rows: pa.Table
    fold: np.ndarray
    transform: str
    k: int

    def under(self, transform: str) -> "Folds":
        """The same folds with the label fitted as `transform`."""
        if transform == self.transform:
            return self
        y = self.rows["y"].to_numpy(zero_copy_only=False).astype(np.float64)
        y = transform_target(untransform(y, self.transform), transform).astype(np.float32)
        rows = self.rows.set_column(self.rows.schema.get_field_index("y"), "y", pa.array(y))
        return Folds(rows, self.fold, transform, self.k)

    def shards(self, f: int) -> dict[str, list]:
        """Fold `f` held out (valid) and the others (train), as one rank's shards."""
        import ray

        out = {}
        for name, take in (("train", self.fold != f), ("valid", self.fold == f)):
            part = self.rows.filter(pa.array(take))
            out[name] = [([ray.put(part)], part.num_rows)]
        return out


def folds_of(prepared: Prepared, search: SearchConfig) -> Folds | None:
    """`prepared`'s train + valid rows in `search.cv_folds` folds, stratified by label (every fold
    holds each class, and for regression a spread of targets); None for a split by time or column,
    or more rows than `search.cv_max_rows`."""
    import ray

    n = prepared.rows.get("train", 0) + prepared.rows.get("valid", 0)
    if prepared.split.get("by") != "random" or n > search.cv_max_rows or n < 2 * search.cv_folds:
        return None
    blocks = [ray.get(ref).select(["x", "y"]) for ds in (prepared.train, prepared.valid) for ref in ds.to_arrow_refs()]
    rows = pa.concat_tables([b for b in blocks if b.num_rows]).combine_chunks()
    y = rows["y"].to_numpy(zero_copy_only=False)
    rng = np.random.default_rng(search.seed)
    order = np.lexsort((rng.random(len(y)), y))  # by label, ties in random order
    fold = np.empty(len(y), dtype=np.int64)
    fold[order] = np.arange(len(y)) % search.cv_folds
    transform = prepared.spec.label.transform if prepared.spec.label else "none"
    return Folds(rows, fold, transform, search.cv_folds)


def cv_error(run: TrainRun, prepared: Prepared, folds: Folds, deadline: float | None = None) -> float | None:
    """The mean held-out error of `run`'s settings over `folds` (the same loop, fitted on each
    fold's other rows); None when the search's `deadline` came first."""
    # (a fault test's settings too: a fold is not where a worker is lost)
    config = {k: v for k, v in run.params.items() if k not in NOT_FOR_FOLDS and not k.startswith(("fail_", "epoch_"))}
    if "num_boost_round" in config:
        config["nthread"] = 1  # a trial holds one CPU
    spec, d = prepared.spec, len(prepared.spec.feature_names)
    transform = spec.label.transform if spec.label else "none"
    if deadline is not None:
        config["deadline"] = deadline  # a fold still fitting then stops; its error is not used
    errors, folds = [], folds.under(transform)  # the label converted once, not once per fold
    for f in range(folds.k):
        shards = folds.shards(f)
        out = run_direct(run.kind, config, shards)
        if deadline is not None and time.time() >= deadline:
            return None
        model = model_from(run.kind, out, spec.feature_names, spec.task, transform)
        X, y = load_shard(shards["valid"][0], d)
        y = y.astype(np.float64)
        if spec.task == "regression":
            y = untransform(y, transform)
            fitted = untransform(load_shard(shards["train"][0], d)[1].astype(np.float64), transform)
            raw = model.task_output(X) if transform == "log1p" else np.empty(0)
            model.output = evaluate.output_map(transform, float(fitted.min()), float(fitted.max()), y, raw, spec.loss)
        errors.append(evaluate.task_metrics(spec.task, y, model.task_output(X))[spec.loss])
    return float(np.mean(errors))


def described(folds: Folds | None) -> str:
    """How a search judges its trials, for its summary."""
    return f"{folds.k}-fold cross-validation over {folds.rows.num_rows:,} rows" if folds else "the validation split"
