"""One predict path: input rows through a model's own FeatureSpec to the task's answer.

Serving, batch scoring, the retrain and the gates all score through `Predictor.predict`; a
registered version (`registry.handoff.LoadedModel`) is a Predictor with its version, and an
ensemble is one model among the others here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ray_pipeline.features.spec import FeatureSpec
from ray_pipeline.features.transform import records_table, transform_table, with_event_time
from ray_pipeline.train.models import logged_score

Rows = pa.Table | pd.DataFrame | Sequence[Mapping[str, Any]]


@dataclass
class Prediction:
    """What a model answers for rows, per its task: binary the probability of label 1 (n,),
    multiclass a probability per class (n, K) and the class, regression the value in the user's units.

    >>> p = Prediction("multiclass", np.array([[0.2, 0.8]]), ["a", "b"], np.zeros((1, 0)))
    >>> p.labels.tolist()
    ['b']
    """

    task: str
    outputs: np.ndarray
    classes: list[str]
    features: np.ndarray  # the matrix the model read: explanations start from it
    timing: dict[str, float] = field(default_factory=dict)  # transform_ms, inference_ms

    def __len__(self) -> int:
        return len(self.outputs)

    @property
    def probabilities(self) -> np.ndarray:
        """Binary: the probability of label 1 per row; multiclass: (n, K) in `classes` order."""
        if self.task == "regression":
            raise ValueError("a regression model predicts values, not probabilities: use .values")
        return self.outputs

    @property
    def values(self) -> np.ndarray:
        """Regression: the value per row, in the label's units."""
        if self.task != "regression":
            raise ValueError(f"a {self.task} model predicts probabilities, not values: use .probabilities")
        return self.outputs

    @property
    def labels(self) -> np.ndarray:
        """The predicted class per row: its name (multiclass) or 1/0 at probability 0.5 (binary)."""
        if self.task == "multiclass":
            return np.asarray(self.classes, dtype=object)[self.outputs.argmax(axis=1)]
        if self.task == "binary":
            return (self.outputs >= 0.5).astype(np.int64)
        raise ValueError("a regression model predicts values, not classes: use .values")

    def logged(self) -> np.ndarray:
        """The one number per row the prediction log and monitoring keep (see `logged_score`)."""
        if not len(self):
            return np.empty(0)
        return logged_score(self.task, np.asarray(self.outputs, dtype=np.float64))

    def columns(self) -> dict[str, pa.Array]:
        """The task's output columns, as batch scoring writes them: binary `score`; multiclass
        `class` and `p_<class>` per class; regression `value`."""
        out = np.asarray(self.outputs, dtype=np.float64)
        if self.task == "multiclass":
            return {"class": pa.array(self.labels, pa.string())} | {
                f"p_{c}": pa.array(out[:, i]) for i, c in enumerate(self.classes)
            }
        return {"value" if self.task == "regression" else "score": pa.array(out)}


@dataclass
class Predictor:
    """A model with the FeatureSpec it was trained on: raw rows in, `Prediction` out."""

    spec: FeatureSpec
    model: Any

    def predict(self, rows: Rows, event_times: Sequence[Any] | None = None) -> Prediction:
        """Score `rows` (an Arrow table or DataFrame holding the spec's inputs, or records as
        served); `event_times`, one per row, for a spec with time parts (records may carry their own)."""
        started = time.perf_counter()
        table = self._table(rows, event_times)
        X = transform_table(table, self.spec)
        transformed = time.perf_counter()
        outputs = self.model.task_output(X) if len(X) else self._empty()
        timing = {"transform_ms": (transformed - started) * 1e3, "inference_ms": (time.perf_counter() - transformed) * 1e3}
        return Prediction(self.spec.task, np.asarray(outputs), self._classes(), X, timing)

    def _table(self, rows: Rows, event_times: Sequence[Any] | None) -> pa.Table:
        if isinstance(rows, pd.DataFrame):  # as records: NaN is missing, numbers as Python numbers
            rows = rows.astype(object).where(rows.notna(), None).to_dict("records")
        if not isinstance(rows, pa.Table):
            records = list(rows)
            ts = str(self.spec.event_timestamp)
            table = records_table(records, self.spec)
            times = event_times if event_times is not None else [r.get(ts) for r in records]
            return with_event_time(table, self.spec, list(times))
        if event_times is not None:
            return with_event_time(rows, self.spec, list(event_times))
        return rows

    def _classes(self) -> list[str]:
        label = self.spec.label  # None in specs written before other tasks: binary
        return list(label.classes or []) if label is not None else []

    def _empty(self) -> np.ndarray:
        k = len(self._classes())
        return np.empty((0, k)) if self.spec.task == "multiclass" else np.empty(0)
