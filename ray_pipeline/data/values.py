"""How a raw value is read, in one place: `init` reads its sample and ingest reads every row with
these functions, so a value `init` lists as a category or a number is the value ingest accepts
(surrounding whitespace is not part of a value; an empty one is missing)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def as_text(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Values as text, as read (what the quarantine keeps and error details quote)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_string(arr.type):
        return arr
    return pc.cast(arr, pa.string())


def clean_text(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Values as text without surrounding whitespace (Unicode's), an empty value as null."""
    trimmed = pc.utf8_trim_whitespace(as_text(arr))
    return pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.string()), trimmed)


def text_numbers(text: pa.Array) -> np.ndarray:
    """Cleaned text as float64, NaN where it is not a number (Arrow's cast first: it is much faster)."""
    try:
        return np.asarray(pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    except pa.ArrowInvalid:
        return pd.to_numeric(pd.Series(text.to_pylist(), dtype=object), errors="coerce").to_numpy(np.float64)


def clean_series(s: pd.Series) -> pd.Series:
    """`clean_text` of a pandas column (init's sample), nulls dropped, the index kept."""
    values = s.dropna()
    text = values.map(lambda x: ("true" if x else "false") if isinstance(x, bool | np.bool_) else str(x))
    cleaned = clean_text(pa.array(text.tolist(), pa.string())).to_pylist()
    return pd.Series(cleaned, index=values.index, dtype=object).dropna()
