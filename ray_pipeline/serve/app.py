"""The routes of the Ray Serve application: one autoscaled deployment (`Predictor`) that is both
the FastAPI ingress and the batched model server for `models:/NAME@champion` (plus a challenger for
canary or shadow traffic). Serving lives in three rooms: the routes and the ingress (here), the
replica's state and scoring (serve/replica.py), the deploy (serve/deploy.py).

A plain /predict from body to answer (records, no API key, no explanation, champion only) runs code
in these files, and only these (tests/test_serve_trace.py follows one and checks):
- serve/app.py: the route and `Predictor.predict`;
- serve/api.py: the body parsed against the answering version's contract, the answer built;
- serve/replica.py: the version picked, the batch scored, the metrics counted, the rows logged;
- features/transform.py: the records typed as ingest types them, then the version's transform;
- train/models.py: the version's `Predictor.predict` and its model's output;
- serve/predlog.py: the request id and the log's buffer (written by its flusher, off the path);
- and two shared definitions: the FeatureSpec (features/spec.py) and ingest's text cleaning of
  categories (data/values.py).
An API key adds auth.py; entity ids, features/online.py; `explain`, train/explain.py; an ensemble
version, train/ensemble.py; a schema rule on an input (an integer type, a range, a category list),
ingest's own checks in data/validate.py.

One deployment, not ingress + model: each extra Serve hop costs a few ms per request
(benchmarks/serve.py), and ingress and model scale together anyway. Each replica polls the registry
every `reload_poll_s` in a background thread, loads a new version beside the old one and swaps it in
with one assignment, so requests never fail during a promote or a rollback.

No `from __future__ import annotations` here: FastAPI must see the request model class itself.
"""

import asyncio
import json
import time
from typing import Any

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from ray_pipeline.auth import same_secret
from ray_pipeline.registry.handoff import LoadedModel
from ray_pipeline.serve.api import (
    PREDICT_RESPONSES,
    Contract,
    ScoreRequest,
    Scored,
    answer,
    contract,
    openapi_for,
    parse_predict,
    score_request,
)
from ray_pipeline.serve.predlog import new_request_id
from ray_pipeline.serve.replica import ModelRunner, ServingSettings

DEPLOYMENT = "predictor"
api = FastAPI(title="ray-pipeline",
              description="Binary, multiclass and regression models served from the model registry.")
# The routes are plain functions over the replica Serve runs them in, which `Predictor` puts in the
# app's state when Serve builds the app: with the app given to `serve.ingress`, Serve would serve a
# frozen copy of it taken at import, which a replica's own OpenAPI document (its champion's request
# contract) and error handlers could not reach.


def replica_of(request: Request) -> "Predictor | None":
    """The replica serving `request` (None before Serve built the app)."""
    return getattr(request.app.state, "predictor", None)


@api.post("/predict", responses=PREDICT_RESPONSES)
async def predict(request: Request, x_api_key: str | None = Header(default=None)) -> dict:
    """Score records (or entities from the online store) with the version that validates them."""
    return await replica_of(request).predict(request, x_api_key)


@api.get("/healthz")
def healthz() -> dict:
    """Liveness."""
    return {"status": "ok"}


@api.get("/model")
def model_info(request: Request) -> dict:
    """The versions served (champion, challenger), when they loaded, and the active alerts."""
    return replica_of(request).model_info()


def _refused(request: Request, status: int, detail: Any) -> None:
    replica = replica_of(request)
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
        self.in_flight = 0  # /predict requests on this replica between arrival and answer
        self.score_batch.set_max_batch_size(settings.max_batch_size)
        self.score_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)

    def __serve_build_asgi_app__(self) -> FastAPI:
        # This class reaches the replica pickled by value (its module name now holds the
        # deployment), with its own copy of the globals it uses: bind the imported module's routes.
        import ray_pipeline.serve.app as module

        module.api.state.predictor = self
        module.api.openapi = self.openapi  # type: ignore[method-assign]
        self.api = module.api
        return module.api

    def contract_of(self, model: LoadedModel) -> Contract:
        """The request contract of the version `model` (built once per version)."""
        version = model.version.version
        if version not in self.contracts:
            s = self.settings
            self.contracts[version] = contract(model.spec, s.max_records, s.store is not None, s.rules, s.on_invalid)
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
        self.in_flight += 1  # the replica's event loop runs one request at a time between awaits
        try:
            s = self.settings
            if s.api_key and not same_secret(x_api_key, s.api_key):
                raise HTTPException(status_code=401, detail="missing or wrong X-API-Key header")
            # Validated against the version that will answer (its own inputs), not the deploy-time one.
            variant, model = self.runner.models.pick()
            parsed = parse_predict(await request.body(), self.contract_of(model), s.max_records, s.store, s.views)
            req = score_request(parsed, new_request_id(), variant, model)
            # Adaptive batching: a request alone on the replica is scored at once, rather than waiting
            # out `batch_wait_timeout_s` for a batch that is not coming; with others in flight it
            # joins Serve's batch. Scored off the event loop, so requests arriving meanwhile are
            # taken in (and batched), and Serve's ongoing-request count, which autoscaling reads,
            # sees them: scored on the loop, a busy replica looked idle and never scaled up.
            if self.in_flight == 1:
                scored = (await asyncio.to_thread(self.runner.score, [req]))[0]
            else:
                scored = await self.score_batch(req)
        finally:
            self.in_flight -= 1
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


