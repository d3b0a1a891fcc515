"""Each private Ray API the project uses (ray_pipeline/raycompat.py) still does what the code
relies on: run on a Ray upgrade before trusting the rest."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

from ray_pipeline import raycompat


def test_the_installed_ray_is_the_one_the_adapter_was_written_for():
    assert raycompat.check_version() is None, raycompat.check_version()


def test_the_placement_group_cleaner_is_a_default_train_callback(ray_session):
    from ray.train import ScalingConfig

    from ray_pipeline.train.trainer import Trainer

    cleaner = raycompat.placement_group_cleaner_callback()
    assert cleaner is not None
    trainer = Trainer(lambda: None, scaling_config=ScalingConfig(num_workers=1))
    ray_defaults = super(type(trainer).__mro__[1], trainer)._create_default_callbacks()  # DataParallelTrainer's own
    assert any(isinstance(c, cleaner) for c in ray_defaults), "Ray no longer adds the cleaner: drop the override"
    assert not any(isinstance(c, cleaner) for c in trainer._create_default_callbacks())


def test_the_train_context_logger_is_the_report_logger():
    logger = raycompat.train_context_logger()
    assert logger is not None and os.path.exists(logger.name) and logger.name.endswith("context.py")


def test_the_serve_client_says_whether_serve_runs(ray_session):
    client = raycompat.serve_client(required=False)
    if client is None:  # Serve not started in this session (yet): the required form says so
        with pytest.raises(Exception, match="(?i)serve|controller"):
            raycompat.serve_client()
    else:
        assert client.http_config.port > 0


def test_the_node_log_dir_and_data_progress_logger_exist(ray_session):
    logs = raycompat.node_logs_dir()
    assert logs and os.path.isdir(logs) and any(name.startswith("raylet") for name in os.listdir(logs))
    importlib.import_module(raycompat.DATA_PROGRESS_LOGGER)  # the logger is named after this module


def test_the_auth_setup_logger_is_the_one_that_announces_token_auth():
    module = importlib.import_module(raycompat.AUTH_SETUP_LOGGER)
    assert module.logger.name == raycompat.AUTH_SETUP_LOGGER
    assert hasattr(module, "enable_token_auth_by_default"), "Ray's default-on token auth moved: re-check runtime.py"


def test_the_default_token_path_is_under_the_users_home():
    assert raycompat.default_token_path() == Path.home() / ".ray" / "auth_token"


def test_a_saved_token_is_not_used_when_the_auth_mode_is_set(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # explicit: Ray's choice stands, nothing changes
    assert raycompat.use_saved_token() is False and os.environ["RAY_AUTH_MODE"] == "disabled"


def test_raylet_messages_can_be_routed_off_the_terminal(capsys):
    """The driver's error listener prints what the raylet pushes through `print_to_stdstream`; routed,
    such a line reaches the given writer and not the terminal, other lines still print."""
    import ray._private.worker as worker

    from ray_pipeline.raycompat import route_raylet_messages

    got: list[str] = []
    assert route_raylet_messages(got.append)
    try:
        notice = "WARNING: 8 PYTHON worker processes have been started on node: abc"
        worker.print_to_stdstream({"lines": [notice], "pid": "raylet", "is_err": False}, ignore_prefix=False)
        worker.print_to_stdstream({"lines": ["epoch 1"], "pid": 42, "is_err": False, "ip": "1.2.3.4",
                                   "task_name": "t", "actor_name": ""}, ignore_prefix=True)  # fmt: skip
    finally:
        assert route_raylet_messages(None)
    out = capsys.readouterr()
    assert got == [notice] and "PYTHON worker processes" not in out.out + out.err
    assert "epoch 1" in out.out + out.err
