"""Training data: time-ordered train/valid/test split, FeatureSpec fitted on train only, numpy shards."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_pipeline.config import PipelineConfig
from ray_pipeline.features.fit import fit
from ray_pipeline.features.spec import FeatureSpec
from ray_pipeline.features.transform import transform_table

TRUTH = "p_true"  # carried to the test set when the data has it (synthetic ground truth)


@dataclass
class Prepared:
    """Feature matrices (column `x`), labels (`y`) per split, and the spec fitted on train."""

    spec: FeatureSpec
    train: object
    valid: object
    test: object
    cutoffs: tuple[str, str]
    rows: dict[str, int]
    raw_train: object = None  # the train split's raw rows (Ray Dataset), for the reference profile
    input_profile: dict | None = None  # computed once from raw_train, shared by every model of this split


def _time_range(batch: pa.Table, ts: str) -> pa.Table:
    t = pc.cast(batch[ts], pa.int64())
    return pa.table({"lo": [pc.min(t).as_py()], "hi": [pc.max(t).as_py()]})


def _in_window(batch: pa.Table, ts: str, lo: int | None, hi: int | None) -> pa.Table:
    t = pc.cast(batch[ts], pa.int64())
    keep = pc.is_valid(t)
    if lo is not None:
        keep = pc.and_(keep, pc.greater_equal(t, lo))
    if hi is not None:
        keep = pc.and_(keep, pc.less(t, hi))
    return batch.filter(keep)


def to_xy(batch: pa.Table, spec: FeatureSpec, label: str) -> dict[str, np.ndarray]:
    """The model inputs of a batch: x (float32 matrix), y (float32), and p_true if present."""
    out = {
        "x": transform_table(batch, spec),
        "y": batch[label].to_numpy(zero_copy_only=False).astype(np.float32),
    }
    if TRUTH in batch.column_names:
        out[TRUTH] = batch[TRUTH].to_numpy(zero_copy_only=False).astype(np.float64)
    return out


def prepare(training_set, cfg: PipelineConfig) -> Prepared:
    """Split by event time (test latest), fit the FeatureSpec on train, transform all three."""
    schema = cfg.data.schema_
    ts = schema.event_timestamp
    # Read once: the time range, the spec fit and the three splits all pass over these rows.
    training_set = training_set.materialize()
    ranges = training_set.map_batches(_time_range, fn_kwargs={"ts": ts}, batch_format="pyarrow").take_all()
    lo = min(r["lo"] for r in ranges if r["lo"] is not None)
    hi = max(r["hi"] for r in ranges if r["hi"] is not None) + 1
    split = cfg.training.split
    t_test = int(hi - (hi - lo) * split.test_fraction)
    t_valid = int(t_test - (hi - lo) * split.valid_fraction)
    windows = {"train": (None, t_valid), "valid": (t_valid, t_test), "test": (t_test, None)}
    raw = {
        name: training_set.map_batches(_in_window, fn_kwargs={"ts": ts, "lo": a, "hi": b}, batch_format="pyarrow")
        for name, (a, b) in windows.items()
    }
    spec = fit(raw["train"], schema, cfg.features)
    splits = {
        name: ds.map_batches(
            to_xy, fn_kwargs={"spec": spec, "label": schema.label}, batch_format="pyarrow"
        ).materialize()
        for name, ds in raw.items()
    }
    iso = [np.datetime64(t, "us").astype(str) + "Z" for t in (t_valid, t_test)]
    return Prepared(
        spec,
        splits["train"],
        splits["valid"],
        splits["test"],
        (iso[0], iso[1]),
        {name: ds.count() for name, ds in splits.items()},
        raw["train"],
    )


def shard_arrays(shard, dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """A worker's whole shard as numpy (features as `dtype`, labels float64), read once: iterating
    again would re-run the pipeline."""
    xs, ys = [], []
    for batch in shard.iter_batches(batch_size=65536, batch_format="numpy"):
        xs.append(np.asarray(batch["x"], dtype=dtype))
        ys.append(np.asarray(batch["y"], dtype=np.float64))
    if not xs:
        return np.empty((0, 0), dtype), np.empty(0)
    return np.concatenate(xs), np.concatenate(ys)
