"""Action normalisation for the shard loader: per-dimension maps built from the shard index's train-split stats,
and the choice of the latent-action map per window (one global map, or one per embodiment)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

NORMALISERS = ("q01q99", "meanstd", "none")
LATENT_GROUPINGS = ("global", "embodiment")
Q_CLIP = 1.5  # q01q99 maps q01..q99 to −1..1; values beyond are clipped to ±1.5
# index.json stats key of the per-embodiment latent statistics; an embodiment is the item's source (the item id's
# `source/` prefix), the grouping of the evaluation's per-embodiment baseline
BY_EMBODIMENT = "latent_action_by_embodiment"


@dataclass(frozen=True)
class Normaliser:
    """x → clip((x − offset) · scale); per dimension."""

    offset: np.ndarray
    scale: np.ndarray
    clip: float | None

    @classmethod
    def from_stats(cls, stats: Mapping[str, Sequence[float]], how: str, what: str) -> Normaliser | None:
        if how == "none":
            return None
        need = ("q01", "q99") if how == "q01q99" else ("mean", "std")
        if any(k not in stats for k in need):
            raise KeyError(f"index stats for {what} lack {need} (normalise: {how}); rebuild the shards or use 'none'")
        if how == "q01q99":
            lo, hi = np.asarray(stats["q01"], np.float32), np.asarray(stats["q99"], np.float32)
            span = hi - lo
            # a dimension that never moves (q01 == q99) maps to 0 instead of dividing by zero
            scale = np.where(span > 1e-8, 2.0 / np.maximum(span, 1e-8), 0.0).astype(np.float32)
            return cls((lo + hi) / 2, scale, Q_CLIP)
        mean, std = np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32)
        return cls(mean, np.where(std > 1e-8, 1.0 / np.maximum(std, 1e-8), 1.0).astype(np.float32), None)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = (x - self.offset) * self.scale
        return np.clip(y, -self.clip, self.clip) if self.clip is not None else y


def embodiment_of(item_id: str) -> str:
    """The embodiment a window's latents are normalised by: the item id's source (`source/native_id`)."""
    return str(item_id).split("/")[0]


def no_embodiment_stats(where: str) -> str:
    """Why a shard set cannot be read with `latent_normalise_by: embodiment`, and what to do."""
    return (f"{where} has no per-embodiment latent statistics ({BY_EMBODIMENT}), which "
            "loader.latent_normalise_by: embodiment needs: the set was written before the shard job kept them. "
            "Rebuild it with `pyramid shard` (it re-packs the cached samples), or train with "
            "loader.latent_normalise_by: global")


class LatentNormalisers:
    """The latent-action map of each window: the global one (`by: global`), or its embodiment's (`by: embodiment`,
    from `latent_action_by_embodiment`); an embodiment without train-split stats (a source seen only in val/test)
    falls back to the global map, logged once per embodiment."""

    def __init__(self, stats: Mapping[str, Any], how: str, by: str, where: str = "index.json"):
        if by not in LATENT_GROUPINGS:
            raise ValueError(f"latent_normalise_by {by!r} is not one of {LATENT_GROUPINGS}")
        self.by = by
        self.global_norm = Normaliser.from_stats(stats.get("latent_action", {}), how, "latent_action")
        self.per: dict[str, Normaliser | None] = {}
        self._warned: set[str] = set()
        if how == "none" or by == "global":
            return
        if BY_EMBODIMENT not in stats:
            raise ValueError(no_embodiment_stats(where))
        self.per = {name: Normaliser.from_stats(s, how, f"{BY_EMBODIMENT}/{name}")
                    for name, s in stats[BY_EMBODIMENT].items()}

    def __call__(self, item_id: str) -> Normaliser | None:
        if self.by == "global" or not self.per:
            return self.global_norm
        name = embodiment_of(item_id)
        norm = self.per.get(name)
        if norm is None:
            if name not in self._warned:
                self._warned.add(name)
                log.warning("loader: no train-split latent stats for embodiment %r (have %s): its windows use the "
                            "global statistics", name, sorted(self.per))
            return self.global_norm
        return norm
