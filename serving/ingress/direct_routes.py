"""`DirectRoutes`: a FastAPI app that hands chosen (method, path) pairs to their handler directly.

FastAPI takes each request through its middleware stack, its router, the route's dependency solver
(Serve's class-based view injects the replica as a dependency) and two exception-handling layers:
about 0.15 ms of a request on a 2-core CPU (docs/BENCHMARKS.md, issue 18). A direct route is an
ASGI app of its own, which does for itself what those layers did for it (API keys, the error
handlers, a 500 on an unexpected error); every other request goes through FastAPI as before. The
route stays registered with FastAPI too, for the OpenAPI schema and Serve's route tags.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

ASGIApp = Any  # (scope, receive, send) -> awaitable


def route_path(scope: dict[str, Any]) -> str:
    """The path under the app's route prefix (`root_path`), as Starlette's router matches it."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("", "/"):
        return path[len(root):]
    return path


class DirectRoutes(FastAPI):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.direct_routes: dict[tuple[str, str], ASGIApp] = {}

    def direct(self, method: str, path: str, app: ASGIApp) -> None:
        """Send `method path` (exactly; no trailing slash, no path parameters) to `app`."""
        self.direct_routes[(method, path)] = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.direct_routes:
            app = self.direct_routes.get((scope["method"], route_path(scope)))
            if app is not None:
                scope["app"] = self
                await app(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
