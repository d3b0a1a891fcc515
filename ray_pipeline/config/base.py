"""What every config section shares: strict models, the error type, joining a root and a name, UTC times."""

from __future__ import annotations

from datetime import datetime, timezone

from pydantic import (
    BaseModel,
    ConfigDict,
)

from ray_pipeline.errors import UserError


class ConfigError(UserError):
    """A pipeline.yaml that cannot be used; the message names the file, the key and what was expected."""


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def join(root: str, name: str) -> str:
    """`name` under `root` (a directory or a URI)."""
    return root.rstrip("/") + "/" + name


def as_utc(value: datetime) -> datetime:
    """`value` in UTC: naive times (CLI options, config) are taken as UTC, never the machine's
    local zone; aware ones are converted."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
