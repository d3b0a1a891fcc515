"""The data behind each page, read through the stages' APIs (registry, run index, monitoring
history, prediction log, ingest and feature summaries, feedback records). Each function returns
plain values a template renders; nothing here parses a stage's files itself."""

from __future__ import annotations

import json
import math
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pyarrow.compute as pc

from ray_pipeline.console import charts
from ray_pipeline.console.state import ConsoleState
from ray_pipeline.data.ingest import ingest_runs, quarantine_sample
from ray_pipeline.features.build import last_build
from ray_pipeline.feedback.records import feedback_runs, version_race
from ray_pipeline.monitor.history import active_alerts, alert_log, report_windows
from ray_pipeline.registry.aliases import history_page
from ray_pipeline.registry.attempts import attempts
from ray_pipeline.registry.database import RegistryError
from ray_pipeline.registry.handoff import importance as version_importance
from ray_pipeline.registry.runs import get_runs, metric_names, query_runs, registered_as, run_kinds
from ray_pipeline.registry.traffic import current_traffic, traffic_history
from ray_pipeline.registry.versions import model_names, versions_page
from ray_pipeline.serve.predlog import STAGES, recent_log
from ray_pipeline.storage import join, list_files
from ray_pipeline.train.rundir import load_spec

STAGE_ORDER = ("data", "features", "training", "registry", "serving", "monitoring", "feedback")
RUN_COLUMNS = ("log_loss", "roc_auc", "brier", "accuracy", "rmse", "r2")
SERVING_WINDOW_S = 900  # the serving page's throughput and latency cover the last 15 minutes


def pages(total: int, page: int, size: int) -> dict[str, int]:
    """Pagination numbers for a template."""
    last = max(1, math.ceil(total / size))
    page = min(max(page, 1), last)
    return {"page": page, "last": last, "total": total, "size": size, "offset": (page - 1) * size}


# ------------------------------------------------------------------------------------ the map


def traffic(st: ConsoleState) -> dict[str, Any]:
    """The traffic split in force: the registry's setting, else the config's."""
    setting = current_traffic(st.registry, st.model_name)
    t = st.cfg.serving.traffic
    if setting is not None:
        return {"mode": setting.mode, "canary_share": setting.canary_share, "source": f"set by {setting.actor} at {setting.at[:19]}"}
    return {"mode": t.mode, "canary_share": t.canary_share, "source": "serving.traffic in the config"}


def map_state(st: ConsoleState) -> dict[str, dict[str, Any]]:
    """One box per stage, in the order the data flows."""
    cfg = st.cfg
    boxes: dict[str, dict[str, Any]] = {}
    last = ingest_runs(cfg, 1)
    boxes["data"] = {"link": "data", "lines": [
        f"last ingest {last[0]['finished_at'][:19]}" if last else "no ingest yet",
        *([f"read {last[0]['read']:,} / accepted {last[0]['accepted']:,} / quarantined {last[0]['quarantined']:,}"] if last else []),
    ]}  # fmt: skip
    build = last_build(cfg)
    view_lines = [f"view {n}: {int(v['rows']):,} rows, newest {str(v.get('newest') or '-')[:19]}, "
                  f"{v['matched']:.1%} point-in-time match" for n, v in (build or {}).get("views", {}).items()]  # fmt: skip
    boxes["features"] = {"link": "data#features", "lines": (
        [f"training set {build['rows']:,} rows ({build['finished_at'][:19]})", *view_lines] if build else ["no feature build yet"])}
    st.sync_runs()
    total, recent = query_runs(st.registry, limit=3)
    boxes["training"] = {"link": "runs", "lines": [f"{total:,} runs"] + [
        f"{r.kind} ({r.trigger}) {r.started_at[:19]}: log_loss {_num(r.metrics.get('log_loss'))}, "
        f"AUC {_num(r.metrics.get('roc_auc'))}" for r in recent]}  # fmt: skip
    aliases = _aliases(st)
    t = traffic(st)
    boxes["registry"] = {"link": "models", "lines": [f"{st.model_name}: " + (", ".join(f"@{a} v{v}" for a, v in aliases.items()) or "no aliases"),
                                                     f"traffic {t['mode']}" + (f", canary share {t['canary_share']:.0%}" if t["mode"] == "canary" else "")]}  # fmt: skip
    live = serving_summary(st, seconds=60)
    boxes["serving"] = {"link": "serving", "lines": [
        f"{live['app_status']}, {live['replicas']} replica(s)",
        f"{live['rps']:.1f} req/s, p50 {_num(live['p50'])} ms, p99 {_num(live['p99'])} ms (last minute)"]}  # fmt: skip
    last_window = st.monitoring.last_window()
    firing = active_alerts(cfg.monitoring)
    boxes["monitoring"] = {"link": "monitoring", "alert": bool(firing), "lines": [
        f"last window ends {last_window[0][:19]}" if last_window else "no window yet",
        f"{len(firing)} firing alert(s)" + (": " + ", ".join(a["rule"] for a in firing) if firing else "")]}  # fmt: skip
    fb = feedback_runs(cfg)
    boxes["feedback"] = {"link": "monitoring#feedback", "lines": (
        [f"{fb[-1]['id']}: {fb[-1].get('decision', 'running')}", str(fb[-1].get("promoted") or fb[-1].get("why") or "")[:90]]
        if fb else ["no feedback run yet"])}  # fmt: skip
    return {k: boxes[k] for k in STAGE_ORDER}


