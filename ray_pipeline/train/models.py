"""Trained models in non-executable formats (JSON weights for the linear model, UBJSON for XGBoost)
and the one predict path: input rows through a model's own FeatureSpec to the task's answer.

`task_output(X)` is what the task means per row: binary the probability of label 1 (n,), multiclass a
probability per class (n, K), regression the value in the user's units (n,), the target
transform inverted. Serving, batch scoring, the retrain and the gates all score through
`Predictor.predict`; a registered version (`registry.handoff.LoadedModel`) is a Predictor with its
version, and an ensemble (train/ensemble.py) is one more model kind behind it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy.special import expit, softmax

from ray_pipeline.features.spec import FeatureSpec
from ray_pipeline.features.transform import records_table, transform_table, with_event_time


def untransform(values: np.ndarray, transform: str, smearing: float = 1.0) -> np.ndarray:
    """A regression output back in the user's units. `smearing` (log1p): Duan's factor, the mean of
    exp(residual) on validation rows, so the answer estimates the mean, not the median."""
    if transform != "log1p":
        return values
    return np.expm1(values) if smearing == 1.0 else np.exp(values) * smearing - 1.0


def regression_output(values: np.ndarray, model: object) -> np.ndarray:
    """A regression model's fitted-target output in the user's units, smeared and bounded as fitted
    (`OutputMap`: within a margin around the training target range, so no input explodes it)."""
    out = untransform(values, model.transform, model.output.smearing if model.output else 1.0)
    if model.output is not None and model.output.bounds is not None:
        out = np.clip(out, *model.output.bounds)
    return out


def margin_output(z: np.ndarray, model: object) -> np.ndarray:
    """The task's output from a margin: class probabilities (softmax), the value in the user's units
    (`regression_output`), or the probability of label 1 (sigmoid)."""
    if model.task == "multiclass":
        return softmax(z, axis=1)
    if model.task == "regression":
        return regression_output(z, model)
    return expit(z)


@dataclass(frozen=True)
class OutputMap:
    """How a regression model's output reaches the user's units beyond the inverse transform."""

    smearing: float = 1.0
    bounds: tuple[float, float] | None = None

    def to_json(self) -> dict[str, object]:
        """As stored with the model."""
        return {"smearing": self.smearing, "bounds": list(self.bounds) if self.bounds else None}

    @classmethod
    def from_json(cls, body: dict | None) -> "OutputMap | None":
        """As loaded (None for models stored without one)."""
        if not body:
            return None
        return cls(float(body.get("smearing", 1.0)), tuple(body["bounds"]) if body.get("bounds") else None)


def transform_target(values: np.ndarray, transform: str) -> np.ndarray:
    """The target a regression model is fitted on."""
    return np.log1p(values) if transform == "log1p" else values


def logged_score(task: str, scores: np.ndarray) -> np.ndarray:
    """The one number per row monitoring follows: the probability (binary), the predicted class
    index (multiclass, so its drift is the drift of class shares), the value (regression)."""
    return scores.argmax(axis=1).astype(np.float64) if task == "multiclass" else np.asarray(scores, np.float64)


@dataclass
class LogisticModel:
    """z = x . weights + bias over the FeatureSpec's feature vector; sigmoid(z) for binary,
    softmax(z) for multiclass (weights (d, K), bias (K,)), z itself for regression."""

    weights: np.ndarray
    bias: float | np.ndarray
    feature_names: list[str]
    kind: str = "logreg"
    task: str = "binary"
    transform: str = "none"
    output: OutputMap | None = None  # regression: smearing and bounds

    def margin(self, X: np.ndarray) -> np.ndarray:
        """The linear part per row: (n,) or (n, K)."""
        return np.asarray(X, dtype=np.float64) @ self.weights + self.bias

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Each input's share of the margin, bias last: (n, d+1), or (n, K, d+1) for multiclass;
        a row sums to `margin` (weight x transformed input: exact for a linear model)."""
        X = np.asarray(X, dtype=np.float64)
        if np.ndim(self.weights) == 2:  # multiclass: (d, K)
            parts = X[:, None, :] * self.weights.T[None, :, :]
            bias = np.broadcast_to(np.asarray(self.bias, np.float64)[None, :, None], (len(X), parts.shape[1], 1))
            return np.concatenate([parts, bias], axis=2)
        w = np.ravel(self.weights)
        bias = float(np.ravel(np.asarray(self.bias, np.float64))[0])
        return np.hstack([X * w, np.full((len(X), 1), bias)])

    def task_output(self, X: np.ndarray) -> np.ndarray:
        """The task's output per row (see the module docstring)."""
        return margin_output(self.margin(X), self)

    def save(self, directory: str | Path) -> list[str]:
        """Write model.json; returns the files written."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        bias = self.bias.tolist() if isinstance(self.bias, np.ndarray) else self.bias
        body = {"kind": self.kind, "bias": bias, "weights": dict(zip(self.feature_names, self.weights.tolist()))}
        if self.task != "binary":  # binary files stay as they were
            body = {**body, "task": self.task, "transform": self.transform}
        if self.output is not None:
            body["output"] = self.output.to_json()
        (directory / "model.json").write_text(json.dumps(body, indent=2))
        return ["model.json"]

    @classmethod
    def load(cls, directory: str | Path) -> "LogisticModel":
        """Read model.json."""
        body = json.loads((Path(directory) / "model.json").read_text())
        names = list(body["weights"])
        weights = np.array([body["weights"][n] for n in names], dtype=np.float64)
        bias = np.asarray(body["bias"], dtype=np.float64) if isinstance(body["bias"], list) else float(body["bias"])
        return cls(weights, bias, names, task=body.get("task", "binary"), transform=body.get("transform", "none"),
                   output=OutputMap.from_json(body.get("output")))  # fmt: skip


@dataclass
class XGBoostModel:
    """A booster over the FeatureSpec's feature vector (binary:logistic, multi:softprob or reg:*)."""

    booster: object
    feature_names: list[str]
    kind: str = "xgboost"
    task: str = "binary"
    transform: str = "none"
    output: OutputMap | None = None  # regression: smearing and bounds

    def _predict(self, X: np.ndarray, **how: bool) -> np.ndarray:
        import xgboost

        best = self.booster.attr("best_iteration")
        rounds = (0, int(best) + 1) if best is not None else (0, 0)  # (0, 0) means every tree
        return self.booster.predict(xgboost.DMatrix(np.asarray(X, dtype=np.float32)), iteration_range=rounds, **how)

    def task_output(self, X: np.ndarray) -> np.ndarray:
        """The task's output per row (see the module docstring)."""
        out = self._predict(X)
        return regression_output(out.astype(np.float64), self) if self.task == "regression" else out

    def margin(self, X: np.ndarray) -> np.ndarray:
        """The raw score per row before the link: (n,) or (n, K)."""
        return self._predict(X, output_margin=True).astype(np.float64)

    def contributions(self, X: np.ndarray, approximate: bool = False) -> np.ndarray:
        """XGBoost's own per-input contributions to the margin (TreeSHAP; `approximate`: Saabas
        path attribution), bias last: (n, d+1), or (n, K, d+1) for multiclass; a row sums to `margin`.
        A model with native categories always gets TreeSHAP: XGBoost has no path attribution for them."""
        approximate = approximate and "c" not in (self.booster.feature_types or [])
        return self._predict(X, pred_contribs=True, approx_contribs=approximate).astype(np.float64)

    def interactions(self, X: np.ndarray) -> np.ndarray:
        """Pairwise SHAP interaction values (n, d+1, d+1), or (n, K, d+1, d+1) for multiclass."""
        return self._predict(X, pred_interactions=True).astype(np.float64)

    def save(self, directory: str | Path) -> list[str]:
        """Write model.ubj (XGBoost's binary JSON) and the feature order (with the task)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(directory / "model.ubj"))
        body: object = self.feature_names
        if self.task != "binary":
            body = {"features": self.feature_names, "task": self.task, "transform": self.transform,
                    **({"output": self.output.to_json()} if self.output is not None else {})}  # fmt: skip
        (directory / "features.json").write_text(json.dumps(body))
        return ["model.ubj", "features.json"]

    @classmethod
    def load(cls, directory: str | Path) -> "XGBoostModel":
        """Read model.ubj."""
        import xgboost

        booster = xgboost.Booster()
        booster.load_model(str(Path(directory) / "model.ubj"))
        body = json.loads((Path(directory) / "features.json").read_text())
        if isinstance(body, list):  # binary, and files written before other tasks
            return cls(booster, body)
        return cls(booster, body["features"], task=body["task"], transform=body["transform"],
                   output=OutputMap.from_json(body.get("output")))  # fmt: skip


def load_model(directory: str | Path) -> Any:
    """Whichever model the directory holds (a linear model, XGBoost, or an ensemble of them)."""
    directory = Path(directory)
    if (directory / "ensemble.json").exists():
        from ray_pipeline.train.ensemble import EnsembleModel  # it loads its members with this function

        return EnsembleModel.load(directory)
    if (directory / "model.json").exists():
        return LogisticModel.load(directory)
    if (directory / "model.ubj").exists():
        return XGBoostModel.load(directory)
    raise FileNotFoundError(f"{directory}: no model.json or model.ubj")

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
