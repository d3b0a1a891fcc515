"""Run a training job end to end: prepare splits, fit on Ray Train, evaluate, write the run directory."""

from __future__ import annotations

import math
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ray_pipeline.config import PipelineConfig
from ray_pipeline.data.ingest import unlabeled_rows
from ray_pipeline.errors import UserError
from ray_pipeline.features.build import training_set_path
from ray_pipeline.features.profile import input_profile, save_profile, with_scores
from ray_pipeline.features.spec import FeatureSpec
from ray_pipeline.progress import remote_bar
from ray_pipeline.storage import join, local_dir
from ray_pipeline.train import evaluate, explain
from ray_pipeline.train.data import Prepared, for_model, prepare_training_set, shard_refs
from ray_pipeline.train.entry import worker_loop
from ray_pipeline.train.models import LogisticModel, XGBoostModel, load_model, logged_score
from ray_pipeline.train.objective import task_weights
from ray_pipeline.train.placement import ClusterShape, Placement, place
from ray_pipeline.train.rundir import PLOTS_DIR, RunArtifacts, model_dir, read_run, write_run
from ray_pipeline.train.session import direct_loop
from ray_pipeline.train.worker import TUNE_DIRECT, TUNE_VIA_TRAIN


@dataclass
class TrainRun:
    """A finished training run and where its artifacts are."""

    name: str
    kind: str
    run_dir: str  # local path or object-store URI
    model: Any
    spec: FeatureSpec
    metrics: dict[str, float]
    history: list[dict[str, float]]
    params: dict[str, Any]
    timings: dict[str, float]
    worker_nodes: list[str] = field(default_factory=list)
    resumed_from: int | None = None
    resumed_at: float | None = None  # wall-clock time (epoch s) the restarted worker group resumed
    worker_memory_mb: list[list[float]] | None = None  # per rank: private MB at start, peak private, VmHWM
    placement: str | None = None  # why it trained where it did (train/placement.py)

    @classmethod
    def of(cls, run_dir: str) -> TrainRun:
        """The finished run in `run_dir` (path or URI) read back from its files: a search's best
        trial, a retrain's challenger, a run another process trained."""
        run = read_run(run_dir)
        # the stage timings live only in the process that trained it (the lineage keeps duration_s)
        return cls(run_dir.rstrip("/").rsplit("/", 1)[-1], run.kind, run_dir, load_model(model_dir(run_dir)), run.spec,
                   run.metrics, run.history, run.params, {}, list(run.lineage.get("worker_nodes") or []),
                   placement=(run.lineage.get("placement") or {}).get("why"))  # fmt: skip


def _trainer(kind: str, loop_config: dict[str, Any], cfg: PipelineConfig, prepared: Prepared, name: str,
             workers: int, cpus_per_worker: float, strategy: str, tune_trial: bool = False):  # fmt: skip
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.api.config import LoggingConfig
    from ray.train.xgboost import XGBoostConfig
    from ray.tune.integration.ray_train import TuneReportCallback

    from ray_pipeline.train.trainer import Trainer, XGBoostTrainer  # here: Ray Train's import cost, paid when used

    training = cfg.training
    scaling = ScalingConfig(
        num_workers=workers,
        resources_per_worker={"CPU": cpus_per_worker},
        placement_strategy=strategy,
    )
    run = RunConfig(
        name=name,  # unique per run: a reused name would silently resume an old run (docs/ARCHITECTURE.md)
        storage_path=training.run_root,
        failure_config=FailureConfig(max_failures=training.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=2),
        # Ray Train logs every report at INFO; our loops print their own progress.
        logging_config=LoggingConfig(log_level="WARNING"),
        # A search trial: rank 0's reports (each epoch's or round's validation loss) go on to Tune.
        callbacks=[TuneReportCallback()] if tune_trial else None,
    )
    # Workers read their rows by reference (train/data.shard_refs), not as Ray Train `datasets`.
    shards = {name: shard_refs(getattr(prepared, name), workers) for name in ("train", "valid")}
    loop_config = {**loop_config, "shards": shards}
    if kind == "xgboost":
        trainer: Trainer | XGBoostTrainer = XGBoostTrainer(
            worker_loop("xgboost"), train_loop_config=loop_config, xgboost_config=XGBoostConfig(),
            scaling_config=scaling, run_config=run,
        )  # fmt: skip
    else:
        # No backend: the loop brings its own allreduce (train/collective.py), cheaper to start.
        trainer = Trainer(worker_loop("logreg"), train_loop_config=loop_config, scaling_config=scaling, run_config=run)
    trainer.in_tune_trial = tune_trial
    return trainer


