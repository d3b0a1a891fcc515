"""config/writer.py: a commented pipeline.yaml that PyYAML (what load_config uses) reads back exactly."""

from __future__ import annotations

import yaml

from ray_pipeline.config.writer import Section, dump


def test_values_and_keys_yaml_1_1_misreads_are_quoted_and_comments_land_where_asked():
    doc = Section()
    schema = doc.section("schema")
    schema.comment("no event timestamp: the split is random")
    schema.set("label", {"column": "Churn", "positive": ["Yes"], "negative": ["No"]}, "1 when Churn is Yes", inline=True)
    inputs = schema.section("features")
    inputs.set("on", {"type": "category", "categories": ["off", "1e3", "a b", "#x"]}, "a column named on", inline=True)
    inputs.set("plain", {"type": "int"})
    doc.set("null_values", ["", "NA", "null", "~"])
    text = dump(doc, ["Written by a test.", "Second line."])
    assert yaml.safe_load(text) == {
        "schema": {"label": {"column": "Churn", "positive": ["Yes"], "negative": ["No"]},
                   "features": {"on": {"type": "category", "categories": ["off", "1e3", "a b", "#x"]},
                                "plain": {"type": "int"}}},
        "null_values": ["", "NA", "null", "~"],
    }  # fmt: skip
    lines = text.splitlines()
    assert lines[:2] == ["# Written by a test.", "# Second line."]
    comment = lines.index("  # no event timestamp: the split is random")
    assert lines[comment + 1].startswith("  label: {column: Churn, positive: ['Yes']")
    assert lines[comment + 1].endswith("# 1 when Churn is Yes")
    assert any(line.startswith("    'on': {") and line.endswith("# a column named on") for line in lines), text
