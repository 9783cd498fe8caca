"""Split assignment by a stable hash of `group_id`: every clip of one video or episode lands in the same split,
and the same group gets the same split on every run and every machine."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class SplitRatios:
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    salt: str = "motus-pyramid/v1"  # change it to draw a different (still stable) partition

    def __post_init__(self) -> None:
        parts = (self.train, self.val, self.test)
        if any(p < 0 for p in parts) or abs(sum(parts) - 1.0) > 1e-6:
            raise ValueError(f"split ratios must be >= 0 and sum to 1, got train={self.train} val={self.val} test={self.test}")


def group_fraction(group_id: str, salt: str) -> float:
    """A uniform number in [0, 1) fixed by (salt, group_id)."""
    digest = hashlib.blake2b(f"{salt}\x00{group_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign_split(group_id: str, ratios: SplitRatios = SplitRatios()) -> str:
    x = group_fraction(group_id, ratios.salt)
    if x < ratios.train:
        return "train"
    if x < ratios.train + ratios.val:
        return "val"
    return "test"
