"""The Ray Serve application: one autoscaled deployment (`Predictor`) that is both the FastAPI
ingress and the batched model server for `models:/NAME@champion` (plus a challenger for canary or
shadow traffic). A /predict reads top to bottom, in six files: `Predictor.predict` (here) picks the
answering version (serve/variants.py) and parses the body with that version's contract
(serve/api.py); `ModelRunner.score` (here) turns a dynamic batch into a matrix with the version's
FeatureSpec (features/transform.py, features/spec.py) and scores it with its model
(train/models.py); the answer is logged.

One deployment, not ingress + model: each extra Serve hop costs a few ms per request
(benchmarks/serve.py), and ingress and model scale together anyway. Each replica polls the registry
every `reload_poll_s` in a background thread, loads a new version beside the old one and swaps it in
with one assignment, so requests never fail during a promote or a rollback.

No `from __future__ import annotations` here: FastAPI must see the request model class itself.
"""

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from ray_pipeline.auth import same_secret
from ray_pipeline.config import PipelineConfig
from ray_pipeline.errors import UserError
from ray_pipeline.features.transform import records_table
from ray_pipeline.raycompat import serve_client
from ray_pipeline.registry.handoff import LoadedModel, load, registry_db
from ray_pipeline.registry.store import Registry
from ray_pipeline.runtime import quiet_serve_logs
from ray_pipeline.serve.api import (
    PREDICT_RESPONSES,
    Contract,
    ScoreRequest,
    Scored,
    answer,
    contract,
    logged_scores,
    openapi_for,
    parse_predict,
    score_request,
)
from ray_pipeline.serve.metrics import ServeMetrics
from ray_pipeline.serve.predlog import REFUSED, STAGES, PredictionLog, new_request_id, rows_table
from ray_pipeline.serve.variants import CHALLENGER, CHAMPION, SHADOW, ModelSet
from ray_pipeline.storage import read_text
from ray_pipeline.train.explain import explain_rows

DEPLOYMENT = "predictor"
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

    @classmethod
    def from_config(cls, cfg: PipelineConfig, api_key: str | None = None) -> "ServingSettings":
        """The settings of `cfg`'s serving section (opens the online store when views exist)."""
        from ray_pipeline.features.build import online_store

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
        )  # fmt: skip


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

        def build() -> pa.Table:
            inputs = set(result.inputs.column_names)
            extra = [_extra(r, inputs) for r in req.records]
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



api = FastAPI(title="ray-pipeline", description="Binary, multiclass and regression models served from the model registry.")
# The replica this process runs. The routes below are plain functions over it: with the app given to
# `serve.ingress`, Serve serves a frozen copy of it taken at import, which a replica's own OpenAPI
# document (its champion's request contract) and error handlers could not reach.
_replica: dict[str, "Predictor"] = {}


@api.post("/predict", responses=PREDICT_RESPONSES)
async def predict(request: Request, x_api_key: str | None = Header(default=None)) -> dict:
    """Score records (or entities from the online store) with the version that validates them."""
    return await _replica["predictor"].predict(request, x_api_key)


@api.get("/healthz")
def healthz() -> dict:
    """Liveness."""
    return {"status": "ok"}


@api.get("/model")
def model_info() -> dict:
    """The versions served (champion, challenger), when they loaded, and the active alerts."""
    return _replica["predictor"].model_info()


def _refused(request: Request, status: int, detail: Any) -> None:
    replica = _replica.get("predictor")
    if replica is not None and request.url.path.endswith("/predict"):
        replica.runner.refused(status, json.dumps(detail, default=str))


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError):
    _refused(request, 422, exc.errors())
    return await request_validation_exception_handler(request, exc)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException):
    _refused(request, exc.status_code, exc.detail)
    return await http_exception_handler(request, exc)


