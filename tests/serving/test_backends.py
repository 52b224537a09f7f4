"""Simulated backend, backend registry, and the model deployment's config check and batching."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.errors import KnobError
from controller.knobs import Knobs
from controller.store import TableStore
from serving.backends.base import Backend, ModelRequest
from serving.backends.registry import create_backend
from serving.backends.simulated import SimulatedBackend
from serving.model import MoEModel, check_configs
from serving.testing import synthetic_table


def test_simulated_latency_grows_with_every_knob() -> None:
    b = SimulatedBackend(latency_scale=1.0)
    req = ModelRequest(prompt="p", max_new_tokens=8, image_b64="aGk=")
    total = lambda k: b.timings_ms(k, req)["total"]  # noqa: E731
    assert total(Knobs("low", 8, 16)) < total(Knobs("medium", 8, 16)) < total(Knobs("high", 8, 16))
    assert total(Knobs("high", 4, 16)) < total(Knobs("high", 8, 16))
    assert total(Knobs("high", 8, 12)) < total(Knobs("high", 8, 16))
    assert SimulatedBackend(latency_scale=0).timings_ms(Knobs("high", 8, 16), req)["total"] == 0


def test_simulated_generate_batch_and_knob_validation() -> None:
    b = SimulatedBackend(latency_scale=0)
    outs = b.generate_batch(Knobs("low", 4, 12), [ModelRequest("a"), ModelRequest("b", max_new_tokens=3)])
    assert [o.output_tokens for o in outs] == [16, 3] and outs[0].text != outs[1].text
    with pytest.raises(KnobError, match="num_active_blocks"):
        SimulatedBackend(num_blocks=12).validate_knobs(Knobs("low", 4, 16))


def test_registry() -> None:
    assert isinstance(create_backend("simulated", {"latency_scale": 0}), Backend)
    with pytest.raises(ValueError, match="simulated"):
        create_backend("tensorrt")
    with pytest.raises(ValueError):
        create_backend("simulated", {"no_such_option": 1})


def test_check_configs_names_the_bad_config() -> None:
    table = synthetic_table()
    check_configs(SimulatedBackend(), table.all_knobs(), "table")
    with pytest.raises(ValueError, match=r"_16 is not valid for the 'simulated' backend"):
        check_configs(SimulatedBackend(num_blocks=14), table.all_knobs(), "table")


@pytest.fixture
def store(tmp_path: Path) -> str:
    TableStore(str(tmp_path)).publish(synthetic_table())
    return str(tmp_path)


def _model(store: str, **backend_options: object) -> MoEModel:
    cls = MoEModel.func_or_class
    settings = {"backend_options": {"latency_scale": 0, **backend_options}, "batch": {"max_batch_size": 16}}
    return cls(settings, store, "latest", {"tier": "low", "top_k": 4, "num_active_blocks": 12})


def test_model_refuses_a_table_its_backend_cannot_run(store: str) -> None:
    with pytest.raises(ValueError, match="num_active_blocks"):
        _model(store, num_blocks=12)


def test_torch_backend_is_imported_lazily_and_checks_its_options() -> None:
    import subprocess
    import sys

    code = "import serving.backends.registry, serving.model, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match="preset"):
        create_backend("torch", {})  # neither preset nor checkpoint: refused before any model loads


def test_h100_config_options_are_valid_torch_options() -> None:
    from serving.backends.torch_backend import TorchOptions
    from serving.config import load_config

    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "serving_h100.yaml")
    assert config.model.backend == "torch"
    TorchOptions.model_validate(config.model.backend_options)
