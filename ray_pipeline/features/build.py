"""The feature stage end to end: build views, join a training set point-in-time, and materialize
the online store. The CLI, the demo and tests call these functions.

No FeatureSpec is fitted here: the one a model uses is fitted on its train split only
(`train.data.prepare`) and stored with the model, so there is exactly one spec per version."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from ray_pipeline.config import PipelineConfig
from ray_pipeline.data.sources import read_parquet
from ray_pipeline.features.online import OnlineStore, open_store
from ray_pipeline.features.pit import point_in_time_join
from ray_pipeline.features.store import daily_aggregates, materialize, read_view, write_view
from ray_pipeline.storage import filesystem, join, read_text, write_text


@dataclass
class FeatureBuild:
    """What `build_features` wrote."""

    store_root: str
    training_set: str
    rows: int
    columns: list[str]
    views: dict[str, dict[str, Any]] = field(default_factory=dict)

    def render(self) -> str:
        """Plain-text summary for people."""
        lines = [f"training set {self.rows:,} rows -> {self.training_set}"]
        for name, info in self.views.items():
            lines.append(
                f"  view {name} v{int(info['version'])}: {int(info['rows']):,} rows; "
                f"{info['matched']:.1%} of events found a value point-in-time"
            )
        return "\n".join(lines)


def training_set_path(cfg: PipelineConfig) -> str:
    """Where the point-in-time training set is written."""
    return f"{cfg.features.store_root}/training_set"


def _has_parquet(location: str) -> bool:
    """Whether a directory or URI holds any Parquet file (the feedback loop may not have written yet)."""
    from pyarrow import fs as pafs

    fs, path = filesystem(location)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return False
    return any(f.path.endswith(".parquet") for f in fs.get_file_info(pafs.FileSelector(path, recursive=True)))


def online_store(cfg: PipelineConfig) -> OnlineStore:
    """The configured online store."""
    online = cfg.features.online
    return open_store(online.backend, path=online.path, url=online.url)


def build_features(cfg: PipelineConfig) -> FeatureBuild:
    """Views from accepted data, and the training set: accepted events joined point-in-time."""
    from ray.data import SaveMode

    schema = cfg.data.schema_
    root = cfg.features.store_root
    accepted = read_parquet(cfg.data.output.accepted)
    fed_back = cfg.data.output.feedback
    if _has_parquet(fed_back):  # labeled traffic the feedback loop turned into accepted rows
        accepted = accepted.union(read_parquet(fed_back))
    accepted = accepted.materialize()
    events = accepted
    views: dict[str, dict[str, Any]] = {}
    for name, view in cfg.features.views.items():
        if view.daily_aggregates is not None:
            rows = daily_aggregates(accepted, view.entity, schema.event_timestamp, view)
        else:
            rows = read_parquet(view.source)
        stored = rows.materialize()  # computed once: written to the store and joined from memory
        version = write_view(stored, root, name, view)
        events = point_in_time_join(
            events,
            stored,
            schema.entity_key,
            schema.event_timestamp,
            view.feature_names,
            feature_entity=view.entity,
            feature_ts=view.timestamp,
            ttl_seconds=view.ttl_seconds,
        ).materialize()
        newest = stored.max(view.timestamp) if stored.count() else None
        views[name] = {
            "version": version,
            "rows": stored.count(),
            "matched": _present_share(events, view.feature_names[0]),
            "newest": newest.isoformat() if newest is not None else None,  # the view's freshness
        }
    events.write_parquet(training_set_path(cfg), mode=SaveMode.OVERWRITE)
    built = FeatureBuild(root, training_set_path(cfg), events.count(), list(events.schema().names), views)
    write_text(join(root, BUILD_FILE), json.dumps({**asdict(built), "finished_at": datetime.now(timezone.utc).isoformat()},
                                                  default=str))  # fmt: skip
    return built


BUILD_FILE = "build.json"


def last_build(cfg: PipelineConfig) -> dict[str, Any] | None:
    """What the last `build_features` wrote (rows, views with rows, freshness, point-in-time match), or None."""
    text = read_text(join(cfg.features.store_root, BUILD_FILE))
    return json.loads(text) if text else None


def _present_share(ds, column: str) -> float:
    """Share of rows where `column` is not null."""
    from ray.data.aggregate import Count

    counts = ds.aggregate(Count(alias_name="rows"), Count(column, ignore_nulls=True, alias_name="present")) or {}
    return counts["present"] / counts["rows"] if counts.get("rows") else 0.0


def materialize_online(
    cfg: PipelineConfig, start: datetime | None = None, end: datetime | None = None, views: list[str] | None = None
) -> dict[str, dict[str, int]]:
    """Load each view's latest values in [start, end) into the online store."""
    store = online_store(cfg)
    out = {}
    try:
        for name, view in cfg.features.views.items():
            if views and name not in views:
                continue
            out[name] = materialize(read_view(cfg.features.store_root, name), store, name, view, start, end)
    finally:
        store.close()
    return out
