"""A minimal JSON-over-HTTP client for the serving API (demo, benchmarks, tests)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def http_json(url: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
              timeout: float = 30.0) -> tuple[int, Any]:  # fmt: skip
    """POST `body` (or GET without one); returns (status, decoded JSON) for 2xx and 4xx/5xx alike."""
    data = json.dumps(body, default=str).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            return error.code, json.loads(raw or b"null")
        except ValueError:  # e.g. a plain-text 500 or 503 from the proxy
            return error.code, raw.decode(errors="replace")
