"""The regression target a model is fitted on, chosen on validation (`label.transform: auto`).

log1p tames a skewed target but its inverse estimates the median unless smeared; the raw target
estimates the mean but lets the largest values dominate the fit. Which one wins depends on the
table and the model, so with `auto` each model is fitted both ways on the same split and the one
with the lower validation error (`label.metric`: RMSE or MAE) in the label's units is kept.
"""

from __future__ import annotations

from typing import Any

from ray_pipeline.config import PipelineConfig
from ray_pipeline.features.spec import FeatureSpec
from ray_pipeline.train import evaluate
from ray_pipeline.train.data import Prepared

TARGET_PARAM = "target"  # the search dimension's name (train/search.py)


def candidates(cfg: PipelineConfig, spec: FeatureSpec) -> list[str]:
    """The target transforms to try, the spec's own first: both for `auto`, else the configured one."""
    own = spec.label.transform if spec.label is not None else "none"
    if spec.task != "regression" or cfg.data.schema_.label_mapping.transform != "auto":
        return [own]
    return [own, *(t for t in ("log1p", "none") if t != own)]


def with_target(spec: FeatureSpec, transform: str) -> FeatureSpec:
    """`spec` fitting its label as `transform`."""
    if spec.label is None or spec.label.transform == transform:
        return spec
    return spec.model_copy(update={"label": spec.label.model_copy(update={"transform": transform})})


def under_target(prepared: Prepared, transform: str) -> Prepared:
    """The same split with the label fitted as `transform` (transformed once per transform)."""
    return prepared.under(with_target(prepared.spec, transform))


def valid_error(model: Any, prepared: Prepared) -> float:
    """The model's validation error (`label.metric`) in the label's units (comparable across transforms)."""
    y, p, _ = evaluate.predict_split(model, under_target(prepared, model.transform).valid)
    return evaluate.regression_metrics(y, p)[prepared.spec.loss]
