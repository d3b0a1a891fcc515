"""A feedback retrain: the pipeline's own steps run again on the labeled traffic the feedback stage
selects, with the holdout as the test split and the paired-bootstrap gates deciding the promotion.

1. `feedback.selection` picks the rows: the newest labeled windows are the holdout, every labeled
   row before them feeds back once as accepted rows of the data pipeline (the arrow back).
2. The feature step rebuilds views and the training set; the train step retrains each configured
   model kind on everything before the holdout, newest rows included (validation for early
   stopping: a random slice of it), with the champion's searched parameters or, configured so, the
   best trial of a small search on Ray Tune (`feedback.hyperparameters`).
3. Challenger and champion are scored on the holdout, which neither trained on. A challenger that
   is a registered model again (same model files), scores every row as the champion does, or that
   the gates refuse is not registered (no version to clean up, @challenger untouched). Otherwise it
   is registered as @challenger and offered to the serving alias through `registry.gates.promote`
   with `HoldoutGates`. Serving replicas hot-reload the alias move.
   With `feedback.refit` (the default) the promoted recipe is then trained again on every labeled
   row, the judging window included, and that refit is what the alias serves.
4. A record of every run (`feedback.records`), also when it fails: the error and the stage.
Two retrains never run at once: a lock in the registry database.
"""

from __future__ import annotations

import logging
import time
import traceback
import uuid
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_pipeline.config import PipelineConfig
from ray_pipeline.errors import UserError
from ray_pipeline.features.build import build_features, materialize_online
from ray_pipeline.features.profile import input_profile
from ray_pipeline.feedback.records import write_record
from ray_pipeline.feedback.selection import fed_keys, feed_back, labeled_traffic, new_labels, select_rows, span
from ray_pipeline.monitor.estimate import save_calibration
from ray_pipeline.registry.gates import HoldoutGates, PromotionRefused, primary_metric, promote
from ray_pipeline.registry.handoff import load, model_sha256, open_registry, register_run, same_model
from ray_pipeline.registry.race import Race, row_losses
from ray_pipeline.registry.significance import identical
from ray_pipeline.registry.store import Registry
from ray_pipeline.registry.traffic import current_traffic, set_traffic
from ray_pipeline.registry.versions import ModelVersion
from ray_pipeline.train import evaluate
from ray_pipeline.train.data import iso_us, model_inputs, prepare_training_set, with_columns
from ray_pipeline.train.models import Predictor
from ray_pipeline.train.runner import TrainRun
from ray_pipeline.train.search import run_search, with_params
from ray_pipeline.workflow.pipeline import train_models
from ray_pipeline.workflow.search import keep_best

log = logging.getLogger(__name__)

LOCK_TTL_S = 6 * 3600  # a crashed retrain's lock expires after this


def retrain(cfg: PipelineConfig, reason: str = "manual", window_s: float | None = None,
            until: datetime | None = None, run_id: str | None = None) -> dict[str, Any]:  # fmt: skip
    """One feedback run; returns (and writes) its record. A run that fails records its error and the
    stage it failed in (decision "failed") instead of raising.

    `until`: end of the newest complete window (default: now less `grace_s`, floored to a window);
    labeled traffic after it is still arriving and never used. `run_id`: to redo an interrupted run
    under its own name (its files are replaced, nothing is written twice)."""
    schema = cfg.data.schema_
    if not (schema.entity_key and schema.event_timestamp):
        # Fed-back rows join training by entity and time, and the holdout is the latest windows.
        raise UserError("retrain needs data.schema.entity_key and data.schema.event_timestamp: labeled traffic "
                         "becomes training rows by them (send both with each record)")  # fmt: skip
    window_s = window_s or cfg.monitoring.window_s
    if until is None:
        now = datetime.now(timezone.utc).timestamp() - cfg.monitoring.grace_s
        until = datetime.fromtimestamp(now - now % window_s, tz=timezone.utc)
    name = cfg.registry.model_name
    run_id = run_id or f"feedback-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    record: dict[str, Any] = {"id": run_id, "trigger": reason, "started_at": datetime.now(timezone.utc).isoformat(),
                              "until": until.isoformat()}  # fmt: skip
    registry = open_registry(cfg)
    holder = registry.acquire_lock(f"retrain:{name}", run_id, LOCK_TTL_S)
    if holder is not None:
        record.update(decision="skipped", why=f"another retrain holds the lock: {holder}")
        return write_record(cfg, record)
    started = time.perf_counter()
    try:
        _run(cfg, record, registry, window_s, until)
        record.pop("stage", None)
    except Exception as exc:  # recorded, not raised: the monitor alerts on it and keeps watching
        log.warning("feedback run %s failed in stage %s: %s", run_id, record.get("stage"), exc)
        record.update(decision="failed", error=f"{type(exc).__name__}: {exc}"[:2000],
                      traceback=traceback.format_exc()[-8000:])  # fmt: skip
    finally:
        registry.release_lock(f"retrain:{name}", run_id)
        record["wall_s"] = round(time.perf_counter() - started, 2)
        write_record(cfg, record)
    return record


