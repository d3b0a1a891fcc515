"""docs/configuration.md, generated from the pydantic models: every key of pipeline.yaml with its
type, default and description, so the reference cannot drift from what `load_config` accepts.

    python -m ray_pipeline.config.reference > docs/configuration.md   (or `make docs`)
"""

from __future__ import annotations

import json
import sys
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from ray_pipeline.config.pipeline import PipelineConfig

HEADER = """# Configuration reference

Generated from the pydantic models in `ray_pipeline/config/` by `make docs`
(`python -m ray_pipeline.config.reference`); `tests/test_config_reference.py` fails when this file is
stale. Unknown keys are errors naming the file and the key. Relative paths are resolved once, against
the config file's directory, when the file is loaded. `configs/demo.yaml` is a complete example.
"""


def _models(tp: Any) -> list[type[BaseModel]]:
    """The config models a field's type holds (through Optional, list and dict values)."""
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    if origin in (typing.Union, types.UnionType, list, dict, typing.Annotated):
        args = typing.get_args(tp)
        args = args[1:] if origin is dict else args[:1] if origin is typing.Annotated else args
        return [m for a in args for m in _models(a)]
    return []


def _suffix(tp: Any) -> str:
    """How a nested section is addressed under its key: `.NAME` per dict level, `[]` for a list."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _suffix(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return next((_suffix(a) for a in typing.get_args(tp) if a is not type(None)), "")
    if origin is dict:
        return ".NAME" + _suffix(typing.get_args(tp)[1])
    if origin is list:
        return "[]" + _suffix(typing.get_args(tp)[0])
    return ""


def _type_name(tp: Any) -> str:
    """A field's type for people: `int`, `str | None`, `list[section]`, `'csv' | 'parquet'`."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "section"
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(tp)[0])
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    if value is PydanticUndefined:
        return ""
    if isinstance(value, BaseModel):
        return "(section)"
    text = json.dumps(value, default=str)
    return f"`{text}`" if len(text) <= 60 else f"`{text[:57]}...`"


def _section(model: type[BaseModel], path: str, seen: set[str], out: list[str]) -> None:
    if path in seen:
        return
    seen.add(path)
    doc = " ".join(line.strip() for line in (model.__doc__ or "").strip().split("\n\n")[0].splitlines())
    out += ["", f"## `{path}`" if path else "## top level", "", doc, "", "| key | type | default | description |",
            "|---|---|---|---|"]  # fmt: skip
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        out.append(f"| `{key}` | {_type_name(field.annotation)} | {_default(field)} | {description} |")
        for sub in _models(field.annotation):
            suffix = _suffix(field.annotation)
            nested.append((f"{path}.{key}{suffix}" if path else f"{key}{suffix}", sub))
    derived = [(n, v.__doc__) for n, v in vars(model).items() if isinstance(v, property) and v.__doc__]
    if derived:  # paths under a root: not keys, but where the stages read and write
        out += ["", "Derived locations (not keys):", ""] + [f"- `{n}`: {d.strip()}" for n, d in derived]
    for sub_path, sub in nested:
        _section(sub, sub_path, seen, out)


def render() -> str:
    """The whole reference as Markdown."""
    out = [HEADER.rstrip()]
    _section(PipelineConfig, "", set(), out)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
