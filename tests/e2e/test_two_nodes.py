"""The app on a two-node Ray cluster on this machine: a head and a worker started with `ray start`
(each its own raylet), a controller and a model replica on each, one store both read. The checks
run in tests/e2e/two_node_driver.py, in its own interpreter: this process belongs to the shared
single-node Ray of the other tests."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from serving.fast_path import path_env
from serving.haproxy_binary import nosplice_env
from serving.local import free_port

pytestmark = pytest.mark.serve
RAY = str(Path(sys.executable).with_name("ray"))
ROOT = Path(__file__).resolve().parents[2]


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Own session: the node's processes (raylet, workers) share its process group, which is how
    # they are stopped below; `ray stop` would also stop other clusters on this machine.
    with open(log, "wb") as out:
        return subprocess.Popen(
            [RAY, "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # workers left in the group after `ray start` exited
    except ProcessLookupError:
        pass


def test_publish_and_worker_failure_on_two_nodes(tmp_path: Path) -> None:
    # A short temp dir: Ray's unix socket paths must stay under ~107 characters.
    ray_tmp = tempfile.mkdtemp(prefix="r2n", dir="/tmp")
    port, http_port = free_port(), free_port()
    slots = {"ctl_slot": 1, "model_slot": 1}
    nodes = []
    # Ray's token auth, with a token of this cluster's own shared by its nodes and its driver.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    # The nodes run Serve's fast path, as the deploy files do, with HAProxy ports of this cluster's
    # own (the session's shared Serve holds others on this machine). The driver keeps Serve's
    # defaults: it calls handles from plain threads, which the fast path's same-loop router refuses.
    driver_env = env | path_env(fast=False)  # this session's own Serve set the fast path in os.environ
    env |= path_env(fast=True, own_ports=True)
    # HAProxy without splice, as the image's script gives the cluster (serving.haproxy_binary).
    scripts = contextlib.ExitStack()
    env |= scripts.enter_context(nosplice_env(env))
    try:
        nodes.append(
            _start(
                [
                    "--head",
                    f"--port={port}",
                    "--num-cpus=2",
                    "--include-dashboard=false",
                    f"--temp-dir={ray_tmp}",
                    f"--resources={json.dumps({**slots, 'head_slot': 1})}",
                ],
                tmp_path / "head.log",
                env,
            )
        )
        nodes.append(
            _start(
                # Its own temp dir too: a node writes the cluster address there, and one written
                # to the default /tmp/ray would make other tests' bare ray.init() join this cluster.
                [
                    f"--address=127.0.0.1:{port}",
                    "--num-cpus=2",
                    f"--resources={json.dumps(slots)}",
                    f"--temp-dir={ray_tmp}",
                ],
                tmp_path / "worker.log",
                env,
            )
        )
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.e2e.two_node_driver",
                f"127.0.0.1:{port}",
                str(tmp_path / "store"),
                str(http_port),
                str(nodes[1].pid),
            ],
            cwd=ROOT,
            env=driver_env,
            capture_output=True,
            text=True,
            timeout=480,
        )
        print(out.stdout[-3000:])
        logs = "".join(p.read_text(errors="replace")[-2000:] for p in tmp_path.glob("*.log"))
        assert out.returncode == 0, f"{out.stderr[-5000:]}\n--- node logs ---\n{logs}"
    finally:
        for node in reversed(nodes):
            _stop(node)
        shutil.rmtree(ray_tmp, ignore_errors=True)
        scripts.close()