def _run(cfg: PipelineConfig, record: dict[str, Any], registry: Registry, window_s: float, until: datetime) -> None:
    """The steps of one feedback run, filling `record` (`stage` says where it is)."""
    fb = cfg.monitoring.feedback
    name, alias = cfg.registry.model_name, cfg.serving.alias
    record["stage"] = "select"
    labeled = labeled_traffic(cfg, until)
    record["labeled_rows"] = labeled.num_rows
    if labeled.num_rows < fb.min_labeled_rows:
        record.update(decision="skipped", why=f"{labeled.num_rows} labeled rows, need {fb.min_labeled_rows}")
        return
    new, since = new_labels(cfg, labeled, record["id"])
    record["new_labels"] = new.num_rows
    if new.num_rows < fb.min_new_labels:
        record.update(decision="skipped", why=f"{new.num_rows} labels ingested since the last retrain's "
                                              f"(through {since}), need {fb.min_new_labels}")  # fmt: skip
        return
    chosen = select_rows(labeled, int(window_s * 1e6), fb.holdout_windows, fed_keys(cfg))
    holdout = chosen.holdout
    record["data"] = {
        "labels_through": pc.max(labeled["labeled_at"]).as_py().isoformat(),
        "holdout": {**span(holdout, "ts"), "events": span(holdout, "event_ts")},
        "fed_back_rows": chosen.fresh.num_rows,
        "not_fed_without_entity": chosen.no_entity,
    }
    if len(set(holdout["label"].to_pylist())) < 2:
        record.update(decision="skipped", why="the holdout window has no labels of both classes")
        return
    record["stage"] = "feed_back"
    feed_back(cfg, chosen.fresh, record["id"])
    record["stage"] = "features"
    label = cfg.data.schema_.label
    test_rows = holdout.rename_columns([label if c == "label" else c for c in holdout.column_names])
    since_us = None
    if fb.lookback_s is not None:
        fed_events = pc.cast(pc.coalesce(labeled["event_ts"], labeled["ts"]), pa.int64())
        since_us = pc.max(fed_events).as_py() - int(fb.lookback_s * 1e6)
        record["data"]["training_events_since"] = iso_us(since_us)
    build_features(cfg)
    if cfg.features.views:  # the feature step as `run` has it: entity lookups see the fed-back rows too
        record["data"]["online"] = {name: c["written"] for name, c in materialize_online(cfg).items()}
    record["stage"] = "prepare"
    prepared = prepare_training_set(cfg, holdout=test_rows, since_us=since_us)
    prepared.input_profile = _reference(cfg, holdout, prepared.spec)
    events = prepared.split.get("event_time_range") or [None, None]
    record["data"]["train"] = {"rows": prepared.rows["train"], "events_from": events[0], "events_to": events[1]}
    record["data"]["valid"] = {"rows": prepared.rows["valid"], "how": "random slice of the same range, "
                               f"stratified by label (seed {cfg.training.split.seed})"}  # fmt: skip
    y = np.asarray(holdout["label"].to_numpy(zero_copy_only=False), dtype=np.float64)
    record["stage"] = "train"
    champion = load(registry, f"models:/{name}@{alias}")
    p_champ = champion.predict(model_inputs(holdout, champion.spec)).outputs
    candidates = []
    task = champion.spec.label.task
    runs = challengers(cfg, prepared, champion.version.kind, champion.version.lineage, record)
    if fb.warm_start:
        runs += _warm_challenger(cfg, record, champion, test_rows, since_us, prepared.input_profile)
    for run in runs:
        p = Predictor(run.spec, run.model).predict(model_inputs(holdout, run.spec)).outputs
        candidates.append((evaluate.task_metrics(task, y, p), p, run))
    record["models"] = {"champion": {"version": champion.version.version,
                                     "holdout": evaluate.task_metrics(task, y, p_champ)}}  # fmt: skip
    warm = record.get("warm_start", {}).get("run")
    for m, _, run in candidates:
        record["models"][run.name] = {"kind": run.kind, "holdout": m, "run_dir": str(run.run_dir),
                                      "start": "warm" if run.name == warm else "fresh"}  # fmt: skip
    record["stage"] = "compare"
    gated = _first_passing(cfg, registry, record, candidates, y, p_champ, champion.version, task)
    if gated is None:
        return
    best, gates, p_best, to_register = gated
    if not to_register:
        if fb.race_windows and task != "multiclass":  # the log holds a multiclass answer's class only
            _start_race(cfg, registry, record, best, y, p_best, p_champ, champion.version, task)
        return
    record["stage"] = "register"
    if task == "binary":  # its first quality estimates are calibrated on the window that judged it
        save_calibration(best.run_dir, y, p_best)
    version = register_run(registry, name, best.run_dir)
    registry.set_alias(name, cfg.serving.traffic.challenger_alias, version.version, f"{record['id']}: {record['trigger']}",
                       "feedback")  # fmt: skip
    record["challenger"] = version.uri
    if not fb.promote:
        record["decision"] = "registered (promotion off)"
        return
    record["stage"] = "promote"
    try:  # through the same promote as every alias move, the gate being the holdout comparison
        change, report = promote(registry, name, version.version, alias, gates, actor="feedback",
                                 reason=f"{record['id']} on holdout")  # fmt: skip
    except PromotionRefused as refused:  # the champion moved meanwhile: @challenger goes back where it was
        registry.rollback(name, cfg.serving.traffic.challenger_alias, actor="feedback")
        record.update(decision="refused", gate_report=str(refused).split("\n", 1)[1])
        return
    record.update(decision="promoted", promoted=f"@{alias}: v{change.from_version} -> v{change.to_version}",
                  served=version.uri)  # fmt: skip
    if fb.refit:
        record["stage"] = "refit"
        calibration = (y, p_best) if task == "binary" else None
        _refit(cfg, registry, record, chosen.holdout, test_rows, best, since_us, prepared.input_profile, version,
               calibration, champion)  # fmt: skip


