"""The console's Ray Serve application: FastAPI routes rendering Jinja2 templates, one replica.

Every URL a page writes is relative (`root` is the way back to the console's own root from the
page asked for), so the console works under any route prefix and behind a reverse proxy. Pages
check access first (console/access.py); actions also check the CSRF token.

No `from __future__ import annotations` here: FastAPI must see the parameter types themselves.
"""

import mimetypes
import os
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from ray import serve

from ray_pipeline.config import PipelineConfig
from ray_pipeline.console import actions, pages
from ray_pipeline.console.access import COOKIE, Access, Denied
from ray_pipeline.console.state import ConsoleState
from ray_pipeline.errors import UserError
from ray_pipeline.monitor.history import report_file as path_of
from ray_pipeline.raycompat import serve_client
from ray_pipeline.serve.deploy import wait_until_routed
from ray_pipeline.storage import read_bytes

HERE = Path(__file__).parent
STATIC = HERE / "static"
TEMPLATES = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
SAFE_NAME = re.compile(r"^[A-Za-z0-9_.=-]+$")

api = FastAPI(title="ray-pipeline console", docs_url=None, redoc_url=None, openapi_url=None)
_console: dict[str, ConsoleState] = {}  # this replica's state (see Console.__serve_build_asgi_app__)


def _state() -> ConsoleState:
    return _console["state"]


def root_of(request: Request) -> str:
    """The relative way from the page asked for back to the console's root ('./', '../', ...)."""
    path, prefix = request.url.path, request.scope.get("root_path", "")
    rel = path[len(prefix):] if prefix and path.startswith(prefix) else path
    return "../" * max(rel.count("/") - 1, 0) or "./"


def render(request: Request, template: str, status: int = 200, root: str | None = None, **context: Any) -> HTMLResponse:
    """A page from its template, with what every page needs (root, access, CSRF token). `root`: for a
    fragment, the way back from the page it is inserted into (not from the fragment's own URL)."""
    st = _state()
    started = time.perf_counter()
    body = TEMPLATES.get_template(template).render(
        root=root or root_of(request), csrf=st.access.csrf(), can_act=st.access.token is not None and st.access.signed_in(request),
        token_configured=st.access.token is not None, refresh_s=st.cfg.console.refresh_s, model_name=st.model_name,
        **context,
    )  # fmt: skip
    response = HTMLResponse(body, status_code=status)
    response.headers["Server-Timing"] = f"render;dur={(time.perf_counter() - started) * 1e3:.1f}"
    return response


def _actor(request: Request) -> str:
    return f"console@{request.client.host if request.client else 'unknown'}"


async def _form(request: Request) -> dict[str, str]:
    body = (await request.body()).decode("utf-8", "replace")
    return {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}


def _guard(request: Request) -> None:
    _state().access.check_page(request)


@api.exception_handler(Denied)
async def _denied(request: Request, exc: Denied):
    if exc.login and request.method == "GET" and "text/html" in request.headers.get("accept", "text/html"):
        return RedirectResponse(root_of(request) + "login", status_code=303)
    return render(request, "message.html", exc.status, title="Not allowed", kind="refused", text=exc.message)


# ------------------------------------------------------------------------------------ pages


@api.get("/healthz")
def healthz() -> dict:
    """Liveness (no access check: it says nothing about the pipeline)."""
    return {"status": "ok"}


@api.get("/", response_class=HTMLResponse)
@api.get("", response_class=HTMLResponse, include_in_schema=False)  # Serve hands the prefix's root over as ""
def home(request: Request):
    """The pipeline map."""
    _guard(request)
    path = request.url.path
    if not path.endswith("/"):  # /ui: relative links would resolve against the parent; go to /ui/
        return RedirectResponse(path.rsplit("/", 1)[-1] + "/", status_code=307)
    return render(request, "map.html", boxes=pages.map_state(_state()))


@api.get("/fragment/map", response_class=HTMLResponse)
def map_fragment(request: Request):
    """The map's boxes alone (polled by the page)."""
    _guard(request)
    return render(request, "map_boxes.html", root="./", boxes=pages.map_state(_state()))


@api.get("/runs", response_class=HTMLResponse)
def runs(request: Request, kind: str = "", trigger: str = "", sort: str = "started_at", desc: int = 1, page: int = 1):
    """Every training run: sorted, filtered and paginated on the server."""
    _guard(request)
    data = pages.runs_page(_state(), kind or None, trigger or None, sort, bool(desc), page)
    return render(request, "runs.html", **data)


