"""What one console replica keeps between requests: the config, the registry, the monitoring
table read incrementally, and when the run index was last synced with the run directories."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from ray_pipeline.config import PipelineConfig
from ray_pipeline.console.access import Access
from ray_pipeline.monitor.history import MonitoringTable
from ray_pipeline.registry.handoff import open_registry
from ray_pipeline.registry.runs import sync_runs
from ray_pipeline.registry.store import Registry

SYNC_EVERY_S = 30.0  # runs written by another process appear within this; runs this platform trains are indexed at once


@dataclass
class ConsoleState:
    """Per-replica state behind the pages."""

    cfg: PipelineConfig
    access: Access
    registry: Registry = field(init=False)
    monitoring: MonitoringTable = field(init=False)
    _synced: float = field(default=0.0, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self.registry = open_registry(self.cfg)
        self.monitoring = MonitoringTable(self.cfg.monitoring)
        self.monitoring.follow(every_s=1.0)  # pages read the table as last read, never wait for a listing

    @property
    def model_name(self) -> str:
        """The model this pipeline registers and serves."""
        return self.cfg.registry.model_name

    def sync_runs(self, force: bool = False) -> None:
        """Index run directories nobody indexed, at most every SYNC_EVERY_S."""
        with self._lock:
            if not force and time.monotonic() - self._synced < SYNC_EVERY_S:
                return
            self._synced = time.monotonic()
        sync_runs(self.registry, self.cfg.training.run_root)
