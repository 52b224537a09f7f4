"""`lookupctl publish | versions | rollback`: the table store from the command line."""

from __future__ import annotations

import argparse
import json

from controller.store import TableStore


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("publish", help="validate a table and publish it as the new LATEST")
    p.add_argument("table", help="table JSON file (from `lookupctl build`)")
    p.add_argument("--store", required=True, help="store directory, or s3:// / gs:// URL")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--sign-key-file",
        metavar="FILE",
        help="HMAC key: write versions/<id>.json.sig, for controllers that set verify_key_file",
    )
    p.set_defaults(func=_publish)

    v = subparsers.add_parser("versions", help="list the versions in a store")
    v.add_argument("--store", required=True, help="store directory, or s3:// / gs:// URL")
    v.add_argument("--json", action="store_true", help="print the list as JSON")
    v.set_defaults(func=_versions)

    r = subparsers.add_parser("rollback", help="move LATEST back to an earlier version")
    r.add_argument("--store", required=True, help="store directory, or s3:// / gs:// URL")
    r.add_argument("--to", required=True, dest="to", metavar="ID", help="version id to serve")
    r.set_defaults(func=_rollback)


def _publish(args: argparse.Namespace) -> int:
    from controller.signing import read_key_file
    from controller.table_file import load_table

    key = read_key_file(args.sign_key_file) if args.sign_key_file else None
    report = TableStore(args.store).publish_report(load_table(args.table), sign_key=key)
    published = report.table
    if args.json:
        print(
            json.dumps(
                {
                    "version_id": published.version_id,
                    "sha256": published.sha256,
                    "latest_before": report.latest_before,
                    "latest_after": report.latest_after,
                }
            )
        )
    else:
        print(
            f"published {published.version_id} (sha256 {published.sha256[:12]}) to {args.store}; "
            f"LATEST now {report.latest_after} (was {report.latest_before})"
        )
    return 0


def _versions(args: argparse.Namespace) -> int:
    infos = TableStore(args.store).versions()
    if args.json:
        print(json.dumps([i.to_dict() for i in infos], indent=2))
        return 0
    if not infos:
        print(f"no versions in {args.store}")
        return 0
    print(f"{'':2}{'VERSION':<34} {'CREATED':<28} {'SHA256':<14} CONFIGS")
    for i in infos:
        mark = "* " if i.is_latest else "  "
        print(f"{mark}{i.version_id:<34} {i.created_at:<28} {i.sha256[:12]:<14} {i.num_configs}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    store = TableStore(args.store)
    before = store.latest_id()
    store.rollback(args.to)
    print(f"LATEST: {before} -> {args.to}")
    return 0
