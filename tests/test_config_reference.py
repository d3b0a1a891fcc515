"""docs/configuration.md is generated from the config models: it fails here when a key changes and
the file was not regenerated (`make docs`)."""

from __future__ import annotations

from ray_pipeline.config.pipeline import PipelineConfig
from ray_pipeline.config.reference import render

from .conftest import ROOT


def test_the_configuration_reference_is_current():
    written = (ROOT / "docs" / "configuration.md").read_text()
    assert written == render(), "docs/configuration.md is stale: run `make docs`"


def test_the_reference_names_every_key_of_every_section():
    text = render()
    for section in (PipelineConfig, *(f.annotation for f in PipelineConfig.model_fields.values())):
        model = next((a for a in getattr(section, "__args__", (section,)) if hasattr(a, "model_fields")), None)
        for name, field in (model.model_fields.items() if model else []):
            assert f"| `{field.alias or name}` |" in text, name
    assert "## `monitoring.rules[]`" in text and "## `registry.gates.NAME`" in text