@dataclass
class _DirectResult:
    """What a fit returns, for a loop run without Ray Train."""

    return_value: dict[str, Any] | None
    error: BaseException | None = None
    path: str | None = None


def _direct(kind: str, loop_config: dict[str, Any], prepared: Prepared) -> _DirectResult:
    """Run the loop in this process without Ray Train (a search trial on a small table)."""
    shards = {name: shard_refs(getattr(prepared, name), 1) for name in ("train", "valid")}
    return _DirectResult(run_direct(kind, loop_config, shards))


def run_direct(kind: str, loop_config: dict[str, Any], shards: dict[str, list]) -> dict[str, Any]:
    """The loop's return value, run in this process on one rank's `shards` (train and valid)."""
    with direct_loop():
        return worker_loop(kind)({**loop_config, "shards": shards})


def model_from(kind: str, out: dict[str, Any], names: list[str], task: str, transform: str) -> Any:
    """The model a loop returned (`out`), over features `names`."""
    if kind == "xgboost":
        import xgboost

        # From the loop's return value: in-process runs keep no checkpoint to read it from.
        booster = xgboost.Booster()
        booster.load_model(bytearray(out["model_ubj"]))
        return XGBoostModel(booster, names, task=task, transform=transform)
    return _linear(out, names, task, transform)


# Newton's pass builds a (d+1)^2 Hessian (n d^2 work) but converges in a handful of iterations
# where lbfgs takes a hundred and gd hundreds of epochs (docs/benchmarks.md). Past a few hundred
# features the Hessian dominates and lbfgs's O(n d) passes win.
NEWTON_MAX_FEATURES = 500


# Ridge penalties a linear regression tries in-process (on the mean squared error of standardized
# inputs, so the scale of the target cancels out); the validation RMSE in the user's units picks one.
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
L2_ROWS_PER_INPUT = 50  # with more train rows per input the configured penalty stands (nothing to overfit)


def _linear(out: dict[str, Any], names: list[str], task: str, transform: str) -> LogisticModel:
    bias = out["bias"] if isinstance(out["bias"], float) else np.asarray(out["bias"])
    return LogisticModel(np.asarray(out["theta"]), bias, names, task=task, transform=transform)


def _l2_on_valid(config: dict[str, Any], prepared: Prepared, out: dict[str, Any], names: list[str],
                 transform: str) -> tuple[dict[str, Any], float]:  # fmt: skip
    """The linear regression refitted at each penalty of L2_GRID (in-process, from the fit's own
    weights: each converges in a few steps); the one with the lowest validation error (`label.metric`)
    and its l2. Unregularised on a few hundred rows and hundreds of inputs it can explode."""
    def error(result: dict[str, Any]) -> float:
        yv, pv, _ = evaluate.predict_split(_linear(result, names, "regression", transform), prepared.valid)
        return evaluate.regression_metrics(yv, pv)[prepared.spec.loss] if len(yv) else math.inf

    best, best_l2, best_error = out, config["l2"], error(out)
    start = warm_start("logreg", _linear(out, names, "regression", transform), names)
    for l2 in L2_GRID:
        if l2 == config["l2"]:
            continue
        tried = _direct("logreg", {**config, **start, "l2": l2, "progress_key": None}, prepared).return_value
        if tried is not None and (score := error(tried)) < best_error:
            best, best_l2, best_error = {**tried, "history": out["history"]}, l2, score
    return best, best_l2


