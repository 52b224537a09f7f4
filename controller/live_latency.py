"""Live latency per config over a sliding window: what served requests actually took, kept as
mergeable sketches (controller.live_sketch), with a JSON snapshot form that replicas write to the
store and `lookupctl recalibrate` reads back.

The window is a ring of `BUCKETS` time buckets: a sketch cannot forget single values, so whole
buckets age out. A snapshot covers between (BUCKETS-1)/BUCKETS and all of `window_s`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.errors import KnobError, LiveDataError, SketchError
from controller.knobs import Knobs
from controller.live_sketch import MAX_VALUE, LatencySketch

SNAPSHOT_FORMAT = "moe-budget-controller/live-latency"
BUCKETS = 4
MAX_CONFIGS = 4096  # a snapshot holding more is not ours
MAX_TOKENS = 1_000_000
MAX_CROPS = 1_000


@dataclass(frozen=True)
class Observation:
    """One served request, as measured by the model replica."""

    knobs: Knobs
    first_token_ms: float  # vision + prefill: the table's default latency metric
    decode_ms_per_token: float | None
    output_tokens: int
    queue_wait_ms: float | None
    crops: int | None

    @classmethod
    def from_dict(cls, d: Any) -> Observation:
        """Strict: every number finite and in range; raises LiveDataError naming the field."""
        if not isinstance(d, Mapping):
            raise LiveDataError(f"observation is a {type(d).__name__}, expected an object")
        try:
            knobs = knobs_from_key(str(d.get("config")))
        except (KnobError, ValueError) as e:
            raise LiveDataError(f"config={d.get('config')!r} is not a config key like low_4_12") from e
        return cls(
            knobs,
            _ms(d.get("first_token_ms"), "first_token_ms", required=True),  # type: ignore[arg-type]
            _ms(d.get("decode_ms_per_token"), "decode_ms_per_token"),
            _count(d.get("output_tokens", 0), "output_tokens", MAX_TOKENS),
            _ms(d.get("queue_wait_ms"), "queue_wait_ms"),
            None if d.get("crops") is None else _count(d.get("crops"), "crops", MAX_CROPS),
        )


def knobs_from_key(key: str) -> Knobs:
    """"low_4_12" -> Knobs; ValueError or KnobError for anything else (bounded length first)."""
    parts = key.split("_") if len(key) <= 40 else []
    if len(parts) != 3 or not all(p.isdigit() and len(p) <= 4 for p in parts[1:]):
        raise ValueError(f"{key[:60]!r} is not a config key")
    return Knobs(parts[0], int(parts[1]), int(parts[2]))


def _ms(v: Any, name: str, required: bool = False) -> float | None:
    if v is None and not required:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= MAX_VALUE:
        raise LiveDataError(f"{name}={v!r} is not valid; expected a finite number of ms in [0, {MAX_VALUE:g}]")
    return float(v)


def _count(v: Any, name: str, limit: int) -> int:
    if type(v) is not int or not 0 <= v <= limit:
        raise LiveDataError(f"{name}={v!r} is not valid; expected an integer in [0, {limit}]")
    return v


class ConfigLive:
    """One config's sketches: first token, whole request, decode per token, queue wait; crops."""

    __slots__ = ("first_token", "total", "decode_per_token", "queue_wait", "crops_sum", "crops_count")
    PARTS = ("first_token", "total", "decode_per_token", "queue_wait")

    def __init__(self, relative_accuracy: float) -> None:
        self.first_token = LatencySketch(relative_accuracy)
        self.total = LatencySketch(relative_accuracy)
        self.decode_per_token = LatencySketch(relative_accuracy)
        self.queue_wait = LatencySketch(relative_accuracy)
        self.crops_sum = 0
        self.crops_count = 0

    @property
    def count(self) -> int:
        return int(self.first_token.count)

    def add(self, o: Observation) -> None:
        self.first_token.add(o.first_token_ms)
        decode_total = (o.decode_ms_per_token or 0.0) * o.output_tokens
        self.total.add(min(MAX_VALUE, o.first_token_ms + decode_total))
        if o.decode_ms_per_token is not None and o.output_tokens > 0:
            self.decode_per_token.add(o.decode_ms_per_token)
        if o.queue_wait_ms is not None:
            self.queue_wait.add(o.queue_wait_ms)
        if o.crops is not None:
            self.crops_sum += o.crops
            self.crops_count += 1

    def merge(self, other: ConfigLive) -> None:
        for part in self.PARTS:
            getattr(self, part).merge(getattr(other, part))
        self.crops_sum += other.crops_sum
        self.crops_count += other.crops_count

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {part: getattr(self, part).summary() for part in self.PARTS}
        out["samples"] = self.count
        out["crops_mean"] = self.crops_sum / self.crops_count if self.crops_count else None
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {part: getattr(self, part).to_dict() for part in self.PARTS}
        out.update(crops_sum=self.crops_sum, crops_count=self.crops_count)
        return out

    @classmethod
    def from_dict(cls, d: Any, relative_accuracy: float) -> ConfigLive:
        if not isinstance(d, dict):
            raise LiveDataError("config entry is not an object")
        out = cls(relative_accuracy)
        try:
            for part in cls.PARTS:
                setattr(out, part, LatencySketch.from_dict(d[part]))
            out.crops_sum = _count(d.get("crops_sum", 0), "crops_sum", 10**15)
            out.crops_count = _count(d.get("crops_count", 0), "crops_count", 10**12)
        except (KeyError, SketchError) as e:
            raise LiveDataError(f"config entry is not valid: {e}") from e
        return out


