"""Duplicate rows across a whole dataset, found by shuffling 128-bit row hashes, not the rows.

A Ray Data groupby moves every row through a sort shuffle; on small clusters that costs more than
the validation itself. Here each block sends only (hash, order) pairs to hash-partitioned reduce
tasks, which return the order numbers of later copies. The first copy of a row, by (file, row
number), is kept; the rest are marked `duplicate`. Memory per reduce task is 24 bytes per row
of its partition.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_pipeline.data import validate as v
from ray_pipeline.data.scatter import column_hashes, scatter

H1, H2, ORDER = "_h1", "_h2", "_order"


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

    reduce = ray.remote(_later_copies)
    pieces = scatter(_partition, parts, [(ref, parts) for ref in ds.to_arrow_refs()])
    found = ray.get([reduce.remote(*piece) for piece in pieces])
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