@api.get("/compare", response_class=HTMLResponse)
def compare(request: Request):
    """Two or more runs side by side."""
    _guard(request)
    ids = request.query_params.getlist("ids")
    if len(ids) < 2:
        return render(request, "message.html", 400, title="Compare runs", kind="error",
                      text="select two or more runs to compare")  # fmt: skip
    return render(request, "compare.html", **pages.compare(_state(), ids))


@api.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: str):
    """One run."""
    _guard(request)
    data = pages.run_detail(_state(), run_id)
    if data is None:
        return render(request, "message.html", 404, title="Run", kind="error", text=f"no run {run_id!r} in the index")
    return render(request, "run.html", **data)


@api.get("/runs/{run_id}/plots/{name}")
def run_plot(request: Request, run_id: str, name: str):
    """A PNG plot of a run."""
    _guard(request)
    found = pages.get_runs(_state().registry, [run_id])
    if not found or name not in pages.plot_files(found[0].path):
        return Response(status_code=404)
    return Response(read_bytes(f"{found[0].path}/plots/{name}"), media_type="image/png")


@api.get("/models", response_class=HTMLResponse)
def models(request: Request, name: str = "", page: int = 1, history: int = 1):
    """Registered models, versions with aliases, alias history, traffic."""
    _guard(request)
    return render(request, "models.html", **pages.models_page(_state(), name or None, page, history))


@api.get("/models/{name}/{version}", response_class=HTMLResponse)
def version_page(request: Request, name: str, version: int):
    """One version."""
    _guard(request)
    return _version_response(request, name, version)


def _version_response(request: Request, name: str, version: int, outcome: actions.Outcome | None = None):
    data = pages.version_detail(_state(), name, version)
    if data is None:
        return render(request, "message.html", 404, title="Version", kind="error", text=f"models:/{name}/{version} does not exist")
    status = outcome.status if outcome else 200
    return render(request, "version.html", status, outcome=outcome, **data)


@api.get("/models/{name}/{version}/plots/{plot}")
def version_plot(request: Request, name: str, version: int, plot: str):
    """A PNG plot of a registered version."""
    _guard(request)
    v = _state().registry.get(name, version)
    if plot not in pages.plot_files(v.path):
        return Response(status_code=404)
    return Response(read_bytes(f"{v.path}/plots/{plot}"), media_type="image/png")


@api.get("/serving", response_class=HTMLResponse)
def serving(request: Request):
    """Serve applications, replicas, traffic split, latency and throughput, try-it form."""
    _guard(request)
    return render(request, "serving.html", **pages.serving_page(_state()))


@api.get("/fragment/serving", response_class=HTMLResponse)
def serving_fragment(request: Request):
    """The serving page's live part (polled)."""
    _guard(request)
    return render(request, "serving_live.html", root="./", **pages.serving_page(_state()))


@api.get("/monitoring", response_class=HTMLResponse)
def monitoring(request: Request, metric: str = "psi", version: int | None = None, last: int = 200):
    """Time series per feature with thresholds, alerts, per-window reports, feedback runs."""
    _guard(request)
    return render(request, "monitoring.html", **pages.monitoring_page(_state(), metric, version, max(1, min(last, 5000))))


@api.get("/monitoring/reports/{window}/{name}")
def report_file(request: Request, window: str, name: str):
    """A file of a per-window report (its HTML and PNGs)."""
    _guard(request)

    m = _state().cfg.monitoring
    if not (SAFE_NAME.match(window) and SAFE_NAME.match(name)) or not name.endswith((".html", ".png")):
        return Response(status_code=404)
    try:
        body = read_bytes(path_of(m, window, name))
    except FileNotFoundError:
        return Response(status_code=404)
    return Response(body, media_type=mimetypes.guess_type(name)[0] or "application/octet-stream")


@api.get("/data", response_class=HTMLResponse)
def data(request: Request):
    """Ingest runs, quarantine sample, feature views."""
    _guard(request)
    return render(request, "data.html", **pages.data_page(_state()))


@api.get("/static/{name}")
def static(name: str):
    """The console's own CSS and JS (shipped in the package: no CDN)."""
    if not SAFE_NAME.match(name) or not (STATIC / name).is_file():
        return Response(status_code=404)
    return Response((STATIC / name).read_bytes(), media_type=mimetypes.guess_type(name)[0] or "text/plain",
                    headers={"Cache-Control": "max-age=300"})  # fmt: skip


# ------------------------------------------------------------------------------------ sign-in


