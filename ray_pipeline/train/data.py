"""Training data: train/valid/test split (by time, random stratified, or a split column), FeatureSpec
fitted on train only, numpy shards."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_pipeline.config import PipelineConfig
from ray_pipeline.data.sources import read_parquet
from ray_pipeline.errors import UserError
from ray_pipeline.features.build import training_set_path
from ray_pipeline.features.fit import fit
from ray_pipeline.features.spec import FeatureSpec, native_spec
from ray_pipeline.features.transform import transform_table
from ray_pipeline.storage import tree_sha256
from ray_pipeline.train.models import transform_target

# Synthetic ground truth, carried to the test set as "truth" when the data has it: p_true (binary:
# P(label=1); multiclass: the truth's probability of the row's own class) or y_true (regression mean).
TRUTH_COLUMNS = ("p_true", "y_true")


@dataclass
class Prepared:
    """Feature matrices (column `x`), labels (`y`) per split, and the spec fitted on train."""

    spec: FeatureSpec
    train: object
    valid: object
    test: object
    split: dict  # how the rows were split (method, cutoffs or seed), recorded in lineage
    rows: dict[str, int]
    raw_train: object = None  # the train split's raw rows (Ray Dataset), for the reference profile
    input_profile: dict | None = None  # computed once from raw_train, shared by every model of this split
    source_sha256: str | None = None  # content digest of the training set these rows came from
    raw: dict | None = None  # every split's raw rows (Ray Datasets): another spec's matrices come from them
    variants: dict = field(default_factory=dict)  # spec content hash -> the same rows under that spec
    oof: dict = field(default_factory=dict)  # column -> out-of-fold target means of the train split's rows

    def under(self, spec: FeatureSpec) -> "Prepared":
        """The same rows transformed by `spec` (another encoding of the same fitted statistics);
        transformed once per spec."""
        if spec.content_hash() == self.spec.content_hash():
            return self
        key = spec.content_hash()
        if key not in self.variants:
            if self.raw is None:
                raise ValueError("these splits keep no raw rows to transform again")
            label = self.spec.label.column if self.spec.label else "label"
            splits = {name: ds.map_batches(to_xy, fn_kwargs={"spec": spec, "label": label,
                                                             "oof": self.oof if name == "train" else None},
                                           batch_format="pyarrow").materialize()
                      for name, ds in self.raw.items()}  # fmt: skip
            self.variants[key] = replace(self, spec=spec, train=splits["train"], valid=splits["valid"],
                                         test=splits["test"], variants={})  # fmt: skip
        return self.variants[key]


def for_model(prepared: Prepared, kind: str, training: Any) -> Prepared:
    """The splits as model `kind` takes them: XGBoost splits on categories themselves (native codes,
    `training.xgboost.categorical`), the linear model on their encodings."""
    if kind == "xgboost" and training.xgboost.categorical == "native" and prepared.spec.categorical:
        return prepared.under(native_spec(prepared.spec))
    return prepared


def time_range(batch: pa.Table, ts: str) -> pa.Table:
    """One row: the smallest and largest value of time column `ts` (microseconds) in `batch`."""
    t = pc.cast(batch[ts], pa.int64())
    return pa.table({"lo": [pc.min(t).as_py()], "hi": [pc.max(t).as_py()]})


def event_bounds(training_set, ts: str) -> tuple[int, int]:
    """Smallest and largest value (microseconds) of time column `ts` over a dataset."""
    from ray.data.aggregate import Max, Min

    ranges = training_set.map_batches(time_range, fn_kwargs={"ts": ts}, batch_format="pyarrow")
    bounds = ranges.aggregate(Min("lo", alias_name="lo"), Max("hi", alias_name="hi"))
    return bounds["lo"], bounds["hi"]


def iso_us(us: int) -> str:
    """Microseconds since the epoch as ISO 8601 UTC (`...Z`), as lineage and feedback records write them."""
    return np.datetime64(int(us), "us").astype(str) + "Z"


def _in_window(batch: pa.Table, ts: str, lo: int | None, hi: int | None) -> pa.Table:
    t = pc.cast(batch[ts], pa.int64())
    keep = pc.is_valid(t)
    if lo is not None:
        keep = pc.and_(keep, pc.greater_equal(t, lo))
    if hi is not None:
        keep = pc.and_(keep, pc.less(t, hi))
    return batch.filter(keep)


def to_xy(batch: pa.Table, spec: FeatureSpec, label: str, oof: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The model inputs of a batch: x (float32 matrix), y (float32; a regression target as it is
    fitted, its transform applied), and the ground truth if the data has one (`oof`: the train
    split's out-of-fold target encodings, for its own rows)."""
    y = batch[label].to_numpy(zero_copy_only=False).astype(np.float64)
    if spec.label is not None and spec.label.task == "regression":
        y = transform_target(y, spec.label.transform)
    out = {"x": transform_table(batch, spec, oof=oof), "y": y.astype(np.float32)}
    for name in TRUTH_COLUMNS:
        if name in batch.column_names:
            out["truth"] = batch[name].to_numpy(zero_copy_only=False).astype(np.float64)
    return out