# Iterations the second-order optimizers take at most, for the placement's estimate (Newton converges
# in a handful, lbfgs in up to a hundred: docs/benchmarks.md); the others run their epochs.
SECOND_ORDER_PASSES = {"newton": 10, "lbfgs": 100}


def placement_of(cfg: PipelineConfig, kind: str, prepared: Prepared, workers: int | None = None) -> Placement:
    """Where `kind` trains on `prepared` on this cluster (train/placement.py); `workers`: as asked."""
    t, inputs = cfg.training, len(prepared.spec.feature_names)
    if kind == "xgboost":
        optimizer, passes = "hist", t.xgboost.num_boost_round
    else:
        optimizer = resolve_optimizer(t.logreg.optimizer, inputs)
        passes = min(t.logreg.epochs, SECOND_ORDER_PASSES.get(optimizer, t.logreg.epochs))
    return place(t, kind, optimizer, prepared.rows["train"], inputs, passes, ClusterShape.current(), workers)


def profile_once(cfg: PipelineConfig, prepared: Prepared) -> None:
    """The input profile monitoring compares traffic with: the train split's rows and every ingested
    row without a label (traffic looks like those too; no model trains on them), computed once per
    split: every model kind, and every search trial, of the split shares it."""
    if prepared.input_profile is None and prepared.raw_train is not None:
        m = cfg.monitoring
        unlabeled = unlabeled_rows(cfg, prepared.spec.input_columns)
        prepared.input_profile = input_profile(prepared.raw_train, prepared.spec, m.bins, m.top_k, unlabeled)


def resolve_optimizer(optimizer: str, n_features: int) -> str:
    """The optimizer `auto` stands for at this many features."""
    if optimizer != "auto":
        return optimizer
    return "newton" if n_features <= NEWTON_MAX_FEATURES else "lbfgs"


def class_counts(ds: Any, k: int) -> np.ndarray:
    """Rows per class index in a prepared split (one pass over its labels)."""
    counts = np.zeros(k)
    for batch in ds.iter_batches(batch_size=65536, batch_format="numpy"):
        counts += np.bincount(np.asarray(batch["y"]).astype(np.int64), minlength=k)[:k]
    return counts