class LiveWindow:
    """Per-config live latency over the last `window_s` seconds. Time is an argument (tests)."""

    def __init__(self, window_s: float, relative_accuracy: float = 0.01) -> None:
        if not (math.isfinite(window_s) and window_s > 0):
            raise LiveDataError(f"window_s={window_s!r} is not valid; expected seconds > 0")
        self.window_s, self.relative_accuracy = window_s, relative_accuracy
        self.bucket_s = window_s / BUCKETS
        self._buckets: list[tuple[int, dict[Knobs, ConfigLive]]] = []  # (bucket index, configs)

    def _bucket(self, now: float) -> dict[Knobs, ConfigLive]:
        index = int(now // self.bucket_s)
        if not self._buckets or self._buckets[-1][0] != index:
            self._buckets.append((index, {}))
        self._buckets = [(i, b) for i, b in self._buckets if i > index - BUCKETS]
        return self._buckets[-1][1]

    def add(self, observations: Iterable[Observation], now: float) -> int:
        bucket = self._bucket(now)
        n = 0
        for o in observations:
            live = bucket.get(o.knobs)
            if live is None:
                live = bucket[o.knobs] = ConfigLive(self.relative_accuracy)
            live.add(o)
            n += 1
        return n

    def start(self, now: float) -> float:
        """Start (same clock as `now`) of the oldest bucket still in the window."""
        self._bucket(now)
        return self._buckets[0][0] * self.bucket_s

    def merged(self, now: float) -> dict[Knobs, ConfigLive]:
        self._bucket(now)  # ages out old buckets
        out: dict[Knobs, ConfigLive] = {}
        for _, configs in self._buckets:
            for k, live in configs.items():
                if k not in out:
                    out[k] = ConfigLive(self.relative_accuracy)
                out[k].merge(live)
        return out

    def reset(self) -> None:
        self._buckets = []


def snapshot(live: Mapping[Knobs, ConfigLive], *, replica: str, window_s: float, start_unix: float,
             end_unix: float, relative_accuracy: float) -> dict[str, Any]:
    return {
        "format": SNAPSHOT_FORMAT,
        "replica": replica,
        "window_s": window_s,
        "start_unix": start_unix,
        "end_unix": end_unix,
        "relative_accuracy": relative_accuracy,
        "configs": {k.key: v.to_dict() for k, v in sorted(live.items(), key=lambda kv: kv[0].sort_key)},
    }


@dataclass(frozen=True)
class Snapshot:
    replica: str
    window_s: float
    start_unix: float
    end_unix: float
    configs: dict[Knobs, ConfigLive]


def read_snapshot(raw: Any) -> Snapshot:
    """Validate a snapshot dict (from a file); LiveDataError names what is wrong."""
    if not isinstance(raw, dict) or raw.get("format") != SNAPSHOT_FORMAT:
        raise LiveDataError(f"not a live-latency snapshot (format must be {SNAPSHOT_FORMAT!r})")
    try:
        acc = float(raw["relative_accuracy"])
        window_s, start, end = float(raw["window_s"]), float(raw["start_unix"]), float(raw["end_unix"])
        configs_raw = raw["configs"]
        replica = str(raw.get("replica", "?"))[:200]
    except (KeyError, TypeError, ValueError) as e:
        raise LiveDataError(f"snapshot field missing or of the wrong type ({e})") from e
    if not all(math.isfinite(x) for x in (acc, window_s, start, end)) or not 0 < acc < 1:
        raise LiveDataError("snapshot window or accuracy is not finite")
    if not isinstance(configs_raw, dict) or len(configs_raw) > MAX_CONFIGS:
        raise LiveDataError(f"snapshot configs must be an object of at most {MAX_CONFIGS} entries")
    configs: dict[Knobs, ConfigLive] = {}
    for key, entry in configs_raw.items():
        try:
            knobs = knobs_from_key(str(key))
        except (KnobError, ValueError) as e:
            raise LiveDataError(f"snapshot config {str(key)[:60]!r} is not a config key") from e
        configs[knobs] = ConfigLive.from_dict(entry, acc)
    return Snapshot(replica, window_s, start, end, configs)


def merge_snapshots(snapshots: Iterable[Snapshot]) -> dict[Knobs, ConfigLive]:
    out: dict[Knobs, ConfigLive] = {}
    for s in snapshots:
        for k, live in s.configs.items():
            if k not in out:
                out[k] = ConfigLive(live.first_token.relative_accuracy)
            try:
                out[k].merge(live)
            except SketchError as e:
                raise LiveDataError(f"snapshot of {s.replica}: {e}") from e
    return out
