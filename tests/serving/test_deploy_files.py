"""Every deploy file passes Ray's own Serve schema; names and import paths resolve."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve.schema import DeploymentSchema, ServeDeploySchema

from serving.app import AppArgs, config_from_args

ROOT = Path(__file__).resolve().parents[2]
SERVE_FILES = [ROOT / "deploy" / "serve_local.yaml", ROOT / "deploy" / "serve_h100.yaml"]
RAYSERVICE = ROOT / "deploy" / "kuberay" / "rayservice.yaml"
# The deployments of each topology (serving.config.ServingConfig.topology).
DEPLOYMENT_NAMES = {
    "model_ingress": {"LookupController", "MoEModel"},
    "router": {"Router", "LookupController", "MoEModel"},
}


def _serve_configs() -> list[tuple[str, dict[str, Any]]]:
    out = [(p.name, yaml.safe_load(p.read_text())) for p in SERVE_FILES]
    service = yaml.safe_load(RAYSERVICE.read_text())
    out.append((RAYSERVICE.name, yaml.safe_load(service["spec"]["serveConfigV2"])))
    return out


@pytest.mark.parametrize(("name", "config"), _serve_configs(), ids=lambda v: v if isinstance(v, str) else "")
def test_serve_config_is_valid(name: str, config: dict[str, Any]) -> None:
    schema = ServeDeploySchema.model_validate(config)
    known_fields = set(DeploymentSchema.model_fields)
    for app in schema.applications:
        module_name, attr = app.import_path.split(":")
        builder = getattr(importlib.import_module(module_name), attr)
        assert callable(builder)
        args = AppArgs.model_validate(app.args)
        serving_config = config_from_args(args)  # config_path exists and validates
        for d in config["applications"][0]["deployments"]:
            known = DEPLOYMENT_NAMES[serving_config.topology]
            assert d["name"] in known, f"{name}: no deployment {d['name']} in topology {serving_config.topology}"
            # ServeDeploySchema allows extra keys for forward compatibility; typos must still fail here.
            assert set(d) <= known_fields, f"{name}: unknown keys {set(d) - known_fields}"
            if d["name"] == "LookupController" and "user_config" in d:
                from serving.config import ControllerSettings

                ControllerSettings.from_user_config(d["user_config"])
        if args.bootstrap_results_dir:
            assert serving_config.model.backend == "simulated"


def test_h100_file_puts_models_on_gpus_with_two_controllers() -> None:
    config = yaml.safe_load(SERVE_FILES[1].read_text())
    deployments = {d["name"]: d for d in config["applications"][0]["deployments"]}
    assert deployments["MoEModel"]["ray_actor_options"]["num_gpus"] == 1
    assert deployments["LookupController"]["num_replicas"] == 2


def test_rayservice_embeds_the_h100_serve_config() -> None:
    service = yaml.safe_load(RAYSERVICE.read_text())
    assert service["kind"] == "RayService"
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == yaml.safe_load(SERVE_FILES[1].read_text())
    groups = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    limits = groups[0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
