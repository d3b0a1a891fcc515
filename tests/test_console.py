"""The web console in a real browser (Debian's chromium driven by Playwright) on the session's Ray
and real Serve: a small pipeline with runs of both kinds, a served champion, injected drift and a
firing alert (tests/console_site.py). Every page is screenshotted into build/console-screenshots/."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest

from .conftest import ROOT, require_binary
from .console_site import TOKEN, TOKEN_ENV, build_site
from .helpers import call

pytestmark = pytest.mark.slow

SHOTS = ROOT / "build" / "console-screenshots"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
PAGES = ["", "runs", "models", "serving", "monitoring", "data"]


@pytest.fixture(scope="module")
def site(ray_session, tmp_path_factory):
    """The pipeline the pages show (about 40 s), with the console's operator token set."""
    os.environ[TOKEN_ENV] = TOKEN
    yield build_site(tmp_path_factory.mktemp("console"))
    from ray import serve

    for app in ("shop", "ray-pipeline-console"):
        serve.delete(app)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Debian's chromium, headless, with a fresh profile."""
    chromium = require_binary("chromium", "chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[dev]' (make test does)")
    with sync_playwright() as pw:
        profile = tmp_path_factory.mktemp("chromium-profile")
        context = pw.chromium.launch_persistent_context(str(profile), executable_path=chromium, args=CHROMIUM_FLAGS,
                                                        headless=True, viewport={"width": 1400, "height": 1000})  # fmt: skip
        yield context
        context.close()


@pytest.fixture
def page(browser, site):
    """A tab whose requests to any host but the console's own fail the test (the page works offline)."""
    own = urlparse(site["console"]).netloc
    foreign: list[str] = []

    def guard(route):
        host = urlparse(route.request.url).netloc
        if host and host != own:
            foreign.append(route.request.url)
            return route.abort()
        return route.continue_()

    tab = browser.new_page()
    tab.route("**/*", guard)
    yield tab
    # A poll of the page's live parts can be in the route handler when the tab closes; closing then
    # waited for it, and once never returned (pytest-timeout after 600 s): drop the routes first.
    tab.unroute_all(behavior="ignoreErrors")
    tab.close()
    assert not foreign, f"the console asked other hosts for {foreign}"


def sign_in(page, site) -> None:
    page.goto(site["console"] + "login")
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(site["console"])


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_without_the_token_pages_ask_to_sign_in_and_actions_are_refused(page, site):
    from ray_pipeline.registry.handoff import open_registry

    page.goto(site["console"] + "runs")
    assert page.url.endswith("/login")
    registry = open_registry(site["cfg"])
    before = registry.aliases("shop")
    # a form posted without the token: refused, nothing moves
    status = page.evaluate("""async (url) => (await fetch(url, {method: 'POST', body: 'alias=champion',
        headers: {'Content-Type': 'application/x-www-form-urlencoded'}})).status""",
                           site["console"] + f"models/shop/{site['v2']}/promote")  # fmt: skip
    assert status == 401
    assert registry.aliases("shop") == before


def test_the_map_shows_each_stage_and_every_link_answers(page, site):
    sign_in(page, site)
    page.goto(site["console"])
    stages = page.locator("li.stage")
    assert [s.get_attribute("data-stage") for s in stages.all()] == [
        "data", "features", "training", "registry", "serving", "monitoring", "feedback"]  # fmt: skip
    text = {s.get_attribute("data-stage"): s.inner_text() for s in stages.all()}
    ingest = site["ingest"]
    assert f"read {ingest.read:,} / accepted {ingest.accepted:,} / quarantined {ingest.quarantined:,}" in text["data"]
    assert ingest.quarantined > 0
    assert "3 runs" in text["training"]
    assert f"@champion v{site['v1']}" in text["registry"]
    assert "1 firing alert(s): input_drift" in text["monitoring"]
    assert "replica" in text["serving"]
    assert "no feedback run yet" in text["feedback"]
    shot(page, "map")
    links = sorted({a.get_attribute("href") for a in page.locator("main a").all()})
    assert len(links) >= 7
    for href in links:  # relative to the map page, as the browser resolves them
        response = page.request.get(urljoin(page.url, href))
        assert response.status == 200, href
    for name in PAGES[1:]:
        page.goto(site["console"] + name)
        shot(page, name)


def test_runs_sort_by_log_loss_filter_by_kind_and_compare(page, site):
    from playwright.sync_api import expect

    sign_in(page, site)
    page.goto(site["console"] + "runs?sort=log_loss&desc=0")
    losses = [float(c.inner_text()) for c in page.locator("td[data-metric=log_loss]").all()]
    assert len(losses) == 3 and losses == sorted(losses)
    page.select_option("select[name=kind]", "xgboost")
    page.click("form.filters button")
    assert {r.get_attribute("data-kind") for r in page.locator("tr[data-run]").all()} == {"xgboost"}
    page.goto(site["console"] + "runs?kind=logreg")
    boxes = page.locator("tr[data-run] input[type=checkbox]")
    assert boxes.count() == 2
    boxes.nth(0).check()
    boxes.nth(1).check()
    page.click("text=compare selected")
    # after a click the next page may still be loading: the checks wait for it (count() does not)
    page.wait_for_url("**/compare?**")
    expect(page.locator("tr.differs[data-key=epochs]")).to_have_count(1)  # the one parameter set apart
    expect(page.locator("tr[data-key=l2]:not(.differs)")).to_have_count(1)
    assert page.locator(".side-by-side img").count() >= 2
    shot(page, "compare")
    page.click(".compare thead a >> nth=0")
    expect(page.locator("h2", has_text="FeatureSpec")).to_have_count(1)
    shot(page, "run")


