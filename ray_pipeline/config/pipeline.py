"""A whole pipeline.yaml (`PipelineConfig`), its paths made absolute once, when it is loaded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import (
    Field,
    PrivateAttr,
    model_validator,
)

from ray_pipeline.config.base import StrictModel
from ray_pipeline.config.console import ConsoleConfig
from ray_pipeline.config.data import DataConfig
from ray_pipeline.config.features import FeaturesConfig
from ray_pipeline.config.monitoring import MonitoringConfig
from ray_pipeline.config.registry import RegistryConfig
from ray_pipeline.config.serving import ServingConfig
from ray_pipeline.config.synthetic import SyntheticConfig
from ray_pipeline.config.training import TrainingConfig
from ray_pipeline.errors import UserError


class PipelineConfig(StrictModel):
    """A whole pipeline.yaml."""

    data: DataConfig
    synthetic: SyntheticConfig | None = None
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    console: ConsoleConfig = Field(default_factory=ConsoleConfig)

    _source_file: str | None = PrivateAttr(default=None)
    _hash: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_feature_names(self) -> "PipelineConfig":
        schema = self.data.schema_
        view_features = [f for view in self.features.views.values() for f in view.feature_names]
        numeric = {n for n, c in schema.features.items() if c.type in ("float", "int")} | set(view_features)
        categorical = {n for n, c in schema.features.items() if c.type == "category"}
        dates = {n for n, c in schema.features.items() if c.type == "timestamp"}
        problems = [
            ("features.numeric", sorted(set(self.features.numeric) - numeric), sorted(numeric)),
            ("features.categorical", sorted(set(self.features.categorical) - categorical), sorted(categorical)),
            ("features.exclude", sorted(set(self.features.exclude) - numeric - categorical - dates), None),
        ]
        for key, unknown, known in problems:
            if unknown:
                hint = f"; expected any of {known}" if known else ""
                raise UserError(f"{key} names columns that are not such features: {unknown}{hint}")
        clash = sorted(set(view_features) & set(schema.columns))
        if clash:
            raise UserError(f"features.views produce columns that already exist in the data: {clash}")
        if self.features.views and not (schema.entity_key and schema.event_timestamp):
            raise UserError("features.views need data.schema.entity_key and data.schema.event_timestamp")
        if self.training.split.by == "time" and not schema.event_timestamp:
            raise UserError("training.split.by: time needs data.schema.event_timestamp")
        return self

    @property
    def base_dir(self) -> Path:
        """Directory that relative paths in the file are resolved against."""
        return Path(self._source_file).parent if self._source_file else Path.cwd()

    def resolve(self, location: str) -> str:
        """A path from the config made absolute against the config file's directory; URIs unchanged."""
        if "://" in location or Path(location).is_absolute():
            return location
        return str((self.base_dir / location).resolve())

    def content_hash(self) -> str:
        """sha256 of the validated config's canonical JSON as written (for lineage: the same file
        gives the same hash wherever it is checked out)."""
        if self._hash is not None:
            return self._hash
        payload = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def resolve_paths(self, source_file: str | None) -> None:
        """Make every path in the config absolute against the config file's directory (URIs stay),
        once, when it is loaded: stages read `cfg.<section>.<path>` as is."""
        self._hash = self.content_hash()
        self._source_file = source_file
        data, features, r = self.data, self.features, self.registry
        data.source.path = self.resolve(data.source.path)
        data.output.root = self.resolve(data.output.root)
        features.store_root = self.resolve(features.store_root)
        features.online.path = self.resolve(features.online.path)
        for view in features.views.values():
            if view.source != "accepted":  # a keyword: the ingest output
                view.source = self.resolve(view.source)
        self.training.run_root = self.resolve(self.training.run_root)
        r.db_path, r.artifact_root = self.resolve(r.db_path), self.resolve(r.artifact_root)
        self.serving.prediction_log = self.resolve(self.serving.prediction_log)
        self.monitoring.root = self.resolve(self.monitoring.root)
