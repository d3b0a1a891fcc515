"""Hyperparameter search on Ray Tune, each trial a training run of this project.

A Tune function trainable builds and fits the run (`train_model`), as Ray's Train V2 + Tune
pattern has it, placed as `run` places a run (train/placement.py): a table whose loop costs less
than Ray Train's start trains in the trial's own process (1 CPU per trial, so trials run side by
side across the cluster's CPUs); a larger one trains on its Ray Train workers, which report every
epoch or round and whose rank 0's reports `TuneReportCallback` forwards to Tune (a killed worker restarts the
trial's worker group from its last checkpoint, as in any run). Every epoch or round reports its
validation loss, so ASHA stops the trials that trail; a trial that finishes reports the validation
metric of the model it returns (log-loss, or RMSE for regression; on a small table, the mean
over k folds of train + valid: train/crossval.py), and the best of those wins.
The untuned settings are the first trial and ASHA never stops it, so the search can only match
or beat them on the validation split.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import time
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ray_pipeline.config import PipelineConfig
from ray_pipeline.config.training import ParamRange
from ray_pipeline.errors import UserError
from ray_pipeline.storage import join
from ray_pipeline.train import evaluate
from ray_pipeline.train.crossval import Folds, cv_error, described, folds_of
from ray_pipeline.train.data import Prepared, for_model
from ray_pipeline.train.runner import placement_of, profile_once, train_model
from ray_pipeline.train.target import TARGET_PARAM, under_target

log = logging.getLogger(__name__)

SEARCH_FILE = "search.json"  # written into the best trial's run directory, so its version carries it
# XGBoost's own defaults, for searched parameters training.xgboost.params leaves unset.
XGBOOST_DEFAULTS = {"max_depth": 6, "eta": 0.3, "min_child_weight": 1.0, "subsample": 1.0,
                    "colsample_bytree": 1.0, "lambda": 1.0, "alpha": 0.0, "gamma": 0.0}  # fmt: skip


@dataclass
class Trial:
    """One trial: its parameters, how it ended and, if it finished, its run directory."""

    trial_id: str
    params: dict[str, Any]
    status: str  # finished / stopped (by the scheduler) / failed
    valid_metric: float | None = None  # the returned model's validation log-loss (RMSE for regression)
    last_valid_loss: float | None = None  # the last epoch's or round's loss the scheduler saw
    steps: int = 0
    run_dir: str | None = None
    nodes: list[str] = field(default_factory=list)  # where it trained: its process, or its workers
    resumed_from: int | None = None  # a killed worker's trial: the checkpoint's epoch or round
    error: str | None = None


@dataclass
class SearchResult:
    """A finished search: its trials and the best finished one."""

    search_id: str
    kind: str
    algorithm: str
    scheduler: str
    metric: str
    space: dict[str, Any]
    path: str  # the Tune experiment directory (`Tuner.restore` resumes from it)
    trials: list[Trial] = field(default_factory=list)
    seconds: float = 0.0
    judged_by: str = "the validation split"  # or k-fold cross-validation on a small table (train/crossval.py)

    @property
    def best(self) -> Trial | None:
        """The finished trial with the lowest validation metric."""
        done = [t for t in self.trials if t.status == "finished" and t.valid_metric is not None]
        return min(done, key=lambda t: t.valid_metric) if done else None

    def summary(self) -> dict[str, Any]:
        """What the registered version keeps of its search (JSON-ready)."""
        best = self.best
        return {"search_id": self.search_id, "kind": self.kind, "algorithm": self.algorithm,
                "scheduler": self.scheduler, "metric": f"validation {self.metric}", "judged_by": self.judged_by,
                "space": self.space,
                "trials": [asdict(t) for t in self.trials], "seconds": round(self.seconds, 2),
                "best_trial": best.trial_id if best else None, "best_params": best.params if best else None}  # fmt: skip


def _tune_range(r: ParamRange):
    from ray import tune

    if r.kind == "choice":
        return tune.choice(list(r.values or []))
    if r.kind == "int":
        return tune.randint(int(r.low), int(r.high) + 1)  # randint's upper bound is exclusive
    if r.kind == "loguniform":
        return tune.loguniform(r.low, r.high)
    return tune.uniform(r.low, r.high)


def space_of(cfg: PipelineConfig, kind: str, task: str = "binary") -> dict[str, ParamRange]:
    """The configured search space of `kind`, checked against what the model kind takes (class
    weights mean nothing to a regression target and leave its space)."""
    s = cfg.training.search
    space = dict(s.xgboost if kind == "xgboost" else s.logreg)
    if task == "regression":
        space.pop("class_weight", None)
        if cfg.data.schema_.label_mapping.transform == "auto":  # the target's transform is searched too
            space[TARGET_PARAM] = ParamRange(kind="choice", values=["log1p", "none"])
    if kind == "logreg":
        unknown = sorted(set(space) - set(type(cfg.training.logreg).model_fields) - {TARGET_PARAM})
        if unknown:
            raise UserError(f"training.search.logreg: {unknown} are not training.logreg settings")
    if not space:
        raise UserError(f"training.search.{kind}: the search space is empty")
    return space


def defaults(cfg: PipelineConfig, kind: str, space: dict[str, ParamRange]) -> dict[str, Any]:
    """The untuned value of each searched parameter (the first trial)."""
    first = {TARGET_PARAM: space[TARGET_PARAM].values[0]} if TARGET_PARAM in space else {}
    if kind == "logreg":
        return {k: getattr(cfg.training.logreg, k) for k in space if k != TARGET_PARAM} | first
    x = cfg.training.xgboost
    known = {**XGBOOST_DEFAULTS, **x.params, "num_boost_round": x.num_boost_round}
    return {k: known[k] for k in space if k in known} | first


def with_params(cfg: PipelineConfig, kind: str, params: dict[str, Any]) -> PipelineConfig:
    """`cfg` with one trial's parameters in its training section."""
    out = cfg.model_copy(deep=True)
    params = {k: v for k, v in params.items() if k != TARGET_PARAM}  # the split's, not the model's
    if kind == "logreg":
        for k, v in params.items():
            setattr(out.training.logreg, k, v)
        return out
    x = out.training.xgboost
    for k, v in params.items():
        if k == "num_boost_round":
            x.num_boost_round = int(v)
        else:
            x.params = {**x.params, k: int(v) if k in ("max_depth", "max_bin") else v}
    return out


