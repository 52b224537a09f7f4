"""Keep a model replica's engine ready for the configs the served table can choose.

At start the replica reads the store's current table (bounded in time: a store that blocks or
holds garbage delays nothing) and prepares every config before it takes traffic; CUDA graphs are
captured there. Then a daemon thread polls LATEST and prepares the configs a newly published table
brings, off the request path: the engine takes its lock per knob pair, so requests keep flowing,
and a config not captured yet runs eagerly in the meantime (same numbers, slower).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from controller.knobs import Knobs
from controller.store import TableStore

log = logging.getLogger("ray.serve")

READ_TIMEOUT_S = 10.0


class EnginePreparer:
    def __init__(
        self,
        prepare: Callable[[list[Knobs]], dict[str, Any]],
        store: str | None,
        extra: list[Knobs],
        poll_interval_s: float = 2.0,
    ) -> None:
        self._prepare, self._store, self._extra = prepare, store, extra
        self.poll_interval_s = poll_interval_s
        self.prepared_version: str | None = None
        self.last_error: str | None = None
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-store-read")

    def _read(self, fn: Callable[[], Any]) -> Any:
        # A read that blocks (FIFO, hung mount) must not hold the replica: give up after a while.
        # The stuck worker is abandoned; later reads queue behind it and time out the same way.
        return self._reader.submit(fn).result(timeout=READ_TIMEOUT_S)

    def _table_configs(self) -> tuple[str | None, list[Knobs]]:
        if self._store is None:
            return None, []
        store = TableStore(self._store)
        version = self._read(store.latest_id)
        if version is None or version == self.prepared_version:
            return version, []
        table = self._read(lambda: store.load(version))
        return version, table.all_knobs()

    def prepare_current(self) -> dict[str, Any] | None:
        """Prepare the current table's configs (plus the fallback); never raises."""
        try:
            version, configs = self._table_configs()
        except (FutureTimeout, Exception) as e:  # noqa: BLE001 - a bad store must not stop the replica
            self.errors += 1
            self.last_error = f"store read failed: {type(e).__name__}: {str(e)[:200]}"
            log.warning("engine prep: %s", self.last_error)
            configs, version = [], None
        if version is not None and version == self.prepared_version and not self._extra:
            return None
        report = self._prepare(configs + self._extra)
        self._extra = []
        if version is not None and configs:
            self.prepared_version = version
        return report

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="engine-prep", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            started = time.monotonic()
            report = self.prepare_current()
            if report is not None:
                log.info("engine prep: table %s ready in %.1f s: %s", self.prepared_version,
                         time.monotonic() - started, report)

    def status(self) -> dict[str, Any]:
        return {"prepared_version": self.prepared_version, "store_errors": self.errors, "last_error": self.last_error}