def _refit(cfg: PipelineConfig, registry: Registry, record: dict[str, Any], holdout: pa.Table, test_rows: pa.Table,
           best: Any, since_us: int | None, profile: dict[str, Any], gated: ModelVersion,
           calibration: tuple[np.ndarray, np.ndarray] | None, champion: Any) -> None:  # fmt: skip
    """Train the promoted recipe (kind and settings) again on every labeled row, the judging window
    included, and serve that in the gated version's place: the gates judged the recipe on rows it
    had not seen; without the refit the served model would never learn from its newest window. The
    refit's own test figures are in-sample on that window; the gated version's are the honest ones.
    `calibration`: the gated version's labels and scores on that window, out of sample, which its
    quality estimates start from (the refit's own scores there are in-sample). A warm-started winner
    is refitted the same way: from `champion` (the one it was judged against), the window included."""
    name, alias = cfg.registry.model_name, cfg.serving.alias
    feed_back(cfg, holdout.filter(pc.is_valid(holdout["entity"])), f"{record['id']}-holdout")
    build_features(cfg)
    if cfg.features.views:
        materialize_online(cfg)
    warm = record.get("warm_start", {}).get("run") == best.name
    prepared = prepare_training_set(cfg, holdout=test_rows, spec=champion.spec if warm else None,
                                    since_us=record["warm_start"]["since_us"] if warm else since_us)  # fmt: skip
    prepared.input_profile = profile
    params = (record.get("params_from_champion", {}).get(best.kind)
              or record.get("searches", {}).get(best.kind, {}).get("best_params"))  # fmt: skip
    settings = with_params(cfg, best.kind, params) if params else cfg
    if warm:
        settings = retrain_config(cfg, best.kind, champion.version.kind, champion.version.lineage)
    run = train_models(settings, [best.kind], prepared, trigger="feedback", init=champion.model if warm else None)[0]
    if calibration is not None:
        save_calibration(run.run_dir, *calibration)
    # the recipe's search travels with it: a later retrain reuses the searched settings (retrain_config)
    recipe = {"search": gated.lineage["search"]} if gated.lineage.get("search") else {}
    version = register_run(registry, name, run.run_dir, lineage={"refit_of": gated.version, **recipe})
    why = f"{record['id']}: refit of v{gated.version} on every labeled row, its judging window included"
    change = registry.set_alias(name, alias, version.version, why, "feedback")
    record["refit"] = {"version": version.uri, "of": gated.uri, "train_rows": prepared.rows["train"]}
    record["served"] = version.uri
    record["promoted"] += f" -> v{change.to_version} (refit)"