def _status(value: Any) -> str:
    """An enum member's value (RUNNING), anything else as text."""
    return str(getattr(value, "value", value))


def _aliases(st: ConsoleState) -> dict[str, int]:
    try:
        return st.registry.aliases(st.model_name)
    except RegistryError:
        return {}


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) and math.isfinite(v) else "-"


# ------------------------------------------------------------------------------------ runs


def runs_page(st: ConsoleState, kind: str | None, trigger: str | None, sort: str, descending: bool,
              page: int) -> dict[str, Any]:  # fmt: skip
    """One page of the run index, sorted and filtered in SQL."""
    st.sync_runs()
    size = st.cfg.console.page_size
    total, _ = query_runs(st.registry, kind, trigger, limit=1)
    p = pages(total, page, size)
    _, rows = query_runs(st.registry, kind, trigger, sort, descending, p["offset"], size)
    return {"runs": rows, "p": p, "kinds": run_kinds(st.registry), "metrics": metric_names(st.registry),
            "columns": RUN_COLUMNS, "kind": kind or "", "trigger": trigger or "", "sort": sort, "desc": descending}  # fmt: skip


def plot_files(run_path: str) -> list[str]:
    """The PNG plots a run (or version) directory holds."""
    try:
        return sorted(f for f in list_files(join(run_path, "plots")) if f.endswith(".png") and "/" not in f)
    except (FileNotFoundError, OSError):
        return []


def compare(st: ConsoleState, ids: list[str]) -> dict[str, Any]:
    """Runs side by side: every parameter and metric, the rows whose values differ marked."""
    runs = get_runs(st.registry, ids)

    def table(pick) -> list[dict[str, Any]]:  # noqa: ANN001 - a getter of one run's dict
        keys = sorted({k for r in runs for k in pick(r)})
        out = []
        for k in keys:
            values = [pick(r).get(k) for r in runs]
            shown = [json.dumps(v, default=str) if isinstance(v, (dict, list)) else v for v in values]
            out.append({"key": k, "values": shown, "differs": len({json.dumps(v, default=str, sort_keys=True) for v in values}) > 1})
        return out

    return {"runs": runs, "params": table(lambda r: r.params), "metrics": table(lambda r: r.metrics),
            "plots": {r.run_id: plot_files(r.path) for r in runs}}  # fmt: skip


def run_detail(st: ConsoleState, run_id: str) -> dict[str, Any] | None:
    """One run: parameters, metrics, plots, FeatureSpec, lineage, the versions registered from it."""
    found = get_runs(st.registry, [run_id])
    if not found:
        st.sync_runs(force=True)
        found = get_runs(st.registry, [run_id])
    if not found:
        return None
    run = found[0]
    try:
        spec = load_spec(run.path)
        spec_rows = _spec_rows(spec)
    except (FileNotFoundError, OSError, ValueError) as exc:
        spec, spec_rows = None, [{"column": "-", "kind": f"FeatureSpec unreadable: {exc}", "detail": ""}]
    return {"run": run, "plots": plot_files(run.path), "spec": spec, "spec_rows": spec_rows,
            "versions": registered_as(st.registry, run)}  # fmt: skip


