"""One Ray + Serve per test session, shared by every test directory (the `serve_port` fixture)."""

from __future__ import annotations

import time
from typing import Any

import httpx

from serving.local import free_port, local_serve

_shared: dict[str, object] = {"users": 0}



def acquire_shared_serve() -> int:
    """One Ray + Serve per test session, shared by every test directory; returns its HTTP port."""
    if _shared["users"] == 0:
        port = free_port()
        cm = local_serve(port)
        cm.__enter__()
        _shared.update(port=port, cm=cm)
    _shared["users"] = int(_shared["users"]) + 1  # type: ignore[call-overload]
    return int(_shared["port"])  # type: ignore[call-overload]



def release_shared_serve() -> None:
    _shared["users"] = int(_shared["users"]) - 1  # type: ignore[call-overload]
    if _shared["users"] == 0:
        _shared.pop("cm").__exit__(None, None, None)  # type: ignore[attr-defined]



def run_routed(app: Any, *, name: str, route_prefix: str = "/", **kwargs: Any) -> Any:
    """`serve.run`, then wait until the HTTP ingress routes `route_prefix` to the app. On Serve's fast
    path HAProxy learns new routes a moment after `serve.run` returns (it reloads its config in the
    background), and a request in between gets HAProxy's 404 or 503, not the app's answer."""
    from ray import serve

    handle = serve.run(app, name=name, route_prefix=route_prefix, **kwargs)
    port = _shared.get("port")
    if port is None:
        return handle
    url = f"http://127.0.0.1:{port}{route_prefix.rstrip('/')}/healthz"
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, timeout=5.0)
            # Our /healthz answers JSON with a status, 200 or 503 (no table yet); HAProxy's own
            # refusals are not JSON.
            if r.headers.get("content-type", "").startswith("application/json") and "status" in r.json():
                return handle
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"the HTTP ingress did not route {route_prefix} within 30 s")
