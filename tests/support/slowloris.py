"""Slowloris on a real HTTP ingress: many connections that send part of a request and then
nothing; how many the server has closed after a while, and whether normal requests still work."""

from __future__ import annotations

import select
import socket
import time
from dataclasses import dataclass

HALF_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "  # never finished


@dataclass(frozen=True)
class SlowlorisResult:
    opened: int
    closed_by_server: int
    seconds: float
    normal_ok: int
    normal_sent: int


def _closed(s: socket.socket) -> bool:
    """The server closed (or reset) it: readable with nothing to read, or an error."""
    poller = select.poll()  # not select(): a slowloris has more than 1,024 descriptors open
    poller.register(s, select.POLLIN)
    if not poller.poll(0):
        return False
    try:
        return s.recv(4096) == b""
    except OSError:
        return True


def slowloris(host: str, port: int, connections: int, wait_s: float, normal_url: str) -> SlowlorisResult:
    """Opens `connections` half-sent requests, waits up to `wait_s` for the server to close them all,
    sending one normal request per second meanwhile (to `normal_url`)."""
    import httpx

    socks = []
    for _ in range(connections):
        s = socket.create_connection((host, port), timeout=10)
        s.sendall(HALF_REQUEST)
        socks.append(s)
    started = time.monotonic()
    closed: set[int] = set()
    ok = sent = 0
    with httpx.Client(timeout=30) as c:
        while time.monotonic() - started < wait_s and len(closed) < connections:
            closed.update(i for i, s in enumerate(socks) if i not in closed and _closed(s))
            sent += 1
            ok += c.get(normal_url).status_code == 200
            time.sleep(1.0)
    elapsed = time.monotonic() - started
    for s in socks:
        s.close()
    return SlowlorisResult(connections, len(closed), round(elapsed, 1), ok, sent)
