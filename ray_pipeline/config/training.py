"""The `training` section: split, the two model kinds, workers and checkpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from ray_pipeline.config.base import StrictModel
from ray_pipeline.errors import UserError


class SplitConfig(StrictModel):
    """Train / validation / test: by event time (test latest), at random stratified by label, or
    from data.schema.split_column when that is set."""

    by: Literal["auto", "time", "random"] = Field(
        default="auto", description="auto: by time when data.schema.event_timestamp is set, else random."
    )
    valid_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    seed: int = Field(default=0, description="Seed of the random split (same seed, same rows in each split).")


class LogRegConfig(StrictModel):
    """Logistic regression (binary cross-entropy) by data-parallel optimisation on Ray Train."""

    optimizer: Literal["auto", "gd", "sgd", "adam", "newton", "lbfgs"] = Field(
        default="auto",
        description="auto: newton up to 500 features, else lbfgs (full batch, second order, tens of "
        "passes; benchmarks/train.py). gd: theta <- theta - alpha * grad L, full batch. sgd (momentum) "
        "and adam: mini-batch.",
    )
    learning_rate: float = Field(default=1.0, gt=0)
    lr_schedule: Literal["constant", "inverse_time", "cosine"] = "constant"
    epochs: int = Field(default=300, ge=1, description="Passes (newton, lbfgs: at most this many iterations).")
    batch_size: int = Field(default=8192, ge=1, description="Global mini-batch size (sgd, adam).")
    momentum: float = Field(default=0.9, ge=0, lt=1)
    l2: float = Field(default=1e-4, ge=0, description="Penalty l2/2 * ||w||^2 on the mean loss (bias not penalised).")
    class_weight: Literal["balanced"] | dict[int, float] | None = None
    early_stopping_patience: int = Field(default=20, ge=1, description="Epochs without validation improvement.")
    tol: float = Field(default=1e-7, ge=0, description="Smallest validation-loss decrease that counts.")
    gtol: float = Field(default=1e-8, gt=0, description="newton, lbfgs: stop when every gradient entry is this small.")
    memory: int = Field(default=10, ge=1, description="lbfgs: curvature pairs kept.")
    seed: int = 0


class XGBoostTrainConfig(StrictModel):
    """Distributed XGBoost (hist; binary:logistic, multi:softprob or reg:squarederror by task)."""

    num_boost_round: int = Field(default=300, ge=1)
    early_stopping_rounds: int = Field(default=20, ge=1)
    eval_train: bool = Field(
        default=False, description="Also record the train-set log-loss each round (an extra pass over the train rows)."
    )
    params: dict[str, float | int | str] = Field(
        default_factory=lambda: {"max_depth": 6, "eta": 0.1, "subsample": 1.0, "min_child_weight": 1.0}
    )
    class_weight: Literal["balanced"] | dict[int, float] | None = Field(
        default=None, description="Train rows weigh their class's weight (balanced: n / (classes x count)); "
        "binary and multiclass, keyed by class index.",
    )
    categorical: Literal["native", "encoded"] = Field(
        default="native", description="native: XGBoost splits on the categories themselves (each column's kept "
        "categories as codes; unseen, rare and missing values go the missing way); encoded: it takes the "
        "linear model's encodings (frequency or one-hot).",
    )


class ParamRange(StrictModel):
    """One hyperparameter's search range: numbers between `low` and `high` (log scale for
    `loguniform`; whole numbers for `int`), or one of `values` for `choice`."""

    kind: Literal["uniform", "loguniform", "int", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[float | int | str | None] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _bounds(self) -> "ParamRange":
        if self.kind == "choice":
            if self.values is None:
                raise UserError("search range: kind choice needs `values`")
            return self
        if self.low is None or self.high is None or not self.low < self.high:
            raise UserError(f"search range: kind {self.kind} needs low < high (got {self.low}, {self.high})")
        if self.kind == "loguniform" and self.low <= 0:
            raise UserError(f"search range: loguniform needs low > 0 (got {self.low})")
        return self


def _xgboost_space() -> dict[str, ParamRange]:
    return {
        "max_depth": ParamRange(kind="int", low=2, high=10),
        "eta": ParamRange(kind="loguniform", low=0.01, high=0.3),
        "min_child_weight": ParamRange(kind="loguniform", low=0.5, high=50),
        "subsample": ParamRange(kind="uniform", low=0.5, high=1.0),
        "colsample_bytree": ParamRange(kind="uniform", low=0.5, high=1.0),
        "lambda": ParamRange(kind="loguniform", low=0.01, high=10),
        "alpha": ParamRange(kind="uniform", low=0.0, high=1.0),  # holds XGBoost's default 0
    }


def _logreg_space() -> dict[str, ParamRange]:
    return {"l2": ParamRange(kind="loguniform", low=1e-7, high=1e-1),
            "class_weight": ParamRange(kind="choice", values=[None, "balanced"])}  # fmt: skip


class SearchConfig(StrictModel):
    """Hyperparameter search on Ray Tune (`ray-pipeline tune`, `run --search`): each trial is a
    training run; the best on the validation split is registered and offered to the gates."""

    trials: int = Field(default=16, ge=1, description="Trials in all, the untuned defaults first.")
    time_budget_s: float = Field(default=1800, gt=0, description="The search stops starting trials after this.")
    algorithm: Literal["random", "tpe"] = Field(
        default="tpe", description="random sampling, or Optuna's TPE (model-based) through ray.tune.search."
    )
    scheduler: Literal["asha", "fifo"] = Field(
        default="asha", description="asha stops trials whose validation loss trails at each rung; fifo runs each to the end."
    )
    grace: int = Field(default=10, ge=1, description="asha: epochs or rounds every trial gets before it can be stopped.")
    max_concurrent: int = Field(default=0, ge=0, description="Trials at once; 0: as many as the CPUs hold.")
    seed: int = 0
    cv_max_rows: int = Field(
        default=10_000, ge=0, description="A random split with at most this many train + valid rows judges each "
        "trial by its mean error over `cv_folds` folds of them (fitted in the trial's process), not on the one "
        "validation split: on a small table that split is a few hundred rows, and picking the best of many trials "
        "on it picks its noise. The registered model is still the trial's own run. 0: never.",
    )
    cv_folds: int = Field(default=5, ge=2, le=20, description="Folds of the cross-validation (`cv_max_rows`).")
    xgboost: dict[str, ParamRange] = Field(
        default_factory=_xgboost_space,
        description="XGBoost parameter -> range (any key of training.xgboost.params, and num_boost_round).",
    )
    logreg: dict[str, ParamRange] = Field(
        default_factory=_logreg_space, description="Logistic regression setting -> range (any key of training.logreg)."
    )


class TrainingConfig(StrictModel):
    """Distributed training on Ray Train."""

    run_root: str = Field(default="runs", description="Directory or URI for runs and checkpoints.")
    split: SplitConfig = Field(default_factory=SplitConfig)
    workers: int = Field(default=2, ge=0, description="Ray Train workers (0 runs the loop in-process).")
    ensemble: bool = Field(
        default=True, description="After training two or more model kinds on one split, also blend them (their "
        "margins weighted, the weights fitted on the validation split) into one model that registers and goes "
        "through the gates like the others; none when one model alone is best on validation.",
    )
    time_budget_s: float | None = Field(
        default=None, gt=0, description="`run` searches every model kind within this many seconds of training "
        "(`run --time-budget`): the untuned settings first, each trial stopped early on its validation loss, "
        "a seeded TPE search after; the best trial of each kind goes to the gates. Unset: one run per kind.",
    )
    refit: Literal["auto", "always", "never"] = Field(
        default="auto", description="When `run` makes one of its models the champion, train that model's settings "
        "again on train + valid + test rows and serve the refitted model (its metrics: the held-out run's, "
        "measured before). auto: with a time budget (`run --time-budget`).",
    )
    placement: Literal["auto", "in_process", "workers"] = Field(
        default="auto",
        description="Where a run trains. auto: by its estimated cost (rows x inputs x rounds or epochs) against "
        "the cluster's shape: in-process with all the node's threads, or `workers` Ray Train workers when more "
        "nodes divide the loop by enough to pay for their seconds of start-up. An explicit --workers wins.",
    )
    in_process_max_rows: int | None = Field(
        default=None,
        ge=0,
        description="Instead of `placement: auto`'s estimate, a fixed rule: train splits with at most this many "
        "rows train in-process, larger ones on `workers`; 0 = always on `workers`.",
    )
    cpus_per_worker: float = Field(default=0.5, gt=0, description="Fractional CPUs leave room for Ray Data.")
    checkpoint_every: int = Field(
        default=25,
        ge=1,
        description="Epochs or rounds between checkpoints (each costs a Ray Train report, a group-wide sync).",
    )
    max_failures: int = Field(default=1, ge=0, description="Worker-group restarts allowed before the run fails.")
    logreg: LogRegConfig = Field(default_factory=LogRegConfig)
    xgboost: XGBoostTrainConfig = Field(default_factory=XGBoostTrainConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
