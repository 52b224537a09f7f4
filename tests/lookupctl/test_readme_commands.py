"""The README's CLI blocks stay true: the example block runs as written from a clone (the real CLI, in
a temporary folder), and every flag the reference block names exists (issue 19 items 11 and 13)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lookupctl import main

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def readme_block(marker: str) -> str:
    """The fenced block that follows `<!-- marker ... -->` in the README."""
    text = README.read_text()
    start = text.index(f"<!-- {marker}")
    m = re.compile(r"```bash\n(.*?)```", re.DOTALL).search(text, start)
    assert m is not None, f"no ```bash block after {marker}"
    return m.group(1)


def reference_lines() -> list[str]:
    joined = readme_block("readme-cli-reference").replace("\\\n", " ")
    return [" ".join(line.split()) for line in joined.splitlines() if line.strip()]


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_example_block_runs_as_written(tmp_path: Path) -> None:
    script = readme_block("readme-cli-example")
    assert "sample_results/core_exp_synthetic" in script and "results/core_exp_h100" not in script
    # A clone's working copy, as far as the block reads it; everything it writes lands in tmp_path.
    (tmp_path / "sample_results").symlink_to(ROOT / "sample_results")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # the venv's lookupctl
        "LOOKUPCTL_CACHE_DIR": str(tmp_path / "cache"),
    }
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, f"stdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"
    assert run.stderr == ""
    for written in ("table.json", "table_quirks.json", "lookup_table_baseline.json", "lookup_store/LATEST"):
        assert (tmp_path / written).is_file(), written
    latest = (tmp_path / "lookup_store" / "LATEST").read_text().strip()
    assert f"* {latest}" in run.stdout  # `versions` marks the version just published
    assert "SYNTHETIC" in run.stdout and "averages over" in run.stdout


def test_reference_block_lists_every_subcommand_and_only_real_flags(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    commands = re.findall(r"^    ([a-z][a-z-]*)\s", _help(capsys), re.MULTILINE)
    lines = reference_lines()
    documented = [line.split()[1] for line in lines]
    assert all(line.startswith("lookupctl ") for line in lines)
    assert sorted(set(documented)) == sorted(commands), "the README's CLI reference and `lookupctl --help` differ"
    for line in lines:
        command = line.split()[1]
        help_text = _help(capsys, command)
        known = set(re.findall(r"--[A-Za-z0-9][\w-]*", help_text))
        for flag in re.findall(r"(?<![\w-])--[A-Za-z0-9][\w-]*", line):
            assert flag in known, f"README: `lookupctl {command}` has no flag {flag}"


def test_readme_says_which_extra_each_part_needs() -> None:
    # Issue 19 item 17: after `make demo`, `inspect --plot` and `profile` failed for an extra nobody named.
    text = README.read_text()
    section = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1].split("\n[")[0]
    extras = set(re.findall(r"^(\w+) = \[", section, re.MULTILINE))
    assert {"serve", "torch", "plot", "store"} <= extras
    table = {m.group(1) for m in re.finditer(r"^\| `(\w+)` \|", text, re.MULTILINE)}
    assert extras - {"dev"} <= table
    makefile = (ROOT / "Makefile").read_text()
    demo_extras = re.search(r"\.demo-installed:.*?install -e '\.\[([\w,]+)\]'", makefile, re.DOTALL)
    assert demo_extras is not None and set(demo_extras.group(1).split(",")) == {"serve", "plot"}
    assert "`make demo`, `make test`" in text  # the plot and serve rows say make demo brings them
