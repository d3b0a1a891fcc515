"""One replica's state: the served versions (`ModelSet`: champion, challenger) kept current by a
background alias watcher, the batched scoring through each version's own predict path, shadow
scoring after the answer, the metrics (`ServeMetrics`) and the prediction log. `ModelRunner` is what
serve/app.py's routes score with; nothing here knows about HTTP.

Traffic between versions: the champion alias, plus a challenger alias that answers a share of
requests (canary) or scores every request unseen by the caller (shadow). Ray Serve has no traffic
split of its own; doing it inside the replica keeps one hop per request and lets one dynamic batch
hold requests for both versions.
"""

import json
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from ray_pipeline.config import FeatureColumn, PipelineConfig
from ray_pipeline.errors import UserError
from ray_pipeline.features.transform import records_table
from ray_pipeline.registry.handoff import LoadedModel, load, registry_db
from ray_pipeline.registry.store import Registry
from ray_pipeline.registry.traffic import current_traffic
from ray_pipeline.serve.api import ScoreRequest, Scored, logged_scores, rules_of
from ray_pipeline.serve.predlog import REFUSED, STAGES, PredictionLog, new_request_id, rows_table
from ray_pipeline.storage import read_text
from ray_pipeline.train.explain import explain_rows

CHAMPION, CHALLENGER, SHADOW = "champion", "challenger", "shadow"
MAX_SHADOW_BATCHES = 64  # beyond this backlog, shadow scoring skips batches (counted in rp_shadow_dropped)


@dataclass(frozen=True)
class ServingSettings:
    """What a replica needs, resolved from the pipeline config on the driver (paths absolute)."""

    db_path: str
    artifact_root: str
    model_name: str
    alias: str
    prediction_log: str
    traffic_mode: str = "off"
    challenger_alias: str = "challenger"
    canary_share: float = 0.0
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.005
    reload_poll_s: float = 2.0
    log_flush_rows: int = 1000
    log_flush_s: float = 5.0
    alerts_file: str | None = None
    api_key: str | None = None
    max_records: int = 1000
    explain_method: str = "treeshap"
    views: dict[str, tuple[list[str], int | None]] = field(default_factory=dict)  # view -> (features, TTL)
    store: Any = None  # the online store (features/online.py), when views are configured
    rules: dict[str, FeatureColumn] = field(default_factory=dict)  # ingest's rules per input (serve/api.rules_of)
    on_invalid: str = "flag"  # a record out of range or of an unknown category: flag or refuse

    @classmethod
    def from_config(cls, cfg: PipelineConfig, api_key: str | None = None) -> "ServingSettings":
        """The settings of `cfg`'s serving section (opens the online store when views exist)."""
        from ray_pipeline.features.build import online_store  # here: on the driver; replicas skip the builder

        s, t, r = cfg.serving, cfg.serving.traffic, cfg.registry
        views = {name: (v.feature_names, v.ttl_seconds) for name, v in cfg.features.views.items()}
        return cls(
            db_path=registry_db(cfg), artifact_root=r.artifact_root, model_name=r.model_name,
            alias=s.alias, prediction_log=s.prediction_log, traffic_mode=t.mode,
            challenger_alias=t.challenger_alias, canary_share=t.canary_share, max_batch_size=s.max_batch_size,
            batch_wait_timeout_s=s.batch_wait_timeout_s, reload_poll_s=s.reload_poll_s,
            log_flush_rows=s.log_flush_rows, log_flush_s=s.log_flush_s,
            alerts_file=cfg.monitoring.active_alerts, api_key=api_key,
            max_records=s.max_records_per_request, explain_method=s.explain_method, views=views, store=online_store(cfg) if views else None,
            rules=rules_of(cfg.data.schema_.features), on_invalid=s.on_invalid,
        )  # fmt: skip


