"""A streaming latency sketch: DDSketch (the maintained `ddsketch` library, relative-error quantiles,
mergeable across replicas) plus exact count, sum, sum of squares, min and max, with a JSON form.

ddsketch comes with the `serve` extra; importing this module without it names the extra.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

from controller.errors import SketchError
from controller.optional import require

# Bounds for values read back from files: a hostile or corrupt snapshot must not allocate without
# limit (a DenseStore spans every key between its lowest and highest bin).
MAX_SKETCH_BYTES = 256 * 1024
MAX_BIN_KEY = 20_000  # gamma 1.02: key 20000 is ~1e172 ms, far above anything real
MAX_VALUE = 1e7  # ms; observations above are refused before they reach a sketch


def _dd() -> Any:
    return require("ddsketch", "serve")


class LatencySketch:
    __slots__ = ("relative_accuracy", "sketch", "count", "total", "total_sq", "low", "high")

    def __init__(self, relative_accuracy: float = 0.01) -> None:
        if not 0 < relative_accuracy < 1:
            raise SketchError(f"relative_accuracy={relative_accuracy!r} is not valid; expected a number in (0, 1)")
        self.relative_accuracy = relative_accuracy
        self.sketch = _dd().DDSketch(relative_accuracy)
        self.count = 0
        self.total = 0.0
        self.total_sq = 0.0
        self.low = math.inf
        self.high = -math.inf

    def add(self, value: float) -> None:
        """Adds a finite value in [0, MAX_VALUE]; anything else raises SketchError."""
        if not (isinstance(value, (int, float)) and not isinstance(value, bool)) or not 0 <= value <= MAX_VALUE:
            raise SketchError(f"value {value!r} is not valid; expected a finite number of ms in [0, {MAX_VALUE:g}]")
        v = float(value)
        self.sketch.add(v)
        self.count += 1
        self.total += v
        self.total_sq += v * v
        self.low = min(self.low, v)
        self.high = max(self.high, v)

    def merge(self, other: LatencySketch) -> None:
        if other.count == 0:
            return
        if other.relative_accuracy != self.relative_accuracy:
            raise SketchError(
                f"cannot merge sketches of relative accuracy {other.relative_accuracy} and {self.relative_accuracy}"
            )
        self.sketch.merge(other.sketch)
        self.count += other.count
        self.total += other.total
        self.total_sq += other.total_sq
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)

    # -- statistics ---------------------------------------------------------------------------

    def quantile(self, q: float) -> float | None:
        if self.count == 0:
            return None
        value = self.sketch.get_quantile_value(q)
        # The sketch's value is within relative_accuracy; keep it inside the exact range seen.
        return None if value is None else float(min(max(value, self.low), self.high))

    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def std(self) -> float | None:
        if not self.count:
            return None
        m = self.total / self.count
        return math.sqrt(max(0.0, self.total_sq / self.count - m * m))

    def summary(self, quantiles: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99)) -> dict[str, Any]:
        out: dict[str, Any] = {"count": self.count, "mean": self.mean(), "std": self.std(),
                               "min": self.low if self.count else None, "max": self.high if self.count else None}
        out.update({f"p{round(q * 100):d}": self.quantile(q) for q in quantiles})
        return out

    # -- JSON form ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        proto = require("ddsketch.pb.proto", "serve").DDSketchProto.to_proto(self.sketch)
        return {
            "relative_accuracy": self.relative_accuracy,
            "count": self.count,
            "sum": self.total,
            "sum_sq": self.total_sq,
            "min": self.low if self.count else None,
            "max": self.high if self.count else None,
            "ddsketch_b64": base64.b64encode(proto.SerializeToString()).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, d: Any) -> LatencySketch:
        if not isinstance(d, dict):
            raise SketchError(f"sketch is a {type(d).__name__}, expected an object")
        try:
            out = cls(float(d["relative_accuracy"]))
            count, total, total_sq = int(d["count"]), float(d["sum"]), float(d["sum_sq"])
            blob = str(d["ddsketch_b64"])
        except (KeyError, TypeError, ValueError) as e:
            raise SketchError(f"sketch fields missing or of the wrong type ({e})") from e
        if not 0 <= count <= 10**12 or not all(math.isfinite(x) and x >= 0 for x in (total, total_sq)):
            raise SketchError(f"sketch count/sum out of range (count={count}, sum={total})")
        if len(blob) > MAX_SKETCH_BYTES * 4 // 3 + 4:
            raise SketchError(f"sketch is larger than {MAX_SKETCH_BYTES} bytes")
        if count:
            lo, hi = d.get("min"), d.get("max")
            if not all(isinstance(x, (int, float)) and math.isfinite(x) and 0 <= x <= MAX_VALUE for x in (lo, hi)):
                raise SketchError(f"sketch min/max out of range ({lo}, {hi})")
            out.low, out.high = float(lo), float(hi)  # type: ignore[arg-type]  # checked just above
        out.count, out.total, out.total_sq = count, total, total_sq
        out.sketch = _from_proto_bytes(blob, out.relative_accuracy)
        return out


def _from_proto_bytes(blob: str, relative_accuracy: float) -> Any:
    pb = require("ddsketch.pb.ddsketch_pb2", "serve")
    proto_mod = require("ddsketch.pb.proto", "serve")
    try:
        raw = base64.b64decode(blob, validate=True)
        msg = pb.DDSketch()
        msg.ParseFromString(raw)
    except (binascii.Error, ValueError, Exception) as e:  # protobuf raises its own DecodeError
        raise SketchError(f"sketch bytes are not a DDSketch ({type(e).__name__})") from e
    for store in (msg.positiveValues, msg.negativeValues):
        keys = list(store.binCounts.keys())
        if store.contiguousBinCounts:
            keys += [store.contiguousBinIndexOffset, store.contiguousBinIndexOffset + len(store.contiguousBinCounts)]
        if any(abs(k) > MAX_BIN_KEY for k in keys):
            raise SketchError("sketch bins are out of range")
    sketch = proto_mod.DDSketchProto.from_proto(msg)
    if not math.isclose(sketch._relative_accuracy, relative_accuracy, rel_tol=1e-6):
        raise SketchError("sketch bytes were made with another relative accuracy than the file says")
    return sketch
