"""One Ray + Serve per test session, shared by every test directory (the `serve_port` fixture)."""

from __future__ import annotations

from typing import Any

from serving.local import free_port, local_serve
from serving.local import run_routed as local_run_routed

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
    """serving.local.run_routed on the session's shared Serve."""
    return local_run_routed(app, http_port=int(_shared["port"]), name=name,  # type: ignore[call-overload]
                            route_prefix=route_prefix, **kwargs)
