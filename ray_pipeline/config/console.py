"""The `console` section: the web console's route, access token and refresh."""

from __future__ import annotations

from pydantic import Field, field_validator

from ray_pipeline.config.base import StrictModel
from ray_pipeline.errors import UserError


class ConsoleConfig(StrictModel):
    """The web console: its own Ray Serve application on the serving HTTP port."""

    enabled: bool = Field(default=True, description="Start the console with `run --serve`, `serve deploy` and the demo.")
    route_prefix: str = Field(default="/ui", description="Where the console answers on the Serve HTTP port.")
    app_name: str = "ray-pipeline-console"
    token_env: str | None = Field(
        default=None,
        description="Environment variable holding the operator token. Unset: read-only pages, loopback clients only.",
    )
    refresh_s: float = Field(default=5.0, gt=0, description="How often live parts of a page refresh.")
    page_size: int = Field(default=50, ge=1, le=1000, description="Rows per page in long lists.")

    @field_validator("route_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/") or value == "/" or value.endswith("/"):
            raise UserError(f"console.route_prefix {value!r}: a path like /ui (a leading '/', none at the end)")
        return value
