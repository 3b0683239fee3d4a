"""The service's REST API, as its owner: Prefect's server API authentication is HTTP Basic with `user:password`."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

from flows.service.config import Service


def _headers(auth: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    return headers


def api(svc: Service, path: str, body: object = None, method: str | None = None, timeout: float = 10):
    """The service's REST API as its owner (with the password): the JSON answer; HTTPError as urllib raises it."""
    req = urllib.request.Request(f"{svc.api_url}{path}", data=None if body is None else json.dumps(body).encode(),
                                 method=method or ("GET" if body is None else "POST"), headers=_headers(svc.auth()))
    with urllib.request.urlopen(req, timeout=timeout) as r:
        data = r.read()
    return json.loads(data) if data else None


def _get(url: str, auth: str | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=_headers(auth)), timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0
