"""The Dockerfile builds the image the RayService runs: name, tag, Ray and Python agree with pyproject.toml
and deploy/kuberay/rayservice.yaml (issue 19 item 18). Read from the files; no Docker daemon needed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
RAYSERVICE = yaml.safe_load((ROOT / "deploy" / "kuberay" / "rayservice.yaml").read_text())


def _from() -> re.Match[str]:
    m = re.search(r"^FROM rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<major>3)(?P<minor>\d+)-gpu$", DOCKERFILE,
                  re.MULTILINE)
    assert m is not None, "the Dockerfile starts FROM rayproject/ray:<ray version>-py3<minor>-gpu"
    return m


def _label(name: str) -> str:
    m = re.search(rf'org\.opencontainers\.image\.{re.escape(name)}="([^"]+)"', DOCKERFILE)
    assert m is not None, f"no org.opencontainers.image.{name} label"
    return m.group(1)


def _containers(node: Any) -> list[dict[str, Any]]:
    """Every container spec anywhere in the RayService (head and every worker group)."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "containers":
                found += value
            else:
                found += _containers(value)
    elif isinstance(node, list):
        for item in node:
            found += _containers(item)
    return found


def _pinned_ray() -> str:
    serve_extra = PYPROJECT["project"]["optional-dependencies"]["serve"]
    pins = [re.fullmatch(r"ray\[[\w,]*serve[\w,]*\]==(\S+)", d) for d in serve_extra]
    versions = [m.group(1) for m in pins if m]
    assert len(versions) == 1, "the serve extra pins ray[serve]==X"
    return versions[0]


def test_ray_version_agrees() -> None:
    ray_version = _pinned_ray()
    assert _from().group("ray") == ray_version
    assert RAYSERVICE["spec"]["rayClusterConfig"]["rayVersion"] == ray_version
    assert f"ray.__version__ == '{ray_version}'" in DOCKERFILE  # the build itself checks what it got


def test_python_version_is_one_the_project_supports() -> None:
    m = _from()
    minor = int(m.group("minor"))
    floor = re.fullmatch(r">=3\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert floor is not None and minor >= int(floor.group(1))
    assert f"Python 3.{minor}" in DOCKERFILE  # the comment that says why this one


def test_image_name_and_tag_agree() -> None:
    ref = _label("ref.name")
    version = PYPROJECT["project"]["version"]
    assert ref.rsplit(":", 1)[1] == version == _label("version")
    images = {c["image"] for c in _containers(RAYSERVICE["spec"]["rayClusterConfig"])}
    assert images == {ref}, "every RayService container runs the image the Dockerfile builds"
    assert len(_containers(RAYSERVICE["spec"]["rayClusterConfig"])) >= 2  # head and the GPU workers
    assert f"docker build -t {ref} ." in DOCKERFILE
    assert f"docker build -t {ref} ." in (ROOT / "README.md").read_text()


def test_the_image_holds_what_the_service_runs() -> None:
    installed = re.search(r"pip install --no-cache-dir -e '\.\[([\w,]+)\]'", DOCKERFILE)
    assert installed is not None
    extras = set(installed.group(1).split(","))
    assert {"serve", "torch"} <= extras <= set(PYPROJECT["project"]["optional-dependencies"])
    copied = set(re.findall(r"^COPY --chown=ray:users (\S+) \1$", DOCKERFILE, re.MULTILINE))
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied
    serve = yaml.safe_load(RAYSERVICE["spec"]["serveConfigV2"])
    for app in serve["applications"]:
        config_path = app["args"]["config_path"]
        assert config_path.split("/")[0] in copied and (ROOT / config_path).is_file()
