"""Offline feature store: feature views as Parquet under a store root, with versioned definitions;
daily aggregate views built on Ray Data; materialization into the online store."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ray_pipeline.config import FeatureViewConfig
from ray_pipeline.data.sources import read_parquet
from ray_pipeline.features.online import OnlineStore, as_utc
from ray_pipeline.features.entity_parts import default_parts, partition
from ray_pipeline.storage import read_text, write_text

TIMESTAMP = pa.timestamp("us", tz="UTC")


def view_dir(root: str, name: str) -> str:
    """Where a view's data and definitions live."""
    return f"{root.rstrip('/')}/views/{name}"


def register_definition(root: str, name: str, view: FeatureViewConfig) -> int:
    """Record the view's definition; a changed definition gets the next version number."""
    base = view_dir(root, name)
    body = view.model_dump(mode="json")
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    current = read_text(f"{base}/definition.json")
    if current is not None:
        known = json.loads(current)
        if known["hash"] == digest:
            return int(known["version"])
        version = int(known["version"]) + 1
    else:
        version = 1
    record = {
        "name": name,
        "version": version,
        "hash": digest,
        "registered_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "definition": body,
    }
    text = json.dumps(record, indent=2)
    write_text(f"{base}/definitions/v{version}.json", text)
    write_text(f"{base}/definition.json", text)
    return version


def write_view(ds, root: str, name: str, view: FeatureViewConfig) -> int:
    """Write the view's rows (replacing earlier data) and register its definition; returns the version."""
    from ray.data import SaveMode

    version = register_definition(root, name, view)
    ds.write_parquet(f"{view_dir(root, name)}/data", mode=SaveMode.OVERWRITE)
    return version


def read_view(root: str, name: str):
    """A view's rows as a Ray Dataset."""
    return read_parquet(f"{view_dir(root, name)}/data")


def _aggregate_partition(
    entity: str, event_ts: str, aggregates: dict[str, list[str]], out_ts: str, *pieces: pa.Table
) -> pa.Table:
    """Aggregates per (entity, UTC day) of one hash partition, stamped with the end of the day."""
    tables = [p for p in pieces if p.num_rows]
    if not tables:
        return pa.table({})
    frame = pa.concat_tables(tables, promote_options="default").to_pandas()
    frame = frame.dropna(subset=[entity, event_ts])
    # Aggregates of day D are known once D has ended: stamp them with D + 1 day.
    frame[out_ts] = frame[event_ts].dt.floor("D") + pd.Timedelta(days=1)
    spec = {f"{col}_{fn}_1d": (col, fn) for col, fns in aggregates.items() for fn in fns}
    if frame.empty:
        out = pd.DataFrame(
            {entity: frame[entity], out_ts: frame[out_ts], **{k: pd.Series(dtype="float64") for k in spec}}
        )
    else:
        out = frame.groupby([entity, out_ts], sort=True).agg(**spec).reset_index()
    table = pa.Table.from_pandas(out[[entity, out_ts, *spec]], preserve_index=False)
    return table.set_column(1, out_ts, pc.cast(table[out_ts], TIMESTAMP))


def daily_aggregates(events, entity: str, event_ts: str, view: FeatureViewConfig):
    """Per entity and UTC day: the configured aggregates (of present values), known at day end."""
    import ray
    import ray.data

    aggregates = view.daily_aggregates or {}
    refs = events.select_columns([entity, event_ts, *aggregates]).materialize().to_arrow_refs()
    parts = default_parts(len(refs))
    task = ray.remote(_aggregate_partition)
    out = [
        task.remote(entity, event_ts, aggregates, view.timestamp, *pieces) for pieces in partition(refs, entity, parts)
    ]
    return ray.data.from_arrow_refs(out)


def _latest_and_write(
    batch: pa.Table,
    store: OnlineStore,
    name: str,
    entity: str,
    ts: str,
    features: list[str],
    start_us: int | None,
    end_us: int | None,
) -> pa.Table:
    """Write each entity's latest row of this block in [start, end) to the online store (a Ray Data UDF)."""
    t_us = pc.cast(pc.cast(batch[ts], TIMESTAMP), pa.int64()).to_numpy(zero_copy_only=False)
    keep = ~pc.is_null(batch[ts]).to_numpy(zero_copy_only=False)
    if start_us is not None:
        keep &= t_us >= start_us
    if end_us is not None:
        keep &= t_us < end_us
    frame = batch.select([entity, *features]).to_pandas()
    frame["_t"] = np.where(keep, t_us, 0)
    frame = frame[keep].sort_values("_t", kind="mergesort").drop_duplicates(subset=[entity], keep="last")
    rows = [
        (str(e), int(t), {f: (None if v != v else v) for f, v in zip(features, vals)})
        for e, t, *vals in frame[[entity, "_t", *features]].itertuples(index=False, name=None)
    ]
    # Newer-wins writes make the result independent of block order, so no shuffle is needed.
    written = store.write(name, rows) if rows else 0
    return pa.table({"candidates": [len(rows)], "written": [written]})


def materialize(
    view_ds,
    store: OnlineStore,
    name: str,
    view: FeatureViewConfig,
    start: datetime | None = None,
    end: datetime | None = None,
) -> dict[str, int]:
    """Load the latest value per entity with timestamp in [start, end) into the online store."""

    from ray.data import TaskPoolStrategy
    from ray.data.aggregate import Sum

    def us(t: datetime | None) -> int | None:
        return None if t is None else int(as_utc(t).timestamp() * 1e6)

    counts = view_ds.map_batches(
        _latest_and_write,
        fn_kwargs={
            "store": store,
            "name": name,
            "entity": view.entity,
            "ts": view.timestamp,
            "features": view.feature_names,
            "start_us": us(start),
            "end_us": us(end),
        },
        batch_format="pyarrow",
        # One writer at a time: SQLite serializes writers anyway, and fewer lock waits is faster.
        compute=TaskPoolStrategy(size=1),
    ).aggregate(*[Sum(k, alias_name=k) for k in ("candidates", "written")])
    return {k: int((counts or {}).get(k) or 0) for k in ("candidates", "written")}  # None: no blocks at all
