"""`lookupctl publish | versions | rollback | prune`: the table store from the command line."""

from __future__ import annotations

import argparse
import json
import os

from controller.errors import PointerError, StoreError
from controller.store import REMOTE_SCHEMES, TableStore

# The signing key without a flag on every command: where publishers keep it configured.
ENV_SIGN_KEY_FILE = "LOOKUPCTL_SIGN_KEY_FILE"
_KEY_HELP = f"HMAC key file (default ${ENV_SIGN_KEY_FILE}); the key of controllers that set verify_key_file"


def add_key_flag(parser: argparse.ArgumentParser, help_text: str = _KEY_HELP) -> None:
    parser.add_argument("--sign-key-file", "--sign_key_file", dest="sign_key_file", metavar="FILE", help=help_text)


def signing_key(args: argparse.Namespace) -> bytes | None:
    """The key from --sign-key-file, else from $LOOKUPCTL_SIGN_KEY_FILE; None when neither is set."""
    from controller.signing import read_key_file

    path = args.sign_key_file or os.environ.get(ENV_SIGN_KEY_FILE)
    return read_key_file(path) if path else None


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("publish", help="validate a table and publish it as the new LATEST")
    p.add_argument("table", help="table JSON file (from `lookupctl build`)")
    p.add_argument("--store", required=True, help="store directory, or s3:// / gs:// URL")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_key_flag(p, f"HMAC key (default ${ENV_SIGN_KEY_FILE}): write versions/<id>.json.sig, for controllers "
                    "that set verify_key_file")
    p.set_defaults(func=_publish)

    v = subparsers.add_parser("versions", help="list the versions in a store (and their signatures)")
    v.add_argument("--store", required=True, help="store directory, or s3:// / gs:// URL")
    v.add_argument("--json", action="store_true", help="print the list as JSON")
    v.add_argument("--check", action="store_true", help="also load and validate every version (slower)")
    add_key_flag(v, f"HMAC key (default ${ENV_SIGN_KEY_FILE}): verify each signature (ok / BAD / unsigned)")
    v.set_defaults(func=_versions)

    r = subparsers.add_parser("rollback", help="move LATEST to another version (also repairs a bad LATEST)")
    r.add_argument("--store", required=True, help="store directory, or s3:// / gs:// URL")
    r.add_argument("--to", required=True, dest="to", metavar="ID", help="version id to serve")
    add_key_flag(r, f"HMAC key (default ${ENV_SIGN_KEY_FILE}): the target must be signed with it, and the "
                    "rollback record is signed, so that verifying controllers accept the move back")
    r.set_defaults(func=_rollback)

    pr = subparsers.add_parser("prune", help="remove old versions (never LATEST's or the rollback target)")
    pr.add_argument("--store", required=True, help="store directory, or s3:// / gs:// URL")
    pr.add_argument("--keep", type=int, required=True, metavar="N", help="newest versions to keep (>= 1)")
    pr.add_argument("--live-max-age-s", "--live_max_age_s", dest="live_max_age_s", type=float,
                    default=24 * 3600.0, help="also remove live/ snapshots older than this (default 86400)")
    pr.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                    help="print what would be removed, remove nothing")
    pr.add_argument("--json", action="store_true", help="print the result as JSON")
    pr.set_defaults(func=_prune)


def _publish(args: argparse.Namespace) -> int:
    from controller.table_file import load_table

    key = signing_key(args)
    report = TableStore(args.store).publish_report(load_table(args.table), sign_key=key)
    published = report.table
    if args.json:
        print(
            json.dumps(
                {
                    "version_id": published.version_id,
                    "file_version_id": report.file_id,
                    "id_kept": published.version_id == report.file_id,
                    "id_note": report.id_note,
                    "sha256": published.sha256,
                    "signed": key is not None,
                    "latest_before": report.latest_before,
                    "latest_after": report.latest_after,
                }
            )
        )
    else:
        print(
            f"published {published.version_id} (sha256 {published.sha256[:12]}{', signed' if key else ''}) to "
            f"{args.store}; LATEST now {report.latest_after} (was {report.latest_before})"
        )
        if report.id_note:
            print(f"note: the file's version id {report.file_id} was not kept ({report.id_note}); "
                  f"use {published.version_id} with `lookupctl rollback --to`")
    return 0


def _versions(args: argparse.Namespace) -> int:
    key = signing_key(args)
    if not str(args.store).startswith(REMOTE_SCHEMES) and not os.path.isdir(args.store):
        # A typo'd path is not an empty store: say so, and fail, instead of "no versions" and 0.
        raise StoreError(f"store {args.store} does not exist; check the path, or publish a table first: "
                         f"lookupctl publish TABLE --store {args.store}")
    infos = TableStore(args.store, verify_key=key).versions(check=args.check)
    if args.json:
        print(json.dumps([i.to_dict() for i in infos], indent=2))
        return 0
    if not infos:
        print(f"no versions in {args.store}")
        return 0
    print(f"{'':2}{'VERSION':<34} {'CREATED':<28} {'SHA256':<14} {'CONFIGS':<8} {'SIGNATURE':<10} NOTE")
    for i in infos:
        mark = "* " if i.is_latest else "  "
        configs = "?" if i.num_configs is None else str(i.num_configs)
        print(f"{mark}{i.version_id:<34} {i.created_at[:28]:<28} {i.sha256[:12]:<14} {configs:<8} "
              f"{i.signature:<10} {i.note}".rstrip())
    if key is None and any(i.signature == "signed" for i in infos):
        print(f"(signatures not verified: pass --sign-key-file or set ${ENV_SIGN_KEY_FILE})")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    key = signing_key(args)
    store = TableStore(args.store, verify_key=key)
    try:
        before_text = str(store.latest_id())
    except PointerError as e:  # rollback is the repair for exactly this
        before_text = f"<bad pointer: {e}>"
    if key is None and store.has_signature(args.to):
        raise StoreError(
            f"version {args.to} is signed, so controllers may verify signatures and would refuse an unsigned "
            f"move back; pass --sign-key-file FILE (or set ${ENV_SIGN_KEY_FILE})"
        )
    store.rollback(args.to, sign_key=key)
    signed = "signed rollback record" if key is not None else "rollback record (unsigned)"
    print(f"LATEST: {before_text} -> {args.to} ({signed} written)")
    return 0


def _prune(args: argparse.Namespace) -> int:
    from controller.live_files import prune_live
    from controller.store import REMOTE_SCHEMES

    if not (args.live_max_age_s > 0):  # also refuses NaN
        raise StoreError(f"--live-max-age-s={args.live_max_age_s} is not valid; expected seconds > 0")
    report = TableStore(args.store).prune(args.keep, dry_run=args.dry_run)
    live: list[str] = []
    if not args.store.startswith(REMOTE_SCHEMES):
        live = prune_live(args.store, args.live_max_age_s, dry_run=args.dry_run)
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "removed": report.removed, "kept": report.kept,
                          "protected": report.protected, "not_publish_ids": report.not_ordered,
                          "live_removed": live}, indent=2))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(report.removed)} versions, kept {len(report.kept)} newest"
          + "".join(f"; kept {v} ({why})" for v, why in report.protected.items() if v not in report.kept)
          + f"; {verb} {len(live)} stale live/ snapshots")
    for vid in report.removed:
        print(f"  {verb} {vid}")
    if report.not_ordered:
        print(f"left alone (not publish ids, look at them): {', '.join(report.not_ordered[:10])}")
    return 0
