"""What several test modules share: small registries and runs, serving configs, a linear dataset
with a known model, and one way to wait for something."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from ray_pipeline.config import PipelineConfig, parse_config
from ray_pipeline.features.spec import CategoricalSpec, FeatureSpec, NumericSpec
from ray_pipeline.registry.handoff import register_run
from ray_pipeline.registry.store import Registry
from ray_pipeline.runtime import free_port
from ray_pipeline.serve.client import http_json
from ray_pipeline.train.data import Prepared
from ray_pipeline.train.models import LogisticModel
from ray_pipeline.train.rundir import RunArtifacts, write_run

T = TypeVar("T")
KEY = "s3cret-key"


def wait_until(probe: Callable[[], T], seconds: float = 60, every: float = 0.5) -> T:
    """`probe()`'s first truthy result, polled every `every` s; its last result after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        result = probe()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(every)


SPEC = FeatureSpec(
    rows=100,
    numeric=[NumericSpec(name="amount", log1p=True, clip=None, fill=1.0, missing_indicator=True, mean=3.0, std=1.5,
                         count=95, missing=5)],
    categorical=[CategoricalSpec(name="channel", encoding="frequency", frequencies={"pos": 0.6, "online": 0.3},
                                 missing_value=0.05, unseen_value=0.0, rare_frequency=0.0)],
)  # fmt: skip


def make_run(root: Path, log_loss: float, roc_auc: float, seed: int = 0, spec: FeatureSpec = SPEC) -> Path:
    """A training-run directory like train_model writes."""
    weights = np.random.default_rng(seed).normal(size=len(spec.feature_names))
    lineage = {"training_set": "/data/ts", "feature_spec_hash": spec.content_hash()}
    run = RunArtifacts("logreg", spec, {"log_loss": log_loss, "roc_auc": roc_auc}, {"l2": 1e-4}, lineage)
    model = LogisticModel(weights, 0.1, spec.feature_names)
    return write_run(root / f"run-{log_loss}-{roc_auc}-{seed}", model, run)


def serve_config(tmp: Path, app_name: str, **serving) -> PipelineConfig:
    """A pipeline config serving `fraud` from a registry under `tmp`, with serving overrides."""
    return parse_config(
        {
            "data": {
                "source": {"path": "unused"},
                "schema": {"entity_key": "customer_id", "event_timestamp": "ts", "label": "y",
                           "features": {"other": {"type": "float"}}},
                "output": {"root": str(tmp / "out")},
            },
            "features": {"views": {"profile": {"entity": "customer_id", "features": ["amount", "channel"],
                                               "ttl_seconds": 3600}},
                         "online": {"backend": "sqlite", "path": str(tmp / "online.db")}},
            "registry": {"db_path": str(tmp / "reg.db"), "artifact_root": str(tmp / "art"), "model_name": "fraud"},
            "serving": {"port": free_port(), "prediction_log": str(tmp / "predlog"), "log_flush_s": 0.5,
                        "reload_poll_s": 0.2, "app_name": app_name, "route_prefix": f"/{app_name}", **serving},
        }
    )  # fmt: skip


def two_version_registry(tmp: Path) -> Registry:
    """fraud/1 (champion) and fraud/2, two different logistic models."""
    registry = Registry(tmp / "reg.db", tmp / "art")
    register_run(registry, "fraud", make_run(tmp, 0.40, 0.80, seed=1))
    register_run(registry, "fraud", make_run(tmp, 0.30, 0.90, seed=2))
    registry.set_alias("fraud", "champion", 1, "test setup")
    return registry


def call(url: str, path: str, body: dict | None = None, key: str | None = KEY) -> tuple[int, dict]:
    """The serving API's own client, with the test's API key."""
    return http_json(url + path, body, {"X-API-Key": key} if key else None)


def scrape_until(done, seconds: float = 60) -> str:
    """The node's /metrics text once `done(text)` holds (or the last one after `seconds`): Ray
    exports metrics every few seconds, so a fresh count shows up with a delay."""
    from .conftest import METRICS_PORT  # here, not at import: conftest drops RAY_ADDRESS, which
    # the cluster driver (multinode_train.py, also a user of this module) needs

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10) as r:
            return r.read().decode()

    last = {"text": ""}

    def probe() -> bool:
        last["text"] = scrape()
        return done(last["text"])

    wait_until(probe, seconds, every=2)
    return last["text"]