def _served_version(site) -> int:
    return call(site["url"], "/model", None, key=None)[1]["version"]


def test_promote_refused_then_accepted_with_hot_reload_then_rolled_back(page, site):
    from ray_pipeline.registry.handoff import open_registry

    from .helpers import wait_until

    registry = open_registry(site["cfg"])
    v1, v2 = site["v1"], site["v2"]
    sign_in(page, site)
    page.goto(site["console"] + f"models/shop/{v2}")
    page.click("button[data-action=promote]")
    assert page.locator(".notice.ok").count() == 1
    assert registry.aliases("shop")["champion"] == v2
    assert wait_until(lambda: _served_version(site) == v2, 30)  # the replicas hot-reloaded it
    assert registry.history("shop", "champion")[-1].actor.startswith("console@")
    # v1 is now worse than the champion: refused, with the gate numbers, and nothing moves
    page.goto(site["console"] + f"models/shop/{v1}")
    page.click("button[data-action=promote]")
    notice = page.locator(".notice.refused").inner_text()
    assert "refused" in notice and re.search(r"FAIL log_loss .*: [0-9.]+ vs [0-9.]+", notice), notice
    assert registry.aliases("shop")["champion"] == v2
    assert page.locator("table.attempts tr.refused").count() == 1
    # what drives the version's scores, by raw column, from the importance stored with it
    columns = page.locator("table.importance tbody td:first-child").all_inner_texts()
    assert columns and set(columns) <= set(registry.get("shop", v1).signature["inputs"])
    shot(page, "version-refused")
    page.goto(site["console"] + f"models/shop/{v2}")
    page.click("button[data-action=rollback]")
    assert registry.aliases("shop")["champion"] == v1
    assert wait_until(lambda: _served_version(site) == v1, 30)
    page.goto(site["console"] + "models")
    assert page.locator("table.history tbody tr").count() == 3  # run's promotion, the console's, the rollback
    shot(page, "models")


def test_a_forged_post_without_the_csrf_token_is_refused(page, site):
    from ray_pipeline.registry.handoff import open_registry

    registry = open_registry(site["cfg"])
    sign_in(page, site)
    before = registry.aliases("shop")
    status = page.evaluate("""async (url) => (await fetch(url, {method: 'POST', body: 'alias=champion',
        headers: {'Content-Type': 'application/x-www-form-urlencoded'}})).status""",
                           site["console"] + f"models/shop/{site['v2']}/promote")  # fmt: skip
    assert status == 403
    assert registry.aliases("shop") == before


def test_monitoring_shows_the_firing_alert_and_the_drift_crossing_its_threshold(page, site):
    sign_in(page, site)
    page.goto(site["console"] + "monitoring?metric=psi")
    assert page.locator("li.firing[data-rule=input_drift]").count() == 1
    chart = page.locator("figure[data-feature=amount] svg")
    values = json.loads(chart.locator("polyline.series").get_attribute("data-values"))
    limit = float(chart.locator("line.threshold[data-name*='rule input_drift']").get_attribute("data-threshold"))
    assert values[0] < limit < values[-1]  # quiet before the shift, above the rule's line after it
    # quality estimated from the scores before any label arrived: one row per window with traffic
    estimates = page.locator("#estimates table.estimates tbody tr")
    assert estimates.count() == sum(1 for w in site["windows"] if w.rows) > 0
    assert 0.5 < float(estimates.first.locator("td").nth(1).inner_text()) <= 1.0
    shot(page, "monitoring-drift")
    # the drifted window's report, once loaded with its images: a click alone waits for less (seen under load)
    with page.expect_navigation(wait_until="load"):
        page.click("text=Per-window reports >> xpath=following::a[last()]")
    assert page.locator("h1", has_text="Window").count() == 1
    assert all(img.evaluate("i => i.naturalWidth") > 0 for img in page.locator("img").all())  # its PNGs load


def test_try_it_sends_a_real_request_from_the_served_contract(page, site):
    sign_in(page, site)
    page.goto(site["console"] + "serving")
    page.fill("#try input[name=amount]", "42.5")
    page.fill("#try input[name=channel]", "online")
    page.click("#try button")
    page.wait_for_function("document.getElementById('try-response').textContent.startsWith('200')")
    body = json.loads(page.locator("#try-response").inner_text().split("\n", 1)[1])
    assert 0 < body["predictions"][0]["probability"] < 1
    assert page.locator("table.latency tr[data-stage=inference]").count() == 1
    shot(page, "serving")


def test_with_the_token_a_traffic_change_is_accepted_and_recorded(page, site):
    from ray_pipeline.registry.handoff import open_registry
    from ray_pipeline.registry.traffic import current_traffic

    sign_in(page, site)
    page.goto(site["console"] + f"models/shop/{site['v3']}")
    page.click("button[data-action=challenger]")
    assert open_registry(site["cfg"]).aliases("shop")["challenger"] == site["v3"]
    page.select_option("select[name=mode]", "canary")
    page.fill("input[name=share]", "0.25")
    page.click("button[data-action=traffic]")
    setting = current_traffic(open_registry(site["cfg"]), "shop")
    assert (setting.mode, setting.canary_share) == ("canary", 0.25) and setting.actor.startswith("console@")
    from .helpers import wait_until

    assert wait_until(lambda: call(site["url"], "/model", None, key=None)[1]["traffic"].get("canary_share") == 0.25, 30)
    page.select_option("select[name=mode]", "off")
    page.click("button[data-action=traffic]")
    assert current_traffic(open_registry(site["cfg"]), "shop").mode == "off"
