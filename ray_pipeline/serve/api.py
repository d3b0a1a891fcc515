"""The HTTP API's types and parsing: the contract of one model version (its request model, derived
from its FeatureSpec), a /predict body parsed into the rows to score (`parse_predict`, with
online-store lookups for entity ids), the typed request a replica scores (`ScoreRequest`), what
scoring returns (`Scored`) and the answer the caller gets (`answer`).

A record meets ingest's rules too (`check_records`, by ingest's own column-wise checks): what ingest
would quarantine is refused with a 422 naming the record, the field and the rule, or, for a range or
a category list under `serving.on_invalid: flag`, answered with that rule as its status.

Each served version carries its own contract: replicas hot-swap versions, and a promoted version
may take different inputs than the one that was champion at deploy time.

No `from __future__ import annotations` here: pydantic must see the record model class itself
(built per FeatureSpec at run time), not its name as a string.
"""

import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from ray_pipeline.config import FeatureColumn
from ray_pipeline.data.validate import DETAIL, FIELD, REASON, validate_inputs
from ray_pipeline.errors import UserError
from ray_pipeline.features.spec import FeatureSpec
from ray_pipeline.registry.handoff import LoadedModel
from ray_pipeline.train.models import logged_score

EXACTLY_ONE = "give exactly one of records or entity_ids"


@dataclass(frozen=True)
class Contract:
    """What one model version accepts: the request model, the logged-only key and time fields, and
    ingest's rules on its inputs that JSON types cannot say (`rules_of`), with what breaking one means."""

    request: type[BaseModel]
    key: str | None
    ts: str | None
    rules: dict[str, FeatureColumn] = field(default_factory=dict)
    on_invalid: str = "flag"


# Statuses of a record answered although ingest would quarantine it (`serving.on_invalid: flag`).
FLAGGED = ("out_of_range", "unknown_category")
SCORED = ("ok", *FLAGGED)


def rules_of(features: dict[str, FeatureColumn]) -> dict[str, FeatureColumn]:
    """The schema's columns with a rule ingest checks beyond a JSON type: integers, a min or max, a
    category list."""
    return {name: col for name, col in features.items()
            if col.type == "int" or col.categories is not None or col.min is not None or col.max is not None}


EXPLAIN_DOC = ("Also return, per row, the top_k input columns by contribution to the margin (log-odds, the "
               "predicted class's logit, or the fitted target), the bias and the rest: they add up to the margin.")
DEFAULT_TOP_K, MAX_TOP_K = 5, 50


def contract(spec: FeatureSpec, max_records: int, entity_ids: bool, rules: dict[str, FeatureColumn] | None = None,
             on_invalid: str = "flag") -> Contract:  # fmt: skip
    """The request contract of a version fitted with `spec`; `entity_ids` when an online store is set;
    `rules`: ingest's rules (`rules_of`), those of the version's inputs applied as `on_invalid` says."""
    key, ts = passthrough_fields(spec)
    inputs = set(spec.input_columns)
    mine = {name: col for name, col in (rules or {}).items() if name in inputs}
    return Contract(request_model(spec, max_records, entity_ids, mine, on_invalid), key, ts, mine, on_invalid)


def _documented(name: str, rules: dict[str, FeatureColumn], on_invalid: str) -> dict[str, Any]:
    """The OpenAPI keywords of input `name`'s rule: an integer type; a range and a category list as
    bounds and an enum when breaking them is refused, else said in the description."""
    col = rules.get(name)
    if col is None:
        return {}
    doc: dict[str, Any] = {"type": "integer"} if col.type == "int" else {}  # 3.0 is an integer, 1.5 is not
    out: dict[str, Any] = {}
    if on_invalid == "refuse":
        bounds = (("minimum", col.min), ("maximum", col.max), ("enum", col.categories))
        doc |= {k: v for k, v in bounds if v is not None}
    else:
        said = [f"at least {col.min:g}" if col.min is not None else "",
                f"at most {col.max:g}" if col.max is not None else "",
                f"one of {', '.join(col.categories)}" if col.categories is not None else ""]  # fmt: skip
        if any(said):
            status = "unknown_category" if col.categories is not None else "out_of_range"
            out["description"] = f"{' and '.join(x for x in said if x)}; otherwise answered with status {status}"
    if doc:
        out["json_schema_extra"] = _on_value(doc)
    return out


def _on_value(doc: dict[str, Any]):
    """A json_schema_extra that puts `doc` on a field's value type (not on its null alternative)."""
    def apply(schema: dict[str, Any]) -> None:
        for branch in schema.get("anyOf") or [schema]:
            if branch.get("type") in ("number", "string"):
                branch.update(doc)

    return apply


