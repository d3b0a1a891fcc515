"""Distributed reductions: a partial result per block in Ray Data tasks, merged on the driver.

For statistics Ray Data's built-in aggregations do not cover (quantile sketches, value counts,
FeatureSpec and profile fits, monitoring windows). Only the partials reach the driver, never rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import pyarrow as pa

T = TypeVar("T")
_COLUMN = "partial"


def fold_blocks(
    ds: Any,
    partial: Callable[..., dict[str, Any]],
    merge: Callable[[list[dict[str, Any]]], T],
    fn_kwargs: dict[str, Any] | None = None,
    batch_format: str = "pyarrow",
    batch_size: int | None = None,
) -> T:
    """`merge` of `partial(batch, **fn_kwargs)` over every batch of `ds` (partials JSON-safe dicts)."""

    def encode(batch: Any, **kwargs: Any) -> pa.Table:
        return pa.table({_COLUMN: [json.dumps(partial(batch, **kwargs))]})

    rows = ds.map_batches(encode, fn_kwargs=fn_kwargs or {}, batch_format=batch_format,
                          batch_size=batch_size).take_all()  # fmt: skip
    return merge([json.loads(row[_COLUMN]) for row in rows])
