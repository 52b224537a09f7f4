"""`lookupctl recalibrate`: a new table version from live latency sketches (latency) and the current
table (accuracy), published through the store like any other version (rollback undoes it)."""

from __future__ import annotations

import argparse
import json
import time

from controller.errors import StoreError
from lookupctl.store import ENV_SIGN_KEY_FILE, add_key_flag, signing_key


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("recalibrate", help="publish a table whose latencies come from live serving")
    p.add_argument("--store", required=True, help="store directory (live/ snapshots are read from it)")
    p.add_argument("--min-samples", type=int, default=50, dest="min_samples",
                   help="live samples a config needs to take its latency from them (default 50)")
    p.add_argument("--max-age-s", type=float, default=600.0, dest="max_age_s",
                   help="ignore replica snapshots older than this (default 600)")
    add_key_flag(p, f"HMAC key file (default ${ENV_SIGN_KEY_FILE}): read only live/ snapshots signed with it "
                    "(by controller replicas), load LATEST verified, and sign the new version")
    p.add_argument("--dry-run", action="store_true", help="print what would change, publish nothing")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_recalibrate)


def _recalibrate(args: argparse.Namespace) -> int:
    import math

    from controller.live_files import read_snapshots
    from controller.live_latency import merge_snapshots
    from controller.recalibrate import recalibrate
    from controller.store import TableStore

    if not 1 <= args.min_samples <= 10_000_000:
        raise StoreError(f"--min-samples={args.min_samples} is not valid; expected an integer in [1, 10000000]")
    if not (math.isfinite(args.max_age_s) and args.max_age_s > 0):
        raise StoreError(f"--max-age-s={args.max_age_s} is not valid; expected seconds > 0")
    key = signing_key(args)
    # With a key the base table is verified too (and LATEST must be a forward move), and only
    # snapshots signed by a controller replica count: a forged live/ file is skipped and reported.
    store = TableStore(args.store, verify_key=key)
    current = store.load("latest")
    snapshots, skipped = read_snapshots(args.store, args.max_age_s, verify_key=key)
    if not snapshots:
        why = "; ".join(skipped) or "no live/ snapshots"
        raise StoreError(f"no fresh live snapshots in {args.store} ({why}); is feedback enabled and serving?")
    live = merge_snapshots(snapshots)
    window = {
        "start_unix": min(s.start_unix for s in snapshots),
        "end_unix": max(s.end_unix for s in snapshots),
        "window_s": max(s.window_s for s in snapshots),
        "replicas": sorted(s.replica for s in snapshots),
    }
    table = recalibrate(current, live, min_samples=args.min_samples, window=window, trigger="lookupctl")
    info = table.source["live_recalibration"]
    published = None if args.dry_run else store.publish(table, sign_key=key)
    result = {
        "from_version": current.version_id,
        "published": published.version_id if published else None,
        "recalibrated": info["recalibrated"],
        "kept_profiled": info["kept_profiled"],
        "samples_per_config": info["samples_per_config"],
        "skipped_snapshots": skipped,
        "at_unix": time.time(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        what = f"published {published.version_id}" if published else "dry run: nothing published"
        print(f"{what} from {current.version_id}: {len(info['recalibrated'])} configs from live latency, "
              f"{len(info['kept_profiled'])} kept profiled (min {args.min_samples} samples)")
        if skipped:
            print(f"skipped {len(skipped)} live/ snapshots: " + "; ".join(skipped)[:500])
    return 0