def request_model(spec: FeatureSpec, max_records: int, entity_ids: bool = True,
                  rules: dict[str, FeatureColumn] | None = None,
                  on_invalid: str = "flag") -> type[BaseModel]:  # fmt: skip
    """Pydantic request model whose record fields are the FeatureSpec's input columns (`rules`:
    ingest's rules, documented per field; `check_records` applies them).

    Validated from the raw JSON body (`model_validate_json`): JSON's strict rules accept ISO 8601 strings
    as times while still refusing "12.5" as a number.
    """
    # A non-nullable input (ingest quarantines a row without it) is required and may not be null:
    # 422 naming the field. A nullable one may be left out and is imputed (the response says so).
    required, rules = set(spec.required), rules or {}

    def typed(name: str, kind: Any) -> tuple[Any, Any]:
        doc = _documented(name, rules, on_invalid)
        return (kind, Field(..., **doc)) if name in required else (kind | None, Field(None, **doc))

    fields: dict[str, Any] = {c.name: typed(c.name, float) for c in spec.numeric}
    fields.update({c.name: typed(c.name, str) for c in spec.categorical})
    # a timestamp input: ISO 8601, a time or a plain date (naive is UTC)
    fields.update({d.name: (datetime | date, ...) if d.name in required else (datetime | date | None, None)
                   for d in spec.dates})  # fmt: skip
    key, ts = passthrough_fields(spec)
    # Optional: the caller's entity key and event time are logged with the prediction, so delayed
    # labels can be joined by (entity, event time) and labeled traffic can flow back into training.
    if key and key not in fields:
        fields[key] = (str | int | None, Field(default=None, description="Entity key (logged, not a model input)."))
    if ts and ts not in fields:
        used = (f"the model reads its {', '.join(spec.time_parts)}; absent: the time the request is scored"
                if spec.time_parts else "logged, not a model input")  # fmt: skip
        fields[ts] = (datetime | None, Field(default=None, description=f"Event time, ISO 8601; naive is UTC ({used})."))
    # strict: "12.5" is not a number and 5 is not a category; nothing is silently coerced.
    record = create_model("Record", __config__=ConfigDict(extra="forbid", strict=True), **fields)
    # The row limit is documented in the schema but answered with 413, not 422 (Payload Too Large).
    limit = {"maxItems": max_records}
    records_doc = "Raw feature values, one object per row."
    explain = (bool, Field(default=False, strict=True, description=EXPLAIN_DOC))
    top_k = (int, Field(default=DEFAULT_TOP_K, ge=1, le=MAX_TOP_K, strict=True, description="Columns per explanation."))
    if not entity_ids:  # no online store: records is the only way in, so it is required
        return create_model(
            "PredictRequest", __config__=ConfigDict(extra="forbid"),
            records=(list[record], Field(description=records_doc, json_schema_extra=limit)),
            explain=explain, top_k=top_k,
        )  # fmt: skip

    class PredictRequest(BaseModel):
        # Exactly one of the two, said in the schema as well as checked (null is not a value for either).
        model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": [{"required": ["records"]},
                                                                               {"required": ["entity_ids"]}]})  # fmt: skip
        records: list[record] = Field(default=None, description=records_doc, json_schema_extra=limit)  # type: ignore[valid-type]
        entity_ids: list[str | int] = Field(default=None, description="Entities to score from the online store.",
                                            json_schema_extra=limit)  # fmt: skip
        explain: bool = Field(default=False, strict=True, description=EXPLAIN_DOC)
        top_k: int = Field(default=DEFAULT_TOP_K, ge=1, le=MAX_TOP_K, strict=True, description="Columns per explanation.")

        @model_validator(mode="after")
        def _exactly_one(self):
            if (self.records is None) == (self.entity_ids is None):
                raise UserError(EXACTLY_ONE)
            return self

    return PredictRequest


def body_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """A ValidationError's errors as FastAPI reports a request body's, locations under `body`."""
    return [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]


