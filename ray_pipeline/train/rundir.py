"""The training-run directory: the one place its layout is written, read and checked.

    RUN/
      model/                   the model (JSON or XGBoost .ubj, never pickle)
      feature_spec.json        the FeatureSpec the model was trained with
      metrics.json             {"test": {metric: value}, "rows": {split: count}}
      params.json              {"model": "logreg" | "xgboost" | "ensemble", ...training parameters}
      lineage.json             training-data digest, event-time range, split, hashes, Ray Train run
      history.json             per epoch / boosting round (optional)
      reference_profile.json   what monitoring compares traffic with (optional, features/profile.py)
      plots/                   PNG curves (optional, train/evaluate.py)

The registry copies a run directory as it is into an immutable version, so a registered version
has the same layout: `load_spec` and `model_dir` read both. A run directory may be a local path or
an object-store URI (s3://, gs://): it is written locally and uploaded (`storage.local_dir`), and
read through `storage`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray_pipeline.errors import UserError
from ray_pipeline.features.spec import FeatureSpec
from ray_pipeline.storage import join, list_files, read_bytes

MODEL_DIR = "model"
SPEC_FILE = "feature_spec.json"
METRICS_FILE = "metrics.json"
PARAMS_FILE = "params.json"
LINEAGE_FILE = "lineage.json"
HISTORY_FILE = "history.json"
PLOTS_DIR = "plots"
REQUIRED = (MODEL_DIR, SPEC_FILE, METRICS_FILE, PARAMS_FILE, LINEAGE_FILE)
KINDS = ("logreg", "xgboost", "ensemble")


@dataclass
class RunArtifacts:
    """What a run directory holds besides the model files and plots."""

    kind: str
    spec: FeatureSpec
    metrics: dict[str, float]  # on the test split
    params: dict[str, Any]
    lineage: dict[str, Any]
    rows: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)


def write_run(run_dir: str | Path, model: Any, run: RunArtifacts) -> Path:
    """Write `model` (anything with `save(directory)`) and `run` into the local directory `run_dir`."""
    run_dir = Path(run_dir)
    model.save(run_dir / MODEL_DIR)
    run.spec.save(run_dir / SPEC_FILE)
    _write_json(run_dir / METRICS_FILE, {"test": run.metrics, "rows": run.rows})
    _write_json(run_dir / PARAMS_FILE, {**run.params, "model": run.kind})
    _write_json(run_dir / LINEAGE_FILE, run.lineage)
    _write_json(run_dir / HISTORY_FILE, run.history)
    return run_dir


def read_run(run_dir: str | Path) -> RunArtifacts:
    """Read and check a run directory (path or URI); errors name the directory and the missing or bad file."""
    run_dir = str(run_dir)
    present = {rel.split("/", 1)[0] for rel in list_files(run_dir)}  # top-level names; model/ is a folder
    missing = [name for name in REQUIRED if name not in present]
    if missing:
        raise FileNotFoundError(f"{run_dir}: not a training run directory (missing {', '.join(missing)})")
    metrics, params = _read_json(join(run_dir, METRICS_FILE)), _read_json(join(run_dir, PARAMS_FILE))
    if not isinstance(metrics.get("test"), dict):
        raise UserError(f"{join(run_dir, METRICS_FILE)}: no 'test' metrics")
    if params.get("model") not in KINDS:
        raise UserError(f"{join(run_dir, PARAMS_FILE)}: model {params.get('model')!r}, expected one of {KINDS}")
    history = _read_json(join(run_dir, HISTORY_FILE)) if HISTORY_FILE in present else []
    return RunArtifacts(params["model"], load_spec(run_dir), metrics["test"], params,
                        _read_json(join(run_dir, LINEAGE_FILE)), metrics.get("rows", {}), history)  # fmt: skip


def load_spec(directory: str | Path) -> FeatureSpec:
    """The FeatureSpec of a run directory or registered version (path or URI)."""
    return FeatureSpec.from_json(read_bytes(join(directory, SPEC_FILE)).decode())


def model_dir(directory: str | Path) -> Path:
    """Where a local run directory or checked-out version keeps its model files."""
    return Path(directory) / MODEL_DIR


def _write_json(path: Path, body: Any) -> None:
    path.write_text(json.dumps(body, indent=2, default=str) + "\n")  # times and paths as text


def _read_json(path: str) -> Any:
    try:
        return json.loads(read_bytes(path))
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
