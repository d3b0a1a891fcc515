"""The Ray Serve application: a FastAPI ingress in front of a batched, autoscaled model deployment.

The model deployment serves `models:/NAME@ALIAS` from the registry. Each replica checks the alias
every `reload_poll_s` in a background thread, loads a new version beside the old one and swaps
it in with one assignment, so requests never fail during a promote or a rollback.

No `from __future__ import annotations` here: FastAPI must see the request model class itself
(built per FeatureSpec at deploy time), not its name as a string.
"""

import os
import threading
import time
from datetime import datetime, timezone
from typing import Any

from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from ray import serve

from ray_pipeline.config import PipelineConfig
from ray_pipeline.features.spec import FeatureSpec
from ray_pipeline.registry.models import LoadedModel, load
from ray_pipeline.registry.store import Registry
from ray_pipeline.serve.predlog import PredictionLog, new_request_id


@serve.deployment
class ModelServer:
    """Loads the aliased model, predicts in dynamic batches, reloads on alias moves, logs predictions."""

    def __init__(self, settings: dict[str, Any]) -> None:
        from ray.serve.metrics import Counter, Gauge, Histogram

        self.settings = settings
        self.registry = Registry(settings["db_path"], settings["artifact_root"])
        self.uri = f"models:/{settings['model_name']}@{settings['alias']}"
        self.predictions = Counter("rp_predictions", "Predictions served.", tag_keys=("model_version",))
        self.missing = Counter("rp_missing_features", "Feature values missing in requests.", tag_keys=("feature",))
        self.scores = Histogram(
            "rp_score",
            "Predicted probabilities.",
            boundaries=[i / 10 for i in range(1, 10)],
            tag_keys=("model_version",),
        )
        self.batch_sizes = Histogram(
            "rp_batch_size", "Records per model call.", boundaries=[1, 2, 4, 8, 16, 32, 64, 128]
        )
        self.load_seconds = Gauge(
            "rp_model_load_seconds", "Time to load the served version.", tag_keys=("model_version",)
        )
        self.loaded: LoadedModel = self._load()
        self.predict_batch.set_max_batch_size(settings["max_batch_size"])
        self.predict_batch.set_batch_wait_timeout_s(settings["batch_wait_timeout_s"])
        self.log = PredictionLog(settings["prediction_log"], settings["log_flush_rows"], settings["log_flush_s"])
        self._stop = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def _load(self) -> LoadedModel:
        started = time.perf_counter()
        loaded = load(self.registry, self.uri)
        self.loaded_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.load_seconds.set(time.perf_counter() - started, tags={"model_version": str(loaded.version.version)})
        return loaded

    def _watch(self) -> None:
        """Follow the alias: load the new version fully, then swap (requests keep the old one until then)."""
        while not self._stop.wait(self.settings["reload_poll_s"]):
            try:
                current = self.registry.resolve(self.uri).version
                if current != self.loaded.version.version:
                    self.loaded = self._load()
            except Exception as exc:  # keep serving the loaded version; report and retry next poll
                print(f"reload of {self.uri} failed, still serving v{self.loaded.version.version}: {exc}")

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict_batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Score many requests' records in one vectorized call."""
        model = self.loaded  # one version for the whole batch, even if a reload lands meanwhile
        records = [r for req in requests for r in req["records"]]
        probs = model.predict_proba(records).tolist() if records else []
        version = model.version.version
        tags = {"model_version": str(version)}
        if records:  # a request whose entities are all unknown reaches here with no rows
            self.batch_sizes.observe(len(records))
            self.predictions.inc(len(records), tags=tags)
        for p in probs:
            self.scores.observe(p, tags=tags)
        for name in model.spec.input_columns:
            gaps = sum(1 for r in records if r.get(name) is None)
            if gaps:
                self.missing.inc(gaps, tags={"feature": name})
        out, log_rows, i = [], [], 0
        for req in requests:
            n = len(req["records"])
            chunk = probs[i : i + n]
            for record, entity, p in zip(req["records"], req["entities"], chunk):
                log_rows.append({"request_id": req["request_id"], "entity": entity, "features": record, "score": p,
                                 "model_name": model.version.name, "model_version": version})  # fmt: skip
            out.append({"probabilities": chunk, "model": model.version.name, "version": version})
            i += n
        self.log.append(log_rows)
        return out

    async def predict(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request: {"records": [...], "entities": [...], "request_id": ...}."""
        return await self.predict_batch(request)

    def info(self) -> dict[str, Any]:
        """What this replica serves."""
        v = self.loaded.version
        return {"name": v.name, "version": v.version, "uri": v.uri, "kind": v.kind,
                "feature_spec_hash": self.loaded.spec.content_hash(), "loaded_at": self.loaded_at}  # fmt: skip

    def flush_log(self) -> int:
        """Write buffered prediction-log rows now."""
        return self.log.flush()

    def __del__(self) -> None:
        # Serve calls this on graceful shutdown: nothing buffered is lost.
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
            self.log.close()


def request_models(spec: FeatureSpec) -> type[BaseModel]:
    """Pydantic request model whose record fields come from the FeatureSpec's input columns."""
    fields: dict[str, Any] = {c.name: (float | None, None) for c in spec.numeric}
    fields.update({c.name: (str | None, None) for c in spec.categorical})
    # strict: "12.5" is not a number and 5 is not a category; nothing is silently coerced.
    record = create_model("Record", __config__=ConfigDict(extra="forbid", strict=True), **fields)

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        records: list[record] | None = Field(default=None, description="Raw feature values, one object per row.")  # type: ignore[valid-type]
        entity_ids: list[str | int] | None = Field(default=None, description="Entities to score from the online store.")

        @model_validator(mode="after")
        def _exactly_one(self):
            if (self.records is None) == (self.entity_ids is None):
                raise ValueError("give exactly one of records or entity_ids")
            return self

    return PredictRequest


def build_app(cfg: PipelineConfig, api_key: str | None = None):
    """The bound Serve application for `cfg` (ingress + model deployment)."""
    from ray_pipeline.features.pipeline import online_store
    from ray_pipeline.registry.models import open_registry

    s, r = cfg.serving, cfg.registry
    registry = open_registry(cfg)
    spec = load(registry, f"models:/{r.model_name}@{s.alias}").spec
    PredictRequest = request_models(spec)
    views = {name: (v.feature_names, v.ttl_seconds) for name, v in cfg.features.views.items()}
    store = online_store(cfg) if views else None
    max_records = s.max_records_per_request
    api = FastAPI(title="ray-pipeline", description="Binary classification served from the model registry.")

    @serve.ingress(api)
    class Ingress:
        """HTTP API: validation, auth, online features, request ids."""

        def __init__(self, model) -> None:
            self.model = model

        def _auth(self, key: str | None) -> None:
            if api_key and key != api_key:
                raise HTTPException(status_code=401, detail="missing or wrong X-API-Key header")

        @api.post("/predict")
        async def predict(self, body: PredictRequest, x_api_key: str | None = Header(default=None)) -> dict:  # type: ignore[valid-type]
            self._auth(x_api_key)
            request_id = new_request_id()
            if body.records is not None:
                if len(body.records) > max_records:
                    raise HTTPException(413, detail=f"records: {len(body.records)} rows, at most {max_records}")
                records = [rec.model_dump() for rec in body.records]
                statuses = ["ok"] * len(records)
                entities: list[str | None] = [None] * len(records)
            else:
                if len(body.entity_ids) > max_records:
                    raise HTTPException(413, detail=f"entity_ids: {len(body.entity_ids)} ids, at most {max_records}")
                records, statuses, entities = self._from_store(body.entity_ids)
            known = [i for i, st in enumerate(statuses) if st == "ok"]
            result = await self.model.predict.remote(
                {"records": [records[i] for i in known], "entities": [entities[i] for i in known],
                 "request_id": request_id}
            )  # fmt: skip
            probs: list[float | None] = [None] * len(statuses)
            for i, p in zip(known, result["probabilities"]):
                probs[i] = p
            return {
                "request_id": request_id,
                "model": result["model"],
                "version": result["version"],
                "predictions": [{"probability": p, "status": st} for p, st in zip(probs, statuses)],
            }

        def _from_store(self, ids: list[str | int]) -> tuple[list[dict], list[str], list[str | None]]:
            if store is None:
                raise HTTPException(400, detail="entity_ids: no feature views are configured; send records")
            records = [dict() for _ in ids]
            statuses = ["unknown_entity"] * len(ids)
            for view, (features, ttl) in views.items():
                for i, row in enumerate(store.get(view, ids, features, ttl)):
                    if row.status == "present":
                        statuses[i] = "ok"
                        records[i].update(row.values)
                    elif row.status == "expired" and statuses[i] != "ok":
                        statuses[i] = "expired"  # known, but every value is older than the view's TTL
            return records, statuses, [str(e) for e in ids]

        @api.get("/healthz")
        def healthz(self) -> dict:
            return {"status": "ok"}

        @api.get("/model")
        async def model_info(self) -> dict:
            return await self.model.info.remote()

    a = s.autoscaling
    model = ModelServer.options(
        name="model",
        max_ongoing_requests=s.max_ongoing_requests,
        max_queued_requests=s.max_queued_requests,
        autoscaling_config={
            "min_replicas": a.min_replicas,
            "max_replicas": a.max_replicas,
            "target_ongoing_requests": a.target_ongoing_requests,
            "upscale_delay_s": a.upscale_delay_s,
            "downscale_delay_s": a.downscale_delay_s,
        },
    ).bind(
        {
            "db_path": cfg.resolve(r.db_path),
            "artifact_root": cfg.resolve(r.artifact_root),
            "model_name": r.model_name,
            "alias": s.alias,
            "max_batch_size": s.max_batch_size,
            "batch_wait_timeout_s": s.batch_wait_timeout_s,
            "reload_poll_s": s.reload_poll_s,
            "prediction_log": cfg.resolve(s.prediction_log),
            "log_flush_rows": s.log_flush_rows,
            "log_flush_s": s.log_flush_s,
        }
    )
    ingress = serve.deployment(Ingress, name="ingress", max_ongoing_requests=s.max_ongoing_requests * 2)
    return ingress.bind(model)


def deploy(cfg: PipelineConfig) -> str:
    """Start (or update) the application on the connected Ray cluster; returns its URL."""
    s = cfg.serving
    api_key = os.environ.get(s.api_key_env) if s.api_key_env else None
    if s.api_key_env and not api_key:
        raise ValueError(f"serving.api_key_env: environment variable {s.api_key_env} is not set")
    serve.start(http_options={"host": s.host, "port": s.port})
    serve.run(build_app(cfg, api_key), name=s.app_name, route_prefix=s.route_prefix, blocking=False)
    # Serve's HTTP options are fixed by whoever started Serve first on this cluster: report where
    # the proxy really listens rather than where the config asked for.
    from ray.serve.context import _get_global_client

    http = _get_global_client().http_config
    host = s.host if http.host in ("0.0.0.0", "::") else http.host
    return f"http://{host}:{http.port}{s.route_prefix.rstrip('/')}"
