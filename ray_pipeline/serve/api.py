"""HTTP request models derived from the FeatureSpec, and online-store lookups for entity ids.

No `from __future__ import annotations` here: pydantic must see the record model class itself
(built per FeatureSpec at deploy time), not its name as a string.
"""

from datetime import datetime, timezone
from typing import Any

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from ray_pipeline.errors import UserError
from ray_pipeline.features.spec import FeatureSpec


def request_models(spec: FeatureSpec) -> type[BaseModel]:
    """Pydantic request model whose record fields come from the FeatureSpec's input columns."""
    fields: dict[str, Any] = {c.name: (float | None, None) for c in spec.numeric}
    fields.update({c.name: (str | None, None) for c in spec.categorical})
    key, ts = passthrough_fields(spec)
    # Optional: the caller's entity key and event time are logged with the prediction, so delayed
    # labels can be joined by (entity, event time) and labeled traffic can flow back into training.
    if key and key not in fields:
        fields[key] = (str | int | None, Field(default=None, description="Entity key (logged, not a model input)."))
    if ts and ts not in fields:
        fields[ts] = (str | None, Field(default=None, description="Event time, ISO 8601 (logged, not a model input)."))
    # strict: "12.5" is not a number and 5 is not a category; nothing is silently coerced.
    record = create_model("Record", __config__=ConfigDict(extra="forbid", strict=True), **fields)

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        records: list[record] | None = Field(default=None, description="Raw feature values, one object per row.")  # type: ignore[valid-type]
        entity_ids: list[str | int] | None = Field(default=None, description="Entities to score from the online store.")

        @model_validator(mode="after")
        def _exactly_one(self):
            if (self.records is None) == (self.entity_ids is None):
                raise UserError("give exactly one of records or entity_ids")
            return self

    return PredictRequest


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
    record: dict[str, Any], index: int, key: str | None, ts: str | None
) -> tuple[dict[str, Any], str | None, datetime | None]:
    """A validated record without its entity key and event time, plus those two (parsed)."""
    entity = record.pop(key, None) if key else None
    raw_ts = record.pop(ts, None) if ts else None
    event_ts = None
    if raw_ts is not None:
        try:
            event_ts = datetime.fromisoformat(raw_ts.replace("Z", "+00:00"))
        except ValueError:
            raise HTTPException(422, detail=f"records[{index}].{ts}: not an ISO 8601 time: {raw_ts!r}") from None
        # naive times are UTC, as in ingestion
        event_ts = event_ts.replace(tzinfo=timezone.utc) if event_ts.tzinfo is None else event_ts.astimezone(timezone.utc)
    return record, None if entity is None else str(entity), event_ts
