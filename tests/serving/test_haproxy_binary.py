"""serving.haproxy_binary: the script that runs Serve's HAProxy with -dS (no splice), on real files
and real processes: what it execs, where it is written, and what it refuses."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from serving import haproxy_binary as hb

ROOT = Path(__file__).resolve().parents[2]


def _fake_haproxy(folder: Path, name: str = "haproxy") -> Path:
    """An executable that prints its arguments, one per line, as HAProxy would receive them."""
    p = folder / name
    p.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    p.chmod(0o755)
    return p


def test_the_script_execs_the_binary_with_dS_first_and_passes_every_argument(tmp_path: Path) -> None:
    real = _fake_haproxy(tmp_path)
    script = hb.write_wrapper(tmp_path / "wrapped", str(real))
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    out = subprocess.run([str(script), "-db", "-f", "/a b/haproxy.cfg", "-sf", "12"], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out == ["-dS", "-db", "-f", "/a b/haproxy.cfg", "-sf", "12"]
    assert hb.is_wrapper(script) and not hb.is_wrapper(real)


def test_a_binary_path_with_spaces_and_quotes_is_quoted(tmp_path: Path) -> None:
    odd = tmp_path / "it's a $HOME `dir`"
    odd.mkdir()
    real = _fake_haproxy(odd)
    script = hb.write_wrapper(tmp_path / "wrapped", str(real))
    out = subprocess.run([str(script), "x"], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["-dS", "x"]


def test_the_real_binary_is_the_variable_unless_it_names_a_script_of_ours(tmp_path: Path) -> None:
    real = _fake_haproxy(tmp_path)
    assert hb.real_haproxy({hb.ENV: str(real)}) == str(real)
    script = hb.write_wrapper(tmp_path / "wrapped", str(real))
    # A script of ours in the variable is looked past (never a script that execs a script).
    assert hb.real_haproxy({hb.ENV: str(script)}) != str(script)


def test_a_variable_that_is_not_an_executable_file_is_refused_with_its_value(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("not a program")
    for bad in (str(plain), str(tmp_path), str(tmp_path / "missing")):
        with pytest.raises(hb.HAProxyNotFound, match="is not an executable file"):
            hb.real_haproxy({hb.ENV: bad})


def test_is_wrapper_never_blocks_on_a_fifo_and_is_false_for_folders_and_links_to_nothing(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert not hb.is_wrapper(fifo)  # returns at once: a FIFO is not opened
    assert not hb.is_wrapper(tmp_path)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    assert not hb.is_wrapper(dangling)


def test_writing_onto_a_folder_or_onto_the_binary_itself_is_refused(tmp_path: Path) -> None:
    real = _fake_haproxy(tmp_path)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        hb.write_wrapper(tmp_path, str(real))
    with pytest.raises(ValueError, match="is the HAProxy binary itself"):
        hb.write_wrapper(real, str(real))
    assert subprocess.run([str(real), "a"], capture_output=True, text=True).stdout == "a\n"  # untouched


def test_nosplice_env_writes_a_private_script_and_removes_it_after(tmp_path: Path) -> None:
    real = _fake_haproxy(tmp_path)
    with hb.nosplice_env({hb.ENV: str(real)}) as env:
        script = Path(env[hb.ENV])
        assert hb.is_wrapper(script)
        assert stat.S_IMODE(script.parent.stat().st_mode) == 0o700  # no one else can swap it
        out = subprocess.run([str(script), "-v"], capture_output=True, text=True, check=True).stdout
        assert out.splitlines() == ["-dS", "-v"]
    assert not script.exists() and not script.parent.exists()


def test_nosplice_env_keeps_an_image_script_and_leaves_a_missing_haproxy_to_serve(tmp_path: Path) -> None:
    real = _fake_haproxy(tmp_path)
    image_script = hb.write_wrapper(tmp_path / "haproxy-nosplice", str(real))
    with hb.nosplice_env({hb.ENV: str(image_script)}) as env:
        assert env == {}
    with hb.nosplice_env({hb.ENV: str(tmp_path / "missing")}) as env:
        assert env == {}  # Serve reports the bad variable itself, as it would without us


def test_the_cli_writes_the_script_and_errors_in_one_line(tmp_path: Path) -> None:
    real = _fake_haproxy(tmp_path)
    env = {**os.environ, hb.ENV: str(real)}
    dest = tmp_path / "out"
    ok = subprocess.run([sys.executable, "-m", "serving.haproxy_binary", str(dest)], cwd=ROOT, env=env,
                        capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip() == str(dest) and hb.is_wrapper(dest)
    bad = subprocess.run([sys.executable, "-m", "serving.haproxy_binary", str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "is a folder" in bad.stderr
    usage = subprocess.run([sys.executable, "-m", "serving.haproxy_binary"], cwd=ROOT, env=env,
                           capture_output=True, text=True)
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_the_shipped_haproxy_accepts_dS() -> None:
    """The binary ray[serve] brings takes -dS (checked with -v, which prints its version and exits)."""
    real = hb.real_haproxy({})
    out = subprocess.run([real, "-dS", "-v"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "HAProxy version" in out.stdout, out


def test_a_fifo_or_a_link_at_the_destination_is_replaced_never_followed(tmp_path: Path) -> None:
    real = _fake_haproxy(tmp_path)
    fifo = tmp_path / "fifo-dest"
    os.mkfifo(fifo)
    hb.write_wrapper(fifo, str(real))  # replaced by rename: nothing opens (and blocks on) the FIFO
    assert fifo.is_file() and hb.is_wrapper(fifo)
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    link = tmp_path / "link-dest"
    link.symlink_to(victim)
    hb.write_wrapper(link, str(real))
    assert not link.is_symlink() and hb.is_wrapper(link)
    assert victim.read_text() == "keep me"  # the link's target is untouched


def test_a_missing_folder_is_a_one_line_cli_error_and_leaves_nothing_behind(tmp_path: Path) -> None:
    real = _fake_haproxy(tmp_path)
    env = {**os.environ, hb.ENV: str(real)}
    dest = tmp_path / "no" / "such" / "haproxy-nosplice"
    out = subprocess.run([sys.executable, "-m", "serving.haproxy_binary", str(dest)], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["haproxy"]


def test_a_folder_that_cannot_hold_the_script_is_passed_over_for_the_next(tmp_path: Path) -> None:
    real = _fake_haproxy(tmp_path)
    blocked = tmp_path / "a-file"
    blocked.write_text("a regular file: no folder can be made under it")
    second = tmp_path / "second"
    with hb.nosplice_env({hb.ENV: str(real)}, folders=[blocked / "sub", second]) as env:
        script = Path(env[hb.ENV])
        assert script.parent.parent == second and hb.is_wrapper(script)
    assert list(second.iterdir()) == []  # its private folder is gone again


def test_a_script_that_does_not_run_anywhere_leaves_haproxy_to_serve_and_nothing_behind(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    broken = tmp_path / "haproxy"
    broken.write_text("#!/bin/sh\nexit 3\n")  # e.g. a binary this machine cannot run
    broken.chmod(0o755)
    folders = [tmp_path / "one", tmp_path / "two"]
    with caplog.at_level("WARNING", logger="serving.haproxy_binary"):
        with hb.nosplice_env({hb.ENV: str(broken)}, folders=folders) as env:
            assert env == {}
    assert "runs in none of" in caplog.text
    assert all(list(f.iterdir()) == [] for f in folders)
    assert hb.runs(broken) is False
