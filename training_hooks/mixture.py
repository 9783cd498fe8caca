"""The pyramid as a mixture at training time: tier or source weights for the shard loader (Octo-style dataset
weights), and the realised mixture the trainer logs. How draws work: docs/trainer.md#mixture."""

from __future__ import annotations

import mmap
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from common import storage
from manifests.shard_format import SampleMeta, scan_samples

MIX_BY = ("tier", "source")
TIERS = range(1, 7)


def mixture_weights(tier_weights: Mapping[Any, float] | None,
                    source_weights: Mapping[str, float] | None) -> tuple[str, dict[Any, float]] | None:
    """(`tier` | `source`, {group: weight}) from the loader settings, or None (mix by clip count). Errors name the
    setting: both given, a tier outside 1..6, a negative or non-numeric weight, all weights zero."""
    if tier_weights and source_weights:
        raise ValueError("loader: give tier_weights or source_weights, not both")
    if not tier_weights and not source_weights:
        return None
    by, raw = ("tier", tier_weights) if tier_weights else ("source", source_weights)
    if not isinstance(raw, Mapping):
        raise ValueError(f"loader.{by}_weights must be a mapping of {by} to weight, got {raw!r}")
    weights: dict[Any, float] = {}
    for key, value in raw.items():
        if by == "tier":
            name = str(key).upper().removeprefix("L")
            if not name.isdigit() or int(name) not in TIERS:
                raise ValueError(f"loader.tier_weights: {key!r} is not a pyramid tier (1..6)")
            key = int(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise ValueError(f"loader.{by}_weights[{key!r}] must be a number, got {value!r}")
        if value < 0:
            raise ValueError(f"loader.{by}_weights[{key!r}] is negative ({value}); weights must be >= 0")
        weights[key] = float(value)
    if sum(weights.values()) <= 0:
        raise ValueError(f"loader.{by}_weights are all zero: at least one must be > 0")
    return by, weights


@dataclass(frozen=True)
class Clip:
    """One sample of the split: its shard, WebDataset key, group, and each member's (offset, size) in the tar."""

    shard: int
    key: str
    group: Any
    spans: tuple[tuple[str, int, int], ...]


def group_of(meta: SampleMeta, key: str, by: str) -> Any:
    """A clip's tier (int, −1 when unknown) or source (the item id's `source/` prefix, the project's contract)."""
    if by == "tier":
        return int(meta.tier) if meta.tier is not None else -1
    item_id = str(meta.item_id or key)
    return item_id.split("/")[0]


class MixturePlan:
    """The clips of one split by group, and the draw probabilities of the weighted groups."""

    def __init__(self, shards: Sequence[Path], by: str, weights: Mapping[Any, float], split: str = "train"):
        if by not in MIX_BY:
            raise ValueError(f"mixture by {by!r} is not one of {MIX_BY}")
        # local shards are memory-mapped; shards in a bucket (s3://...) are read a clip per ranged GET
        self.by, self.shards = by, [p if storage.is_url(p) else Path(p) for p in shards]
        self.clips: dict[Any, list[Clip]] = {}
        for i, path in enumerate(self.shards):
            for key, meta, spans in scan_samples(path):
                group = group_of(meta, key, by)
                self.clips.setdefault(group, []).append(Clip(i, key, group, spans))
        unknown = [g for g in weights if g not in self.clips]
        if unknown:
            raise ValueError(f"loader.{by}_weights name {by}(s) {', '.join(map(repr, unknown))} with no clips in "
                             f"the {split} split ({by}s there: {', '.join(map(str, sorted(self.clips, key=str)))})")
        self.groups = [g for g in sorted(weights, key=str) if weights[g] > 0]
        total = sum(weights[g] for g in self.groups)
        self.probs = np.array([weights[g] / total for g in self.groups])
        self.left_out = sorted((g for g in self.clips if g not in self.groups), key=str)

    def describe(self) -> dict[str, Any]:
        """What the log prints: the weights as shares, the clips per group, and what mixing by count would give."""
        n = {g: len(c) for g, c in self.clips.items()}
        total = sum(n.values())
        return {"by": self.by, "weights": {str(g): round(float(p), 4) for g, p in zip(self.groups, self.probs)},
                "clips": {str(g): n[g] for g in sorted(n, key=str)},
                "by_count": {str(g): round(n[g] / total, 4) for g in sorted(n, key=str)},
                "left_out": [str(g) for g in self.left_out]}

    def share(self, group: Any, seed: int, epoch: int, me: int, consumers: int) -> list[Clip]:
        """Consumer `me`'s clips of `group`: every n-th of a (seed, epoch) shuffle, or all when there are fewer."""
        clips = self.clips[group]
        order = np.random.default_rng([seed, epoch, self.groups.index(group)]).permutation(len(clips))
        mine = order[me::consumers] if len(clips) >= consumers else order
        return [clips[i] for i in mine]


def read_clip(clip: Clip, views: dict[int, memoryview], paths: Sequence[Path | str]) -> tuple[str, dict[str, memoryview]]:
    """(key, {suffix: view}) of a clip, from its memory-mapped shard (mapped once per consumer, in `views`), or
    for a shard in a bucket from one ranged read of the clip's bytes."""
    path = paths[clip.shard]
    if storage.is_url(path):  # the clip's members are adjacent in the tar: one ranged read for all of them
        start = min(offset for _, offset, _ in clip.spans)
        data = memoryview(storage.read_range(path, start, max(offset + size for _, offset, size in clip.spans)))
        return clip.key, {suffix: data[offset - start:offset - start + size] for suffix, offset, size in clip.spans}
    view = views.get(clip.shard)
    if view is None:
        if not path.is_file():
            raise FileNotFoundError(f"shard file missing: {path}")
        with open(path, "rb") as f:
            view = views[clip.shard] = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
    return clip.key, {suffix: view[offset:offset + size] for suffix, offset, size in clip.spans}


def weighted_stream(plan: MixturePlan, streams: Mapping[Any, Iterator[Any]],
                    rng: np.random.Generator) -> Iterator[Any]:
    """Endless: draw a group by its probability, take the next item of its stream."""
    while True:
        group = plan.groups[int(rng.choice(len(plan.groups), p=plan.probs))]
        yield next(streams[group])


# --- the realised mixture, as the trainer logs it -----------------------------------------------------------------

class MixtureCounter:
    """Windows trained on per tier and per source (the item id's prefix), over a run and since the last log row.
    Kept in checkpoints, so a resumed run keeps counting."""

    def __init__(self, state: Mapping[str, Mapping[str, int]] | None = None):
        state = state or {}
        self.tier = Counter({str(k): int(v) for k, v in (state.get("tier") or {}).items()})
        self.source = Counter({str(k): int(v) for k, v in (state.get("source") or {}).items()})
        self.recent: Counter = Counter()  # tiers since the last `recent_shares`

    def add(self, batch: Mapping[str, Any]) -> None:
        tiers = batch.get("tier")
        if tiers is not None:
            names = [str(int(t)) for t in tiers]
            self.tier.update(names)
            self.recent.update(names)
        ids = batch.get("item_id")
        if ids:
            self.source.update(str(i).split("/")[0] for i in ids)

    def recent_shares(self) -> dict[str, float]:
        """`tier_<k>` columns: each tier's share of the windows since the previous call (empty without tiers)."""
        total = sum(self.recent.values())
        out = {f"tier_{k}": round(self.recent.get(str(k), 0) / total, 4) for k in TIERS} if total else {}
        self.recent.clear()
        return out

    def state(self) -> dict[str, dict[str, int]]:
        return {"tier": dict(sorted(self.tier.items())), "source": dict(sorted(self.source.items()))}

    def summary(self) -> dict[str, Any]:
        """Counts and shares per tier and per source over the run."""
        out: dict[str, Any] = {}
        for name, counts in (("tier", self.tier), ("source", self.source)):
            total = sum(counts.values())
            out[name] = {k: {"windows": n, "share": round(n / total, 4)} for k, n in sorted(counts.items())}
        return out


def format_mixture(summary: Mapping[str, Any]) -> str:
    parts = []
    for name in ("tier", "source"):
        groups = summary.get(name) or {}
        if groups:
            parts.append(f"{name}: " + ", ".join(f"{k} {v['share']:.3f} ({v['windows']})" for k, v in groups.items()))
    return "realised mixture (share of training windows) — " + ("; ".join(parts) or "no tier or item id in batches")
