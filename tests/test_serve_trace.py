"""What serve/app.py's docstring says a /predict reads is true: one request through a replica built
in this process (alone, so scored without Serve's batcher), every project file that runs code on its
way recorded."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any

import ray_pipeline
from ray_pipeline.serve import app as serve_app
from ray_pipeline.serve.replica import ServingSettings

from .helpers import serve_config, two_version_registry

ROOT = str(Path(ray_pipeline.__file__).parent)


def _post(app: Any, body: dict) -> tuple[int, dict]:
    """One POST /predict through the ASGI app, without a server."""
    raw = json.dumps(body).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/predict", "raw_path": b"/predict", "root_path": "", "query_string": b"",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}  # fmt: skip
    status, chunks, sent = [0], [], [False]

    async def receive() -> dict:
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        return {}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            status[0] = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    asyncio.run(app(scope, receive, send))
    return status[0], json.loads(b"".join(chunks))


def _docstring_files() -> set[str]:
    """The files the docstring lists for a plain request (the paragraph before "An API key adds")."""
    doc = serve_app.__doc__ or ""
    plain = doc[doc.index("A plain /predict") : doc.index("An API key adds")]
    return set(re.findall(r"\b[a-z_]+/[a-z_]+\.py\b", plain)) - {"tests/test_serve_trace.py"}


def test_a_plain_predict_runs_code_in_the_files_the_docstring_lists(tmp_path):
    two_version_registry(tmp_path)
    cfg = serve_config(tmp_path, "trace")
    settings = dataclasses.replace(ServingSettings.from_config(cfg), store=None, views={}, api_key=None)
    # The replica class itself (Serve's ingress wrapper around it needs a running replica).
    cls = next(c for c in serve_app.Predictor.func_or_class.__mro__ if "predict" in vars(c))
    replica = cls(settings)  # a request alone on it is scored at once, without Serve's batcher
    app = replica.__serve_build_asgi_app__()
    record = {"amount": 12.5, "channel": " pos "}
    try:
        assert _post(app, {"records": [record]})[0] == 200  # warm: imports and first-use caches
        seen: set[str] = set()

        def tracer(frame, event, arg):
            name = frame.f_code.co_filename
            if name.startswith(ROOT):
                seen.add(os.path.relpath(name, ROOT))

        threading.settrace(tracer)
        sys.settrace(tracer)
        try:
            status, body = _post(app, {"records": [record]})
        finally:
            sys.settrace(None)
            threading.settrace(None)
    finally:
        replica.runner.close()
    assert status == 200 and body["predictions"][0]["status"] == "ok", body
    expected = _docstring_files()
    assert len(expected) == 8, expected  # six serving files and two shared definitions
    assert seen == expected, (sorted(seen), sorted(expected))
