"""Hash partitioning with plain Ray tasks: hashes of column values, and scattering blocks into
partitions by them.

Ray Data's groupby sorts every row through a shuffle, which on a small cluster costs far more than
the work per group. Deduplication, feature joins and per-entity aggregates only need equal keys to
meet in one task: each block is split by a hash of the key, and partition p is the list of the
p-th pieces of every block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

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


def scatter(split: Callable[..., list], parts: int, calls: Iterable[tuple]) -> list[list[Any]]:
    """Run `split(*args)` as one Ray task per call, each returning `parts` pieces; for each
    partition, the object refs of its piece from every call."""
    import ray

    if parts == 1:  # one return value would be the whole list, not its only piece
        task, calls = ray.remote(_first_piece), [(split, *args) for args in calls]
    else:
        task = ray.remote(split).options(num_returns=parts)
    pieces = [task.remote(*args) for args in calls]
    return [[p[i] if parts > 1 else p for p in pieces] for i in range(parts)]


def _first_piece(split: Callable[..., list], *args: Any) -> Any:
    return split(*args)[0]
