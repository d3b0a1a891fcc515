"""Registering finished runs and offering them to an alias through the gates: what `run`, `train
--register`, `tune` and a search's best trials share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ray_pipeline.config import PipelineConfig
from ray_pipeline.registry.gates import PromotionRefused, headline, loss_of, promote
from ray_pipeline.registry.handoff import open_registry, register_run
from ray_pipeline.registry.versions import ModelVersion
from ray_pipeline.train.runner import TrainRun


@dataclass
class Promotion:
    """What registering and promoting a set of runs did."""

    versions: list[ModelVersion]
    champion: ModelVersion | None
    lines: list[str]


def register_and_promote(cfg: PipelineConfig, runs: Sequence[TrainRun], alias: str = "champion") -> Promotion:
    """Register every run (a TrainRun, or a search's best trial), then offer them to `alias` best test log-loss first, through the gates.

    The best run becomes the holder if it beats the current one (or there is none); the others
    are then checked against it, so the report shows each gate decision.
    """
    registry = open_registry(cfg)
    name = cfg.registry.model_name
    versions = [register_run(registry, name, run.run_dir) for run in runs]
    lines = [headline(v) for v in versions]
    for v in sorted(versions, key=lambda v: v.metrics.get(loss_of(v), float("inf"))):
        try:
            change, report = promote(registry, name, v.version, alias, cfg.registry.gates)
            lines += [report, f"@{alias}: {change.from_version} -> {change.to_version}"]
        except PromotionRefused as refused:
            lines.append(str(refused))
    holder = registry.aliases(name).get(alias)
    champion = registry.get(name, holder) if holder is not None else None
    return Promotion(versions, champion, lines)