def _row_hash(batch: pa.Table, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per row from its content and the seed: the same row lands in
    the same split however the data is partitioned (and exact copies never straddle splits)."""
    import pandas as pd

    key = f"{seed:016d}"[-16:]  # hash_pandas_object takes a 16-byte key
    h = pd.util.hash_pandas_object(batch.to_pandas(), index=False, hash_key=key).to_numpy(np.uint64)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _hash_label(batch: pa.Table, seed: int, label: str) -> pa.Table:
    return pa.table({"u": _row_hash(batch, seed), "y": batch[label]})


def _strata(y: np.ndarray, edges: list[float] | None) -> np.ndarray:
    """The stratum of each label: the class itself, or for a regression target its quantile bin."""
    if edges is None:
        return y.astype(np.int64)
    return np.searchsorted(np.asarray(edges, dtype=np.float64), y.astype(np.float64), side="right")


def _in_hash_range(batch: pa.Table, seed: int, label: str, bounds: dict[int, tuple[float, float]],
                   edges: list[float] | None = None) -> pa.Table:  # fmt: skip
    u = _row_hash(batch, seed)
    y = _strata(batch[label].to_numpy(zero_copy_only=False), edges)
    keep = np.zeros(len(u), dtype=bool)
    for cls, (lo, hi) in bounds.items():
        keep |= (y == cls) & (u >= lo) & (u < hi)
    return batch.filter(pa.array(keep))


def _in_split(batch: pa.Table, column: str, name: str) -> pa.Table:
    return batch.filter(pc.fill_null(pc.equal(batch[column], name), False))


# A regression target is stratified by these quantile bins (classes are strata themselves).
REGRESSION_STRATA = 10


def _random_windows(training_set, cfg: PipelineConfig, test_fraction: float | None = None) -> tuple[dict[str, tuple], dict]:
    """Per-class hash cutoffs so each split holds the configured share of each label value (of
    each quantile bin for a regression target); the bins' edges ride along under `edges`."""
    split, label = cfg.training.split, cfg.data.schema_.label
    test_fraction = split.test_fraction if test_fraction is None else test_fraction
    hashed = training_set.map_batches(
        _hash_label, fn_kwargs={"seed": split.seed, "label": label}, batch_format="pyarrow"
    ).to_pandas()  # 9 bytes per row on the driver, to place the cutoffs exactly
    u, y = hashed["u"].to_numpy(), hashed["y"].to_numpy()
    edges = None
    if cfg.data.schema_.label_mapping.task == "regression" and len(y):
        qs = np.quantile(y.astype(np.float64), np.linspace(0, 1, REGRESSION_STRATA + 1)[1:-1])
        edges = [float(q) for q in np.unique(qs)]
    y = _strata(y, edges)
    bounds: dict[str, dict[int, tuple[float, float]]] = {"train": {}, "valid": {}, "test": {}}
    for cls in (int(c) for c in np.unique(y)):
        mine = np.sort(u[y == cls])
        n = len(mine)
        # cut between sorted values so the counts are exact: the first n_train rows train, ...
        n_test, n_valid = round(n * test_fraction), round(n * split.valid_fraction)
        cut = [mine[k] if k < n else 1.0 for k in (n - n_test - n_valid, n - n_test)]
        bounds["train"][cls] = (0.0, cut[0])
        bounds["valid"][cls] = (cut[0], cut[1])
        bounds["test"][cls] = (cut[1], 1.0 + 1e-9)
    return {**bounds, "edges": edges}, {"by": "random", "stratified_by": label, "seed": split.seed}


def split_rows(training_set, cfg: PipelineConfig) -> tuple[dict[str, object], dict]:
    """The raw train / valid / test rows (lazy Ray Datasets) and how they were split: by the split
    column, by event time (test latest), or at random stratified by label."""
    schema = cfg.data.schema_
    split = cfg.training.split
    if schema.split_column:
        raw = {
            name: training_set.map_batches(
                _in_split, fn_kwargs={"column": schema.split_column, "name": name}, batch_format="pyarrow"
            )
            for name in ("train", "valid", "test")
        }
        return raw, {"by": "column", "column": schema.split_column}
    if split.by == "time" or (split.by == "auto" and schema.event_timestamp):
        return _time_split(training_set, schema.event_timestamp, split.valid_fraction, split.test_fraction)
    bounds, how = _random_windows(training_set, cfg)
    raw = {
        name: training_set.map_batches(
            _in_hash_range,
            fn_kwargs={"seed": split.seed, "label": schema.label, "bounds": bounds[name], "edges": bounds["edges"]},
            batch_format="pyarrow",
        )
        for name in ("train", "valid", "test")
    }
    return raw, how


def holdout_split(training_set, cfg: PipelineConfig) -> tuple[dict[str, object], dict]:
    """Train and valid when the test rows come from elsewhere (a feedback retrain's holdout window):
    valid is a random slice stratified by label, so the newest rows train too; a slice by time would
    keep exactly the freshest labels out of the model again."""
    schema = cfg.data.schema_
    bounds, how = _random_windows(training_set, cfg, test_fraction=0.0)
    raw = {
        name: training_set.map_batches(
            _in_hash_range,
            fn_kwargs={"seed": cfg.training.split.seed, "label": schema.label, "bounds": bounds[name],
                       "edges": bounds["edges"]},  # fmt: skip
            batch_format="pyarrow",
        )
        for name in ("train", "valid")
    }
    how = {**how, "test": "holdout"}
    if schema.event_timestamp:
        how["event_time_range"] = [iso_us(t) for t in event_bounds(training_set, schema.event_timestamp)]
    return raw, how


def with_columns(table: pa.Table, columns: list[str]) -> pa.Table:
    """`table` holding `columns` (a column it lacks as nulls, e.g. an input older log rows did not carry)."""
    return pa.table({c: table[c] if c in table.column_names else pa.nulls(table.num_rows, pa.float64())
                     for c in columns})  # fmt: skip


def model_inputs(table: pa.Table, spec: FeatureSpec) -> pa.Table:
    """The columns of `table` that `spec` transforms: its inputs and, for time parts, the event time
    (in prediction-log rows: the event time sent, else the time the row was served)."""
    out = with_columns(table, spec.input_columns)
    ts = spec.event_timestamp
    if not spec.time_parts or ts is None:
        return out
    names = table.column_names
    if ts in names:
        times = table[ts]
    elif "event_ts" in names:
        times = pc.coalesce(table["event_ts"], table["ts"]) if "ts" in names else table["event_ts"]
    else:
        times = pa.nulls(table.num_rows, pa.timestamp("us", tz="UTC"))
    return out.append_column(ts, times)


def prepare(training_set, cfg: PipelineConfig, holdout: pa.Table | None = None,
            spec: FeatureSpec | None = None) -> Prepared:  # fmt: skip
    """Split (`split_rows`), fit the FeatureSpec on train, transform all three. With `holdout` (raw
    rows with the label), those rows are the test split and the training set is train and valid.
    `spec`: transform with this fitted spec instead (a warm start keeps the champion's encodings)."""
    import ray.data

    schema = cfg.data.schema_
    # Read once: the split bounds, the spec fit and the three splits all pass over these rows.
    training_set = training_set.materialize()
    raw, how = split_rows(training_set, cfg) if holdout is None else holdout_split(training_set, cfg)
    oof: dict[str, np.ndarray] = {}  # a fresh fit's target encodings of the train split, out of fold
    spec = spec or fit(raw["train"], schema, cfg.features, oof=oof)
    if holdout is not None:
        test = model_inputs(holdout, spec)
        raw["test"] = ray.data.from_arrow(test.append_column(schema.label, with_columns(holdout, [schema.label])[0]))
    splits = {
        name: ds.map_batches(
            to_xy, fn_kwargs={"spec": spec, "label": schema.label, "oof": oof if name == "train" else None},
            batch_format="pyarrow",
        ).materialize()
        for name, ds in raw.items()
    }
    rows = {name: ds.count() for name, ds in splits.items()}
    empty = [name for name, n in rows.items() if n == 0]
    if empty:
        raise UserError(f"training.split: the {', '.join(empty)} split(s) are empty ({describe_split(how)}); "
                         f"rows per split: {rows}")
    return Prepared(spec, splits["train"], splits["valid"], splits["test"], how, rows, raw["train"], raw=raw, oof=oof)


def _time_split(training_set, ts: str, valid_fraction: float, test_fraction: float) -> tuple[dict, dict]:
    lo, hi = event_bounds(training_set, ts)
    hi += 1
    t_test = int(hi - (hi - lo) * test_fraction)
    t_valid = int(t_test - (hi - lo) * valid_fraction)
    windows = {"train": (None, t_valid), "valid": (t_valid, t_test), "test": (t_test, None)}
    raw = {
        name: training_set.map_batches(_in_window, fn_kwargs={"ts": ts, "lo": a, "hi": b}, batch_format="pyarrow")
        for name, (a, b) in windows.items()
    }
    iso = [iso_us(t) for t in (t_valid, t_test, lo, hi - 1)]
    return raw, {"by": "time", "column": ts, "cutoffs": iso[:2], "event_time_range": iso[2:]}


def describe_split(how: dict) -> str:
    """One line for people: how the rows were split."""
    if how["by"] == "time":
        return f"split by {how['column']} at {how['cutoffs'][0]} / {how['cutoffs'][1]} (test = latest)"
    if how["by"] == "column":
        return f"split by the values of column {how['column']}"
    return f"random split stratified by {how['stratified_by']} (seed {how['seed']})"


def prepare_training_set(cfg: PipelineConfig, holdout: pa.Table | None = None, since_us: int | None = None,
                         spec: FeatureSpec | None = None) -> Prepared:  # fmt: skip
    """`prepare` the feature store's training set, recording its content digest for lineage.

    `holdout`, `since_us` (a feedback retrain): the test rows, and the first event time to train on;
    `spec`: a fitted spec to transform with (see `prepare`)."""
    path = training_set_path(cfg)
    digest = tree_sha256(path)  # before reading: the digest names exactly the files prepared
    training_set = read_parquet(path)
    if since_us is not None:
        ts = cfg.data.schema_.event_timestamp
        training_set = training_set.map_batches(_in_window, fn_kwargs={"ts": ts, "lo": since_us, "hi": None},
                                                batch_format="pyarrow")  # fmt: skip
    prepared = prepare(training_set, cfg, holdout=holdout, spec=spec)
    prepared.source_sha256 = digest
    return prepared


def shard_refs(ds, workers: int) -> list[tuple[list, int]]:
    """A materialized split cut into `workers` contiguous row ranges of (nearly) equal size, each as
    its Arrow block references and row count: what `worker.load_shard` reads on a Train worker.

    Handing workers references instead of Ray Train `datasets` skips Ray Data's split coordinator
    actors and streaming execution per worker, a large share of a short run's fixed cost
    (docs/ARCHITECTURE.md). No row is dropped (Ray Data's equal split may drop up to n-1).
    """
    total = ds.count()
    cuts = [total * k // workers for k in range(1, workers)]
    parts = ds.split_at_indices(cuts) if cuts else [ds]
    return [(part.to_arrow_refs(), part.count()) for part in parts]