def records_from_store(
    store: Any, views: dict[str, tuple[list[str], int | None]], ids: list[str | int]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Feature records and a status per id (ok / expired / unknown_entity) from the online store."""
    records: list[dict[str, Any]] = [dict() for _ in ids]
    statuses = ["unknown_entity"] * len(ids)
    for view, (features, ttl) in views.items():
        for i, row in enumerate(store.get(view, ids, features, ttl)):
            if row.status == "present":
                statuses[i] = "ok"
                records[i].update(row.values)
            elif row.status == "expired" and statuses[i] != "ok":
                statuses[i] = "expired"  # known, but every value is older than the view's TTL
    return records, statuses


def passthrough_fields(spec: FeatureSpec) -> tuple[str | None, str | None]:
    """The entity-key and event-time column names of the data the spec was fitted on."""
    if spec.label is None:  # specs written before these fields existed: (key, time, label) order
        names = list(spec.passthrough) + [None, None]
        return names[0], names[1]
    return spec.entity_key, spec.event_timestamp


def split_record(
    record: dict[str, Any], key: str | None, ts: str | None
) -> tuple[dict[str, Any], str | None, datetime | None]:
    """A validated record without its entity key and event time, plus those two (time in UTC)."""
    entity = record.pop(key, None) if key else None
    event_ts = record.pop(ts, None) if ts else None
    if event_ts is not None:  # naive times are UTC, as in ingestion
        event_ts = event_ts.replace(tzinfo=timezone.utc) if event_ts.tzinfo is None else event_ts.astimezone(timezone.utc)
    return record, None if entity is None else str(entity), event_ts


# What a 200's `predictions` carry, per task of the serving version.
OUTPUT_DOC = {
    "binary": "Per row: `probability` of label 1 and `status`.",
    "multiclass": "Per row: `class` (the most probable of {classes}), `probabilities` per class, and `status`.",
    "regression": "Per row: `value`, the prediction in the label's own units, and `status`.",
}

# Every status POST /predict answers besides 200 and the 422 FastAPI lists itself.
PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or wrong X-API-Key header (when serving.api_key_env is set)."},
    413: {"description": "More records or entity ids than serving.max_records_per_request (maxItems)."},
    503: {"description": "Overloaded: more requests queued than serving.max_queued_requests (answered by Ray Serve)."},
}


def openapi_for(app: FastAPI, model: LoadedModel, request: type[BaseModel]) -> dict[str, Any]:
    """The app's OpenAPI document with /predict's body as `model`'s request model takes it."""
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes,
                      servers=app.servers or None)  # fmt: skip
    body = request.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(body.pop("$defs", {}))
    schemas["PredictRequest"] = body
    doc["paths"]["/predict"]["post"]["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
    }
    doc["info"]["description"] += (
        f" The request body below is what {model.version.uri}, the version serving now, takes;"
        " it follows promotions and rollbacks."
    )
    doc["paths"]["/predict"]["post"].setdefault("responses", {}).setdefault("200", {})["description"] = \
        OUTPUT_DOC[model.spec.task].format(classes=(model.spec.label.classes if model.spec.label else None))  # fmt: skip
    return doc


@dataclass
class ParsedRows:
    """A /predict body as rows: raw records (from the body or the online store) and a status per row."""

    records: list[dict[str, Any]]
    entities: list[str | None]
    event_ts: list[datetime | None]
    statuses: list[str]  # ok / expired / unknown_entity
    lookup_ms: float | None = None  # online-store lookup time, for entity ids
    explain: int = 0  # columns per explanation; 0: not asked for


@dataclass
class ScoreRequest:
    """One request's rows to score, as the route hands them to the batcher: only the rows with
    features (`rows` are their positions in the request), and the version validated against."""

    request_id: str
    variant: str
    model: LoadedModel
    records: list[dict[str, Any]]
    entities: list[str | None]
    event_ts: list[datetime | None] | None = None
    rows: list[int] | None = None  # None: every row, in order
    explain: int = 0  # columns per explanation; 0: not asked for
    statuses: list[str] | None = None  # per row: ok, or a FLAGGED status it is answered with


@dataclass
class Scored:
    """A scored request: the model's output per scored row (a probability, a list of class
    probabilities, or a value; see `prediction`), its typed inputs, and who scored it how fast."""

    outputs: list[Any]
    inputs: pa.Table
    model: str
    version: int
    variant: str
    transform_ms: float
    inference_ms: float
    explanations: list[dict[str, Any]] | None = None  # per scored row, when the request asked


