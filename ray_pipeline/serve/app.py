"""The Ray Serve application: one autoscaled deployment that is both the FastAPI ingress and the
batched model server for `models:/NAME@champion` (plus a challenger for canary or shadow traffic).

One deployment, not ingress + model: on this hardware each extra Serve hop cost ~5 ms per request
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
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from ray_pipeline.config import PipelineConfig
from ray_pipeline.errors import UserError
from ray_pipeline.features.transform import records_table, transform_table
from ray_pipeline.registry.versions import LoadedModel, load, registry_db
from ray_pipeline.registry.store import Registry
from ray_pipeline.raycompat import serve_client
from ray_pipeline.runtime import quiet_serve_logs
from ray_pipeline.serve.api import (
    PREDICT_RESPONSES,
    Contract,
    body_errors,
    contract,
    openapi_for,
    records_from_store,
    split_record,
)
from ray_pipeline.serve.metrics import ServeMetrics
from ray_pipeline.serve.predlog import REFUSED, STAGES, PredictionLog, new_request_id, rows_table
from ray_pipeline.serve.variants import CHALLENGER, CHAMPION, SHADOW, ModelSet
from ray_pipeline.storage import read_text

DEPLOYMENT = "predictor"
MAX_SHADOW_BATCHES = 64  # beyond this backlog, shadow scoring skips batches (counted in rp_shadow_dropped)


class ModelRunner:
    """Replica state shared by the HTTP routes: models, metrics, prediction log, alias watcher."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.metrics = ServeMetrics()
        self.models = ModelSet(
            Registry(settings["db_path"], settings["artifact_root"]),
            settings["model_name"],
            settings["alias"],
            mode=settings["traffic_mode"],
            challenger_alias=settings["challenger_alias"],
            canary_share=settings["canary_share"],
            on_load=self.metrics.loaded,
        )
        self.log = PredictionLog(settings["prediction_log"], settings["log_flush_rows"], settings["log_flush_s"])
        # Shadow scoring runs here, after the caller's answer is on its way; one thread keeps it ordered.
        self._shadow_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow")
        # Batches submitted and not finished: bounded, so a slow challenger cannot pile work up.
        self._shadow_slots = threading.BoundedSemaphore(MAX_SHADOW_BATCHES)
        self._stop = threading.Event()
        self.alerts: list[dict[str, Any]] = []  # active monitoring alerts, written by `ray-pipeline monitor`
        self._read_alerts()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while not self._stop.wait(self.settings["reload_poll_s"]):
            self._read_alerts()
            try:
                for change in self.models.refresh():
                    print(f"models:/{self.settings['model_name']} {change}")
            except Exception as exc:  # keep serving what is loaded; report and retry next poll
                print(f"reload of models:/{self.settings['model_name']} failed, still serving: {exc}")

    def score(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Score a batch of requests, one vectorized call per version; schedules shadow scoring.

        Each request names the variant and the version it was validated against (`pick`); that
        version scores it, even when an alias moved while it waited for the batch.
        """
        out: list[dict[str, Any] | None] = [None] * len(requests)
        groups: dict[tuple[str, int], list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault((req["variant"], id(req["model"])), []).append(i)
        for (variant, _), idxs in groups.items():
            try:
                self._answer(requests[idxs[0]]["model"], variant, idxs, requests, out)
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
                self.metrics.shadow_dropped.inc(sum(len(r["records"]) for r in requests))
        return out  # type: ignore[return-value]

    def _answer(self, model: LoadedModel, variant: str, idxs: list[int], requests: list, out: list) -> None:
        chunks, timing = self._score_with(model, variant, [requests[i] for i in idxs])
        for i, (probs, inputs) in zip(idxs, chunks):
            out[i] = {"probabilities": probs, "inputs": inputs, "model": model.version.name,
                      "version": model.version.version, "variant": variant, **timing}  # fmt: skip

    def _shadow(self, model: LoadedModel, requests: list[dict[str, Any]]) -> None:
        try:
            chunks, timing = self._score_with(model, SHADOW, requests)
            now = datetime.now(timezone.utc)
            for req, (probs, inputs) in zip(requests, chunks):
                v = model.version
                self.log.append_table(log_rows(req, probs, inputs, v.name, v.version, SHADOW, timing, now))
        except Exception as exc:  # the caller was answered already; report and carry on
            print(f"shadow scoring with v{model.version.version} failed: {exc!r}")
            self.metrics.challenger_errors.inc(1)
        finally:
            self._shadow_slots.release()

    def _score_with(
        self, model: LoadedModel, variant: str, requests: list[dict[str, Any]]
    ) -> tuple[list[tuple[list[float], pa.Table]], dict[str, float]]:
        """Per request its probabilities and typed inputs; the batch's transform and inference times."""
        records = [r for req in requests for r in req["records"]]
        started = time.perf_counter()
        inputs = records_table(records, model.spec)
        X = transform_table(inputs, model.spec) if records else None
        transformed = time.perf_counter()
        probs = model.predict_matrix(X).tolist() if records else []
        timing = {"transform_ms": (transformed - started) * 1e3, "inference_ms": (time.perf_counter() - transformed) * 1e3}
        self.metrics.scored(model.version.version, variant, probs)
        if variant != SHADOW:  # the same records were already counted for the answering variant
            self.metrics.missing_values(records, model.spec.input_columns)
        chunks, i = [], 0
        for req in requests:
            n = len(req["records"])
            chunks.append((probs[i : i + n], inputs.slice(i, n)))
            i += n
        return chunks, timing

    def record(self, req: dict[str, Any], result: dict[str, Any], timing: dict[str, float | None]) -> None:
        """Log an answered request's scored rows with its latency per stage (the table is built by
        the log's flusher, not on the request path)."""
        at = datetime.now(timezone.utc)

        def build() -> pa.Table:
            inputs = set(result["inputs"].column_names)
            rows = {**req, "extra": [_extra(r, inputs) for r in req["records"]]}
            return log_rows(rows, result["probabilities"], result["inputs"], result["model"], result["version"],
                            result["variant"], timing, at)  # fmt: skip

        self.log.append_table(build, len(result["probabilities"]))

    def refused(self, status: int, detail: str) -> None:
        """Log and count a request the API refused (monitoring reports them per status)."""
        self.metrics.refused.inc(1, tags={"status": str(status)})
        base = {"request_id": [new_request_id()], "row": [0], "model_name": [self.settings["model_name"]],
                "variant": [REFUSED], "http_status": [status], "extra": [detail[:2000]]}  # fmt: skip
        self.log.append_table(rows_table(base, None, datetime.now(timezone.utc)))

    def _read_alerts(self) -> None:
        path = self.settings.get("alerts_file")
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


def build_app(cfg: PipelineConfig, api_key: str | None = None):
    """The bound Serve application for `cfg`."""
    from ray_pipeline.features.build import online_store
    from ray_pipeline.registry.versions import open_registry

    s, r = cfg.serving, cfg.registry
    load(open_registry(cfg), f"models:/{r.model_name}@{s.alias}")  # fail at deploy, not in every replica
    views = {name: (v.feature_names, v.ttl_seconds) for name, v in cfg.features.views.items()}
    store = online_store(cfg) if views else None
    max_records = s.max_records_per_request
    api = FastAPI(title="ray-pipeline", description="Binary classification served from the model registry.")
    replica: dict[str, ModelRunner] = {}  # this process's runner, for the exception handlers below
    contracts: dict[int, Contract] = {}  # per registered version (artifacts never change)

    def contract_of(model: LoadedModel) -> Contract:
        version = model.version.version
        if version not in contracts:
            contracts[version] = contract(model.spec, max_records, entity_ids=store is not None)
        return contracts[version]

    def openapi() -> dict[str, Any]:
        # The request body is what the version serving now takes: regenerated when it changes.
        champion = replica["runner"].models.pick_champion()  # only replicas answer /openapi.json
        return openapi_for(api, champion, contract_of(champion).request)

    api.openapi = openapi  # type: ignore[method-assign]

    def _refused(request: Request, status: int, detail: Any) -> None:
        runner = replica.get("runner")
        if runner is not None and request.url.path.endswith("/predict"):
            runner.refused(status, json.dumps(detail, default=str))

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        _refused(request, 422, exc.errors())
        return await request_validation_exception_handler(request, exc)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        _refused(request, exc.status_code, exc.detail)
        return await http_exception_handler(request, exc)

    @serve.ingress(api)
    class Predictor:
        """HTTP API (validation, auth, online features, request ids) over dynamically batched models."""

        def __init__(self, settings: dict[str, Any]) -> None:
            self.runner = ModelRunner(settings)
            replica["runner"] = self.runner
            self.score_batch.set_max_batch_size(settings["max_batch_size"])
            self.score_batch.set_batch_wait_timeout_s(settings["batch_wait_timeout_s"])

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
        async def score_batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return self.runner.score(requests)

        @api.post("/predict", responses=PREDICT_RESPONSES)
        async def predict(self, request: Request, x_api_key: str | None = Header(default=None)) -> dict:
            started = time.perf_counter()
            if api_key and x_api_key != api_key:
                raise HTTPException(status_code=401, detail="missing or wrong X-API-Key header")
            # Validated against the version that will answer (its own inputs), not the deploy-time one.
            variant, model = self.runner.models.pick()
            terms = contract_of(model)
            try:
                body = terms.request.model_validate_json(await request.body() or b"null")
            except ValidationError as exc:
                raise RequestValidationError(body_errors(exc)) from None
            request_id = new_request_id()
            lookup_ms = None
            if getattr(body, "records", None) is not None:
                if len(body.records) > max_records:
                    raise HTTPException(413, detail=f"records: {len(body.records)} rows, at most {max_records}")
                records, entities, event_times = [], [], []
                for rec in body.records:
                    values, entity, event_ts = split_record(rec.model_dump(), terms.key, terms.ts)
                    records.append(values)
                    entities.append(entity)
                    event_times.append(event_ts)
                statuses = ["ok"] * len(records)
            else:
                if len(body.entity_ids) > max_records:
                    raise HTTPException(413, detail=f"entity_ids: {len(body.entity_ids)} ids, at most {max_records}")
                looked_up = time.perf_counter()
                records, statuses = records_from_store(store, views, body.entity_ids)
                lookup_ms = (time.perf_counter() - looked_up) * 1e3
                entities = [str(e) for e in body.entity_ids]
                event_times = [None] * len(records)
            known = [i for i, st in enumerate(statuses) if st == "ok"]
            req = {"records": [records[i] for i in known], "entities": [entities[i] for i in known],
                   "event_ts": [event_times[i] for i in known], "rows": known,
                   "request_id": request_id, "variant": variant, "model": model}  # fmt: skip
            result = await self.score_batch(req)
            post_started = time.perf_counter()
            probs: list[float | None] = [None] * len(statuses)
            for i, p in zip(known, result["probabilities"]):
                probs[i] = p
            answer = {
                "request_id": request_id,
                "model": result["model"],
                "version": result["version"],
                "variant": result["variant"],
                "predictions": [{"probability": p, "status": st} for p, st in zip(probs, statuses)],
            }
            inputs = model.spec.input_columns
            for i in known:  # which inputs were missing and got the training fill value
                imputed = [c for c in inputs if records[i].get(c) is None]
                if imputed:
                    answer["predictions"][i]["imputed"] = imputed
            timing = {"lookup_ms": lookup_ms, "transform_ms": result["transform_ms"],
                      "inference_ms": result["inference_ms"], "post_ms": (time.perf_counter() - post_started) * 1e3}  # fmt: skip
            self.runner.metrics.stages(timing, (time.perf_counter() - started) * 1e3)
            self.runner.record(req, result, timing)
            return answer

        @api.get("/healthz")
        def healthz(self) -> dict:
            return {"status": "ok"}

        @api.get("/model")
        def model_info(self) -> dict:
            info = self.runner.models.info()
            # Alerts from `ray-pipeline monitor` about the served version (or about no version in particular).
            info["alerts"] = [a for a in self.runner.alerts if a.get("model_version") in (None, info["version"])]
            return info

        def __del__(self) -> None:
            # Serve calls this on graceful shutdown: nothing buffered is lost.
            runner = getattr(self, "runner", None)
            if runner is not None:
                runner.close()

    t = s.traffic
    deployment = serve.deployment(
        Predictor,
        name=DEPLOYMENT,
        max_ongoing_requests=s.max_ongoing_requests,
        max_queued_requests=s.max_queued_requests,
        autoscaling_config=autoscaling_config(cfg),
    )
    return deployment.bind(
        {
            "db_path": registry_db(cfg),
            "artifact_root": cfg.resolve(r.artifact_root),
            "model_name": r.model_name,
            "alias": s.alias,
            "traffic_mode": t.mode,
            "challenger_alias": t.challenger_alias,
            "canary_share": t.canary_share,
            "max_batch_size": s.max_batch_size,
            "batch_wait_timeout_s": s.batch_wait_timeout_s,
            "reload_poll_s": s.reload_poll_s,
            "prediction_log": cfg.resolve(s.prediction_log),
            "log_flush_rows": s.log_flush_rows,
            "log_flush_s": s.log_flush_s,
            "alerts_file": cfg.resolve(cfg.monitoring.active_alerts),
        }
    )


def log_rows(req: dict[str, Any], probs: list[float], inputs: pa.Table, name: str, version: int, variant: str,
             timing: dict[str, float | None], at: datetime) -> pa.Table:  # fmt: skip
    """Prediction-log rows of one scored request (only its records that were scored)."""
    n = len(probs)
    base = {"request_id": [req["request_id"]] * n, "row": req.get("rows", list(range(n))), "entity": req["entities"],
            "event_ts": req.get("event_ts", [None] * n), "score": probs, "model_name": [name] * n, "model_version": [version] * n,
            "variant": [variant] * n, "http_status": [200] * n, "extra": req.get("extra", [None] * n)}  # fmt: skip
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
