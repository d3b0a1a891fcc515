"""The `training` section: split, the two model kinds, workers and checkpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
)

from ray_pipeline.config.base import StrictModel


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


class TrainingConfig(StrictModel):
    """Distributed training on Ray Train."""

    run_root: str = Field(default="runs", description="Directory or URI for runs and checkpoints.")
    split: SplitConfig = Field(default_factory=SplitConfig)
    workers: int = Field(default=2, ge=0, description="Ray Train workers (0 runs the loop in-process).")
    in_process_max_rows: int = Field(
        default=100_000,
        ge=0,
        description="Training sets with at most this many train rows run in-process (Ray Train local mode: "
        "no worker processes and their seconds of start-up; no restarts); 0 = always use `workers`. "
        "An explicit --workers wins.",
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