def _warm_challenger(cfg: PipelineConfig, record: dict[str, Any], champion: Any, test_rows: pa.Table,
                     since_us: int | None, profile: dict[str, Any]) -> list[Any]:  # fmt: skip
    """The champion trained on (`feedback.warm_start`), on its own feature encodings: XGBoost keeps
    its trees and boosts on the rows newer than its training data; the linear model starts from its
    weights on every training row. [] when there is nothing to start from (the record says why): a
    warm start that fails leaves the fresh challengers to the gates."""
    kind, lineage = champion.version.kind, champion.version.lineage
    if kind not in ("logreg", "xgboost"):
        record["warm_start"] = {"kind": kind, "from": champion.version.uri, "skipped": f"a {kind} has no warm start"}
        return []
    start = since_us
    seen = (lineage.get("event_time_range") or [None, None])[1]
    if kind == "xgboost" and seen:
        newer = int(np.datetime64(seen.rstrip("Z"), "us").astype(np.int64)) + 1
        start = newer if start is None else max(start, newer)
    record["warm_start"] = {"kind": kind, "from": champion.version.uri, "since_us": start,
                            "rows": "newer than the champion's training data" if start != since_us else "all"}  # fmt: skip
    try:
        prepared = prepare_training_set(cfg, holdout=test_rows, since_us=start, spec=champion.spec)
        prepared.input_profile = profile
        settings = retrain_config(cfg, kind, kind, lineage)
        run = train_models(settings, [kind], prepared, trigger="feedback", init=champion.model)[0]
    except (UserError, ValueError) as exc:  # e.g. too few new rows to split, or a class the champion never saw
        record["warm_start"]["skipped"] = f"{type(exc).__name__}: {exc}"[:500]
        return []
    record["warm_start"].update(run=run.name, train_rows=prepared.rows["train"])
    return [run]


def _start_race(cfg: PipelineConfig, registry: Registry, record: dict[str, Any], run: Any, y: np.ndarray,
                p: np.ndarray, p_champ: np.ndarray, champion: ModelVersion, task: str) -> None:  # fmt: skip
    """A refused challenger the holdout could not tell from the champion races it in shadow
    (`registry.race`): registered as @challenger, traffic set to shadow; the loop controller adds
    each window's paired rows and ends the race. One surely worse, or one that failed a gate other
    than the primary loss's, is refused as before. A race already running hands its slot over (its
    @challenger and traffic split to restore go with it)."""
    fb = cfg.monitoring.feedback
    failed = [g["metric"] for g in record["gates"] if not g["passed"]]
    metric = cfg.data.schema_.label_mapping.metric
    if failed != [primary_metric(task, metric)]:  # it lost on another gate (e.g. AUC): no loss race wins that back
        return
    loss_champ = row_losses(task, y, p_champ, metric)
    race = Race.start(task, champion.version, loss_champ - row_losses(task, y, p, metric), loss_champ,
                      1 - cfg.registry.gate_test.level, fb.race_windows, metric)  # fmt: skip
    if race.verdict() is not None:  # surely worse (or a one-window race): nothing to wait for
        record["race"] = race.report()
        return
    name, challenger_alias = cfg.registry.model_name, cfg.serving.traffic.challenger_alias
    if task == "binary":
        save_calibration(run.run_dir, y, p)
    version = register_run(registry, name, run.run_dir)
    before = registry.aliases(name).get(challenger_alias)
    traffic = current_traffic(registry, name)
    registry.set_alias(name, challenger_alias, version.version, f"{record['id']}: race in shadow", "feedback")
    set_traffic(registry, name, "shadow", traffic.canary_share if traffic else cfg.serving.traffic.canary_share,
                "feedback", f"{record['id']}: race of v{version.version} against v{champion.version}")  # fmt: skip
    race.challenger = version.version
    record.update(decision="racing", challenger=version.uri, why=race.report(),
                  race={**race.to_dict(), "challenger_before": before,
                        "traffic_before": [traffic.mode, traffic.canary_share] if traffic else None})  # fmt: skip


