"""Every use of Ray's private APIs, in one place. Written for ray 2.60.0.

On a Ray upgrade, re-check each function below (tests/test_raycompat.py exercises every one):

- `placement_group_cleaner_callback`: Ray Train V2's `PlacementGroupCleanerCallback` class, which
  train/trainer.py drops from `DataParallelTrainer._create_default_callbacks()` (a private hook
  too) to skip the per-run cleaner actor. If the class moves, the trainers keep Ray's default
  callbacks (correct, ~0.6 s slower per run).
- `train_context_logger`: the logger Ray Train's worker context logs each report with (named by
  file path, so Ray's LoggingConfig does not reach it). If it moves, report lines come back.
- `serve_client`: Serve's controller client (`ray.serve.context._get_global_client`): whether
  Serve runs on the cluster, and where its HTTP proxy really listens.
- `node_logs_dir`: the connected node's log directory (`ray._private.worker.global_worker`).
- `DATA_PROGRESS_LOGGER`: Ray Data's logger that warns once that progress bars are off.
- `AUTH_SETUP_LOGGER`: the logger `ray.init` announces with that a new local instance turned on
  token authentication (Ray's default when RAY_AUTH_MODE is unset).
- `default_token_path`: where `ray.init` saves the token it generates for a new local instance
  (`ray._private.authentication`); runtime.py makes the file readable by its owner only.
- `use_saved_token`: what `ray.init` does only for a cluster it finds by itself (no address): turn
  token auth on when RAY_AUTH_MODE is unset and a token is saved. With an explicit address Ray
  skips it, and a command attaching to an embedded instance (token auth on) was refused.
- `route_raylet_messages`: the driver's error listener (`ray._private.worker.listen_error_messages`)
  prints what the raylet pushes (e.g. "N PYTHON worker processes have been started ... 4x the
  maximum expected startup concurrency") through the module's `print_to_stdstream`, whatever
  `log_to_driver` says; the function is swapped for one that hands those lines elsewhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

WRITTEN_FOR = "2.60.0"
DATA_PROGRESS_LOGGER = "ray.data._internal.progress"
AUTH_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"

log = logging.getLogger(__name__)


def check_version() -> str | None:
    """A warning text when the installed Ray is not the version this module was written for."""
    if ray.__version__ == WRITTEN_FOR:
        return None
    return (f"ray {ray.__version__} is installed; ray_pipeline/raycompat.py was written for ray {WRITTEN_FOR}: "
            "re-check the private APIs it lists (tests/test_raycompat.py)")  # fmt: skip


def placement_group_cleaner_callback() -> type | None:
    """Ray Train V2's per-run placement-group cleaner callback class, or None if it moved."""
    try:
        from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    except ImportError:
        return None
    return PlacementGroupCleanerCallback


def train_context_logger() -> logging.Logger | None:
    """The logger of Ray Train's worker context (one INFO line per report), or None if it moved."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:
        return None
    return logging.getLogger(context.__file__)


def serve_client(required: bool = True) -> Any:
    """Serve's controller client; with `required=False`, None when Serve is not running."""
    from ray.serve.context import _get_global_client

    return _get_global_client(raise_if_no_controller_running=required)


def default_token_path() -> Path:
    """Where Ray saves the authentication token it generates for a new local instance."""
    from ray._private.authentication.authentication_token_setup import _get_default_token_path

    return _get_default_token_path()


def use_saved_token() -> bool:
    """Turn token auth on for this process when RAY_AUTH_MODE is unset and a token is saved; whether it is on."""
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

    return maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def node_logs_dir() -> str | None:
    """Where the connected node's Ray processes write their logs (None when not connected)."""
    node = getattr(ray._private.worker.global_worker, "node", None)
    return node.get_logs_dir_path() if node is not None else None


_printer: dict[str, Any] = {}


def route_raylet_messages(to: Callable[[str], None] | None) -> bool:
    """Hand each line the raylet pushes to this driver to `to` instead of printing it (None: print
    again, as Ray does); False when Ray's printer moved and nothing was changed."""
    import ray._private.worker as worker

    original = _printer.setdefault("print", getattr(worker, "print_to_stdstream", None))
    if original is None:
        return False
    if to is None:
        worker.print_to_stdstream = original
        return True

    def routed(data: dict[str, Any], ignore_prefix: bool) -> None:
        if data.get("pid") != "raylet":
            original(data, ignore_prefix)
            return
        for line in data.get("lines", []):
            to(line)

    worker.print_to_stdstream = routed
    return True


_warning = check_version()
if _warning:
    log.warning(_warning)