@api.get("/login", response_class=HTMLResponse)
def login_form(request: Request):
    """The sign-in form (only with an operator token configured)."""
    return render(request, "login.html", error=None)


@api.post("/login", response_class=HTMLResponse)
async def login(request: Request):
    """Check the token; on success set the HTTP-only session cookie and go to the map."""
    access = _state().access
    form = await _form(request)
    if not access.login(form.get("token", "")):
        return render(request, "login.html", 401, error="wrong token" if access.token else "this console has no operator token")
    response = RedirectResponse("./", status_code=303)
    response.set_cookie(COOKIE, access.session_value, httponly=True, samesite="strict", path=_cookie_path(request))
    return response


@api.post("/logout")
async def logout(request: Request):
    """Forget the session cookie."""
    response = RedirectResponse("login", status_code=303)
    response.delete_cookie(COOKIE, path=_cookie_path(request))
    return response


def _cookie_path(request: Request) -> str:
    # the console's own path as the browser sees it (behind a proxy: X-Forwarded-Prefix)
    prefix = request.headers.get("x-forwarded-prefix", "") + request.scope.get("root_path", "")
    return (prefix or "/").rstrip("/") + "/"


# ------------------------------------------------------------------------------------ actions


async def _action(request: Request) -> dict[str, str]:
    form = await _form(request)
    _state().access.check_action(request, form)
    return form


@api.post("/models/{name}/{version}/promote", response_class=HTMLResponse)
async def promote(request: Request, name: str, version: int):
    """Promote through the gates; a refusal is shown with its numbers and changes nothing."""
    form = await _action(request)
    alias = form.get("alias") or _state().cfg.serving.alias
    return _version_response(request, name, version, actions.promote_version(_state(), name, version, alias, _actor(request)))


@api.post("/models/{name}/{version}/challenger", response_class=HTMLResponse)
async def challenger(request: Request, name: str, version: int):
    """Make this version the challenger (canary / shadow traffic)."""
    await _action(request)
    return _version_response(request, name, version, actions.set_challenger(_state(), name, version, _actor(request)))


@api.post("/models/{name}/{version}/rollback", response_class=HTMLResponse)
async def rollback(request: Request, name: str, version: int):
    """Move an alias back to the version it held before its latest change."""
    form = await _action(request)
    alias = form.get("alias") or _state().cfg.serving.alias
    return _version_response(request, name, version, actions.rollback_alias(_state(), name, alias, _actor(request)))


@api.post("/models/{name}/{version}/traffic", response_class=HTMLResponse)
async def set_traffic(request: Request, name: str, version: int):
    """Set the traffic split (mode and canary share)."""
    form = await _action(request)
    outcome = actions.change_traffic(_state(), name, form.get("mode", ""), form.get("share", ""), _actor(request))
    return _version_response(request, name, version, outcome)


# ------------------------------------------------------------------------------------ deployment


@serve.deployment(name="console", num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class Console:
    """The console's one replica (pages are cheap; the data they read is not per request)."""

    def __init__(self, cfg: PipelineConfig, token: str | None) -> None:
        self.state = ConsoleState(cfg, Access(token))
        self.state.sync_runs(force=True)

    def __serve_build_asgi_app__(self) -> FastAPI:
        # Pickled by value like serve/app.Predictor: bind the imported module's routes to this replica.
        import ray_pipeline.console.app as module

        module._console["state"] = self.state
        return module.api


def console_token(cfg: PipelineConfig) -> str | None:
    """The operator token from the variable `console.token_env` names (None when not configured)."""
    env = cfg.console.token_env
    if env is None:
        return None
    token = os.environ.get(env)
    if not token:
        raise UserError(f"console.token_env: environment variable {env} is not set")
    return token


def deploy_console(cfg: PipelineConfig) -> str:
    """Start (or update) the console beside the model on the connected Ray's Serve; returns its URL.
    Serve must already run (serve.start with the serving HTTP options)."""
    c, s = cfg.console, cfg.serving
    serve.start(http_options={"host": s.host, "port": s.port})
    serve.run(Console.bind(cfg, console_token(cfg)), name=c.app_name, route_prefix=c.route_prefix, blocking=False)
    http = serve_client().http_config
    host = s.host if http.host in ("0.0.0.0", "::") else http.host
    url = f"http://{host}:{http.port}{c.route_prefix}"
    if not wait_until_routed(url):
        print(f"warning: {url}/healthz did not answer (unreachable from here?)")
    return url + "/"

