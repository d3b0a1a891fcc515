"""Partitioning Ray Dataset blocks by an entity key (`data/scatter.py` says why not groupby):
feature joins and per-entity aggregates need the rows of one entity to meet in one task."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ray_pipeline.data.scatter import column_hashes, scatter

BLOCK, POS = "_part_block", "_part_pos"


def bucket_of(table: pa.Table, key: str, parts: int) -> np.ndarray:
    """Partition number of each row (equal keys, whatever their integer width, share a partition)."""
    return (column_hashes(table[key])[0] % np.uint64(parts)).astype(np.int64)


def split_block(table: pa.Table, key: str, parts: int, block: int | None = None) -> list[pa.Table]:
    """Pieces of one block, one per partition; with `block`, rows remember where they came from."""
    if table.num_rows == 0:
        # Ray Data may hand over empty blocks without columns; they add nothing anywhere.
        return [table] * parts
    if block is not None:
        n = table.num_rows
        table = table.append_column(BLOCK, pa.array(np.full(n, block, np.int64))).append_column(
            POS, pa.array(np.arange(n, dtype=np.int64))
        )
    bucket = bucket_of(table, key, parts)
    return [table.filter(pa.array(bucket == p)) for p in range(parts)]


def partition(block_refs: list, key: str, parts: int, tag_blocks: bool = False) -> list[list]:
    """For each partition, the object refs of its piece of every block."""
    return scatter(split_block, parts, [(ref, key, parts, i if tag_blocks else None) for i, ref in enumerate(block_refs)])


def default_parts(n_blocks: int) -> int:
    """Partitions for `n_blocks` input blocks: enough to spread work, few enough to stay cheap."""
    return max(2, min(64, n_blocks))
