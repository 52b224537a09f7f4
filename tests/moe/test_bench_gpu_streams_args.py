"""bench.gpu_streams' command line: budgets given by hand are checked before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.gpu_streams import main


@pytest.mark.parametrize("bad", ["nan", "inf", "-5", "0", "fast", "1e9"])
def test_a_budget_that_is_not_a_number_of_ms_is_refused(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--out", "/nonexistent", "--budgets", "90", bad])
    assert e.value.code == 2
    assert f"budget {bad!r}" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["after=0", "after=5", "after=two", "other=2", "after"])
def test_a_decode_slots_override_that_names_no_tree_or_no_count_is_refused(
        bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--out", "/nonexistent", "--trees", "after=.", "--slots", bad])
    assert f"--slots {bad!r}" in str(e.value)


def test_ray_logs_are_kept_as_bounded_tails(tmp_path: Path) -> None:
    from bench.gpu_streams import keep_ray_logs

    logs = tmp_path / "logs"
    (logs / "serve").mkdir(parents=True)
    (logs / "serve" / "replica_x.log").write_bytes(b"a" * 100 + b"END")
    (logs / "worker-1.err").write_bytes(b"warning\n")
    (logs / "worker-2.out").write_bytes(b"")  # empty: skipped
    (logs / "raylet.out").write_bytes(b"not ours")  # not a Serve or worker log: skipped
    dest = tmp_path / "kept"
    assert keep_ray_logs(dest, logs, per_file=10) == 10 + 8
    assert (dest / "serve" / "replica_x.log").read_bytes() == b"a" * 7 + b"END"  # the tail
    assert (dest / "worker-1.err").read_bytes() == b"warning\n"
    assert not (dest / "worker-2.out").exists() and not (dest / "raylet.out").exists()
    assert keep_ray_logs(tmp_path / "none", tmp_path / "missing") == 0


def test_ray_logs_skip_fifos_and_links(tmp_path: Path) -> None:
    import os

    from bench.gpu_streams import keep_ray_logs

    logs = tmp_path / "logs"
    (logs / "serve").mkdir(parents=True)
    os.mkfifo(logs / "serve" / "replica_fifo.log")  # opening it to read would block
    secret = tmp_path / "secret.txt"
    secret.write_text("not a log")
    (logs / "worker-9.err").symlink_to(secret)
    (logs / "serve" / "real.log").write_text("ok")
    dest = tmp_path / "kept"
    assert keep_ray_logs(dest, logs) == 2
    assert sorted(p.name for p in dest.rglob("*") if p.is_file()) == ["real.log"]
