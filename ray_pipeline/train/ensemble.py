"""A blend of trained models served as one: the members' margins (log-odds, class logits, or the
fitted target) weighted, with weights fitted on the validation split.

Each member keeps the encodings it was trained with: the ensemble's FeatureSpec is every member's
spec in one (`combined_spec`: the shared numeric columns once, each categorical column once per
encoding), and each member reads its own entries of that one vector. Blending margins, not
probabilities, keeps explanations additive: the members' contributions, weighted and summed per
entry, add up to the ensemble's margin exactly.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ray_pipeline.features.spec import FeatureSpec
from ray_pipeline.train.models import OutputMap, load_model, margin_output

ENSEMBLE_FILE = "ensemble.json"
WEIGHT_STEP = 0.1  # the validation search over weights: a grid on the simplex at this step


def combined_spec(specs: list[FeatureSpec]) -> FeatureSpec:
    """One FeatureSpec holding every member's entries: numeric columns (fitted alike: the same split)
    once, each categorical column once per encoding the members use."""
    first = specs[0]
    cats, seen = [], set()
    for spec in specs:
        for cat in spec.categorical:
            key = (cat.name, cat.encoding)
            if key not in seen:
                seen.add(key)
                cats.append(cat)
    return first.model_copy(update={"categorical": cats})


def member_columns(combined: FeatureSpec, spec: FeatureSpec) -> list[int]:
    """Where each entry of a member's feature vector sits in the combined one."""
    names = combined.feature_names
    return [names.index(n) for n in spec.feature_names]


@dataclass
class EnsembleModel:
    """Members blended by weight on their margins; `columns[i]`: member i's entries of the vector."""

    members: list[Any]
    columns: list[list[int]]
    weights: list[float]
    feature_names: list[str]
    task: str = "binary"
    transform: str = "none"
    output: OutputMap | None = None
    kind: str = "ensemble"

    def margin(self, X: np.ndarray) -> np.ndarray:
        """The weighted members' margins: (n,) or (n, K)."""
        X = np.asarray(X)
        return sum(w * m.margin(X[:, cols]) for m, cols, w in zip(self.members, self.columns, self.weights))

    def task_output(self, X: np.ndarray) -> np.ndarray:
        """The task's output per row from the blended margin."""
        return margin_output(self.margin(X), self)

    def contributions(self, X: np.ndarray, approximate: bool = False) -> np.ndarray:
        """Each entry's weighted share of the blended margin, bias last: (n, d+1) or (n, K, d+1)."""
        X = np.asarray(X)
        d = len(self.feature_names)
        out = None
        for m, cols, w in zip(self.members, self.columns, self.weights):
            part = m.contributions(X[:, cols], approximate) if hasattr(m, "booster") else m.contributions(X[:, cols])
            full = np.zeros((*part.shape[:-1], d + 1))
            full[..., cols] = part[..., :-1]
            full[..., -1] = part[..., -1]
            out = w * full if out is None else out + w * full
        return out

    def save(self, directory: str | Path) -> list[str]:
        """members/I/ (each member's own files) and ensemble.json (weights, entries, task)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = []
        for i, member in enumerate(self.members):
            files += [f"members/{i}/{f}" for f in member.save(directory / "members" / str(i))]
        body = {"weights": self.weights, "columns": self.columns, "features": self.feature_names,
                "task": self.task, "transform": self.transform,
                "kinds": [m.kind for m in self.members],
                **({"output": self.output.to_json()} if self.output is not None else {})}  # fmt: skip
        (directory / ENSEMBLE_FILE).write_text(json.dumps(body, indent=2))
        return [*files, ENSEMBLE_FILE]

    @classmethod
    def load(cls, directory: str | Path) -> EnsembleModel:
        """Read ensemble.json and each member."""
        directory = Path(directory)
        body = json.loads((directory / ENSEMBLE_FILE).read_text())
        members = [load_model(directory / "members" / str(i)) for i in range(len(body["weights"]))]
        return cls(members, body["columns"], body["weights"], body["features"], body["task"], body["transform"],
                   OutputMap.from_json(body.get("output")))  # fmt: skip


def blend_weights(task: str, y: np.ndarray, margins: list[np.ndarray], loss: Any) -> list[float]:
    """The weights (on a WEIGHT_STEP grid, summing to 1) whose blended margin has the lowest
    `loss(y, margin)` on validation rows; a single member's weight 1 is on the grid."""
    steps = int(round(1 / WEIGHT_STEP))
    best, best_loss = None, np.inf
    for cut in itertools.product(range(steps + 1), repeat=len(margins) - 1):
        if sum(cut) > steps:
            continue
        w = [c / steps for c in cut] + [(steps - sum(cut)) / steps]
        value = loss(y, sum(wi * m for wi, m in zip(w, margins)))
        if value < best_loss - 1e-12:
            best, best_loss = w, value
    return best
