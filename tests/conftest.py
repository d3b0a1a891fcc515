"""Shared fixtures: one real local Ray instance per test session, small data, temp dirs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Must be set before Ray starts: no token auth, no usage reporting, no progress bars in logs.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_PIPELINE_PROGRESS", "0")
os.environ.pop("RAY_ADDRESS", None)

ROOT = Path(__file__).resolve().parents[1]
# Node metrics (Ray Serve's and ours) for the scrape test; outside Ray's 10002-19999 worker ports.
METRICS_PORT = 20_000 + os.getpid() % 5_000
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"


def require_binary(name: str, package: str) -> str:
    """The path of a program a test needs: skip without it, but fail under CI=true (CI installs it)."""
    binary = shutil.which(name)
    if binary is None:
        message = f"{name} not found: install it with `apt-get install -y {package}` (make test does, as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


@pytest.fixture(scope="session")
def ray_session():
    """The one Ray instance of this test run (started on first use, stopped at the end)."""
    from ray_pipeline.runtime import init_ray, shutdown_ray

    runtime = init_ray(num_cpus=4, metrics_export_port=METRICS_PORT)
    yield runtime
    shutdown_ray()


@pytest.fixture
def demo_config_dict() -> dict:
    """configs/demo.yaml as a plain mapping, for tests to adapt."""
    import yaml

    return yaml.safe_load(DEMO_CONFIG.read_text())


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """A temp dir holding configs/demo.yaml, so the demo's relative paths land under tmp_path."""
    (tmp_path / "configs").mkdir()
    shutil.copy(DEMO_CONFIG, tmp_path / "configs" / "demo.yaml")
    return tmp_path
