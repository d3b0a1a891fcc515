"""A hyperparameter search as a step of the pipeline: search on Ray Tune, index every finished
trial as a run, keep the best trial's run (no refit: it trained on the same split with the same
code, so refitting would only repeat it), register it with its search and offer it to the gates."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from ray_pipeline.config import PipelineConfig
from ray_pipeline.errors import UserError
from ray_pipeline.registry.handoff import model_sha256, open_registry, same_model
from ray_pipeline.registry.runs import index_run
from ray_pipeline.registry.versions import ModelVersion
from ray_pipeline.storage import join, write_bytes
from ray_pipeline.train.data import Prepared, prepare_training_set
from ray_pipeline.train.explain import save_importance
from ray_pipeline.train.models import load_model
from ray_pipeline.train.rundir import model_dir, read_run
from ray_pipeline.train.runner import IMPORTANCE_MIN_S, IMPORTANCE_SHARE, TrainRun
from ray_pipeline.train.search import SEARCH_FILE, SearchResult, new_search_id, run_search, searches_root, space_of
from ray_pipeline.workflow.promotion import Promotion, register_and_promote


@dataclass
class SearchOutcome:
    """A search and what became of its best trial."""

    search: SearchResult
    promotion: Promotion

    def render(self) -> str:
        """Trials table, the best trial, the registration and the gates' report."""
        return "\n".join([render_search(self.search), *self.promotion.lines])


def render_search(s: SearchResult) -> str:
    """The trials, best first, and which one won."""
    lines = [f"{s.search_id}: {len(s.trials)} trials of {s.kind} ({s.algorithm}, {s.scheduler}) in {s.seconds:.1f} s, "
             f"judged on {s.judged_by}"]
    lines.append(f"  {'trial':<18} {'status':<9} {'valid ' + s.metric:>14}  {'node(s)':<13}  params")
    for t in sorted(s.trials, key=lambda t: (t.valid_metric is None, t.valid_metric or 0.0)):
        metric = f"{t.valid_metric:.6f}" if t.valid_metric is not None else "-"
        params = ", ".join(f"{k}={_short(v)}" for k, v in t.params.items())
        # node ids shortened as `ray status` and the dashboard show them
        nodes = ",".join(n[:6] for n in t.nodes) or "-"
        resumed = f" (a worker was lost: resumed from {t.resumed_from})" if t.resumed_from is not None else ""
        lines.append(f"  {t.trial_id[-18:]:<18} {t.status:<9} {metric:>14}  {nodes:<13}  {params}{resumed}")
    best = s.best
    if best is not None:
        lines.append(f"best: {best.trial_id} (validation {s.metric} {best.valid_metric:.6f})")
    return "\n".join(lines)


def _short(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def keep_best(cfg: PipelineConfig, result: SearchResult, prepared: Prepared) -> TrainRun | ModelVersion:
    """Index every finished trial as a run; the best one's run with search.json and importance.json
    written into it, or the registered version whose model files it repeats."""
    registry = open_registry(cfg)
    for t in result.trials:
        if t.run_dir:
            index_run(registry, t.run_dir)
    best = result.best
    if best is None or best.run_dir is None:
        why = "; ".join(f"{t.trial_id}: {t.status} {t.error or ''}".strip() for t in result.trials)
        raise UserError(f"{result.search_id}: no trial finished ({why})")
    twin = same_model(registry, cfg.registry.model_name, model_sha256(best.run_dir))
    if twin is not None:  # e.g. the untuned settings won and the champion was trained with them
        return twin
    write_bytes(join(best.run_dir, SEARCH_FILE), json.dumps(result.summary(), indent=2, default=str).encode())
    took = float(read_run(best.run_dir).lineage.get("duration_s") or 0.0)  # the trial's own share, as a run's
    taken = prepared.under(read_run(best.run_dir).spec)  # the rows as the best trial took them
    save_importance(best.run_dir, load_model(model_dir(best.run_dir)), taken.spec, taken.test,
                    budget_s=max(IMPORTANCE_SHARE * took, IMPORTANCE_MIN_S))
    return TrainRun.of(str(best.run_dir))


def not_registered(twin: ModelVersion) -> str:
    """What a search says when its best trial is a registered model again."""
    return f"the best trial's model is {twin.uri} again (same model files): not registered"


def search_and_register(cfg: PipelineConfig, kind: str, trials: int | None = None,
                        echo: Callable[[str], None] | None = None, resume: str | None = None) -> SearchOutcome:  # fmt: skip
    """Search `kind` on the feature store's training set (or finish the stopped search `resume`),
    register the best trial (its version carries search.json: space, algorithm, every trial, the
    best parameters) and promote it through the gates."""
    space_of(cfg, kind)  # a space the model kind does not take stops here, before any data is read
    search_id = resume or new_search_id(kind)
    if echo is not None:
        echo(f"{'resuming' if resume else 'starting'} {search_id} (in {searches_root(cfg)}; if this stops, "
             f"`tune --resume {search_id}` finishes it)")  # fmt: skip
    prepared = prepare_training_set(cfg)
    result = run_search(cfg, kind, prepared, trials, search_id=search_id, resume=resume is not None)
    kept = keep_best(cfg, result, prepared)
    if isinstance(kept, TrainRun):
        promotion = register_and_promote(cfg, [kept], cfg.serving.alias)
    else:
        registry = open_registry(cfg)
        holder = registry.aliases(cfg.registry.model_name).get(cfg.serving.alias)
        champion = registry.get(cfg.registry.model_name, holder) if holder is not None else None
        promotion = Promotion([], champion, [not_registered(kept)])
    outcome = SearchOutcome(result, promotion)
    if echo is not None:
        echo(outcome.render())
    return outcome


# A budget's share per model kind: the linear model's trials are seconds, a tree model's search has
# more to find. Each trial stops early on its validation loss, so the rounds follow the learning rate.
BUDGET_WEIGHTS = {"logreg": 1.0, "xgboost": 3.0}
BUDGET_ROUNDS, BUDGET_PATIENCE = 2000, 50  # XGBoost's rounds cap and early stopping in a budgeted search


def budget_share(kind: str, kinds: list[str]) -> float:
    """The share of a run's time budget model `kind` searches in."""
    return BUDGET_WEIGHTS[kind] / sum(BUDGET_WEIGHTS[k] for k in kinds)


def budgeted(cfg: PipelineConfig, kind: str, seconds: float) -> PipelineConfig:
    """The settings of a search of `kind` within `seconds`: as many trials as fit (Tune stops the
    search at the budget, running trials included), no scheduler stopping trials by their early
    rounds (a small learning rate is slow, not worse: early stopping on the validation loss ends
    each trial instead), XGBoost's rounds capped high so a small eta can use them."""
    out = cfg.model_copy(deep=True)
    s = out.training.search
    s.time_budget_s, s.trials, s.scheduler, s.algorithm = seconds, 10_000, "fifo", "tpe"
    if kind == "xgboost":
        x = out.training.xgboost
        x.num_boost_round = max(x.num_boost_round, BUDGET_ROUNDS)
        x.early_stopping_rounds = max(x.early_stopping_rounds, BUDGET_PATIENCE)
    return out
