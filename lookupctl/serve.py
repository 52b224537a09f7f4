"""`lookupctl serve`: `serve run` of a deploy file on the port and Ray cluster the caller names."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from controller.errors import ControllerError
from controller.optional import require
from lookupctl import add_flag
from serving.fast_path import path_env
from serving.haproxy_binary import nosplice_env

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = PROJECT_ROOT / "deploy" / "serve_local.yaml"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "serve",
        help="run a deploy/ Serve config on another port or cluster (Ctrl-C stops it)",
        description="Runs `serve run` on a copy of the Serve config with the HTTP port and host replaced "
        "(Serve's config file pins them and `serve run` has no flag for them). Ctrl-C shuts the app down, "
        "and the Ray instance too if this command started it. Needs the 'serve' extra.",
    )
    add_flag(p, "config", default=str(DEFAULT_CONFIG), help="Serve config file (default deploy/serve_local.yaml)")
    add_flag(p, "port", type=int, default=None, help="HTTP port (default: the config's, 8000 in serve_local.yaml)")
    add_flag(p, "host", default=None, help="HTTP host (default: the config's)")
    add_flag(p, "address", default=None,
             help="Ray cluster: 'local' starts a new one even when another runs on this machine, 'auto' or "
             "HOST:PORT attaches to a running one (default: Ray's, which attaches to a local cluster if any)")
    add_flag(p, "default_path", action="store_true",
             help="Serve's default request path (Python proxy, actor calls) instead of its fast path (HAProxy "
             "ingress, gRPC between deployments: serving/fast_path.py); applies to a Ray instance this starts")
    add_flag(p, "print_config", action="store_true",
             help="print the config that would run and exit (e.g. for `serve deploy`)")
    p.set_defaults(func=run)


def serve_config(path: str | Path, port: int | None, host: str | None) -> dict[str, Any]:
    """The deploy file with `http_options` replaced where asked; the rest as written."""
    file = Path(path)
    try:
        config = yaml.safe_load(file.read_text())
    except OSError as e:
        raise ControllerError(f"--config {file}: {e.strerror}; pass a Serve config such as {DEFAULT_CONFIG}") from e
    except yaml.YAMLError as e:
        raise ControllerError(f"--config {file} is not YAML: {' '.join(str(e).split())}") from e
    if not isinstance(config, dict) or "applications" not in config:
        raise ControllerError(f"--config {file} is not a Serve config (no 'applications'); see deploy/*.yaml")
    if port is not None and not 1 <= port <= 65535:
        raise ControllerError(f"--port {port} is not a TCP port; expected an integer in [1, 65535]")
    http = dict(config.get("http_options") or {})
    if port is not None:
        http["port"] = port
    if host is not None:
        http["host"] = host
    config["http_options"] = http
    return config


def run(args: argparse.Namespace) -> int:
    config = serve_config(args.config, args.port, args.host)
    text = yaml.safe_dump(config, sort_keys=False)
    if args.print_config:
        print(text, end="")
        return 0
    require("ray.serve", "serve")
    http = config["http_options"]
    fd, tmp = tempfile.mkstemp(prefix="lookupctl-serve-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        cmd = [sys.executable, "-m", "ray.serve.scripts", "run", tmp]
        if args.address:
            cmd += ["--address", args.address]
        print(f"serving {args.config} on http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)} "
              "(Ctrl-C stops it)", file=sys.stderr, flush=True)
        # Deploy paths in the config resolve against the project root (serving.app), not the file's folder.
        # The fast path's settings are read by the Ray workers `serve run` starts (serving.fast_path).
        fast = not args.default_path
        # HAProxy without splice (serving.haproxy_binary): it can miss a streaming client that leaves.
        haproxy_env: contextlib.AbstractContextManager[dict[str, str]] = (
            nosplice_env() if fast else contextlib.nullcontext({}))
        with haproxy_env as haproxy:
            env = {**os.environ, **path_env(fast, own_ports=True), **haproxy}
            proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env)
            while True:
                try:
                    return proc.wait()
                except KeyboardInterrupt:
                    # A terminal's Ctrl-C reached `serve run` too (one process group): let it shut down.
                    continue
    finally:
        os.unlink(tmp)
