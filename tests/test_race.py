"""The sequential champion/challenger race: its confidence sequence keeps false promotions at its
level however many windows it looks at (a fixed-sample interval re-checked each window does not),
and it promotes a challenger that is truly better once the evidence separates."""

from __future__ import annotations

import json

import numpy as np

from ray_pipeline.config import parse_config
from ray_pipeline.feedback.records import finish_race_record, version_race, write_record
from ray_pipeline.registry.race import PROMOTE, RETIRE, Race, row_losses
from ray_pipeline.storage import write_text


def _window(rng: np.random.Generator, rows: int, edge: float) -> tuple[np.ndarray, np.ndarray]:
    """Paired log-losses of a window: a champion scoring p, a challenger scoring p nudged by noise
    and by `edge` towards the truth (0: no better on average)."""
    p_true = rng.uniform(0.05, 0.6, rows)
    y = (rng.random(rows) < p_true).astype(float)
    champion = np.clip(p_true + rng.normal(0, 0.08, rows), 0.01, 0.99)
    challenger = np.clip(champion + edge * (p_true - champion) + rng.normal(0, 0.03, rows), 0.01, 0.99)
    loss = row_losses("binary", y, champion)
    return loss - row_losses("binary", y, challenger), loss


def _naive_promotes(gains: list[np.ndarray]) -> bool:
    """A 95% normal interval on all rows so far, re-checked after every window (what not to do)."""
    for k in range(1, len(gains) + 1):
        d = np.concatenate(gains[:k])
        if d.mean() - 1.96 * d.std(ddof=1) / np.sqrt(d.size) > 0:
            return True
    return False


def test_no_better_challengers_are_rarely_promoted_however_often_the_race_looks():
    rng = np.random.default_rng(0)
    races, windows, promoted, naive = 300, 12, 0, 0
    for _ in range(races):
        first = _window(rng, 200, 0.0)
        race = Race.start("binary", 1, *first, alpha=0.05, max_windows=windows)
        gains = [first[0]]
        while race.verdict() is None:
            g, loss = _window(rng, 200, 0.0)
            race.add(g, loss)
            gains.append(g)
        promoted += race.verdict() == PROMOTE
        while len(gains) < windows:
            gains.append(_window(rng, 200, 0.0)[0])
        naive += _naive_promotes(gains)
    assert promoted / races <= 0.05, promoted  # at its level, at every look
    assert naive / races > 2 * max(promoted, 1) / races  # peeking at a fixed-sample interval is not


def test_a_better_challenger_wins_after_windows_the_first_could_not_decide():
    rng = np.random.default_rng(1)
    first = _window(rng, 150, 0.4)  # about 1.8% less log-loss, with a per-row spread of 24%
    race = Race.start("binary", 3, *first, alpha=0.05, max_windows=20)
    race.challenger = 4
    assert race.verdict() is None  # one window cannot tell
    while race.verdict() is None:
        race.add(*_window(rng, 150, 0.4))
    assert race.verdict() == PROMOTE and 1 < race.windows < 20
    lower, upper = race.interval()
    assert 0 < lower < upper
    assert "race v4 vs v3" in race.report() and "confidence sequence" in race.report()
    again = Race.from_dict(race.to_dict())  # as the loop's saved state holds it
    assert again.interval() == race.interval()


def test_a_worse_challenger_is_retired_and_an_undecided_one_runs_out_of_windows():
    rng = np.random.default_rng(2)
    worse = Race.start("binary", 1, *_window(rng, 150, -0.6), alpha=0.05, max_windows=20)
    while worse.verdict() is None:
        worse.add(*_window(rng, 150, -0.6))
    assert worse.verdict() == RETIRE and worse.interval()[1] < 0
    tie = Race.start("regression", 1, np.zeros(50), np.ones(50), alpha=0.05, max_windows=3)
    tie.add(np.zeros(50), np.ones(50))
    assert tie.verdict() is None
    tie.add(np.zeros(50), np.ones(50))
    assert tie.verdict() == RETIRE  # out of windows: the champion stays
    np.testing.assert_allclose(row_losses("regression", np.array([1.0, 2.0]), np.array([2.0, 0.0])), [1.0, 4.0])
    # a label chosen by mae races absolute error, and a saved race keeps which
    y, p = np.array([1.0, 2.0]), np.array([2.0, 0.0])
    np.testing.assert_allclose(row_losses("regression", y, p, "mae"), [1.0, 2.0])
    by_mae = Race.start("regression", 1, np.zeros(5), np.ones(5), alpha=0.05, max_windows=3, metric="mae")
    assert Race.from_dict(by_mae.to_dict()).metric == "mae"
    saved_before = {k: v for k, v in by_mae.to_dict().items() if k != "metric"}  # a state written before mae
    assert Race.from_dict(saved_before).metric == "rmse"


def test_a_version_shows_its_race_live_from_the_loop_state_and_then_how_it_ended(tmp_path):
    cfg = parse_config({"data": {"source": {"path": "unused"},
                                 "schema": {"label": "y", "features": {"x": {"type": "float"}}},
                                 "output": {"root": str(tmp_path / "out")}},
                        "registry": {"db_path": str(tmp_path / "reg.db"), "artifact_root": str(tmp_path / "art")},
                        "monitoring": {"root": str(tmp_path / "mon")}})  # fmt: skip
    rng = np.random.default_rng(3)
    race = Race.start("binary", 1, *_window(rng, 100, 0.5), alpha=0.05, max_windows=4)
    race.challenger = 2
    uri = "models:/m/2"
    write_record(cfg, {"id": "feedback-1", "challenger": uri, "decision": "racing", "race": race.to_dict()})
    assert version_race(cfg, "models:/m/3") is None
    assert version_race(cfg, uri)["evidence"]["windows"] == 1
    race.add(*_window(rng, 100, 0.5))  # the loop's next window, saved in its state before the record moves
    held = {"run": "feedback-1", "race": race.to_dict(), "report": race.report(), "verdict": race.verdict()}
    write_text(cfg.monitoring.state, json.dumps({"loop": {"race": held}}))
    live = version_race(cfg, uri)
    assert live["decision"] == "racing" and live["evidence"]["windows"] == 2 and live["report"] == race.report()
    finish_race_record(cfg, "feedback-1", "retired", race.to_dict(), "retired: " + race.report())
    ended = version_race(cfg, uri)
    assert ended["decision"] == "retired" and ended["report"].startswith("retired: race v2 vs v1")