def _spec_rows(spec: Any) -> list[dict[str, str]]:
    rows = []
    for c in spec.numeric:
        d = c.model_dump()
        rows.append({"column": c.name, "kind": "numeric", "detail": ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items()
            if k != "name" and v not in (None, False, [], {}))})  # fmt: skip
    for c in spec.categorical:
        d = c.model_dump()
        cats = d.pop("frequencies", None) or d.pop("categories", None) or {}
        rows.append({"column": c.name, "kind": "categorical", "detail": ", ".join(
            f"{k} {v}" for k, v in d.items() if k != "name" and not isinstance(v, (dict, list)) and v not in (None, False))
            + f"; {len(cats)} known categories"})  # fmt: skip
    for d in spec.dates:
        marked = "; missing indicator" if d.missing_indicator else ""
        detail = f"days since 1970 (mean {d.mean:.1f}, std {d.std:.1f}); {', '.join(d.parts)} as sin and cos{marked}"
        rows.append({"column": d.name, "kind": "timestamp", "detail": detail})
    return rows


# ------------------------------------------------------------------------------------ models


def models_page(st: ConsoleState, name: str | None, page: int, history: int) -> dict[str, Any]:
    """Registered models; one model's versions with their aliases, its alias history, its traffic."""
    names = model_names(st.registry)
    name = name or (st.model_name if st.model_name in names or not names else names[0])
    size = st.cfg.console.page_size
    total, _ = versions_page(st.registry, name, 0, 1)
    p = pages(total, page, size)
    _, versions = versions_page(st.registry, name, p["offset"], size)
    aliases = _aliases_of(st, name)
    by_version: dict[int, list[str]] = {}
    for a, v in aliases.items():
        by_version.setdefault(v, []).append(a)
    h_total, _ = history_page(st.registry, name, 0, 1)
    hp = pages(h_total, history, size)
    _, changes = history_page(st.registry, name, hp["offset"], size)
    return {"names": names, "name": name, "versions": versions, "p": p, "aliases": aliases, "by_version": by_version,
            "history": changes, "hp": hp, "traffic": traffic(st) if name == st.model_name else None,
            "traffic_history": traffic_history(st.registry, name, 10)}  # fmt: skip


def _aliases_of(st: ConsoleState, name: str) -> dict[str, int]:
    try:
        return st.registry.aliases(name)
    except RegistryError:
        return {}


def version_detail(st: ConsoleState, name: str, version: int) -> dict[str, Any] | None:
    """One version: metrics, lineage back to its run, promotion attempts, alias history."""
    try:
        v = st.registry.get(name, version)
    except RegistryError:
        return None
    run_dir = str(v.lineage.get("run_dir") or "")
    run_id = run_dir.rstrip("/").rsplit("/", 1)[-1] if run_dir else None
    _, changes = history_page(st.registry, name, 0, 200, version=version)
    return {"v": v, "run_id": run_id, "attempts": attempts(st.registry, name, version),
            "importance": version_importance(st.registry, v), "race": version_race(st.cfg, v.uri),
            "history": changes, "aliases": _aliases_of(st, name), "plots": plot_files(v.path),
            "serving_alias": st.cfg.serving.alias, "challenger_alias": st.cfg.serving.traffic.challenger_alias,
            "traffic": traffic(st) if name == st.model_name else None}  # fmt: skip


# ------------------------------------------------------------------------------------ serving


def serve_status(st: ConsoleState) -> list[dict[str, Any]]:
    """Serve applications, their deployments and replicas (state, node), from Ray's public APIs."""
    import ray
    from ray import serve

    apps = []
    if not ray.is_initialized():  # never start a Ray instance just to draw a page
        return [{"name": "-", "status": "not connected to Ray", "deployments": []}]
    try:
        status = serve.status()
    except Exception as exc:  # Serve not running here
        return [{"name": "-", "status": f"Serve status unavailable: {exc}", "deployments": []}]
    placement = _replica_nodes()
    for name, app in status.applications.items():
        deployments = []
        for dep_name, dep in app.deployments.items():
            deployments.append({"name": dep_name, "status": _status(dep.status), "replicas": {_status(k): v for k, v in dep.replica_states.items()},
                                "nodes": placement.get(f"{name}:{dep_name}", {})})  # fmt: skip
        apps.append({"name": name, "status": _status(app.status), "deployments": deployments})
    return apps


def _replica_nodes() -> dict[str, dict[str, int]]:
    """'app:deployment' -> {node ip: live replicas}."""
    import ray
    from ray.util.state import list_actors

    try:
        ips = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
        actors = list_actors(filters=[("state", "=", "ALIVE")], limit=1000, raise_on_missing_output=False)
    except Exception:  # the state API needs the dashboard; without it placement is unknown
        return {}
    out: dict[str, dict[str, int]] = {}
    for a in actors:
        cls = a.class_name or ""
        if cls.startswith("ServeReplica:"):
            key = cls.removeprefix("ServeReplica:")
            node = ips.get(a.node_id, a.node_id or "?")
            out.setdefault(key, Counter())[node] += 1
    return {k: dict(v) for k, v in out.items()}


