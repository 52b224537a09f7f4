"""The `lookupctl` entry point: both spellings of every long flag, and a reader that leaves early."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from controller.core_exp.synthetic import generate_sample_results
from lookupctl import EXIT_BROKEN_PIPE, build_parser, main, with_twins

ROOT = Path(__file__).resolve().parents[2]


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def _commands(capsys: pytest.CaptureFixture[str]) -> list[str]:
    # `lookupctl --help` lists each subcommand on its own line under COMMAND, indented by four spaces.
    text = _help(capsys)
    return [m.group(1) for m in re.finditer(r"^    ([a-z][a-z-]*)\s", text, re.MULTILINE)]


def _option_lines(text: str) -> list[list[str]]:
    """The long option strings of each option line of a help text (the invocation part only)."""
    out = []
    for line in text.splitlines():
        if re.match(r"^  -", line):
            invocation = re.split(r"\s{2,}", line.strip())[0]  # help text starts after two spaces
            out.append(re.findall(r"--[A-Za-z0-9][\w-]*", invocation))
    return out


def test_with_twins() -> None:
    assert with_twins(["--min-samples"]) == ["--min-samples", "--min_samples"]
    assert with_twins(["--min_samples"]) == ["--min_samples", "--min-samples"]
    assert with_twins(["-h", "--help", "--store"]) == ["-h", "--help", "--store"]
    assert with_twins(["--test_budgets", "--test-budgets"]) == ["--test_budgets", "--test-budgets"]


def test_every_long_flag_of_every_subcommand_has_both_spellings(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one line per option in the help text
    commands = _commands(capsys)
    assert {"build", "predict", "inspect", "publish", "versions", "rollback", "recalibrate", "serve"} <= set(commands)
    checked = 0
    for command in commands:
        for spellings in _option_lines(_help(capsys, command)):
            for s in spellings:
                twin = s.replace("_", "-") if "_" in s else s.replace("-", "_")
                twin = "--" + twin[2:]
                assert twin in spellings, f"lookupctl {command}: {s} has no twin {twin} (has {spellings})"
                checked += 1
    assert checked > 100


def test_recalibrate_takes_the_underscore_spelling() -> None:
    # Issue 19 item 13: `--min_samples` was refused by recalibrate only.
    parser = build_parser()
    dashed = parser.parse_args(["recalibrate", "--store", "s", "--min-samples", "7", "--max-age-s", "5", "--dry-run"])
    under = parser.parse_args(["recalibrate", "--store", "s", "--min_samples", "7", "--max_age_s", "5", "--dry_run"])
    assert vars(dashed) == vars(under)
    assert under.min_samples == 7 and under.max_age_s == 5.0 and under.dry_run is True


def test_an_unknown_flag_is_one_line_and_exit_2(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "lookupctl", "recalibrate", "--store", str(tmp_path), "--min_smaples",
                          "3"], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "unrecognized arguments: --min_smaples 3" in run.stderr


def test_a_reader_that_leaves_early_is_no_error(tmp_path: Path) -> None:
    # Issue 19 item 16: `lookupctl inspect | head` ended with "Broken pipe" on stderr. Closing our end
    # of the pipe before the CLI writes makes every write of it fail, as a `head` that has finished does.
    results = tmp_path / "r"
    generate_sample_results(results, samples_per_config=2, seed=1)
    table = tmp_path / "t.json"
    assert main(["build", "--results_dir", str(results), "--output_file", str(table), "--no_cache", "--quiet"]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "lookupctl", "inspect", "--table", str(table), "--all_configs"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == EXIT_BROKEN_PIPE
    assert err == ""
