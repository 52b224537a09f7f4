"""`lookupctl serve`: the deploy file on another port (issue 19 item 10), checked as written and as run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from lookupctl import main
from serving.local import free_port

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "deploy" / "serve_local.yaml"


def test_print_config_replaces_only_the_http_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", "8123", "--host", "0.0.0.0", "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    written = yaml.safe_load(LOCAL.read_text())
    assert printed["http_options"] == {"host": "0.0.0.0", "port": 8123}
    assert {k: v for k, v in printed.items() if k != "http_options"} == {
        k: v for k, v in written.items() if k != "http_options"
    }
    ServeDeploySchema.model_validate(printed)
    assert main(["serve", "--print-config"]) == 0  # no flag: the file as it is
    assert yaml.safe_load(capsys.readouterr().out) == written


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "0"], "--port 0 is not a TCP port; expected an integer in [1, 65535]"),
        (["--port", "70000"], "--port 70000 is not a TCP port"),
        (["--config", "deploy/nope.yaml"], "--config deploy/nope.yaml: No such file or directory"),
        (["--config", "configs/serving_local.yaml"], "is not a Serve config (no 'applications')"),
    ],
)
def test_bad_options_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["serve", *argv, "--print_config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lookupctl serve: error: ") and message in err[0]


# A shell that starts a job in the background hands it SIGINT ignored; a terminal's job has it on. Start
# lookupctl as a terminal would, in its own process group, so that Ctrl-C reaches it and `serve run`.
CTRL_C_ON = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, '-m', 'lookupctl', *sys.argv[1:]])"
)


@pytest.mark.serve
def test_serves_on_the_port_asked_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    config = yaml.safe_load(LOCAL.read_text())
    config["applications"][0]["args"]["store"] = str(tmp_path / "store")  # not the clone's .lookup_store
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", CTRL_C_ON, "serve", "--config", str(tmp_path / "serve.yaml"),
                             "--port", str(port), "--address", "local"],
                            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        body = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/knobs", params={"budget_ms": 150}, timeout=5)
                if r.status_code == 200 and r.json().get("table_version"):
                    body = r.json()
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert body is not None, (tmp_path / "serve.log").read_text()[-3000:]
        assert body["feasible"] is True and (tmp_path / "store" / "LATEST").exists()

        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in its terminal does
        assert proc.wait(timeout=120) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
