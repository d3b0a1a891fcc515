"""HTTP request models derived from the FeatureSpec, and online-store lookups for entity ids.

No `from __future__ import annotations` here: pydantic must see the record model class itself
(built per FeatureSpec at deploy time), not its name as a string.
"""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from ray_pipeline.features.spec import FeatureSpec


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