class ModelSet:
    """Champion (always) and challenger (canary/shadow, when its alias is set); follows alias moves."""

    def __init__(
        self,
        registry: Registry,
        name: str,
        champion_alias: str,
        mode: str = "off",
        challenger_alias: str = "challenger",
        canary_share: float = 0.0,
        on_load: Callable[[int, str, float], None] | None = None,
        seed: int | None = None,
    ) -> None:
        self.registry, self.name, self.mode, self.canary_share = registry, name, mode, canary_share
        self.aliases = {CHAMPION: champion_alias, CHALLENGER: challenger_alias}
        self._use_registry_traffic()
        self._on_load = on_load
        self._rng = random.Random(seed)
        self.models: dict[str, LoadedModel | None] = {role: None for role in self.aliases}
        self.loaded_at: dict[str, str] = {}
        self.errors: dict[str, str] = {}  # role -> why its wanted version is not loaded
        self._failed: dict[str, int] = {}  # role -> version that failed to load (artifacts never change)
        self.models[CHAMPION] = self._load(CHAMPION, self._wanted(CHAMPION))
        if self.models[CHAMPION] is None:
            raise UserError(f"models:/{name}@{champion_alias} is not set: nothing to serve")
        if self.mode != "off":
            self.refresh()  # a broken challenger is reported, never a reason not to serve the champion

    def _wanted(self, role: str) -> int | None:
        return self.registry.aliases(self.name).get(self.aliases[role])

    def _load(self, role: str, version: int | None) -> LoadedModel | None:
        if version is None:
            return None
        started = time.perf_counter()
        loaded = load(self.registry, f"models:/{self.name}/{version}")
        self.loaded_at[role] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if self._on_load:
            self._on_load(version, role, time.perf_counter() - started)
        return loaded

    def refresh(self) -> list[str]:
        """Load versions whose alias moved, then swap each in with one assignment; returns what changed.

        A version that fails to load (tampered artifact, missing file) leaves the role on what it
        had; the failure is reported once and kept in `errors`. Registered artifacts never change,
        so that version is not retried until the alias points elsewhere.
        """
        changes = self._use_registry_traffic()
        for role in self.aliases:
            if role == CHALLENGER and self.mode == "off":
                continue  # no traffic for it: not loaded
            wanted, current = self._wanted(role), self.models[role]
            have = current.version.version if current else None
            if wanted == have or (role == CHAMPION and wanted is None):
                self.errors.pop(role, None)
                self._failed.pop(role, None)
                continue  # a deleted champion alias keeps the last version serving rather than failing
            if role in self._failed and self._failed[role] == wanted:
                continue  # (a deleted alias, wanted None, is a move, not a known failure)
            try:
                self.models[role] = self._load(role, wanted)
            except Exception as exc:
                self._failed[role] = wanted
                self.errors[role] = f"v{wanted}: {exc}"
                changes.append(f"{role}: v{wanted} failed to load, still v{have}: {exc}")
                continue
            self.errors.pop(role, None)
            self._failed.pop(role, None)
            changes.append(f"{role}: v{have} -> v{wanted}")
        return changes

    def _use_registry_traffic(self) -> list[str]:
        """Take the traffic split an operator set in the registry (registry/traffic.py), if any."""
        setting = current_traffic(self.registry, self.name)
        if setting is None or (setting.mode, setting.canary_share) == (self.mode, self.canary_share):
            return []
        before = f"{self.mode} {self.canary_share:g}"
        self.mode, self.canary_share = setting.mode, setting.canary_share
        return [f"traffic: {before} -> {self.mode} {self.canary_share:g}"]

    def pick(self) -> tuple[str, LoadedModel]:
        """The variant that answers the next request and the version serving it now.

        The caller validates the request against this version's inputs and has it scored by this
        same version, even if an alias moves in between.
        """
        models = self.models  # refresh() swaps entries in place: read each one once
        challenger = models.get(CHALLENGER)
        if self.mode == "canary" and challenger and self._rng.random() < self.canary_share:
            return CHALLENGER, challenger
        return CHAMPION, self.pick_champion()

    def pick_champion(self) -> LoadedModel:
        """The champion version serving now."""
        champion = self.models[CHAMPION]
        assert champion is not None  # set in __init__ and never unset
        return champion

    def shadow(self) -> LoadedModel | None:
        """The model that scores every request in shadow mode (None when off or unset)."""
        return self.models.get(CHALLENGER) if self.mode == "shadow" else None

    def info(self) -> dict[str, Any]:
        """Name, version, spec hash and load time per variant, the traffic mode, and any load failures."""
        champion = self.models[CHAMPION]
        assert champion is not None
        out = {**_describe(champion, self.loaded_at[CHAMPION]), "traffic": {"mode": self.mode}}
        if self.mode != "off":
            challenger = self.models[CHALLENGER]
            out["traffic"].update(
                challenger_alias=self.aliases[CHALLENGER],
                challenger=_describe(challenger, self.loaded_at[CHALLENGER]) if challenger else None,
            )
            if self.mode == "canary":
                out["traffic"]["canary_share"] = self.canary_share
        if self.errors:
            out["load_errors"] = dict(self.errors)  # versions an alias points at that could not be loaded
        return out


