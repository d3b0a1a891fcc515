"""An ensemble run from finished runs of one split: the blend weights fitted on the validation split,
evaluated on the test split like any model, written as a run directory of its own (kind
`ensemble`) that registers, passes the gates or not, and serves as one version."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import numpy as np
from scipy.special import expit, softmax

from ray_pipeline.config import PipelineConfig
from ray_pipeline.features.profile import save_profile, with_scores
from ray_pipeline.storage import join, local_dir
from ray_pipeline.train import evaluate, explain
from ray_pipeline.train.data import Prepared
from ray_pipeline.train.ensemble import EnsembleModel, blend_weights, combined_spec, member_columns
from ray_pipeline.train.models import load_model, logged_score
from ray_pipeline.train.rundir import PLOTS_DIR, RunArtifacts, model_dir, read_run, write_run
from ray_pipeline.train.runner import IMPORTANCE_MIN_S, IMPORTANCE_SHARE, TrainRun, profile_once
from ray_pipeline.train.target import valid_error


def _matrix(ds: Any) -> tuple[np.ndarray, np.ndarray]:
    batch = ds.take_batch(batch_size=10**9, batch_format="numpy")
    return np.asarray(batch["x"], dtype=np.float64), np.asarray(batch["y"], dtype=np.float64)


def _margin_loss(task: str, metric: str = "rmse") -> Any:
    """The validation loss of a blended margin: log-loss, or squared (absolute, for mae) error on the fitted target."""
    def loss(y: np.ndarray, z: np.ndarray) -> float:
        if task == "regression":
            return float(np.mean(np.abs(y - z))) if metric == "mae" else float(np.mean((y - z) ** 2))
        if task == "multiclass":
            p = np.clip(softmax(z, axis=1)[np.arange(len(y)), y.astype(np.int64)], 1e-15, 1.0)
            return float(-np.mean(np.log(p)))
        p = np.clip(expit(z), 1e-15, 1 - 1e-15)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))

    return loss


def _one_scale(prepared: Prepared, run_dirs: list[str]) -> list[str]:
    """The runs whose margins add up: a regression blend's members fit the target on one scale
    (log1p or raw), the scale of the member with the lowest validation error (`label.metric`)."""
    specs = [read_run(d).spec for d in run_dirs]
    scales = {s.label.transform if s.label else "none" for s in specs}
    if len(scales) < 2:
        return run_dirs
    errors = [valid_error(load_model(model_dir(d)), prepared.under(s)) for d, s in zip(run_dirs, specs)]
    best = specs[int(np.argmin(errors))].label.transform
    return [d for d, s in zip(run_dirs, specs) if s.label.transform == best]


def blend_runs(cfg: PipelineConfig, prepared: Prepared, run_dirs: list[str], trigger: str = "run") -> TrainRun | None:
    """The ensemble of the runs in `run_dirs` (trained on `prepared`), or None when one of them alone
    is best on the validation split (no blend beats it there)."""
    started = time.perf_counter()
    run_dirs = _one_scale(prepared, run_dirs)
    if len(run_dirs) < 2:
        return None
    runs = [read_run(d) for d in run_dirs]
    members = [load_model(model_dir(d)) for d in run_dirs]
    spec = combined_spec([r.spec for r in runs])
    columns = [member_columns(spec, r.spec) for r in runs]
    split = prepared.under(spec)
    Xv, yv = _matrix(split.valid)
    task = spec.task
    margins = [m.margin(Xv[:, c]) for m, c in zip(members, columns)]
    weights = blend_weights(task, yv, margins, _margin_loss(task, spec.loss))
    if max(weights) == 1.0:
        return None
    transform = spec.label.transform if spec.label else "none"
    model = EnsembleModel(members, columns, weights, spec.feature_names, task, transform)
    if task == "regression":
        model.output = evaluate.fit_output_map(model, split.train, split.valid, spec.loss)
    return _written(cfg, prepared, split, model, runs, list(run_dirs), trigger, started)


def refit_blend(cfg: PipelineConfig, prepared: Prepared, run_dir: str, members: list[TrainRun],
                trigger: str = "refit") -> TrainRun:  # fmt: skip
    """The ensemble in `run_dir` again, its members being `members` (each refitted on more rows):
    the same weights, entries and output map; its held-out test metrics stay its estimate."""
    held, blended = read_run(run_dir), load_model(model_dir(run_dir))
    model = EnsembleModel([m.model for m in members], blended.columns, blended.weights, blended.feature_names,
                          blended.task, blended.transform, blended.output)  # fmt: skip
    runs = [read_run(m.run_dir) for m in members]
    split = prepared.under(held.spec)
    split = replace(split, rows={**split.rows, "train": sum(split.rows.values())})  # what the members trained on
    return _written(cfg, prepared, split, model, runs, [str(m.run_dir) for m in members], trigger,
                    time.perf_counter(), refit_of=(run_dir, held.metrics))  # fmt: skip


def _written(cfg: PipelineConfig, prepared: Prepared, split: Prepared, model: EnsembleModel, runs: list[RunArtifacts],
             run_dirs: list[str], trigger: str, started: float, refit_of: tuple[str, dict] | None = None) -> TrainRun:  # fmt: skip
    """The ensemble's run directory: evaluated on the test split (or, refitted, its held-out
    run's metrics), profiled, explained; returned as a run."""
    spec, task = split.spec, model.task
    y, p, truth = evaluate.predict_split(model, split.test)
    metrics = evaluate.task_metrics(task, y, p, truth) if refit_of is None else refit_of[1]
    name = f"ensemble-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    run_dir = join(cfg.training.run_root, name)
    lineage = {**{k: v for k, v in runs[0].lineage.items() if k in ("training_set", "training_set_sha256",
                                                                       "event_time_range", "split", "config_hash")},
               "feature_spec_hash": spec.content_hash(), "trigger": trigger, "members": run_dirs,
               "started_at": datetime.now(timezone.utc).isoformat(),
               **({"refit_of": refit_of[0]} if refit_of else {})}  # fmt: skip
    params = {"weights": model.weights, "members": [r.kind for r in runs],
              "blend": "weighted margins, weights on a 0.1 grid fitted on the validation split",
              **({"output": model.output.to_json()} if model.output else {})}  # fmt: skip
    timings: dict[str, float] = {}
    with local_dir(run_dir) as local:
        write_run(local, model, RunArtifacts("ensemble", spec, metrics, params, lineage, split.rows, []))
        if prepared.raw_train is not None:
            profile_once(cfg, prepared)
            save_profile(with_scores(prepared.input_profile, logged_score(task, p),
                                     spec.label.outputs if task == "multiclass" else None), local)  # fmt: skip
        evaluate.save_plots(local / PLOTS_DIR, [], y, p, "ensemble", task)
        fit_s = sum(float(r.lineage.get("duration_s") or 0.0) for r in runs)
        t0 = time.perf_counter()
        found = explain.save_importance(str(local), model, spec, split.test,
                                        budget_s=max(IMPORTANCE_SHARE * fit_s, IMPORTANCE_MIN_S))  # fmt: skip
        timings.update(importance_s=time.perf_counter() - t0, importance_rows=found["rows"])
    timings.update(prepare_s=0.0, fit_s=time.perf_counter() - started, evaluate_s=0.0)
    return TrainRun(name, "ensemble", run_dir, model, spec, metrics, [], params, timings)
