"""`lookupctl publish | versions | rollback | prune` with signing, a bad LATEST and retention
(issue 19 items 5, 6, 7, 12): the real CLI on real store files, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.core_exp.synthetic import generate_sample_results
from controller.rollback_record import ROLLBACK_FILE
from controller.store import LATEST, TableStore
from lookupctl import main
from lookupctl.store import ENV_SIGN_KEY_FILE
from tests.support.tables import synthetic_table

KEY = b"publisher-key-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def signed(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """A store with two signed versions, one unsigned and one signed with another key (newest)."""
    key_file = tmp_path / "sign.key"
    key_file.write_bytes(KEY + b"\n")
    store_dir = tmp_path / "store"
    store = TableStore(str(store_dir))
    ids = [store.publish(synthetic_table(1 + i / 10), sign_key=KEY).version_id for i in range(2)]
    ids.append(store.publish(synthetic_table(1.5)).version_id)
    ids.append(store.publish(synthetic_table(1.6), sign_key=b"w" * 32).version_id)
    return store_dir, key_file, ids


def _one_error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"lookupctl {command}: error:"), err
    return err[0]


def test_rollback_with_a_key_refuses_unsigned_and_tampered_versions(
    signed: tuple[Path, Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    store_dir, key_file, (v1, _v2, unsigned, wrong) = signed
    latest = TableStore(str(store_dir)).latest_id()
    for target, why in ((unsigned, "is not signed"), (wrong, "signature does not match")):
        assert main(["rollback", "--store", str(store_dir), "--to", target, "--sign-key-file", str(key_file)]) == 2
        assert why in _one_error_line(capsys, "rollback")
        assert TableStore(str(store_dir)).latest_id() == latest
    # The key configured once in the environment instead of a flag.
    env = {**os.environ, ENV_SIGN_KEY_FILE: str(key_file), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "lookupctl", "rollback", "--store", str(store_dir), "--to", unsigned],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and "is not signed" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    # A signed version: the rollback record is signed, and a verifying store serves it.
    assert main(["rollback", "--store", str(store_dir), "--to", v1, "--sign-key-file", str(key_file)]) == 0
    assert "signed rollback record" in capsys.readouterr().out
    assert TableStore(str(store_dir), verify_key=KEY).load().version_id == v1
    assert json.loads((store_dir / ROLLBACK_FILE).read_text())["signature"]


def test_rollback_without_a_key_refuses_a_signed_target(
    signed: tuple[Path, Path, list[str]], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_SIGN_KEY_FILE, raising=False)
    store_dir, _key, (v1, *_rest) = signed
    latest = TableStore(str(store_dir)).latest_id()
    assert main(["rollback", "--store", str(store_dir), "--to", v1]) == 2
    assert "--sign-key-file" in _one_error_line(capsys, "rollback")
    assert TableStore(str(store_dir)).latest_id() == latest


def test_versions_marks_each_signature(signed: tuple[Path, Path, list[str]], capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_SIGN_KEY_FILE, raising=False)
    store_dir, key_file, (v1, v2, unsigned, wrong) = signed
    # A signed version edited afterwards (same size, one digit changed): its signature no longer holds.
    path = store_dir / "versions" / f"{v2}.json"
    path.write_bytes(path.read_bytes().replace(b'"accuracy": 0.', b'"accuracy": 0.0', 1)[:-1])
    assert main(["versions", "--store", str(store_dir), "--sign-key-file", str(key_file), "--json"]) == 0
    states = {v["version_id"]: v["signature"] for v in json.loads(capsys.readouterr().out)}
    assert states == {v1: "ok", v2: "BAD", unsigned: "unsigned", wrong: "BAD"}
    assert main(["versions", "--store", str(store_dir), "--sign-key-file", str(key_file)]) == 0
    text = capsys.readouterr().out
    assert "SIGNATURE" in text and text.count(" BAD") == 2 and " ok" in text
    # Without a key the signatures are there but cannot be judged: said so, not shown as ok.
    assert main(["versions", "--store", str(store_dir), "--json"]) == 0
    states = {v["version_id"]: v["signature"] for v in json.loads(capsys.readouterr().out)}
    assert states == {v1: "signed", v2: "signed", unsigned: "unsigned", wrong: "signed"}


@pytest.mark.parametrize("pointer", [b"../../etc/passwd\n", b"\x00\xff", b"", b"x" * 5000])
def test_rollback_repairs_a_bad_latest(tmp_path: Path, pointer: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    store = TableStore(str(tmp_path))
    good = store.publish(synthetic_table()).version_id
    (tmp_path / LATEST).write_bytes(pointer)
    assert main(["rollback", "--store", str(tmp_path), "--to", good]) == 0
    assert capsys.readouterr().out.strip().endswith(f"-> {good} (rollback record (unsigned) written)")
    assert store.latest_id() == good


def test_rollback_repairs_a_bad_latest_in_a_signed_store(signed: tuple[Path, Path, list[str]]) -> None:
    store_dir, key_file, (v1, *_rest) = signed
    (store_dir / LATEST).write_text("../../etc/passwd\n")
    assert main(["rollback", "--store", str(store_dir), "--to", v1, "--sign-key-file", str(key_file)]) == 0
    assert TableStore(str(store_dir), verify_key=KEY).load().version_id == v1


def test_prune_keeps_the_newest_the_served_and_the_rollback_target(
    signed: tuple[Path, Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    store_dir, key_file, ids = signed
    store = TableStore(str(store_dir))
    more = [store.publish(synthetic_table(2 + i / 10), sign_key=KEY).version_id for i in range(4)]
    ids += more
    assert main(["rollback", "--store", str(store_dir), "--to", ids[1], "--sign-key-file", str(key_file)]) == 0
    (store_dir / LATEST).write_text(ids[0] + "\n")  # served: an even older one (say, pinned by hand)
    (store_dir / "versions" / "zzzz.json").write_text("planted")
    capsys.readouterr()
    assert main(["prune", "--store", str(store_dir), "--keep", "2", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["removed"] == ids[2:6] and plan["kept"] == ids[-2:]
    assert plan["protected"] == {ids[0]: "LATEST", ids[1]: "rollback record target"}
    assert plan["not_publish_ids"] == ["zzzz"]
    assert store.version_ids() == sorted([*ids, "zzzz"])  # a dry run removes nothing
    assert main(["prune", "--store", str(store_dir), "--keep", "2"]) == 0
    assert "removed 4 versions" in capsys.readouterr().out
    assert store.version_ids() == sorted([ids[0], ids[1], *ids[-2:], "zzzz"])
    left = sorted(p.name for p in (store_dir / "versions").iterdir())
    assert not [n for n in left if n.startswith(tuple(ids[2:6]))]  # .sig and .meta went too
    assert main(["prune", "--store", str(store_dir), "--keep", "0"]) == 2
    assert "keep=0 is not valid" in _one_error_line(capsys, "prune")
    with pytest.raises(SystemExit) as info:  # argparse's own one-line usage error
        main(["prune", "--store", str(store_dir), "--keep", "x"])
    assert info.value.code == 2 and "invalid int value: 'x'" in _one_error_line(capsys, "prune")


def test_versions_lists_without_parsing_and_check_parses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = TableStore(str(tmp_path))
    table = synthetic_table()
    ids = [store.publish(table).version_id for _ in range(3)]
    # Overwrite a version with junk: the cheap listing still shows its metadata (it did not parse
    # it); --check parses every file and names the problem.
    (tmp_path / "versions" / f"{ids[0]}.json").write_text("not json")
    assert main(["versions", "--store", str(tmp_path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [v["configs"] for v in listed] == [len(table.all_knobs())] * 3
    assert listed[0]["sha256"] and not listed[0]["created_at"].startswith("INVALID")
    assert main(["versions", "--store", str(tmp_path), "--check", "--json"]) == 0
    checked = json.loads(capsys.readouterr().out)
    assert checked[0]["created_at"].startswith("INVALID") and checked[1]["configs"] == len(table.all_knobs())


def test_build_publish_rollback_use_one_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    generate_sample_results(results, samples_per_config=3, seed=1)
    table_file, store = tmp_path / "table.json", str(tmp_path / "store")
    assert main(["build", "--results_dir", str(results), "--output_file", str(table_file), "--no_cache"]) == 0
    wrote = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("wrote "))
    built_id = wrote.split("(version ", 1)[1].split(";", 1)[0]
    assert main(["publish", str(table_file), "--store", store, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["version_id"] == built_id and first["id_kept"] is True
    assert main(["publish", str(synthetic_table(2.0).save(tmp_path / "other.json")), "--store", store]) == 0
    capsys.readouterr()
    assert main(["rollback", "--store", store, "--to", built_id]) == 0
    assert TableStore(store).latest_id() == built_id
    # The same file again: a new id, and the output says which one to use.
    assert main(["publish", str(table_file), "--store", store]) == 0
    out = capsys.readouterr().out
    assert f"the file's version id {built_id} was not kept" in out and "use " in out