def _describe(model: LoadedModel, loaded_at: str) -> dict[str, Any]:
    v = model.version
    label = model.spec.label  # what the output means in the data's own terms: task, classes, 1, units
    return {"name": v.name, "version": v.version, "uri": v.uri, "kind": v.kind,
            "feature_spec_hash": model.spec.content_hash(), "loaded_at": loaded_at,
            "inputs": model.spec.input_columns,
            "label": {"task": label.task, **label.model_dump(exclude_defaults=True)} if label is not None else None}  # fmt: skip


SCORE_BOUNDARIES = [i / 10 for i in range(1, 10)]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128]
STAGE_BOUNDARIES = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]


class ServeMetrics:
    """The application's own metrics (ray.serve.metrics), exported beside Ray Serve's on the metrics
    port: predictions and scores per model version and variant, missing features, batch sizes, load times,
    challenger failures and skipped shadow work."""

    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Gauge, Histogram

        per_version = ("model_version", "variant")
        self.predictions = Counter("rp_predictions", "Predictions made.", tag_keys=per_version)
        self.scores = Histogram("rp_score", "Predicted probabilities.", boundaries=SCORE_BOUNDARIES,
                                tag_keys=per_version)  # fmt: skip
        self.missing = Counter("rp_missing_features", "Feature values missing in requests.", tag_keys=("feature",))
        self.batch_sizes = Histogram("rp_batch_size", "Records per model call.", boundaries=BATCH_BOUNDARIES)
        self.load_seconds = Gauge("rp_model_load_seconds", "Time to load a served version.", tag_keys=per_version)
        self.challenger_errors = Counter("rp_challenger_errors", "Canary or shadow batches the challenger failed.")
        self.shadow_dropped = Counter("rp_shadow_dropped", "Records not shadow-scored because the backlog was full.")
        self.refused = Counter("rp_refused_requests", "Requests refused by the API.", tag_keys=("status",))
        self.flagged = Counter("rp_flagged_records", "Records answered with a status ingest would quarantine them "
                               "for (serving.on_invalid: flag).", tag_keys=("status",))  # fmt: skip
        self.stage_seconds = Histogram("rp_stage_seconds", "Per-request latency by stage.",
                                       boundaries=STAGE_BOUNDARIES, tag_keys=("stage",))  # fmt: skip

    def stages(self, timing: dict[str, float | None], total_ms: float) -> None:
        """Observe one request's latency per stage (lookup, transform, inference, post) and in total."""
        for key, ms in timing.items():
            if ms is not None:
                self.stage_seconds.observe(ms / 1e3, tags={"stage": key.removesuffix("_ms")})
        self.stage_seconds.observe(total_ms / 1e3, tags={"stage": "total"})

    def scored(self, version: int, variant: str, probabilities: list[float]) -> None:
        """Count one model call's predictions."""
        if not probabilities:  # Counter.inc(0) raises
            return
        tags = {"model_version": str(version), "variant": variant}
        self.predictions.inc(len(probabilities), tags=tags)
        self.batch_sizes.observe(len(probabilities))
        for p in probabilities:
            self.scores.observe(p, tags=tags)

    def missing_values(self, records: list[dict[str, Any]], columns: list[str]) -> None:
        """Count None / absent values per input column."""
        for name in columns:
            gaps = sum(1 for r in records if r.get(name) is None)
            if gaps:
                self.missing.inc(gaps, tags={"feature": name})

    def loaded(self, version: int, variant: str, seconds: float) -> None:
        """Record how long loading `version` took."""
        self.load_seconds.set(seconds, tags={"model_version": str(version), "variant": variant})


