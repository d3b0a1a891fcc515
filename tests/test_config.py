"""pipeline.yaml validation: good configs load, bad ones name the file, the key and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ray_pipeline.config import ConfigError, load_config, parse_config

from .conftest import DEMO_CONFIG


def _write(tmp_path: Path, data: dict | str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_demo_config_loads_and_resolves_paths_against_its_directory():
    cfg = load_config(DEMO_CONFIG)
    assert cfg.data.schema_.entity_key == "customer_id"
    assert cfg.synthetic is not None and cfg.synthetic.rows > 0
    resolved = Path(cfg.data.source.path)
    assert resolved == (DEMO_CONFIG.parent / "../data/demo/raw").resolve()
    assert cfg.resolve("s3://bucket/x") == "s3://bucket/x"


def test_every_path_is_absolute_once_loaded_and_the_hash_is_the_file_as_written(tmp_path, demo_config_dict):
    demo_config_dict["features"]["views"]["customer_daily"]["source"] = "views/daily"  # a path, not `accepted`
    demo_config_dict["training"]["run_root"] = "runs"
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a, b = load_config(_write(tmp_path / "a", demo_config_dict)), load_config(_write(tmp_path / "b", demo_config_dict))
    for cfg, home in ((a, tmp_path / "a"), (b, tmp_path / "b")):
        paths = [cfg.data.source.path, cfg.data.output.accepted, cfg.data.output.feedback, cfg.features.store_root,
                 cfg.features.online.path, cfg.features.views["customer_daily"].source, cfg.training.run_root,
                 cfg.registry.db_path, cfg.registry.artifact_root, cfg.serving.prediction_log, cfg.monitoring.table,
                 cfg.monitoring.active_alerts, cfg.monitoring.feedback_runs]  # fmt: skip
        assert all(Path(p).is_absolute() for p in paths), paths
        assert Path(cfg.training.run_root) == home / "runs"
    assert a.training.run_root != b.training.run_root
    assert a.content_hash() == b.content_hash()  # lineage names the config, not where it was checked out
    assert parse_config({**demo_config_dict, "monitoring": {"root": "s3://bucket/mon"}}).monitoring.table == "s3://bucket/mon/table"


def test_unknown_key_names_file_path_and_allowed_keys(tmp_path, demo_config_dict):
    demo_config_dict["data"]["schema"]["features"]["amount"]["maxx"] = 3
    path = _write(tmp_path, demo_config_dict)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "data.schema.features.amount.maxx: unknown key" in msg
    assert "expected one of:" in msg and "max" in msg and "categories" in msg


def test_wrong_type_names_key_and_value(tmp_path, demo_config_dict):
    demo_config_dict["synthetic"]["rows"] = "many"
    demo_config_dict["data"]["source"]["format"] = "xlsx"
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, demo_config_dict))
    msg = str(err.value)
    assert "synthetic.rows" in msg and "'many'" in msg
    assert "data.source.format" in msg and "'xlsx'" in msg


def test_missing_required_key(tmp_path, demo_config_dict):
    del demo_config_dict["data"]["schema"]["label"]
    with pytest.raises(ConfigError, match=r"data\.schema\.label: required key is missing"):
        load_config(_write(tmp_path, demo_config_dict))


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        ({"type": "float", "min": 5, "max": 1}, "min \\(5.0\\) is greater than max"),
        ({"type": "float", "categories": ["a"]}, "categories apply to type 'category'"),
        ({"type": "category", "min": 0}, "min/max apply to numeric columns"),
        ({"type": "decimal"}, "data.schema.features.bad.type"),
    ],
)
def test_inconsistent_feature_column(tmp_path, demo_config_dict, column, expected):
    demo_config_dict["data"]["schema"]["features"]["bad"] = column
    with pytest.raises(ConfigError, match=expected):
        load_config(_write(tmp_path, demo_config_dict))


def test_feature_may_not_reuse_label_name(demo_config_dict):
    demo_config_dict["data"]["schema"]["features"]["label"] = {"type": "float"}
    with pytest.raises(ConfigError, match="features repeat a key/timestamp/label/split column"):
        parse_config(demo_config_dict, "inline.yaml")


def test_invalid_yaml_names_line(tmp_path):
    path = _write(tmp_path, "data:\n  source: [unclosed\n")
    with pytest.raises(ConfigError, match=r"pipeline\.yaml:\d+:\d+: invalid YAML"):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_later_stage_sections_reject_unknown_keys(demo_config_dict):
    demo_config_dict["training"] = {"epochs": 3}
    with pytest.raises(ConfigError, match="training.epochs: unknown key"):
        parse_config(demo_config_dict)


def test_content_hash_is_stable_and_sensitive(demo_config_dict):
    a = parse_config(demo_config_dict).content_hash()
    assert a == parse_config(demo_config_dict).content_hash()
    demo_config_dict["synthetic"]["seed"] += 1
    assert parse_config(demo_config_dict).content_hash() != a


@pytest.mark.parametrize(
    ("serving", "expected"),
    [
        ({"autoscaling": {"min_replicas": 3, "max_replicas": 2}}, r"serving.autoscaling: min_replicas \(3\) is above"),
        ({"traffic": {"mode": "split"}}, r"serving.traffic.mode: .*'off', 'canary' or 'shadow'"),
        ({"traffic": {"mode": "canary", "canary_share": 1.5}}, r"serving.traffic.canary_share"),
    ],
)
def test_serving_settings_are_checked(demo_config_dict, serving, expected):
    demo_config_dict["serving"] = serving
    with pytest.raises(ConfigError, match=expected):
        parse_config(demo_config_dict)