def samples(text: str, name: str, **labels: str) -> list[float]:
    """Values of the samples named `name` whose labels include `labels`, from Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    return [s.value for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]  # fmt: skip


TRUE_COEF = np.array([1.5, -2.0, 0.5, 0.0, 1.0])
TRUE_BIAS = -0.7


def linear_prepared(rows: int = 20_000, seed: int = 0) -> Prepared:
    """A dataset whose labels come from a known logistic model (no FeatureSpec transform needed)."""
    import ray.data

    rng = np.random.default_rng(seed)

    def split(n: int) -> object:
        X = rng.normal(size=(n, len(TRUE_COEF))).astype(np.float32)
        p = 1 / (1 + np.exp(-(X @ TRUE_COEF + TRUE_BIAS)))
        y = (rng.random(n) < p).astype(np.float32)
        return (
            ray.data.from_numpy(X)
            .zip(ray.data.from_numpy(y))
            .map_batches(lambda b: {"x": b["data"], "y": b["data_1"]})
            .materialize()
        )

    spec = FeatureSpec(
        rows=rows,
        numeric=[NumericSpec(name=f"x{i}", log1p=False, clip=None, fill=0.0, missing_indicator=False,
                             mean=0.0, std=1.0, count=rows, missing=0) for i in range(len(TRUE_COEF))],
        categorical=[],
    )  # fmt: skip
    counts = {"train": rows, "valid": rows // 4, "test": rows // 4}
    return Prepared(spec, *(split(n) for n in counts.values()), {"by": "synthetic"}, counts)


# Known truth for the other tasks: three classes from a softmax of linear scores (class 0's are 0),
# and a linear value plus Gaussian noise of sd 0.5.
TRUE_SOFTMAX = np.array([[0.0, 1.0, -1.0], [0.0, -1.5, 0.5], [0.0, 0.5, 1.2]])
TRUE_LINEAR = np.array([2.0, -1.0, 0.5, 0.0])


def task_prepared(task: str, rows: int = 20_000, seed: int = 0) -> Prepared:
    """A multiclass or regression dataset drawn from known truth (no FeatureSpec transform needed)."""
    import ray.data

    from ray_pipeline.features.spec import LabelSpec

    rng = np.random.default_rng(seed)
    d = TRUE_SOFTMAX.shape[0] if task == "multiclass" else len(TRUE_LINEAR)

    def split(n: int) -> object:
        X = rng.normal(size=(n, d)).astype(np.float32)
        if task == "multiclass":
            Z = X @ TRUE_SOFTMAX + np.array([0.0, 0.3, -0.2])
            P = np.exp(Z - Z.max(axis=1, keepdims=True))
            P /= P.sum(axis=1, keepdims=True)
            y = (rng.random(n)[:, None] > np.cumsum(P, axis=1)).sum(axis=1).astype(np.float32)
        else:
            y = (X @ TRUE_LINEAR + 3.0 + rng.normal(0, 0.5, n)).astype(np.float32)
        return ray.data.from_items([{"x": X[i], "y": y[i]} for i in range(n)]).materialize()

    label = LabelSpec(column="y", task=task, classes=["a", "b", "c"] if task == "multiclass" else None)
    spec = FeatureSpec(
        rows=rows,
        numeric=[NumericSpec(name=f"x{i}", log1p=False, clip=None, fill=0.0, missing_indicator=False,
                             mean=0.0, std=1.0, count=rows, missing=0) for i in range(d)],
        categorical=[], label=label,
    )  # fmt: skip
    counts = {"train": rows, "valid": rows // 4, "test": rows // 4}
    return Prepared(spec, *(split(n) for n in counts.values()), {"by": "synthetic"}, counts)


def linear_cfg(tmp_path, **logreg) -> PipelineConfig:
    return parse_config(
        {
            "data": {
                "source": {"path": "unused"},
                "schema": {
                    "entity_key": "e",
                    "event_timestamp": "t",
                    "label": "y",
                    "features": {"a": {"type": "float"}},
                },
                "output": {"root": str(tmp_path / "out")},
            },
            "training": {
                "run_root": str(tmp_path / "runs"),
                "checkpoint_every": 3,
                "logreg": {"optimizer": "gd", "learning_rate": 1.0, "epochs": 12, "l2": 0.0, **logreg},
            },
        }
    )


# A line Ray or Ray Tune printed, not the project: Ray's log format, its processes' prefixes, the
# raylet's worker-start notice, its native exit noise, Tune's experiment box, TensorBoard's hint and warnings.
RAY_LINE = re.compile(r"\b(DEBUG|INFO|WARNING|ERROR)\b \S+\.py:\d+ --|\((raylet|pid=)|nanobind|Token authentication"
                      r"|PYTHON worker processes have been started|View detailed results here|TensorBoard"
                      r"|Trial status|tensorboardx|NaN or Inf found in input tensor")


def ray_lines(text: str) -> list[str]:
    """The lines of a terminal's text that Ray or Tune printed (none on a quiet terminal)."""
    return [line for line in text.splitlines() if RAY_LINE.search(line)]
