"""One Ray + Serve per test session, shared by every test directory (the `serve_port` fixture)."""

from __future__ import annotations

from typing import Any

from serving.local import free_port, local_serve, wait_until_routed

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
    """`serve.run` on the session's shared Serve, then wait until its HTTP ingress routes
    `route_prefix` (serving.local.wait_until_routed: HAProxy learns routes a moment later)."""
    from ray import serve

    handle = serve.run(app, name=name, route_prefix=route_prefix, **kwargs)
    port = _shared.get("port")
    if port is not None:
        wait_until_routed(int(port), route_prefix)  # type: ignore[call-overload]
    return handle
