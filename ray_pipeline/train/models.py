"""Trained models in non-executable formats: JSON weights for logistic regression, UBJSON for XGBoost."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import expit


@dataclass
class LogisticModel:
    """p = sigmoid(x . weights + bias), over the FeatureSpec's feature vector."""

    weights: np.ndarray
    bias: float
    feature_names: list[str]
    kind: str = "logreg"

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Probability of the positive class per row."""
        z = np.asarray(X, dtype=np.float64) @ self.weights + self.bias
        return expit(z)

    def save(self, directory: str | Path) -> list[str]:
        """Write model.json; returns the files written."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        body = {"kind": self.kind, "bias": self.bias, "weights": dict(zip(self.feature_names, self.weights.tolist()))}
        (directory / "model.json").write_text(json.dumps(body, indent=2))
        return ["model.json"]

    @classmethod
    def load(cls, directory: str | Path) -> "LogisticModel":
        """Read model.json."""
        body = json.loads((Path(directory) / "model.json").read_text())
        names = list(body["weights"])
        return cls(np.array([body["weights"][n] for n in names], dtype=np.float64), float(body["bias"]), names)


@dataclass
class XGBoostModel:
    """A binary:logistic booster over the FeatureSpec's feature vector."""

    booster: object
    feature_names: list[str]
    kind: str = "xgboost"

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Probability of the positive class per row."""
        import xgboost

        best = self.booster.attr("best_iteration")
        rounds = (0, int(best) + 1) if best is not None else (0, 0)  # (0, 0) means every tree
        return self.booster.predict(xgboost.DMatrix(np.asarray(X, dtype=np.float32)), iteration_range=rounds)

    def save(self, directory: str | Path) -> list[str]:
        """Write model.ubj (XGBoost's binary JSON) and the feature order."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(directory / "model.ubj"))
        (directory / "features.json").write_text(json.dumps(self.feature_names))
        return ["model.ubj", "features.json"]

    @classmethod
    def load(cls, directory: str | Path) -> "XGBoostModel":
        """Read model.ubj."""
        import xgboost

        booster = xgboost.Booster()
        booster.load_model(str(Path(directory) / "model.ubj"))
        return cls(booster, json.loads((Path(directory) / "features.json").read_text()))


def load_model(directory: str | Path) -> LogisticModel | XGBoostModel:
    """Whichever model the directory holds."""
    directory = Path(directory)
    if (directory / "model.json").exists():
        return LogisticModel.load(directory)
    if (directory / "model.ubj").exists():
        return XGBoostModel.load(directory)
    raise FileNotFoundError(f"{directory}: no model.json or model.ubj")