class ModelRunner:
    """Replica state shared by the HTTP routes: models, metrics, prediction log, alias watcher."""

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.metrics = ServeMetrics()
        self.models = ModelSet(
            Registry(settings.db_path, settings.artifact_root),
            settings.model_name,
            settings.alias,
            mode=settings.traffic_mode,
            challenger_alias=settings.challenger_alias,
            canary_share=settings.canary_share,
            on_load=self.metrics.loaded,
        )
        self.log = PredictionLog(settings.prediction_log, settings.log_flush_rows, settings.log_flush_s)
        # Shadow scoring runs here, after the caller's answer is on its way; one thread keeps it ordered.
        self._shadow_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow")
        # Batches submitted and not finished: bounded, so a slow challenger cannot pile work up.
        self._shadow_slots = threading.BoundedSemaphore(MAX_SHADOW_BATCHES)
        self._stop = threading.Event()
        self.alerts: list[dict[str, Any]] = []  # active monitoring alerts, written by `ray-pipeline monitor`
        self._read_alerts()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while not self._stop.wait(self.settings.reload_poll_s):
            self._read_alerts()
            try:
                for change in self.models.refresh():
                    print(f"models:/{self.settings.model_name} {change}")
            except Exception as exc:  # keep serving what is loaded; report and retry next poll
                print(f"reload of models:/{self.settings.model_name} failed, still serving: {exc}")

    def score(self, requests: list[ScoreRequest]) -> list[Scored]:
        """Score a batch of requests, one vectorized call per version; schedules shadow scoring.

        Each request names the variant and the version it was validated against (`pick`); that
        version scores it, even when an alias moved while it waited for the batch.
        """
        out: list[Scored | None] = [None] * len(requests)
        groups: dict[tuple[str, int], list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault((req.variant, id(req.model)), []).append(i)
        for (variant, _), idxs in groups.items():
            try:
                self._answer(requests[idxs[0]].model, variant, idxs, requests, out)
            except Exception as exc:
                if variant != CHALLENGER:
                    raise
                # a failing canary must not fail callers: the champion answers instead
                print(f"challenger failed, champion answers this batch: {exc!r}")
                self.metrics.challenger_errors.inc(1)
                self._answer(self.models.pick_champion(), CHAMPION, idxs, requests, out)
        shadow = self.models.shadow()
        if shadow is not None:
            if self._shadow_slots.acquire(blocking=False):
                self._shadow_pool.submit(self._shadow, shadow, requests)
            else:
                self.metrics.shadow_dropped.inc(sum(len(r.records) for r in requests))
        return out  # type: ignore[return-value]

    def _answer(self, model: LoadedModel, variant: str, idxs: list[int], requests: list[ScoreRequest],
                out: list[Scored | None]) -> None:  # fmt: skip
        chunks, timing = self._score_with(model, variant, [requests[i] for i in idxs])
        for i, (probs, inputs, X) in zip(idxs, chunks):
            # only for the requests that asked: explaining costs nothing otherwise
            asked = requests[i].explain and X is not None and len(X)
            why = explain_rows(model.model, model.spec, X, requests[i].explain, self.settings.explain_method) \
                if asked else None  # fmt: skip
            out[i] = Scored(probs, inputs, model.version.name, model.version.version, variant, **timing,
                            explanations=why)  # fmt: skip

    def _shadow(self, model: LoadedModel, requests: list[ScoreRequest]) -> None:
        try:
            chunks, timing = self._score_with(model, SHADOW, requests)
            now = datetime.now(timezone.utc)
            for req, (probs, inputs, _) in zip(requests, chunks):
                v = model.version
                self.log.append_table(log_rows(req, probs, inputs, v.name, v.version, SHADOW, timing, now))
        except Exception as exc:  # the caller was answered already; report and carry on
            print(f"shadow scoring with v{model.version.version} failed: {exc!r}")
            self.metrics.challenger_errors.inc(1)
        finally:
            self._shadow_slots.release()

    def _score_with(
        self, model: LoadedModel, variant: str, requests: list[ScoreRequest]
    ) -> tuple[list[tuple[list[float], pa.Table, np.ndarray | None]], dict[str, float]]:
        """Per request its outputs, typed inputs and feature matrix; the batch's transform and inference times."""
        records = [r for req in requests for r in req.records]
        started = time.perf_counter()
        inputs = records_table(records, model.spec)
        typed_ms = (time.perf_counter() - started) * 1e3
        times = None
        if model.spec.time_parts:  # each record's event time (one sent without: the time it is scored)
            now = datetime.now(timezone.utc)
            times = [t or now for req in requests for t in (req.event_ts or [None] * len(req.records))]
        pred = model.predict(inputs, times)
        probs = pred.outputs.tolist()
        timing = {**pred.timing, "transform_ms": pred.timing["transform_ms"] + typed_ms}
        self.metrics.scored(model.version.version, variant, pred.logged().tolist())
        if variant != SHADOW:  # the same records were already counted for the answering variant
            self.metrics.missing_values(records, model.spec.input_columns)
        chunks, i = [], 0
        for req in requests:
            n = len(req.records)
            chunks.append((probs[i : i + n], inputs.slice(i, n), pred.features[i : i + n]))
            i += n
        return chunks, timing

    def record(self, req: ScoreRequest, result: Scored, timing: dict[str, float | None]) -> None:
        """Log an answered request's scored rows with its latency per stage (the table is built by
        the log's flusher, not on the request path)."""
        at = datetime.now(timezone.utc)

        flagged = [st for st in req.statuses or [] if st != "ok"]
        for status in flagged:
            self.metrics.flagged.inc(1, tags={"status": status})

        def build() -> pa.Table:
            inputs = set(result.inputs.column_names)
            statuses = req.statuses or ["ok"] * len(req.records)
            extra = [extra_fields(r, inputs, st) for r, st in zip(req.records, statuses)]
            return log_rows(req, result.outputs, result.inputs, result.model, result.version, result.variant,
                            timing, at, extra)  # fmt: skip

        self.log.append_table(build, len(result.outputs))

    def refused(self, status: int, detail: str) -> None:
        """Log and count a request the API refused (monitoring reports them per status)."""
        self.metrics.refused.inc(1, tags={"status": str(status)})
        base = {"request_id": [new_request_id()], "row": [0], "model_name": [self.settings.model_name],
                "variant": [REFUSED], "http_status": [status], "extra": [detail[:2000]]}  # fmt: skip
        self.log.append_table(rows_table(base, None, datetime.now(timezone.utc)))

    def _read_alerts(self) -> None:
        path = self.settings.alerts_file
        if not path:
            return
        try:
            text = read_text(path)
            self.alerts = json.loads(text) if text else []
        except (OSError, ValueError) as exc:  # a half-written or unreadable file: keep the last good list
            print(f"cannot read active alerts {path}: {exc}")

    def close(self) -> None:
        """Stop watching, finish shadow work, write what the log buffered."""
        self._stop.set()
        self._shadow_pool.shutdown(wait=True)
        self.log.close()


def log_rows(req: ScoreRequest, probs: list[float], inputs: pa.Table, name: str, version: int, variant: str,
             timing: dict[str, float | None], at: datetime, extra: list[str | None] | None = None) -> pa.Table:  # fmt: skip
    """Prediction-log rows of one scored request (only its records that were scored)."""
    n = len(probs)
    base = {"request_id": [req.request_id] * n, "row": req.rows if req.rows is not None else list(range(n)),
            "entity": req.entities, "event_ts": req.event_ts or [None] * n,
            "score": logged_scores(req.model.spec, probs), "model_name": [name] * n,
            "model_version": [version] * n, "variant": [variant] * n, "http_status": [200] * n,
            "extra": extra or [None] * n}  # fmt: skip
    for stage in STAGES:
        base[f"latency_{stage}_ms"] = [timing.get(f"{stage}_ms")] * n
    return rows_table(base, inputs, at)


def extra_fields(record: dict[str, Any], inputs: set[str], status: str = "ok") -> str | None:
    """A record's fields that are not typed input columns, and its status when it was answered
    flagged (`status`: out_of_range, unknown_category), as JSON for the log's `extra` (or None)."""
    rest = {k: v for k, v in record.items() if k not in inputs}
    if status != "ok":
        rest["status"] = status
    return json.dumps(rest, default=str) if rest else None
