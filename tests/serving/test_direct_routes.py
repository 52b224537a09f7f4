"""serving.ingress.direct_routes: an exact method and path go to their ASGI app, everything else
through FastAPI as before (a real FastAPI app over Starlette's test client)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.responses import JSONResponse
from starlette.testclient import TestClient

from serving.ingress.direct_routes import DirectRoutes, route_path


def _app() -> DirectRoutes:
    app = DirectRoutes()

    @app.post("/v1/generate")
    async def routed() -> dict[str, str]:
        return {"via": "fastapi"}

    @app.get("/v1/other")
    async def other() -> dict[str, str]:
        return {"via": "fastapi"}

    async def direct(scope: Any, receive: Any, send: Any) -> None:
        await JSONResponse({"via": "direct", "app": type(scope["app"]).__name__})(scope, receive, send)

    app.direct("POST", "/v1/generate", direct)
    return app


def test_the_exact_method_and_path_go_direct() -> None:
    with TestClient(_app()) as client:
        assert client.post("/v1/generate", json={}).json() == {"via": "direct", "app": "DirectRoutes"}
        assert client.get("/v1/other").json() == {"via": "fastapi"}
        assert client.get("/v1/generate").status_code == 405  # FastAPI's answer for another method
        assert client.post("/v1/generate/", json={}, follow_redirects=False).status_code == 307  # its redirect
        assert "/v1/generate" in client.get("/openapi.json").json()["paths"]  # still documented


def test_without_direct_routes_it_is_fastapi() -> None:
    app = DirectRoutes()

    @app.post("/v1/generate")
    async def routed() -> dict[str, str]:
        return {"via": "fastapi"}

    with TestClient(app) as client:
        assert client.post("/v1/generate", json={}).json() == {"via": "fastapi"}


@pytest.mark.parametrize(
    ("path", "root_path", "expected"),
    [
        ("/v1/generate", "", "/v1/generate"),
        ("/app/v1/generate", "/app", "/v1/generate"),  # Serve keeps the route prefix in `path`
        ("/apple/v1/generate", "/app", "/apple/v1/generate"),  # a longer name is not the prefix
        ("/app", "/app", ""),
        ("/v1/generate", "/app", "/v1/generate"),
    ],
)
def test_route_path_is_matched_under_the_route_prefix(path: str, root_path: str, expected: str) -> None:
    assert route_path({"path": path, "root_path": root_path}) == expected
