"""The champion's recipe trained again on every row of its split (`training.refit`).

Validation and test rows choose and judge a model, and then sit unused: on a table of a few
thousand rows they are 30% of what there is to learn from. After the gates have chosen, the
chosen run is trained once more with the same settings on train + valid + test: XGBoost for the
rounds early stopping chose, the linear model with its penalty, an ensemble as its members
refitted with the same weights. The refitted model keeps the held-out run's test metrics as its
estimate (its own would be in-sample) and its output map (smearing, bounds); its lineage names
the run it repeats.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ray_pipeline.config import PipelineConfig
from ray_pipeline.train.data import Prepared
from ray_pipeline.train.models import OutputMap, load_model
from ray_pipeline.train.rundir import RunArtifacts, model_dir, read_run
from ray_pipeline.train.runner import TrainRun, train_model
from ray_pipeline.train.search import with_params


@dataclass(frozen=True)
class RefitOf:
    """The held-out run a refit repeats: where it is, its test metrics, its output map."""

    run_dir: str
    metrics: dict[str, float]
    output: OutputMap | None


def every_row(prepared: Prepared) -> Prepared:
    """`prepared` with its validation and test rows joined to its train split (same matrices; the
    validation and test splits stay, now in-sample)."""
    train = prepared.train.union(prepared.valid, prepared.test).materialize()
    return replace(prepared, train=train, rows={**prepared.rows, "train": sum(prepared.rows.values())},
                   raw=None, variants={})  # fmt: skip


def refit(cfg: PipelineConfig, prepared: Prepared, run_dir: str, trigger: str = "refit") -> TrainRun:
    """The run in `run_dir` (trained on `prepared`) trained again on every row of `prepared`."""
    held = read_run(run_dir)
    model = load_model(model_dir(run_dir))
    if held.kind == "ensemble":
        from ray_pipeline.train.blend import refit_blend  # blend builds on the runner, as this module does

        members = [refit(cfg, prepared, d, trigger) for d in held.lineage["members"]]
        return refit_blend(cfg, prepared, run_dir, members, trigger)
    on = every_row(prepared.under(held.spec))
    return train_model(settings(cfg, held, model), held.kind, prepared=on, trigger=trigger,
                       refit_of=RefitOf(run_dir, held.metrics, getattr(model, "output", None)))  # fmt: skip


def settings(cfg: PipelineConfig, held: RunArtifacts, model: Any) -> PipelineConfig:
    """The held-out run's settings: its searched parameters, XGBoost's rounds as early stopping
    left them (no early stopping on rows it trains on), the linear model's penalty."""
    params = (held.lineage.get("search") or {}).get("params")
    out = with_params(cfg, held.kind, params) if params else cfg.model_copy(deep=True)
    if held.kind == "xgboost":
        best = model.booster.attr("best_iteration")
        rounds = int(best) + 1 if best is not None else model.booster.num_boosted_rounds()
        out.training.xgboost.num_boost_round = rounds
        out.training.xgboost.early_stopping_rounds = rounds
    elif "l2" in held.params:
        out.training.logreg.l2 = float(held.params["l2"])
    return out
