"""One tiny real OLMoE-shaped model per test session (CPU, fp32)."""

from __future__ import annotations

import pytest

from moe.presets import LoadedModel, build_model
from moe.runner import MoERunner


@pytest.fixture(scope="session")
def tiny_model() -> LoadedModel:
    return build_model("tiny", device="cpu", seed=0)


@pytest.fixture(scope="session")
def runner(tiny_model: LoadedModel) -> MoERunner:
    return MoERunner(tiny_model)
