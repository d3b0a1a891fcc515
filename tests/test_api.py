"""The public Python API: every example in `ray_pipeline.api` runs as a doctest, in a folder holding
a churn-like table, on the session's Ray; the package exports the API's names and nothing loads it
until one is used."""

from __future__ import annotations

import doctest
import os
import subprocess
import sys

import pytest
import yaml

import ray_pipeline
from tests.tables import churn_table

pytestmark = pytest.mark.slow  # the whole pipeline, Serve included


def test_every_api_example_runs_as_a_doctest(ray_session, tmp_path, monkeypatch):
    from ray import serve

    from ray_pipeline import api
    from ray_pipeline.runtime import free_port

    churn_table(800).to_csv(tmp_path / "churn.csv", index=False)
    monkeypatch.chdir(tmp_path)
    port = free_port()
    real_init = api.init

    def init_on_a_free_port(*args, **kwargs):  # the session's Serve may hold the default port
        real_init(*args, **kwargs)
        path = kwargs.get("out", "pipeline.yaml")
        body = yaml.safe_load(open(path))
        body["serving"].update(port=port, app_name="api-doctest", route_prefix="/api-doctest")
        open(path, "w").write(yaml.safe_dump(body, sort_keys=False))
        return api.load_config(path)

    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = finder.find(api, globs={"rp": ray_pipeline})
    names = {t.name.rsplit(".", 1)[-1] for t in tests if t.examples}
    assert set(ray_pipeline.__all__) - {"silent"} <= names, "every entry point has an example"
    monkeypatch.setattr(api, "init", init_on_a_free_port)
    try:
        for test in tests:
            runner.run(test)
    finally:
        serve.delete("api-doctest")
    result = runner.summarize(verbose=False)
    assert result.failed == 0 and result.attempted >= 20, result
    assert os.path.exists(tmp_path / "pipeline.yaml")
    assert any((tmp_path / "events").iterdir())  # rp.generate's relative folder: the caller's, not a worker's


def test_the_package_exports_the_api_lazily():
    code = ("import sys, ray_pipeline as rp; assert 'ray_pipeline.api' not in sys.modules; "
            "f = rp.predict; assert 'ray_pipeline.api' in sys.modules; print(f.__module__)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "ray_pipeline.api"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        ray_pipeline.nothing  # noqa: B018
