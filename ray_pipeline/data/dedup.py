"""Duplicate rows across a whole dataset, found by shuffling 128-bit row hashes, not the rows.

A Ray Data groupby moves every row through a sort shuffle; on small clusters that costs more than
the validation itself. Here each block sends only (hash, order) pairs to hash-partitioned reduce
tasks, which return the order numbers of later copies. The first copy of a row, by (file, row
number), is kept; the rest are marked `duplicate`. Memory per reduce task is 24 bytes per row
of its partition.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ray_pipeline.data import validate as v

H1, H2, ORDER = "_h1", "_h2", "_order"
_KEY2 = "ray-pipeline-h2!"  # a second siphash key (16 bytes) so H2 is independent of H1 on text
_MIX = np.uint64(0x9E3779B97F4A7C15)


def column_hashes(arr: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Two independent 64-bit hashes per value; equal values (nulls included) hash equal."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t):
        values = arr.to_numpy(zero_copy_only=False).astype(object)
        return pd.util.hash_array(values), pd.util.hash_array(values, hash_key=_KEY2)
    if pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_integer(t):
        bits = pc.fill_null(pc.cast(arr, pa.int64()), -(2**63)).to_numpy().view(np.uint64)
    else:
        # Floats by bit pattern, nulls as NaN; other types through their text form.
        num = pc.cast(arr, pa.float64()) if pa.types.is_floating(t) or pa.types.is_boolean(t) else None
        if num is None:
            return column_hashes(pc.cast(arr, pa.string()))
        bits = np.asarray(pc.fill_null(num, np.nan).to_numpy(zero_copy_only=False)).view(np.uint64)
    return pd.util.hash_array(bits), pd.util.hash_array(bits ^ _MIX)


def add_row_hashes(batch: pa.Table, keys: list[str]) -> pa.Table:
    """Append H1/H2: hashes of the `keys` columns of each row (a Ray Data UDF)."""
    n = batch.num_rows
    h1 = np.zeros(n, dtype=np.uint64)
    h2 = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i, key in enumerate(keys):
            c1, c2 = column_hashes(batch[key])
            # Order-dependent folds with different odd multipliers: (a, b) != (b, a).
            h1 = h1 * np.uint64(1_000_003 + 2 * i) ^ c1
            h2 = h2 * np.uint64(0x100000001B3 + 2 * i) ^ c2
    return batch.append_column(H1, pa.array(h1)).append_column(H2, pa.array(h2))


def _partition(table: pa.Table, parts: int) -> list[np.ndarray]:
    """Accepted rows' (h1, h2, order) split by hash into `parts` arrays of shape (k, 3)."""
    valid = pc.is_null(table[v.REASON])
    rows = table.filter(valid).select([H1, H2, ORDER])
    triples = np.column_stack([rows[H1].to_numpy(), rows[H2].to_numpy(), rows[ORDER].to_numpy().view(np.uint64)])
    bucket = triples[:, 0] % np.uint64(parts)
    return [triples[bucket == p] for p in range(parts)]


def _later_copies(*chunks: np.ndarray) -> np.ndarray:
    """Order numbers of rows whose hash pair was already seen at a smaller order number."""
    triples = np.concatenate(chunks) if chunks else np.empty((0, 3), np.uint64)
    if len(triples) == 0:
        return np.empty(0, np.int64)
    order = np.lexsort((triples[:, 2], triples[:, 1], triples[:, 0]))
    s = triples[order]
    same_as_prev = np.zeros(len(s), dtype=bool)
    same_as_prev[1:] = (s[1:, 0] == s[:-1, 0]) & (s[1:, 1] == s[:-1, 1])
    return s[same_as_prev, 2].view(np.int64)


def find_duplicates(ds, parts: int) -> np.ndarray:
    """Order numbers of every later copy in a materialized dataset that has H1, H2 and ORDER."""
    import ray

    split = ray.remote(_partition).options(num_returns=parts)
    reduce = ray.remote(_later_copies)
    block_parts = [split.remote(ref, parts) for ref in ds.to_arrow_refs()]
    if parts == 1:
        block_parts = [[p] for p in block_parts]
    results = [reduce.remote(*[bp[p] for bp in block_parts]) for p in range(parts)]
    found = ray.get(results)
    return np.sort(np.concatenate(found)) if found else np.empty(0, np.int64)


def mark_duplicates(batch: pa.Table, later: np.ndarray, label: str) -> pa.Table:
    """Give rows whose order number is in `later` the reason `duplicate` (a Ray Data UDF)."""
    order = batch[ORDER].to_numpy()
    hit = np.isin(order, later, assume_unique=False) if len(later) else np.zeros(len(order), bool)
    batch = batch.drop_columns([H1, H2])
    if not hit.any():
        return batch
    updates = {
        v.REASON: "duplicate",
        v.FIELD: label,
        v.DETAIL: f"same values in {label} as an earlier row",
    }
    for name, value in updates.items():
        current = batch[name].to_numpy(zero_copy_only=False).astype(object)
        current[hit] = value
        batch = batch.set_column(batch.column_names.index(name), name, pa.array(current, pa.string()))
    return batch
