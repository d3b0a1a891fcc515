"""The loop on real drift nobody injected (tests/movies.py: IMDb movies 1966-2005 in eight windows,
a sample of each year's movies): continuous training on new labels keeps the served model at or
above a scikit-learn oracle retrained on all earlier windows, and quality estimated from the
scores before the labels comes close to what the labels then show."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from ray_pipeline.cli import app

from .movies import HEADER, WINDOWS, config, config_body, run_loop

pytestmark = pytest.mark.slow

FRACTION = 0.15  # of each year's movies: 1,600 to train, 450-1,300 per window


def test_continuous_training_keeps_up_on_real_drift(ray_session, tmp_path):
    from ray_pipeline.feedback.records import feedback_runs
    from ray_pipeline.registry.handoff import open_registry

    print("\n" + HEADER)
    table = run_loop(tmp_path, FRACTION, ["logreg", "xgboost"])
    assert len(table) == len(WINDOWS) == 8
    served = np.mean([r["auc"] for r in table])
    oracle = np.mean([r["oracle_logistic"] for r in table])
    print(f"mean served AUC {served:.4f}; oracle: logistic {oracle:.4f}, "
          f"trees {np.mean([r['oracle_trees'] for r in table]):.4f}")
    # the loop learns without an alarm: each labeled window starts a retrain, the gates decide
    assert all(r["trigger"] and "new_labels" in r["trigger"] for r in table), [r["trigger"] for r in table]
    promoted = [r for r in table if r["decision"] == "promoted"]
    assert promoted and table[-1]["served"] > 1
    assert all(r["decision"] in ("promoted", "refused", "identical", "racing") for r in table), table
    # at or above the monthly oracle the issue names (the logistic one retrained on every earlier window)
    assert served >= oracle, (served, oracle)
    # quality before labels: every window has estimates and, with the labels in, their error
    assert all(r["estimated_auc"] is not None and r["auc_error"] is not None for r in table)
    errors = [abs(r["auc_error"]) for r in table]
    assert np.median(errors) < 0.08, errors  # a few hundred rows a window; at full size the median is 0.014
    # refused challengers leave no version behind: the versions are the base model, the promoted ones
    # and their refits on every labeled row (what @champion serves), and the challengers that raced
    cfg = config(tmp_path, ["logreg", "xgboost"])
    records = feedback_runs(cfg)
    registered = sum(1 for r in records if r.get("challenger")) + sum(1 for r in records if r.get("refit"))
    assert len(open_registry(cfg).versions("movies")) == 1 + registered
    assert all("(refit)" in r["promoted"] for r in promoted)
    assert not [r for r in records if r.get("decision") == "failed"]
    # a race ends promoted or retired (or still runs after the last window), its evidence recorded
    raced = [r for r in records if isinstance(r.get("race"), dict)]
    assert all(r["decision"] in ("promoted", "retired", "racing") and r["race"]["windows"] >= 1 for r in raced)
    if raced:  # the window after a race started has the shadow challenger's live gain on paired rows
        started = next(i for i, r in enumerate(table) if r["decision"] == "racing")
        assert table[started + 1]["challenger_gain"] is not None
    if raced:  # `models show` of a challenger that raced tells how its race went
        path = tmp_path / "pipeline.yaml"
        path.write_text(yaml.safe_dump(config_body(tmp_path, ["logreg", "xgboost"])))
        shown = CliRunner().invoke(app, ["models", "show", "--config", str(path), raced[0]["challenger"]])
        assert shown.exit_code == 0, shown.output
        race = json.loads(shown.output)["race"]
        assert race["decision"] == raced[0]["decision"] and "confidence sequence" in race["report"]
