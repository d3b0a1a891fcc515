"""One predict path: a model and its FeatureSpec from rows (Arrow, pandas, records) to a task-aware Prediction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ray_pipeline.features.spec import LabelSpec
from ray_pipeline.features.transform import transform_records
from ray_pipeline.train.models import LogisticModel, OutputMap
from ray_pipeline.train.models import Predictor

from .helpers import SPEC

RECORDS = [{"amount": 12.5, "channel": "pos"}, {"amount": None, "channel": "new"}, {"amount": 900.0, "channel": None}]


def _predictor(task: str) -> Predictor:
    """A linear model of each task over the helpers' spec (3 entries: amount, its missing flag, channel)."""
    d = len(SPEC.feature_names)
    rng = np.random.default_rng(0)
    if task == "multiclass":
        label = LabelSpec(column="y", task=task, classes=["a", "b", "c"])
        model = LogisticModel(rng.normal(size=(d, 3)), rng.normal(size=3), SPEC.feature_names, task=task)
    elif task == "regression":
        label = LabelSpec(column="y", task=task, transform="log1p")
        model = LogisticModel(rng.normal(size=d), 2.0, SPEC.feature_names, task=task, transform="log1p",
                              output=OutputMap(1.1, (0.0, 50.0)))  # fmt: skip
    else:
        label = LabelSpec(column="y")
        model = LogisticModel(rng.normal(size=d), 0.1, SPEC.feature_names)
    return Predictor(SPEC.model_copy(update={"label": label}), model)


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_every_input_shape_gives_the_same_prediction(task):
    """Records (as served), a DataFrame and an Arrow table score alike, and as the model scores the matrix."""
    predictor = _predictor(task)
    X, _ = transform_records(RECORDS, predictor.spec)
    expected = predictor.model.task_output(X)
    from_records = predictor.predict(RECORDS)
    table = pa.table({"amount": pa.array([r["amount"] for r in RECORDS], pa.float64()),
                      "channel": pa.array([r["channel"] for r in RECORDS], pa.string())})  # fmt: skip
    for pred in (from_records, predictor.predict(pd.DataFrame(RECORDS)), predictor.predict(table)):
        np.testing.assert_array_equal(pred.outputs, expected)
        np.testing.assert_array_equal(pred.features, X)
        assert len(pred) == 3 and set(pred.timing) == {"transform_ms", "inference_ms"}


def test_the_task_decides_what_a_prediction_offers():
    """Probabilities and classes for classes, values in the label's units for regression, never
    a value under a probability's name."""
    binary, multi, reg = (_predictor(t).predict(RECORDS) for t in ("binary", "multiclass", "regression"))
    assert binary.probabilities.shape == (3,) and set(binary.labels.tolist()) <= {0, 1}
    assert list(binary.columns()) == ["score"]
    assert multi.probabilities.shape == (3, 3) and np.allclose(multi.probabilities.sum(axis=1), 1.0)
    assert multi.labels.tolist() == [["a", "b", "c"][i] for i in multi.probabilities.argmax(axis=1)]
    assert list(multi.columns()) == ["class", "p_a", "p_b", "p_c"]
    assert multi.logged().tolist() == multi.probabilities.argmax(axis=1).tolist()
    assert np.all((reg.values >= 0) & (reg.values <= 50)) and list(reg.columns()) == ["value"]
    with pytest.raises(ValueError, match="predicts values, not probabilities"):
        reg.probabilities
    with pytest.raises(ValueError, match="predicts probabilities, not values"):
        binary.values
    with pytest.raises(ValueError, match="not classes"):
        reg.labels


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_no_rows_is_an_empty_prediction(task):
    pred = _predictor(task).predict([])
    assert len(pred) == 0 and pred.logged().shape == (0,)
    assert all(len(col) == 0 for col in pred.columns().values())


def test_a_missing_input_column_is_named():
    with pytest.raises(KeyError, match="channel"):
        _predictor("binary").predict(pa.table({"amount": [1.0]}))
