"""Simulated backend, backend registry, and the model deployment's config check and batching."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.errors import KnobError
from controller.knobs import TIERS, Knobs
from serving.replica.backends.base import Backend, ModelRequest, SupportedRanges
from serving.replica.backends.registry import create_backend
from serving.replica.backends.simulated import SimulatedBackend
from serving.replica.model import MoEModel, check_configs
from tests.support.tables import synthetic_table


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
    for bad in (0, 5, 1.5, "two", None):
        with pytest.raises(ValueError, match="decode_slots"):
            create_backend("simulated", {"decode_slots": bad})
    assert create_backend("simulated", {"decode_slots": 2}).max_sessions == 2


def test_check_configs_names_the_bad_config() -> None:
    table = synthetic_table()
    check_configs(SimulatedBackend(), table.all_knobs(), "table")
    with pytest.raises(ValueError, match=r"_16 is not valid for the 'simulated' backend"):
        check_configs(SimulatedBackend(num_blocks=14), table.all_knobs(), "table")


def _model(fallback_blocks: int = 12, **backend_options: object) -> MoEModel:
    cls = MoEModel.func_or_class
    settings = {"backend_options": {"latency_scale": 0, **backend_options}, "batch": {"max_batch_size": 16}}
    return cls(settings, {"tier": "low", "top_k": 4, "num_active_blocks": fallback_blocks})


def test_supported_ranges_refuse_a_table_the_backend_cannot_run() -> None:
    model = _model(num_blocks=14)  # starts without any table: it never reads the store
    ranges = SupportedRanges.from_dict(model.supported_ranges())
    assert ranges == SimulatedBackend(num_blocks=14).supported_ranges()
    with pytest.raises(KnobError, match="num_active_blocks=16"):
        ranges.check_configs(synthetic_table().all_knobs())  # the grid has 16 blocks
    ranges.check_configs(synthetic_table(grid=(TIERS, (4, 8), (12, 14))).all_knobs())
    with pytest.raises(KnobError, match="high_8_12"):
        SupportedRanges((1, 64), (1, 16), disabled=("high_8_12",)).check(Knobs("high", 8, 12))


def test_model_refuses_a_fallback_its_backend_cannot_run() -> None:
    with pytest.raises(ValueError, match="num_active_blocks"):
        _model(fallback_blocks=16, num_blocks=12)


def test_torch_backend_is_imported_lazily_and_checks_its_options() -> None:
    import subprocess
    import sys

    code = "import serving.replica.backends.registry, serving.replica.model, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match="preset"):
        create_backend("torch", {})  # neither preset nor checkpoint: refused before any model loads


def test_h100_config_options_are_valid_torch_options() -> None:
    from serving.config import load_config
    from serving.replica.backends.torch_backend import TorchOptions

    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "serving_h100.yaml")
    assert config.model.backend == "torch"
    TorchOptions.model_validate(config.model.backend_options)


def _calibrated(**options: object) -> SimulatedBackend:
    return SimulatedBackend(latency_source="table", **options)


def test_calibrated_latency_follows_the_table() -> None:
    table = synthetic_table()
    fast, slow = table.frontier()[0], table.frontier()[-1]
    b = _calibrated(latency_scale=1.0, jitter_sigma=0.05, seed=3)
    req = ModelRequest("p", image_b64="aGk=")
    draws = {
        c.knobs: sorted(b.calibrated_timings_ms(c.knobs, req, c.latency_ms)["total"] for _ in range(101))
        for c in (fast, slow)
    }
    median = {k: v[50] for k, v in draws.items()}
    assert median[fast.knobs] == pytest.approx(fast.latency_ms, rel=0.03)
    assert median[slow.knobs] == pytest.approx(slow.latency_ms, rel=0.03)
    assert median[slow.knobs] > median[fast.knobs]
    assert median[slow.knobs] / median[fast.knobs] == pytest.approx(slow.latency_ms / fast.latency_ms, rel=0.05)
    parts = b.calibrated_timings_ms(slow.knobs, req, 100.0)
    assert parts["vision"] + parts["prefill"] + parts["decode"] == pytest.approx(parts["total"])


def test_calibrated_latency_scale_jitter_and_seed() -> None:
    k, req = Knobs("high", 8, 16), ModelRequest("p")
    exact = _calibrated(latency_scale=0.25, jitter_sigma=0)
    assert exact.calibrated_timings_ms(k, req, 184.0)["total"] == pytest.approx(46.0)
    same = [_calibrated(seed=7).calibrated_timings_ms(k, req, 100.0)["total"] for _ in range(2)]
    assert same[0] == same[1] and same[0] != 100.0  # seeded jitter: reproducible, not zero
    assert _calibrated(latency_scale=0).calibrated_timings_ms(k, req, 184.0)["total"] == 0


def test_generate_batch_uses_table_latency_only_in_table_mode() -> None:
    k = Knobs("low", 4, 12)
    reqs = [ModelRequest("a", expected_ms=50.0), ModelRequest("b")]  # None (fallback): the cost model
    model = SimulatedBackend(latency_scale=0.001).timings_ms(k, reqs[0])
    cost, prefill = model["total"], model["total"] - model["decode"]
    table_mode = _calibrated(latency_scale=0.001, jitter_sigma=0)
    outs = table_mode.generate_batch(k, reqs)
    # Newcomers prefill one after another (as the graph engine does): the first one's decode waits
    # for the second one's prefill, and reports it.
    assert outs[1].timings_ms["total"] == pytest.approx(cost)
    assert outs[0].timings_ms["total"] == pytest.approx(0.05 + prefill)
    default = SimulatedBackend(latency_scale=0.001).generate_batch(k, [ModelRequest("a", expected_ms=50.0)] * 2)
    assert [o.timings_ms["total"] for o in default] == pytest.approx([cost + prefill, cost])


def test_simulated_streams_share_the_batch_and_the_device() -> None:
    """A streamed member gets new text only (a word per step while the text lasts), rides in the
    same call as a whole one, and stops when its sink says its client left; calls never overlap."""
    import threading
    import time

    b = SimulatedBackend(latency_source="table", jitter_sigma=0, decode="per_token")
    k = Knobs("low", 4, 12)
    streamed = ModelRequest("s", max_new_tokens=8, expected_ms=20.0, decode_ms_per_token=2.0)
    whole = ModelRequest("w", max_new_tokens=4, expected_ms=20.0, decode_ms_per_token=2.0)
    pieces: list[str] = []
    outs = b.generate_batch(k, [streamed, whole], [lambda t: (pieces.append(t) if t else None) or True, None])
    assert "".join(pieces) == outs[0].text and len(pieces) == len(outs[0].text.split(" "))
    assert outs[0].output_tokens == 8 and outs[1].output_tokens == 4 and outs[1].finish_reason == "length"
    seen: list[str] = []
    (gone,) = b.generate_batch(k, [streamed], [lambda t: (seen.append(t) if t else None) or len(seen) < 2])
    assert gone.finish_reason == "cancelled" and gone.output_tokens == 2 and len(seen) == 2

    spans: list[tuple[float, float]] = []

    def call() -> None:
        t0 = time.monotonic()
        b.generate_batch(k, [ModelRequest("x", 1, expected_ms=30.0)])
        spans.append((t0, time.monotonic()))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    ends = sorted(e for _, e in spans)
    assert ends[-1] - min(s for s, _ in spans) >= 3 * 0.030 * 0.9  # one device: the calls ran one after another


@pytest.mark.parametrize("bad", [0, 0.01, 1000, float("nan"), float("inf"), "fast", True])
def test_gil_switch_interval_refuses_values_outside_its_range(bad: object) -> None:
    from pydantic import ValidationError

    from serving.config import ModelSettings

    with pytest.raises(ValidationError, match="gil_switch_interval_ms"):
        ModelSettings.model_validate({"gil_switch_interval_ms": bad})


def test_gil_switch_interval_is_set_in_the_replica_process() -> None:
    import sys

    before = sys.getswitchinterval()
    try:
        cls = MoEModel.func_or_class
        cls({"backend_options": {"latency_scale": 0}, "gil_switch_interval_ms": 0.5},
            {"tier": "low", "top_k": 4, "num_active_blocks": 12})
        assert sys.getswitchinterval() == pytest.approx(0.0005)
        _model()  # unset: Python's interval stays as it is
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    finally:
        sys.setswitchinterval(before)


@pytest.mark.parametrize("bad", [-0.01, 1.5, float("nan"), float("inf"), "0.03", True])
def test_pair_switch_min_gain_refuses_values_outside_its_range(bad: object) -> None:
    from pydantic import ValidationError

    from serving.config import ModelSettings

    with pytest.raises(ValidationError, match="pair_switch_min_gain"):
        ModelSettings.model_validate({"pair_switch_min_gain": bad})
    assert ModelSettings.model_validate({"pair_switch_min_gain": 0.03}).pair_switch_min_gain == 0.03



@pytest.mark.parametrize("bad", ["yes", 1, 0, None])
def test_rebind_on_device_takes_a_boolean_only(bad: object) -> None:
    from pydantic import ValidationError

    from serving.config import ModelSettings

    with pytest.raises(ValidationError, match="rebind_on_device"):
        ModelSettings.model_validate({"rebind_on_device": bad})
    assert ModelSettings.model_validate({"rebind_on_device": True}).rebind_on_device is True