def _first_passing(cfg: PipelineConfig, registry: Registry, record: dict[str, Any], candidates: list[tuple],
                   y: np.ndarray, p_champ: np.ndarray, champion: ModelVersion, task: str,
                   ) -> tuple[Any, HoldoutGates, np.ndarray, bool] | None:  # fmt: skip
    """Gate the candidates best first (by the task's primary metric on the holdout); the first that
    passes (or, promotion off, the best) is the one to register. Each gate's interval is widened for
    the number of candidates (Bonferroni), so trying several model kinds does not raise the chance
    of promoting noise. Returns that candidate (its last item True: register it), or the best
    refused one (False; the record says why), or None when every candidate is the champion again."""
    ranked = sorted(candidates, key=lambda c: c[0][primary_metric(task, cfg.data.schema_.label_mapping.metric)])
    t = cfg.registry.gate_test
    test = t.model_copy(update={"level": 1 - (1 - t.level) / len(ranked)})
    reports, first = [], None
    for _, p, run in ranked:
        twin = same_model(registry, cfg.registry.model_name, model_sha256(run.run_dir))
        if twin is not None or identical(p, p_champ):
            same = twin.uri if twin is not None else champion.uri
            reports.append(f"{run.name} is {same} again (same {'model files' if twin is not None else 'scores'}); "
                           "not gated")  # fmt: skip
            continue
        gates = HoldoutGates(y, p, p_champ, champion.version, cfg.registry.gates, test, f"{run.name} vs {champion.uri}",
                             task, cfg.data.schema_.label_mapping.metric)  # fmt: skip
        reports.append(gates.report())
        first = first or (gates, run, p)
        if gates.passed or not cfg.monitoring.feedback.promote:  # promotion off: a person decides
            record.update(gate_report="\n".join(reports), gates=gates.records(), gates_passed=gates.passed)
            return run, gates, p, True
    record["gate_report"] = "\n".join(reports)
    if first is None:  # every candidate is the champion again
        record.update(decision="identical", why=f"every retrained model is {champion.uri} again or scores as it "
                      "does; not registered")  # fmt: skip
        return None
    gates, run, p = first
    record.update(gates=gates.records(), gates_passed=False, decision="refused",
                  why=f"the gates refused every retrained model (best: {run.kind}); not registered (its run: "
                  f"{run.run_dir})")  # fmt: skip
    return run, gates, p, False


def retrain_config(cfg: PipelineConfig, kind: str, champion_kind: str, champion_lineage: dict[str, Any]) -> PipelineConfig:
    """The settings `kind` retrains with: the champion's searched parameters when the champion is
    that kind and came from a search (a retrain must not quietly undo a search), else the config's."""
    params = (champion_lineage.get("search") or {}).get("params")
    return with_params(cfg, kind, params) if params and champion_kind == kind else cfg


def challengers(cfg: PipelineConfig, prepared: Any, champion_kind: str, champion_lineage: dict[str, Any],
                record: dict[str, Any]) -> list[Any]:  # fmt: skip
    """Each configured model kind retrained on `prepared`: with the champion's parameters, or the
    best trial of a small search (`feedback.hyperparameters`); what was used goes into `record`."""
    fb = cfg.monitoring.feedback
    if fb.hyperparameters == "champion":
        runs = []
        for kind in fb.models:
            settings = retrain_config(cfg, kind, champion_kind, champion_lineage)
            if settings is not cfg:
                record.setdefault("params_from_champion", {})[kind] = champion_lineage["search"]["params"]
            runs += train_models(settings, [kind], prepared, trigger="feedback")
        return runs
    budget = cfg.model_copy(deep=True)
    budget.training.search.time_budget_s = fb.search_time_budget_s
    found = []
    for kind in fb.models:
        result = run_search(budget, kind, prepared, fb.search_trials)
        keep_best(budget, result, prepared)  # indexes the trials; the best keeps its search and importance
        best = result.best
        record.setdefault("searches", {})[kind] = {"id": result.search_id, "trials": len(result.trials),
                                                   "finished": sum(t.status == "finished" for t in result.trials),
                                                   "best_trial": best.trial_id, "best_params": best.params}  # fmt: skip
        found.append(TrainRun.of(str(best.run_dir)))
    return found


def _reference(cfg: PipelineConfig, holdout: pa.Table, spec: Any) -> dict[str, Any]:
    """The drift reference of a retrained version: the holdout window, the newest traffic its
    promotion is decided on. Its training rows are mostly older: against them the traffic that
    started the retrain would keep its input-drift alert firing after the promotion."""
    import ray.data

    m = cfg.monitoring
    return input_profile(ray.data.from_arrow(with_columns(holdout, spec.input_columns)), spec, m.bins, m.top_k)