@serve.deployment(name=DEPLOYMENT)
@serve.ingress()
class Predictor:
    """One replica: HTTP API (validation, auth, online features, request ids) over dynamically
    batched models."""

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.runner = ModelRunner(settings)
        self.contracts: dict[int, Contract] = {}  # per registered version (artifacts never change)
        self.score_batch.set_max_batch_size(settings.max_batch_size)
        self.score_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)

    def __serve_build_asgi_app__(self) -> FastAPI:
        # This class reaches the replica pickled by value (its module name now holds the
        # deployment), with its own copy of the globals it uses: bind the imported module's routes.
        import ray_pipeline.serve.app as module

        module._replica["predictor"] = self
        module.api.openapi = self.openapi  # type: ignore[method-assign]
        self.api = module.api
        return module.api

    def contract_of(self, model: LoadedModel) -> Contract:
        """The request contract of the version `model` (built once per version)."""
        version = model.version.version
        if version not in self.contracts:
            self.contracts[version] = contract(model.spec, self.settings.max_records, self.settings.store is not None)
        return self.contracts[version]

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI document, its request body being what the version serving now takes."""
        champion = self.runner.models.pick_champion()
        return openapi_for(self.api, champion, self.contract_of(champion).request)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def score_batch(self, requests: list[ScoreRequest]) -> list[Scored]:
        return self.runner.score(requests)

    async def predict(self, request: Request, x_api_key: str | None) -> dict:
        """POST /predict: auth, parse against the answering version, score in a batch, answer, log."""
        started = time.perf_counter()
        s = self.settings
        if s.api_key and not same_secret(x_api_key, s.api_key):
            raise HTTPException(status_code=401, detail="missing or wrong X-API-Key header")
        # Validated against the version that will answer (its own inputs), not the deploy-time one.
        variant, model = self.runner.models.pick()
        parsed = parse_predict(await request.body(), self.contract_of(model), s.max_records, s.store, s.views)
        req = score_request(parsed, new_request_id(), variant, model)
        scored = await self.score_batch(req)
        post_started = time.perf_counter()
        body = answer(parsed, req, scored)
        timing = {"lookup_ms": parsed.lookup_ms, "transform_ms": scored.transform_ms,
                  "inference_ms": scored.inference_ms, "post_ms": (time.perf_counter() - post_started) * 1e3}  # fmt: skip
        self.runner.metrics.stages(timing, (time.perf_counter() - started) * 1e3)
        self.runner.record(req, scored, timing)
        return body

    def model_info(self) -> dict:
        """GET /model, with the alerts about the served version (or about no version in particular)."""
        info = self.runner.models.info()
        info["alerts"] = [a for a in self.runner.alerts if a.get("model_version") in (None, info["version"])]
        return info

    def __del__(self) -> None:
        # Serve calls this on graceful shutdown: nothing buffered is lost.
        runner = getattr(self, "runner", None)
        if runner is not None:
            runner.close()


def build_app(cfg: PipelineConfig, api_key: str | None = None):
    """The bound Serve application for `cfg`."""
    from ray_pipeline.registry.handoff import open_registry

    s = cfg.serving
    load(open_registry(cfg), f"models:/{cfg.registry.model_name}@{s.alias}")  # fail at deploy, not in every replica
    deployment = Predictor.options(
        max_ongoing_requests=s.max_ongoing_requests,
        max_queued_requests=s.max_queued_requests,
        autoscaling_config=autoscaling_config(cfg),
    )
    return deployment.bind(ServingSettings.from_config(cfg, api_key))


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


def _extra(record: dict[str, Any], inputs: set[str]) -> str | None:
    rest = {k: v for k, v in record.items() if k not in inputs}
    return json.dumps(rest, default=str) if rest else None


def autoscaling_config(cfg: PipelineConfig) -> dict[str, Any]:
    """Ray Serve's autoscaling_config from the pipeline config."""
    a = cfg.serving.autoscaling
    return {
        "min_replicas": a.min_replicas,
        "max_replicas": a.max_replicas,
        "target_ongoing_requests": a.target_ongoing_requests,
        "upscale_delay_s": a.upscale_delay_s,
        "downscale_delay_s": a.downscale_delay_s,
        "look_back_period_s": a.look_back_period_s,
    }


def check_port_free(cfg: PipelineConfig) -> None:
    """Fail with a clear message when the configured HTTP port is taken (before Serve tries to bind it)."""
    import socket

    s = cfg.serving
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((s.host, s.port))
        except OSError as exc:
            raise UserError(
                f"serving.port: {s.host}:{s.port} is already in use ({exc.strerror}); "
                "stop the other endpoint or choose another port"
            ) from None


def deploy(cfg: PipelineConfig, local: bool = False) -> str:
    """Start (or update) the application on the connected Ray cluster; returns its URL.

    `local`: the cluster is an embedded instance on this machine, so a taken HTTP port can be
    named here before Serve's own start fails on it.
    """
    s = cfg.serving
    api_key = os.environ.get(s.api_key_env) if s.api_key_env else None
    if s.api_key_env and not api_key:
        raise UserError(f"serving.api_key_env: environment variable {s.api_key_env} is not set")
    if local and serve_client(required=False) is None:
        check_port_free(cfg)  # only when this call starts Serve: a running Serve already owns its port
    quiet_serve_logs()
    serve.start(http_options={"host": s.host, "port": s.port})
    serve.run(build_app(cfg, api_key), name=s.app_name, route_prefix=s.route_prefix, blocking=False)
    # Serve's HTTP options are fixed by whoever started Serve first on this cluster: report where
    # the proxy really listens rather than where the config asked for.
    http = serve_client().http_config
    host = s.host if http.host in ("0.0.0.0", "::") else http.host
    url = f"http://{host}:{http.port}{s.route_prefix.rstrip('/')}"
    # serve.run returns once replicas run, but the front door learns the new route a moment later
    # (seen: a 404 on the first request after a fresh Serve start); return when the route answers.
    if not wait_until_routed(url):
        print(f"warning: {url}/healthz did not answer within {ROUTE_WAIT_S:g} s (unreachable from here?)")
    return url


ROUTE_WAIT_S = 30.0


def wait_until_routed(url: str, seconds: float = ROUTE_WAIT_S) -> bool:
    """Poll GET {url}/healthz until it answers 200 (True) or `seconds` pass (False)."""
    from ray_pipeline.serve.client import http_json

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if http_json(url + "/healthz", None, timeout=5)[0] == 200:
                return True
        except OSError:  # connection refused while the proxy (re)starts
            pass
        time.sleep(0.2)
    return False