def parse_predict(raw: bytes, terms: Contract, max_records: int, store: Any,
                  views: dict[str, tuple[list[str], int | None]]) -> ParsedRows:  # fmt: skip
    """Validate a /predict body against `terms` (422 naming the field), enforce the row limit (413),
    and turn it into rows: the records given, or the online store's values for the entity ids."""
    try:
        body = terms.request.model_validate_json(raw or b"null")
    except ValidationError as exc:
        raise RequestValidationError(body_errors(exc)) from None
    if getattr(body, "records", None) is not None:
        if len(body.records) > max_records:
            raise HTTPException(413, detail=f"records: {len(body.records)} rows, at most {max_records}")
        parsed = ParsedRows([], [], [], ["ok"] * len(body.records), explain=body.top_k if body.explain else 0)
        for rec in body.records:
            values, entity, event_ts = split_record(rec.model_dump(), terms.key, terms.ts)
            parsed.records.append(values)
            parsed.entities.append(entity)
            parsed.event_ts.append(event_ts)
        check_records(parsed, terms)
        return parsed
    if len(body.entity_ids) > max_records:
        raise HTTPException(413, detail=f"entity_ids: {len(body.entity_ids)} ids, at most {max_records}")
    started = time.perf_counter()
    records, statuses = records_from_store(store, views, body.entity_ids)
    lookup_ms = (time.perf_counter() - started) * 1e3
    return ParsedRows(records, [str(e) for e in body.entity_ids], [None] * len(records), statuses, lookup_ms,
                      body.top_k if body.explain else 0)  # fmt: skip


def check_records(parsed: ParsedRows, terms: Contract) -> None:
    """Ingest's checks (`data.validate.validate_inputs`, column by column) on the records' inputs
    that have a rule: a record ingest would quarantine is refused (422 naming the record, the field
    and the rule) or, for a range or a category list with `on_invalid: flag`, marked with that
    status (answered, counted and logged as such)."""
    if not terms.rules or not parsed.records:
        return
    values = pa.table({name: pa.array([r.get(name) for r in parsed.records],
                                      pa.string() if col.type == "category" else pa.float64())
                       for name, col in terms.rules.items()})  # fmt: skip
    checked = validate_inputs(values, terms.rules, [])
    reasons = checked[REASON]
    if reasons.null_count == len(reasons):
        return
    errors = []
    for i, (reason, name, detail) in enumerate(zip(reasons.to_pylist(), checked[FIELD].to_pylist(),
                                                   checked[DETAIL].to_pylist())):  # fmt: skip
        if reason is None:
            continue
        if terms.on_invalid == "flag" and reason in FLAGGED:
            parsed.statuses[i] = reason
        else:
            errors.append({"type": reason, "loc": ("body", "records", i, name), "msg": detail})
    if errors:
        raise RequestValidationError(errors)


def score_request(parsed: ParsedRows, request_id: str, variant: str, model: LoadedModel) -> ScoreRequest:
    """The rows of `parsed` that have features, as one request to score."""
    known = [i for i, st in enumerate(parsed.statuses) if st in SCORED]
    return ScoreRequest(request_id, variant, model, [parsed.records[i] for i in known],
                        [parsed.entities[i] for i in known], [parsed.event_ts[i] for i in known], known,
                        parsed.explain, [parsed.statuses[i] for i in known])  # fmt: skip


def prediction(spec: FeatureSpec, output: Any) -> dict[str, Any]:
    """What a row's output means for the task: binary {probability}; multiclass {class,
    probabilities per class}; regression {value} (in the user's units)."""
    task = spec.task
    if output is None:
        return {"value": None} if task == "regression" else {"probability": None} if task == "binary" else \
            {"class": None, "probabilities": None}  # fmt: skip
    if task == "multiclass":
        classes = spec.label.classes or []
        return {"class": classes[int(np.argmax(output))], "probabilities": dict(zip(classes, output))}
    if task == "regression":
        return {"value": output}
    return {"probability": output}


def logged_scores(spec: FeatureSpec, outputs: list[Any]) -> list[float]:
    """The one number per row the prediction log and the score metric keep: the probability
    (binary), the predicted class index (multiclass), the value (regression)."""
    if not outputs:  # a request whose every row was refused
        return []
    return logged_score(spec.task, np.asarray(outputs, dtype=np.float64)).tolist()


def answer(parsed: ParsedRows, req: ScoreRequest, scored: Scored) -> dict[str, Any]:
    """The response body: the task's prediction (nulls when unscored) and a status per row, the
    inputs that were imputed."""
    outs: list[Any] = [None] * len(parsed.statuses)
    for i, o in zip(req.rows or [], scored.outputs):
        outs[i] = o
    spec = req.model.spec
    predictions: list[dict[str, Any]] = [{**prediction(spec, o), "status": st} for o, st in zip(outs, parsed.statuses)]
    for i, why in zip(req.rows or [], scored.explanations or []):
        predictions[i]["explanation"] = why
    inputs = req.model.spec.input_columns
    for i in req.rows or []:  # which inputs were missing and got the training fill value
        imputed = [c for c in inputs if parsed.records[i].get(c) is None]
        if imputed:
            predictions[i]["imputed"] = imputed
    return {"request_id": req.request_id, "model": scored.model, "version": scored.version, "variant": scored.variant,
            "predictions": predictions}  # fmt: skip
