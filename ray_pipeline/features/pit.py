"""Point-in-time join: attach to each event the latest feature values known at its time.

Exactly one output row per input row, in input order; no match gives nulls, never a dropped
row. Distributed by hashing the entity key: events and feature rows of one entity meet in one
task (pandas `merge_asof`), and results travel back to their input block, so order is exact
without a global sort.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ray_pipeline.errors import UserError
from ray_pipeline.features.entity_parts import BLOCK, POS, default_parts, partition


def asof_match(
    events: pd.DataFrame,
    feats: pd.DataFrame,
    entity: str,
    event_ts: str,
    feature_entity: str,
    feature_ts: str,
    ttl: pd.Timedelta | None,
) -> np.ndarray:
    """For each event row, the row of `feats` with the same entity and the latest timestamp at or
    before the event's (and within `ttl`), or -1."""
    match = np.full(len(events), -1, dtype=np.int64)

    def frame(keys: pd.Series, times: pd.Series, index: str) -> pd.DataFrame:
        out = pd.DataFrame({"_e": keys.array, "_t": times.array, index: np.arange(len(keys))})
        out = out.dropna(subset=["_e", "_t"])
        # One time type on both sides (merge_asof compares them), whatever the input's unit.
        out["_t"] = pd.to_datetime(out["_t"], utc=True).astype("datetime64[us, UTC]")
        return out

    left = frame(events[entity], events[event_ts], "_row")
    right = frame(feats[feature_entity], feats[feature_ts], "_idx")
    if len(left) == 0 or len(right) == 0:
        return match
    for side in (left, right):
        if pd.api.types.is_integer_dtype(side["_e"].dtype):
            side["_e"] = side["_e"].astype("int64")
    if left["_e"].dtype != right["_e"].dtype:
        left["_e"] = left["_e"].astype(str)
        right["_e"] = right["_e"].astype(str)
    merged = pd.merge_asof(
        left.sort_values("_t", kind="mergesort"),
        # Among equal timestamps the row written last wins: sort is stable on the input order.
        right.sort_values("_t", kind="mergesort"),
        on="_t",
        by="_e",
        direction="backward",
        allow_exact_matches=True,
        tolerance=ttl,
    )
    found = merged["_idx"].notna().to_numpy()
    match[merged["_row"].to_numpy()[found]] = merged["_idx"].to_numpy()[found].astype(np.int64)
    return match


def _join_partition(n_events: int, n_blocks: int, spec: dict, *tables: pa.Table) -> list[pa.Table]:
    """One hash partition: join, then split the rows by the input block they came from."""
    event_tables = [t for t in tables[:n_events] if t.num_rows]
    if not event_tables:
        empty = pa.table({})
        return empty if n_blocks == 1 else [empty] * n_blocks
    events = pa.concat_tables(event_tables, promote_options="default")
    feature_tables = [t for t in tables[n_events:] if t.num_rows]
    features = spec["features"]
    if feature_tables and events.num_rows:
        feats = pa.concat_tables(feature_tables, promote_options="default")
        match = asof_match(
            events.select([spec["entity"], spec["event_ts"]]).to_pandas(),
            feats.select([spec["feature_entity"], spec["feature_ts"]]).to_pandas(),
            spec["entity"],
            spec["event_ts"],
            spec["feature_entity"],
            spec["feature_ts"],
            spec["ttl"],
        )
        take = pa.array(match, mask=match < 0)
        columns = {f: feats[f].take(take) for f in features}
    else:
        columns = {f: pa.nulls(events.num_rows, spec["types"][f]) for f in features}
    joined = events
    for f in features:
        joined = joined.append_column(f, pc.cast(columns[f], spec["types"][f]))
    if n_blocks == 1:
        return joined
    block = joined[BLOCK].to_numpy()
    return [joined.filter(pa.array(block == b)) for b in range(n_blocks)]


def _reassemble(*parts: pa.Table) -> pa.Table:
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return pa.table({})
    table = pa.concat_tables(parts, promote_options="default")
    order = pc.sort_indices(table, sort_keys=[(POS, "ascending")])
    return table.take(order).drop_columns([BLOCK, POS])


def _schema_of(table: pa.Table) -> pa.Schema:
    return table.schema


def _feature_types(refs: list, features: list[str]) -> dict[str, pa.DataType]:
    """Arrow types of the view's features, from the first block that has them (float64 if none)."""
    import ray

    for schema in ray.get([ray.remote(_schema_of).remote(r) for r in refs]):
        if all(f in schema.names for f in features):
            return {f: schema.field(f).type for f in features}
    return {f: pa.float64() for f in features}


def point_in_time_join(
    events,
    view,
    entity: str,
    event_ts: str,
    features: list[str],
    feature_entity: str | None = None,
    feature_ts: str = "feature_ts",
    ttl_seconds: float | None = None,
    parts: int | None = None,
):
    """Events (Ray Dataset) with the view's `features` as of each event; order and count kept."""
    import ray
    import ray.data

    feature_entity = feature_entity or entity
    events = events.materialize()
    clash = sorted(set(features) & set(events.schema().names))
    if clash:
        raise UserError(f"feature names {clash} already exist in the events; rename them in the view")
    event_refs = events.to_arrow_refs()
    view_refs = view.materialize().to_arrow_refs()
    types = _feature_types(view_refs, features)
    n_blocks = len(event_refs)
    parts = parts or default_parts(n_blocks)
    spec = {
        "entity": entity,
        "event_ts": event_ts,
        "feature_entity": feature_entity,
        "feature_ts": feature_ts,
        "features": features,
        "types": types,
        "ttl": pd.Timedelta(seconds=ttl_seconds) if ttl_seconds else None,
    }
    join = ray.remote(_join_partition).options(num_returns=n_blocks)
    reassemble = ray.remote(_reassemble)
    ev = partition(event_refs, entity, parts, tag_blocks=True)
    fv = partition(view_refs, feature_entity, parts)
    joined = []
    for p in range(parts):
        out = join.remote(len(ev[p]), n_blocks, spec, *ev[p], *fv[p])
        joined.append(out if isinstance(out, list) else [out])
    out = [reassemble.remote(*[joined[p][b] for p in range(parts)]) for b in range(n_blocks)]
    return ray.data.from_arrow_refs(out)