def serving_summary(st: ConsoleState, seconds: float = SERVING_WINDOW_S) -> dict[str, Any]:
    """Requests per second, latency per stage, refused requests and throughput over time, from the
    prediction log's newest minutes."""
    import ray
    from ray import serve

    since = datetime.now(timezone.utc) - timedelta(seconds=seconds)
    cols = ["ts", "request_id", "row", "http_status", "variant", "model_version"] + [f"latency_{s}_ms" for s in STAGES]
    try:
        log = recent_log(st.cfg.serving.prediction_log, since, cols)
    except (OSError, KeyError):
        log = None
    out: dict[str, Any] = {"app_status": "not deployed", "replicas": 0, "rps": 0.0, "p50": None, "p99": None,
                           "stages": {}, "refused": {}, "variants": {}, "times": [], "counts": [], "seconds": seconds}  # fmt: skip
    try:
        app = serve.status().applications.get(st.cfg.serving.app_name) if ray.is_initialized() else None
        if app is not None:
            out["app_status"] = _status(app.status)
            out["replicas"] = sum(sum(d.replica_states.values()) for d in app.deployments.values())
    except Exception:
        pass
    if log is None or log.num_rows == 0:
        return out
    first = log.filter(pc.equal(log["row"], 0))  # latency is per request: its first row
    answered = first.filter(pc.equal(first["http_status"], 200))
    refused = first.filter(pc.not_equal(first["http_status"], 200))
    out["rps"] = first.num_rows / seconds
    out["refused"] = dict(sorted(Counter(refused["http_status"].to_pylist()).items()))
    out["variants"] = dict(Counter(f"v{v} {k}" for v, k in zip(answered["model_version"].to_pylist(), answered["variant"].to_pylist())))
    total = np.zeros(answered.num_rows)
    for s in STAGES:
        values = np.array([x if x is not None else np.nan for x in answered[f"latency_{s}_ms"].to_pylist()], dtype=float)
        present = values[~np.isnan(values)]
        out["stages"][s] = {"p50": float(np.percentile(present, 50)) if present.size else None,
                            "p99": float(np.percentile(present, 99)) if present.size else None}  # fmt: skip
        total += np.nan_to_num(values)
    if total.size:
        out["p50"], out["p99"] = float(np.percentile(total, 50)), float(np.percentile(total, 99))
    bucket = 10 if seconds <= 900 else 60
    ts = np.array([t.timestamp() for t in first["ts"].to_pylist()])
    start = since.timestamp()
    counts = np.bincount(((ts - start) // bucket).astype(int).clip(0), minlength=int(seconds // bucket))
    out["times"] = [datetime.fromtimestamp(start + i * bucket, timezone.utc).strftime("%H:%M:%S") for i in range(len(counts))]
    out["counts"] = [float(c) / bucket for c in counts]
    out["bucket_s"] = bucket
    return out


def serving_page(st: ConsoleState) -> dict[str, Any]:
    """Everything the serving page shows, charts included."""
    live = serving_summary(st)
    stages = list(live["stages"])
    latency = charts.bar_chart("latency per stage (ms), last 15 min", stages,
                               {"p50": [live["stages"][s]["p50"] for s in stages],
                                "p99": [live["stages"][s]["p99"] for s in stages]}) if stages else ""  # fmt: skip
    throughput = charts.line_chart(f"requests per second ({live.get('bucket_s', 10)} s buckets)", live["times"],
                                   {"req/s": live["counts"]}) if live["times"] else ""  # fmt: skip
    champion = None
    try:
        champion = st.registry.resolve(f"models:/{st.model_name}@{st.cfg.serving.alias}")
    except RegistryError:
        pass
    s = st.cfg.serving
    prefix = st.cfg.console.route_prefix
    serving_path = s.route_prefix.strip("/")
    return {"apps": serve_status(st), "live": live, "latency_chart": latency, "throughput_chart": throughput,
            "traffic": traffic(st), "aliases": _aliases(st), "champion": champion,
            "inputs": (champion.signature.get("inputs", {}) if champion else {}),
            # from the console's root up to the HTTP root, then the serving route: a relative URL
            "predict_path": "../" * prefix.count("/") + (serving_path + "/" if serving_path else "") + "predict",
            "api_key_needed": bool(s.api_key_env)}  # fmt: skip


# ------------------------------------------------------------------------------------ monitoring


def thresholds_for(st: ConsoleState, metric: str) -> dict[str, float]:
    """The lines a metric's chart draws: each alert rule on it, and its verdict thresholds."""
    m = st.cfg.monitoring
    lines = {f"rule {r.name}": float(r.threshold) for r in m.rules if r.metric == metric}
    t = m.thresholds.get(metric)
    if t is not None:
        lines.setdefault(f"{metric} warn", float(t.warn))
        lines.setdefault(f"{metric} alert", float(t.alert))
    return lines


def monitoring_page(st: ConsoleState, metric: str, version: int | None, last: int) -> dict[str, Any]:
    """Per served version, each feature's series of `metric` with its thresholds; alerts, reports,
    feedback runs."""
    keys = st.monitoring.keys()
    versions = sorted({v for _, _, v in keys if v is not None})
    if version is None and versions:
        version = versions[-1]
    metrics = sorted({k for k, _, _ in keys})
    features = sorted({f for k, f, v in keys if k == metric and (v == version or v is None)}, key=str)
    lines = thresholds_for(st, metric)
    seasonal = {n for n, c in st.cfg.data.schema_.features.items() if c.seasonal}
    chart_list = []
    for feature in features:
        series = st.monitoring.series(metric, feature, version, last) or st.monitoring.series(metric, feature, None, last)
        if not series:
            continue
        title = f"{metric} {feature}" + (f" (v{version})" if version else "")
        if feature in seasonal:  # no rule without a feature fires on it: a threshold line would mislead
            title += ": seasonal, its drift is the calendar moving on"
        chart_list.append({"feature": feature, "series": series, "seasonal": feature in seasonal,
                           "svg": charts.line_chart(title, series.window_ends, {metric: series.values},
                                                    {} if feature in seasonal else lines)})  # fmt: skip
    runs = list(reversed(feedback_runs(st.cfg)))[:20]
    return {"metric": metric, "metrics": metrics, "version": version, "versions": versions, "charts": chart_list,
            "active": active_alerts(st.cfg.monitoring), "log": alert_log(st.cfg.monitoring, 50),
            "reports": report_windows(st.cfg.monitoring, 20), "feedback": runs, "last": last,
            "windows": st.monitoring.windows(), "estimates": quality_estimates(st, version, last)}  # fmt: skip


def quality_estimates(st: ConsoleState, version: int | None, last: int) -> dict[str, Any]:
    """A version's quality estimated from its scores before the labels, beside the realized figures
    once the labels are in, per window (binary models; monitor/estimate.py)."""
    if version is None:
        return {"rows": [], "svg": ""}
    table = st.monitoring

    def by_end(metric: str, feature: str) -> dict[str, float]:
        s = table.series(metric, feature, version, last)
        return dict(zip(s.window_ends, s.values))

    est = {m: by_end(f"estimated_{m}", f"v{version}") for m in ("roc_auc", "log_loss")}
    real = {m: by_end(m, f"v{version}/champion") for m in ("roc_auc", "log_loss")}
    ends = sorted(est["roc_auc"].keys() | est["log_loss"].keys())
    rows = [{"window_end": e, **{f"est_{m}": est[m].get(e) for m in est}, **{m: real[m].get(e) for m in real}}
            for e in ends]  # fmt: skip
    svg = charts.line_chart(f"ROC AUC of v{version}: estimated before labels, realized after", ends,
                            {"estimated": [r["est_roc_auc"] for r in rows],
                             "realized": [r["roc_auc"] for r in rows]}) if rows else ""  # fmt: skip
    return {"rows": rows, "svg": svg}


# ------------------------------------------------------------------------------------ data


def data_page(st: ConsoleState) -> dict[str, Any]:
    """Ingest runs with counts by reason, a sample of quarantined rows, feature views."""
    runs = ingest_runs(st.cfg, 20)
    sample = quarantine_sample(st.cfg, 20)
    columns = [c for c in (sample[0].keys() if sample else []) if not c.startswith("_")][:12]
    reasons_chart = ""
    if runs and runs[0]["by_reason"]:
        labels = list(runs[0]["by_reason"])
        reasons_chart = charts.bar_chart("quarantined rows by reason (last ingest)", labels,
                                         {"rows": [float(runs[0]["by_reason"][k]) for k in labels]})  # fmt: skip
    return {"runs": runs, "sample": sample, "columns": columns, "build": last_build(st.cfg), "reasons_chart": reasons_chart}