def loop_config(kind: str, cfg: PipelineConfig, spec: FeatureSpec, workers: int,
                fault: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    """Everything the worker loop needs, as plain data (the task from the FeatureSpec's label, which
    the training set was prepared under)."""
    training = cfg.training
    # In-process the loop's lines would land in the user's terminal, where the progress bar says it.
    log_every = 10 if workers else None
    common = {"n_features": len(spec.feature_names), "checkpoint_every": training.checkpoint_every,
              "log_every": log_every, "task": spec.task, "n_outputs": spec.label.outputs if spec.label else 1,
              "metric": spec.loss,
              **(fault or {})}  # fmt: skip
    if kind == "xgboost":
        x = training.xgboost
        types = spec.feature_types
        return {
            **common,
            **({"feature_types": types} if "c" in types else {}),  # native categories
            "num_boost_round": x.num_boost_round,
            "early_stopping_rounds": x.early_stopping_rounds,
            "eval_train": x.eval_train,
            "params": dict(x.params),
            "nthread": max(1, int(round(training.cpus_per_worker))),
            "seed": 0,
        }
    lr = training.logreg
    return {
        **common,
        "optimizer": resolve_optimizer(lr.optimizer, common["n_features"]),
        "learning_rate": lr.learning_rate,
        "lr_schedule": lr.lr_schedule,
        "epochs": lr.epochs,
        "batch_size": lr.batch_size,
        "momentum": lr.momentum,
        "l2": lr.l2,
        "class_weight": lr.class_weight,
        "patience": lr.early_stopping_patience,
        "tol": lr.tol,
        "gtol": lr.gtol,
        "memory": lr.memory,
        "seed": lr.seed,
    }


# Importance is a report on the model, not the model: it gets this share of the fit's time (and at
# least IMPORTANCE_MIN_S), its rows sampled to fit (train/explain.py).
IMPORTANCE_SHARE, IMPORTANCE_MIN_S = 0.1, 2.0
WARM_KEYS = ("init_model_ubj", "init_params")


def warm_start(kind: str, init: Any, feature_names: list[str]) -> dict[str, Any]:
    """The loop settings that start `kind` from the fitted model `init` instead of from nothing."""
    if init.kind != kind or list(init.feature_names) != list(feature_names):
        raise UserError(f"a warm start of {kind} needs a {kind} model over the same features; got {init.kind} "
                        f"over {len(init.feature_names)} features")  # fmt: skip
    if kind == "xgboost":
        best = init.booster.attr("best_iteration")
        # the trees the champion scores with (those after its best round were early stopping's look-ahead)
        booster = init.booster[: int(best) + 1] if best is not None else init.booster.copy()
        booster.set_attr(best_iteration=None, best_score=None)  # early stopping in the new rounds sets its own
        return {"init_model_ubj": bytes(booster.save_raw("ubj"))}
    weights = np.asarray(init.weights, dtype=np.float64)
    k = 1 if weights.ndim == 1 else weights.shape[1]
    bias = np.asarray(init.bias, dtype=np.float64).reshape(1, k)
    return {"init_params": np.vstack([weights.reshape(-1, k), bias]).ravel().tolist()}  # the loop's layout


def train_model(
    cfg: PipelineConfig,
    kind: str,
    workers: int | None = None,
    prepared: Prepared | None = None,
    fault: dict[str, Any] | None = None,
    placement_strategy: str = "PACK",
    measure_memory: bool = False,
    trigger: str = "train",
    search: dict[str, Any] | None = None,
    init: Any = None,
    refit_of: Any = None,
    deadline: float | None = None,
) -> TrainRun:
    """Train `kind` ("logreg" or "xgboost") on the feature store's training set and evaluate it.

    `workers`: Ray Train workers, 0 for in-process; by default where the run's estimated cost says
    (`placement_of`), recorded in its lineage. `trigger`: what started the
    run (run, train, feedback, search), kept in its lineage. `search`: this run is a Ray Tune trial
    (its search id and trial id go into its lineage; each epoch's or round's validation loss goes to
    Tune, from the loop in this process or, on workers, through Ray Train's TuneReportCallback).
    `init`: a model of the same kind over `prepared.spec`'s features to warm-start from (`warm_start`).
    `refit_of`: the held-out run (a `RefitOf`) this one repeats on more rows (train/refit.py): its
    penalty and output map are kept, and its test metrics stay the run's estimate. `deadline`: the
    wall-clock time (`time.time()`) an in-process search trial stops at, keeping its best so far.
    """
    if kind not in ("logreg", "xgboost"):
        raise UserError(f"--model {kind!r}: expected logreg or xgboost")
    timings: dict[str, float] = {}
    started_at = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    if prepared is None:
        prepared = prepare_training_set(cfg)
    base, prepared = prepared, for_model(prepared, kind, cfg.training)  # e.g. XGBoost's native categories
    timings["prepare_s"] = time.perf_counter() - t0

    placement = placement_of(cfg, kind, prepared, workers)
    workers = placement.workers
    name = f"{kind}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    names = prepared.spec.feature_names
    config = {**loop_config(kind, cfg, prepared.spec, workers, fault),
              "progress_key": name if search is None else None, "measure_memory": measure_memory}  # fmt: skip
    if kind == "xgboost":  # an in-process search trial holds one CPU of the node: one thread
        config["nthread"] = 1 if search is not None and not workers else placement.threads
    if search is not None:
        config["tune_report"] = TUNE_VIA_TRAIN if workers else TUNE_DIRECT
        if deadline is not None and not workers:
            config["deadline"] = deadline
    if init is not None:
        config.update(warm_start(kind, init, names))
    if kind == "xgboost" and cfg.training.xgboost.class_weight is not None and prepared.spec.task != "regression":
        config["class_weights"] = list(task_weights(prepared.spec.task, cfg.training.xgboost.class_weight,
                                                    class_counts(prepared.train, max(config["n_outputs"], 2))))  # fmt: skip
    total = config["num_boost_round"] if kind == "xgboost" else config["epochs"]
    t0, fit_started = time.perf_counter(), time.time()
    # A trial's progress is Tune's to show; a bar per trial would also put the board actor inside
    # one trial's placement group, which ends with that trial.
    bar = nullcontext() if search is not None else remote_bar(name, f"train {kind}", total,
                                                              "rounds" if kind == "xgboost" else "epochs")  # fmt: skip
    with bar:
        if search is not None and not workers:  # a trial in-process: the loop itself (train/session.py)
            result = _direct(kind, config, prepared)
        else:
            result = _trainer(kind, config, cfg, prepared, name, workers, placement.cpus_per_worker,
                              placement_strategy, tune_trial=search is not None).fit()  # fmt: skip
    timings["fit_s"] = time.perf_counter() - t0
    timings["loop_s"] = float((result.return_value or {}).get("loop_s", float("nan")))
    if result.error is not None:
        raise result.error
    out = result.return_value or {}
    if "entered_at" in out:  # Ray Train's fixed cost, split around rank 0's loop (wall clocks)
        timings.update(fit_parts(fit_started, out, time.time(), timings["loop_s"]))
    target_transform = prepared.spec.label.transform if prepared.spec.label else "none"
    if kind == "logreg":
        few_rows = prepared.rows["train"] < L2_ROWS_PER_INPUT * max(len(names), 1)
        chooses = search is None and init is None and refit_of is None
        if config["task"] == "regression" and few_rows and not workers and chooses:
            out, config["l2"] = _l2_on_valid(config, prepared, out, names, target_transform)
    model = model_from(kind, out, names, config["task"], target_transform)

    if refit_of is not None:  # the validation rows are training rows now: the held-out run's map
        model.output = refit_of.output
    elif config["task"] == "regression":  # smearing and bounds, from the train and validation splits
        model.output = evaluate.fit_output_map(model, prepared.train, prepared.valid, prepared.spec.loss)
    t0 = time.perf_counter()
    y, p, truth = evaluate.predict_split(model, prepared.test)
    test_metrics = evaluate.task_metrics(config["task"], y, p, truth) if refit_of is None else refit_of.metrics
    timings["evaluate_s"] = time.perf_counter() - t0

    run_dir = join(cfg.training.run_root, name)
    history = out.get("history", [])
    internal = ("fail_marker", "progress_key", "measure_memory", "tune_report", *WARM_KEYS)
    params = {"workers": workers, **{k: v for k, v in config.items() if k not in internal},
              **({"output": model.output.to_json()} if getattr(model, "output", None) else {})}  # fmt: skip
    lineage = {
        "training_set": training_set_path(cfg),
        # the path is overwritten by every `features fit`: the digest says which rows these were
        "training_set_sha256": prepared.source_sha256,
        "event_time_range": prepared.split.get("event_time_range"),
        "split": prepared.split,
        "feature_spec_hash": prepared.spec.content_hash(),
        "config_hash": cfg.content_hash(),
        "ray_train_run": str(result.path),
        "worker_nodes": out.get("worker_nodes", []),
        "trigger": trigger,
        "placement": placement.lineage(),
        "started_at": started_at.isoformat(),
        "duration_s": round(timings["prepare_s"] + timings["fit_s"] + timings["evaluate_s"], 3),
        **({"fit_parts_s": {k: round(timings[k], 3) for k in ("start_s", "data_s", "loop_s", "teardown_s")}}
           if "start_s" in timings else {}),  # fmt: skip
        **({"search": search} if search is not None else {}),
        **({"warm_start": True} if init is not None else {}),
        **({"refit_of": refit_of.run_dir, "metrics_from": "the test split of refit_of, before these rows were "
            "trained on"} if refit_of is not None else {}),  # fmt: skip
    }
    artifacts = RunArtifacts(kind, prepared.spec, test_metrics, params, lineage,
                             prepared.rows, history)  # fmt: skip
    with local_dir(run_dir) as local:  # uploaded when run_root is an object-store URI
        write_run(local, model, artifacts)
        if prepared.raw_train is not None:  # what monitoring compares served traffic with
            t0 = time.perf_counter()
            profile_once(cfg, base)  # one per split, whichever encoding each model takes
            prepared.input_profile = base.input_profile
            save_profile(with_scores(prepared.input_profile, logged_score(config["task"], p),
                                     config["n_outputs"] if config["task"] == "multiclass" else None), local)  # fmt: skip
            timings["profile_s"] = time.perf_counter() - t0
        evaluate.save_plots(local / PLOTS_DIR, history, y, p, kind, config["task"])
        # Why the version scores what it scores, stored with it; a search computes it for its best
        # trial only (workflow/search.py).
        if prepared.test is not None and len(y) and search is None:
            t0 = time.perf_counter()
            found = explain.save_importance(str(local), model, prepared.spec, prepared.test,
                                            budget_s=max(IMPORTANCE_SHARE * timings["fit_s"], IMPORTANCE_MIN_S))
            timings["importance_s"] = time.perf_counter() - t0
            timings["importance_rows"] = found["rows"]
    return TrainRun(
        name, kind, run_dir, model, prepared.spec, test_metrics, history, params, timings,
        out.get("worker_nodes", []), out.get("resumed_from"), out.get("resumed_at"), out.get("worker_memory_mb"),
        placement.why,
    )  # fmt: skip


def fit_parts(fit_started: float, out: dict[str, Any], fit_ended: float, loop_s: float) -> dict[str, float]:
    """A fit's wall time in parts: `start_s` until rank 0's loop function runs (the trainer built,
    shards handed over, controller and worker processes started, the placement group, the worker's
    imports), `data_s` in it before and after the loop (reading the shard, XGBoost's matrices),
    `teardown_s` from its return until the driver has the result (the group stopped)."""
    inside = out["left_at"] - out["entered_at"]
    return {"start_s": out["entered_at"] - fit_started, "data_s": max(inside - loop_s, 0.0),
            "teardown_s": fit_ended - out["left_at"]}


def _parts(t: dict[str, float]) -> str:
    if "start_s" not in t:
        return ""
    return (f" (Ray Train start {t['start_s']:.1f} s, data {t['data_s']:.1f} s, loop {t['loop_s']:.1f} s, "
            f"teardown {t['teardown_s']:.1f} s)")


def summary(run: TrainRun) -> str:
    """Plain-text report of a run."""
    t = run.timings
    nodes = len(set(run.worker_nodes))
    where = f"{len(run.worker_nodes)} worker(s) on {nodes} node(s)" if run.params.get("workers") else "in-process"
    where += f" ({run.placement})" if run.placement else ""
    return "\n".join(
        [
            evaluate.render(run.kind, run.metrics),
            f"         {len(run.history)} {'epochs' if run.kind == 'logreg' else 'rounds'}, "
            f"{where}; prepare {t['prepare_s']:.1f} s, "
            f"fit {t['fit_s']:.1f} s{_parts(t) if run.params.get('workers') else ''}, evaluate {t['evaluate_s']:.1f} s"
            + (f", importance {t['importance_s']:.1f} s on {int(t['importance_rows']):,} rows" if "importance_s" in t else "")
            + f" -> {run.run_dir}",
        ]
    )