def _asha_sparing(untuned: dict[str, Any]) -> type:
    """ASHA that never stops the untuned trial: the search's best is the best finished trial, and
    with the untuned settings always finished it can only match or beat them on validation (ASHA
    alone stopped them on the demo data, a boosting run at a high learning rate leading early)."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class SparingASHA(ASHAScheduler):
        def on_trial_result(self, tune_controller, trial, result):
            decision = super().on_trial_result(tune_controller, trial, result)
            return TrialScheduler.CONTINUE if trial.config == untuned else decision

    return SparingASHA


def _trial(params: dict[str, Any], cfg: PipelineConfig, kind: str, prepared: Prepared, search_id: str,
           workers: int, fault: dict[str, Any] | None = None, deadline: float | None = None,
           folds: Folds | None = None) -> None:  # fmt: skip
    """The Tune function trainable: one training run with `params`, reported to Tune (cut at the
    search's `deadline` when it runs in-process, so it reports before Tune stops the search);
    with `folds`, judged by its mean error over them (train/crossval.py)."""
    import ray
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    if deadline is not None and time.time() >= deadline:
        # Queued before the search's deadline, started after it: nothing to train in the time left.
        # Tune wants its metric in every trial's result; not finished, so never the best.
        tune.report({"valid_loss": float("inf"), "step": 0, "finished": False})
        return
    if TARGET_PARAM in params:  # the regression target as this trial fits it (label.transform: auto)
        prepared = under_target(prepared, params[TARGET_PARAM])
    run = train_model(with_params(cfg, kind, params), kind, workers, prepared=prepared, trigger="search",
                      search={"id": search_id, "trial": trial_id, "params": params}, fault=fault,
                      deadline=deadline)  # fmt: skip
    y, p, _ = evaluate.predict_split(run.model, prepared.valid)
    metric = evaluate.task_metrics(prepared.spec.task, y, p)[prepared.spec.loss]
    loss = run.history[-1]["valid_loss"] if run.history else float("nan")
    if TARGET_PARAM in params or prepared.spec.loss == "mae":  # losses on two target scales compare in the
        loss = float(metric)  # label's units only; the linear model's loss is squared, mae is not
    if folds is not None:
        cv = cv_error(run, prepared, folds, deadline)
        if cv is None:  # the deadline came before every fold was fitted: not comparable, never the best
            tune.report({"valid_loss": float("inf"), "step": len(run.history) + 1, "run_dir": str(run.run_dir),
                         "finished": False})  # fmt: skip
            return
        metric = loss = cv
    tune.report({"valid_loss": loss,
                 "valid_metric": float(metric), "step": len(run.history) + 1, "run_dir": str(run.run_dir),
                 "nodes": sorted(set(run.worker_nodes)) or [ray.get_runtime_context().get_node_id()],
                 "resumed_from": run.resumed_from, "finished": True})  # fmt: skip


def _max_steps(cfg: PipelineConfig, kind: str, space: dict[str, ParamRange]) -> int:
    if kind == "logreg":
        return cfg.training.logreg.epochs + 1
    rounds = space.get("num_boost_round")
    return int(rounds.high if rounds is not None and rounds.high else cfg.training.xgboost.num_boost_round) + 1


def searches_root(cfg: PipelineConfig) -> str:
    """Where every search's Tune experiment directory lives."""
    return join(cfg.training.run_root, "searches")


def new_search_id(kind: str) -> str:
    """A fresh search id (the name of its Tune experiment directory)."""
    return f"search-{kind}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def run_search(cfg: PipelineConfig, kind: str, prepared: Prepared, trials: int | None = None,
               workers: int | None = None, search_id: str | None = None, resume: bool = False,
               fault: dict[str, Any] | None = None) -> SearchResult:  # fmt: skip
    """Search `kind`'s hyperparameters with Ray Tune over `prepared` (one split for every trial);
    `resume`: finish the search `search_id` whose driver stopped (finished trials are kept, the
    unfinished ones start again); `fault`: the training fault hook, for tests."""
    import ray
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from ray_pipeline.train.deadline import UntilDeadline, trial_reserve  # here: it imports Ray Tune, as above

    if kind not in ("logreg", "xgboost"):
        raise UserError(f"--model {kind!r}: expected logreg or xgboost")
    s = cfg.training.search
    # A time budget covers the whole search: the preparation below, every trial and the teardown.
    deadline = time.time() + s.time_budget_s if s.time_budget_s else None
    stop_at = deadline and deadline - trial_reserve(s.time_budget_s)
    space = space_of(cfg, kind, prepared.spec.task)
    workers = placement_of(cfg, kind, prepared, workers).workers
    search_id = search_id or new_search_id(kind)
    # One CPU stays free: a trial's evaluation runs Ray Data tasks, which wait behind trials holding
    # every CPU (forever when the trials themselves wait on them).
    free = int(ray.cluster_resources().get("CPU", 1)) - 1
    if workers:
        # The trial's own process only waits on its Ray Train workers, which hold the CPUs (Tune
        # refuses a trial asking for nothing at all: one byte of memory).
        resources: dict[str, float] = {"cpu": 0, "memory": 1}
        concurrent = s.max_concurrent or max(1, free // max(1, math.ceil(workers * cfg.training.cpus_per_worker)))
    else:
        resources = {"cpu": 1}
        concurrent = s.max_concurrent or max(1, free)
    # Every trial reads the same rows and writes the same input profile: computed once here, not
    # once per trial (each trial gets its own copy of `prepared`).
    prepared.train, prepared.valid, prepared.test = (ds.materialize() if ds is not None else None
                                                     for ds in (prepared.train, prepared.valid, prepared.test))
    profile_once(cfg, prepared)
    profile, prepared = prepared.input_profile, for_model(prepared, kind, cfg.training)  # once, not per trial
    prepared.input_profile = profile
    folds = None if workers else folds_of(prepared, s)  # a small table: every trial judged on k folds
    first = [defaults(cfg, kind, space)]
    if s.algorithm == "tpe":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study on the terminal

        searcher = OptunaSearch(points_to_evaluate=first, seed=s.seed)
    else:
        # it keeps its own limit on trials at once (TuneConfig's applies to Searchers only)
        searcher = BasicVariantGenerator(points_to_evaluate=first, random_state=np.random.RandomState(s.seed),
                                         max_concurrent=concurrent)  # fmt: skip
    if stop_at and s.algorithm == "tpe":
        searcher = UntilDeadline(searcher, stop_at)
    scheduler = FIFOScheduler()
    if s.scheduler == "asha":
        scheduler = _asha_sparing(first[0])(time_attr="step", max_t=_max_steps(cfg, kind, space),
                                            grace_period=s.grace, reduction_factor=3)  # fmt: skip
    trainable = tune.with_resources(
        tune.with_parameters(_trial, cfg=cfg, kind=kind, prepared=prepared, search_id=search_id, workers=workers,
                             fault=fault, deadline=stop_at, folds=folds),  # fmt: skip
        resources,
    )
    storage = searches_root(cfg)
    param_space = {k: _tune_range(r) for k, r in space.items()}
    # The experiment's state is saved at most this often (s): what a resumed search can keep.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    if resume:
        path = join(storage, search_id)
        if not tune.Tuner.can_restore(path):
            raise UserError(f"--resume {search_id}: no search to resume at {path}")
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, restart_errored=True,
                                   param_space=param_space)  # fmt: skip
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(metric="valid_loss", mode="min", search_alg=searcher, scheduler=scheduler,
                                        num_samples=trials or s.trials,
                                        max_concurrent_trials=concurrent if s.algorithm == "tpe" else None,
                                        time_budget_s=deadline and max(1.0, deadline - time.time())),  # fmt: skip
            run_config=tune.RunConfig(name=search_id, storage_path=storage, verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=cfg.training.max_failures)),
        )  # fmt: skip
    started = time.perf_counter()
    # Optuna warns for each repeated training_iteration Tune passes on from Ray Train's reports; it
    # only feeds Optuna's own pruning, which the search does not use.
    warnings.filterwarnings("ignore", message="The reported value is ignored because this `step=")
    # Tune prints its experiment path and a TensorBoard hint, and warns about every trial a time
    # budget stopped before its first report: the search's own summary (render_search) says what
    # happened, so none of that reaches the terminal (it goes to this module's debug log).
    # (TensorBoard's logger also refuses list values, and warns of the infinite loss an unfinished trial reports)
    for name in ("ray.tune.analysis.experiment_analysis", "ray.tune.logger.tensorboardx", "tensorboardX.x2num"):
        logging.getLogger(name).setLevel(logging.ERROR)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        grid = tuner.fit()
    log.debug("Ray Tune printed: %s", printed.getvalue())
    result = SearchResult(search_id, kind, s.algorithm, s.scheduler, prepared.spec.loss,
                          {k: r.model_dump(exclude_none=True) for k, r in space.items()}, join(storage, search_id),
                          judged_by=described(folds))  # fmt: skip
    result.trials = [_trial_of(r) for r in grid]
    result.seconds = time.perf_counter() - started
    return result


def _trial_of(r) -> Trial:
    """A Tune result as a Trial."""
    m = r.metrics or {}
    params = {k: v for k, v in (r.config or {}).items()}
    status = "failed" if r.error is not None else "finished" if m.get("finished") else "stopped"
    return Trial(trial_id=str(m.get("trial_id") or r.path.rsplit("/", 1)[-1]), params=params, status=status,
                 valid_metric=m.get("valid_metric"), last_valid_loss=m.get("valid_loss"), steps=int(m.get("step") or 0),
                 run_dir=m.get("run_dir"), nodes=list(m.get("nodes") or []), resumed_from=m.get("resumed_from"),
                 error=str(r.error).splitlines()[0][:300] if r.error is not None else None)  # fmt: skip
