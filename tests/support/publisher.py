"""A publisher process for concurrent-publish tests and benchmarks:
`python -c PUBLISHER STORE TABLE_FILE ROUNDS` publishes the table ROUNDS times and prints, per
publish, the version it made and what LATEST named right after (one JSON object per line)."""

import json
import os
import subprocess
import sys
from pathlib import Path

PUBLISHER = """
import json, sys
from controller.store import TableStore
from controller.table_file import load_table
store, table = TableStore(sys.argv[1]), load_table(sys.argv[2])
for _ in range(int(sys.argv[3])):
    r = store.publish_report(table)
    print(json.dumps({"id": r.table.version_id, "after": r.latest_after}), flush=True)
"""


def run_publishers(store: str, table_file: str, publishers: int, rounds: int) -> list[dict[str, str]]:
    """`publishers` PUBLISHER processes at once into `store`; every report of every process (each
    process must exit 0)."""
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    procs = [
        subprocess.Popen([sys.executable, "-c", PUBLISHER, store, table_file, str(rounds)],
                         stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(publishers)
    ]
    reports = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, f"a publisher exited with {p.returncode}"
        reports += [json.loads(line) for line in out.splitlines()]
    return reports
