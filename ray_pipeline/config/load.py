"""Reading a pipeline.yaml: YAML errors with their line, validation errors naming every bad key."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)

from ray_pipeline.config.base import ConfigError
from ray_pipeline.config.pipeline import PipelineConfig


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that owns the key at `loc` (to list its allowed keys)."""
    current: Any = PipelineConfig
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = next((f for n, f in current.model_fields.items() if part in (n, f.alias)), None)
            if field is None:
                return None
            current = field.annotation
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    """Strip Optional/Annotated so a field's model class can be found."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            arms = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = arms[0] if len(arms) == 1 else tp
            if len(arms) != 1:
                return tp
        else:
            return tp


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    path = ".".join(str(p) for p in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        owner = _model_at(loc[:-1])
        allowed = sorted((f.alias or n) for n, f in owner.model_fields.items()) if owner else []
        hint = f"; expected one of: {', '.join(allowed)}" if allowed else ""
        return f"{path}: unknown key{hint}"
    if error["type"] == "missing":
        return f"{path}: required key is missing"
    shown = repr(error.get("input"))
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    message = error["msg"].removeprefix("Value error, ")  # pydantic's prefix for our own validators' messages
    return f"{path}: {message} (got {shown})"


def parse_config(data: Any, source: str = "<config>") -> PipelineConfig:
    """Validate an already-parsed mapping; errors name `source` and every bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        cfg = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        lines = "\n".join(f"  {_describe(e)}" for e in exc.errors())
        raise ConfigError(f"{source}: invalid pipeline config:\n{lines}") from None
    cfg.resolve_paths(source if source != "<config>" else None)
    return cfg


def load_config(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline.yaml."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    return parse_config(data, str(path.resolve()))
