"""A publisher process for concurrent-publish tests and benchmarks:
`python -c PUBLISHER STORE TABLE_FILE ROUNDS` publishes the table ROUNDS times and prints, per
publish, the version it made and what LATEST named right after (one JSON object per line)."""

PUBLISHER = """
import json, sys
from controller.store import TableStore
from controller.table_file import load_table
store, table = TableStore(sys.argv[1]), load_table(sys.argv[2])
for _ in range(int(sys.argv[3])):
    r = store.publish_report(table)
    print(json.dumps({"id": r.table.version_id, "after": r.latest_after}), flush=True)
"""
