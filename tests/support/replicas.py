"""A Serve replica's Ray actor and OS process, found from the test process with public means: Ray's
named actors, and /proc (Linux). Used by tests that kill a replica or watch its memory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def replica_actor(app: str, deployment: str) -> tuple[str, Any]:
    """(name, handle) of the one live replica actor of `deployment` in `app`. Serve names replica
    actors SERVE_REPLICA::<app>#<deployment>#<replica id> in the "serve" namespace."""
    import ray

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == "serve" and a["name"].startswith(prefix)]
    if len(names) != 1:
        raise AssertionError(f"expected one {deployment} replica actor of app {app!r}, found {names}")
    return names[0], ray.get_actor(names[0], namespace="serve")


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone meanwhile
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the name may hold spaces and parentheses


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (parent := _parent(int(entry))) is not None:
            children.setdefault(parent, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def replica_pid(app: str, deployment: str) -> int:
    """The pid of the one replica process of `deployment` in `app` that this test process's own Ray
    started (its raylet is a child of this process, so other sessions' Rays on the host are not
    seen). Ray titles an actor's process ray::ServeReplica:<app>:<deployment>[.<method>]."""
    title = f"ray::ServeReplica:{app}:{deployment}".encode()
    found = []
    for pid in _descendants(os.getpid()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(title) and cmdline[len(title):len(title) + 1] in (b"", b".", b"\0", b" "):
            found.append(pid)
    if len(found) != 1:
        raise AssertionError(f"expected one process titled {title.decode()}, found pids {found}")
    return found[0]


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024  # kB
    raise AssertionError(f"no VmRSS for pid {pid}")
