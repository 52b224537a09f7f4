"""The three inference-time knobs and their canonical order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controller.errors import KnobError

TIERS: tuple[str, ...] = ("low", "medium", "high")
# Crops per image for each resolution tier; vision tokens = (crops + 1) * 144.
TIER_CROP_RANGE: dict[str, tuple[int, int]] = {"low": (1, 3), "medium": (4, 8), "high": (9, 15)}
TOKENS_PER_CROP = 144


def tier_index(tier: str) -> int:
    """Position of a tier in TIERS; raises KnobError naming the accepted values."""
    try:
        return TIERS.index(tier)
    except ValueError:
        raise KnobError("tier", tier, f"one of {', '.join(TIERS)}") from None


def vision_tokens(crops: int) -> int:
    return (crops + 1) * TOKENS_PER_CROP


@dataclass(frozen=True)
class Knobs:
    """One knob configuration. Ordering follows `sort_key` (tier order, then top_k, then blocks)."""

    tier: str
    top_k: int
    num_active_blocks: int

    def __post_init__(self) -> None:
        tier_index(self.tier)
        for name in ("top_k", "num_active_blocks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise KnobError(name, value, "a positive integer")

    @property
    def sort_key(self) -> tuple[int, int, int]:
        return (tier_index(self.tier), self.top_k, self.num_active_blocks)

    @property
    def pair(self) -> tuple[int, int]:
        """(top_k, num_active_blocks): what an engine's decode batch shares (the tier only changes
        the image's prefill), so requests of one pair can join one batch."""
        return (self.top_k, self.num_active_blocks)

    @property
    def key(self) -> str:
        """The reference implementation's "tier_k_n" key, for its table format only."""
        return f"{self.tier}_{self.top_k}_{self.num_active_blocks}"

    def as_dict(self) -> dict[str, Any]:
        return {"tier": self.tier, "top_k": self.top_k, "num_active_blocks": self.num_active_blocks}

    @classmethod
    def from_mapping(cls, data: Any) -> Knobs:
        if not isinstance(data, dict):
            raise KnobError("knobs", data, "an object with tier, top_k and num_active_blocks")
        missing = [k for k in ("tier", "top_k", "num_active_blocks") if k not in data]
        if missing:
            raise KnobError("knobs", data, f"an object that also has {', '.join(missing)}")
        return cls(str(data["tier"]), data["top_k"], data["num_active_blocks"])
