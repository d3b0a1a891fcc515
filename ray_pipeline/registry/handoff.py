"""Registered versions: register a training run, open the configured registry, load a version by URI.

Promotion (alias moves through gates) is registry/gates.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray_pipeline.config import PipelineConfig
from ray_pipeline.features.spec import FeatureSpec
from ray_pipeline.registry.store import Registry
from ray_pipeline.registry.versions import ModelVersion
from ray_pipeline.storage import join, tree_sha256
from ray_pipeline.train.explain import IMPORTANCE_FILE
from ray_pipeline.train.models import Predictor, load_model
from ray_pipeline.train.rundir import MODEL_DIR, load_spec, model_dir, read_run


def registry_db(cfg: PipelineConfig) -> str:
    """The registry's database: `registry.db_url`, else the SQLite file at `registry.db_path`."""
    return cfg.registry.db_url or cfg.registry.db_path


def open_registry(cfg: PipelineConfig) -> Registry:
    """The configured registry."""
    return Registry(registry_db(cfg), cfg.registry.artifact_root)


def _label(spec: FeatureSpec) -> dict[str, Any] | None:
    """The label as the signature records it (a regression's error metric; none for classes)."""
    if spec.label is None:
        return None
    return spec.label.model_dump(exclude_none=True, exclude=None if spec.task == "regression" else {"metric"})


def register_run(registry: Registry, name: str, run_dir: str | Path, code_version: str | None = None,
                 lineage: dict[str, Any] | None = None) -> ModelVersion:  # fmt: skip
    """Register a training run directory (model/, feature_spec.json, metrics, params, lineage; `lineage`
    adds what only the caller knows, e.g. that the run refits a gated recipe)."""
    run = read_run(run_dir)
    spec = run.spec
    signature = {
        "inputs": {c.name: "number" for c in spec.numeric} | {c.name: "string" for c in spec.categorical}
        | {d.name: "timestamp" for d in spec.dates},
        "features": spec.feature_names,
        "task": spec.task,
        "output": _output(spec),
        "label": _label(spec),
    }
    full = {**run.lineage, **(lineage or {}), "run_dir": str(run_dir), "code_version": code_version or _code_version(),
            "model_sha256": model_sha256(run_dir)}  # fmt: skip
    return registry.register(name, run_dir, run.kind, run.metrics, run.params, signature, full)


def _output(spec) -> str:
    """What a score means, for people and the OpenAPI page."""
    if spec.task == "multiclass":
        return f"probability per class of {spec.label.classes} and the predicted class"
    if spec.task == "regression":
        return f"the predicted {spec.label.column}"
    return "probability of label 1"


def model_sha256(run_dir: str | Path) -> str:
    """Digest of a run's model files: two runs that learned the same model have the same digest."""
    return tree_sha256(join(str(run_dir), MODEL_DIR))  # join, not Path: run_dir may be a URI


def same_model(registry: Registry, name: str, digest: str) -> ModelVersion | None:
    """The registered version of `name` whose model has this digest, if any."""
    return next((v for v in registry.versions(name) if v.lineage.get("model_sha256") == digest), None)


def _code_version() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)  # fmt: skip
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass
class LoadedModel(Predictor):
    """A registered version ready to predict from raw rows: `predict` applies its own FeatureSpec.

    >>> champion = load(open_registry(cfg), "models:/fraud@champion")  # doctest: +SKIP
    >>> champion.predict([{"amount": 12.5, "channel": "web"}]).probabilities  # doctest: +SKIP
    array([0.031])
    """

    version: ModelVersion


def importance(registry: Registry, version: ModelVersion) -> dict[str, Any] | None:
    """The version's stored importance (train/explain.py), read from its checksummed files; None
    for versions registered before runs wrote it."""
    import json

    path = registry.checkout(version) / IMPORTANCE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def load(registry: Registry, uri: str) -> LoadedModel:
    """Load models:/NAME/VERSION or models:/NAME@ALIAS, verifying every file's checksum first."""
    version = registry.resolve(uri)
    directory = registry.checkout(version)
    return LoadedModel(load_spec(directory), load_model(model_dir(directory)), version)
