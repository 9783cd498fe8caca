"""Training data for the latent-action VAE: flow pairs streamed from per-item artifacts, with alignment targets.
Batches, action statistics, the sampler and frame indices: docs/vae.md#data."""

from __future__ import annotations

import json
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from common.errors import BadInput
from flow_extraction.frames import native_frame_index
from latent_action_vae.config import VAEConfig
from manifests.actions import pair_action, row_semantics
from sources import item_actions

ACTION_WIDTH = 14  # Motus's latent-action width; embodiments with fewer dims are padded and masked


# --- normalisation statistics -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ActionStats:
    """Per-embodiment quantiles of the action change over a flow pair window (train split only)."""

    embodiment: str
    dim: int
    q01: tuple[float, ...]
    q99: tuple[float, ...]
    n_pairs: int
    n_items: int

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "q01": list(self.q01), "q99": list(self.q99)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ActionStats":
        stats = cls(str(data["embodiment"]), int(data["dim"]), tuple(float(v) for v in data["q01"]),
                    tuple(float(v) for v in data["q99"]), int(data["n_pairs"]), int(data["n_items"]))
        if len(stats.q01) != stats.dim or len(stats.q99) != stats.dim:
            raise ValueError(f"action stats of {stats.embodiment}: q01/q99 must have {stats.dim} values")
        return stats


def stats_to_dict(stats: Mapping[str, ActionStats]) -> dict[str, dict[str, Any]]:
    """All embodiments' stats as plain JSON-able data (for checkpoints and eval files)."""
    return {k: s.to_dict() for k, s in sorted(stats.items())}


def stats_from_dict(data: Mapping[str, Mapping[str, Any]]) -> dict[str, ActionStats]:
    return {k: ActionStats.from_dict(v) for k, v in data.items()}


def _as_rows(rows: Any) -> list[dict[str, Any]]:
    """Manifest rows from a pyarrow Table or any iterable of mappings."""
    if hasattr(rows, "to_pylist"):
        rows = rows.to_pylist()
    return [dict(r) for r in rows]


def read_pairs(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """An artifact's pairs and meta without reading its flow (npz members load lazily)."""
    with np.load(path, allow_pickle=False) as z:
        return z["pairs"], json.loads(str(z["meta"]))


def _item_actions(row: Mapping[str, Any]) -> np.ndarray:
    """The item's actions (its action file, `item_actions`), with the item named in every failure (the trainer's
    error must point at the file)."""
    item_id = row["item_id"]
    try:
        actions = item_actions(row)
    except BadInput as e:
        if item_id in str(e):
            raise
        raise BadInput(f"actions of {item_id}: {e}") from e
    if actions.ndim != 2:
        raise ValueError(f"actions of {item_id} have shape {actions.shape}, expected [T, D]")
    expected = int(row.get("action_dim") or 0)
    if expected and actions.shape[1] != expected:
        raise ValueError(f"actions of {item_id} have {actions.shape[1]} dims but the manifest says {expected}")
    if not np.isfinite(actions).all():  # adapters check too; this guards any adapter that forgets
        raise ValueError(f"non-finite actions in {item_id}")
    return actions


def action_changes(row: Mapping[str, Any], pairs: np.ndarray, flow_fps: float) -> np.ndarray:
    """The action over each flow pair (t1, t2) of an item, float64 [N, D], by the item's recorded semantics
    (a[t2] − a[t1] for absolute dims, Σ a[t1:t2] for deltas, ...: `manifests.actions.pair_action`)."""
    actions = _item_actions(row)
    native_fps = float(row["native_fps"])
    idx = native_frame_index(pairs, native_fps, flow_fps)
    semantics, timing = row_semantics(row)
    return pair_action(actions, semantics, idx, native_fps, timing, where=str(row["item_id"]))


def _check_pair_count(row: Mapping[str, Any], n: int, path: Any) -> None:
    if n != int(row["n_pairs"]):
        raise ValueError(f"{row['item_id']}: artifact {path} holds {n} pairs but the manifest says {row['n_pairs']} "
                         "(stale artifact or manifest?)")


def compute_action_stats(rows: Any) -> dict[str, ActionStats]:
    """q01/q99 of the action change per embodiment, from train rows with actions. Any non-train row is an error."""
    rows = _as_rows(rows)
    leaked = [r["item_id"] for r in rows if r["split"] != "train"]
    if leaked:
        raise ValueError(f"compute_action_stats takes train rows only; got {len(leaked)} others, e.g. {leaked[0]} "
                         f"(split {next(r['split'] for r in rows if r['item_id'] == leaked[0])!r})")
    per_embodiment: dict[str, list[np.ndarray]] = {}
    meaning: dict[str, tuple[tuple[list[str], str], str]] = {}
    for row in rows:
        if not row["has_actions"]:
            continue
        # one embodiment's quantiles must pool one kind of number: a delta dim next to an absolute one is not
        sem = row_semantics(row)
        first = meaning.setdefault(row["embodiment"], (sem, row["item_id"]))
        if first[0] != sem:
            raise ValueError(f"embodiment {row['embodiment']}: {row['item_id']} has action semantics {sem[0]} "
                             f"(timing {sem[1]}) but {first[1]} has {first[0][0]} (timing {first[0][1]}); give "
                             "the sources different embodiment names or the same semantics")
        pairs, meta = read_pairs(row["artifact_path"])
        _check_pair_count(row, len(pairs), row["artifact_path"])
        per_embodiment.setdefault(row["embodiment"], []).append(action_changes(row, pairs, meta["fps"]))
    stats = {}
    for emb, chunks in sorted(per_embodiment.items()):
        dims = {c.shape[1] for c in chunks}
        if len(dims) != 1:
            raise ValueError(f"embodiment {emb}: items disagree on action dims {sorted(dims)}")
        deltas = np.concatenate(chunks)
        q01, q99 = np.quantile(deltas, [0.01, 0.99], axis=0)
        stats[emb] = ActionStats(emb, deltas.shape[1], tuple(map(float, q01)), tuple(map(float, q99)),
                                 len(deltas), len(chunks))
    return stats


def normalise_action_change(delta: np.ndarray, stats: ActionStats,
                            width: int = ACTION_WIDTH) -> tuple[np.ndarray, np.ndarray]:
    """[N, D] action changes → (target float32 [N, width] in [−1, 1], mask bool [N, width])."""
    delta = np.asarray(delta, np.float64)
    if stats.dim > width:
        raise ValueError(f"embodiment {stats.embodiment} has {stats.dim} action dims; the latent holds {width}")
    if delta.ndim != 2 or delta.shape[1] != stats.dim:
        raise ValueError(f"embodiment {stats.embodiment}: action changes of shape {delta.shape}, "
                         f"expected [N, {stats.dim}]")
    q01, q99 = np.array(stats.q01), np.array(stats.q99)
    span = q99 - q01
    real = span > 0  # a dim that never changes in train carries no signal: leave it out of the alignment
    scaled = 2.0 * (delta - q01) / np.where(real, span, 1.0) - 1.0
    target = np.zeros((len(delta), width), np.float32)
    target[:, : stats.dim] = np.where(real, np.clip(scaled, -1.0, 1.0), 0.0)
    mask = np.zeros((len(delta), width), bool)
    mask[:, : stats.dim] = real
    return target, mask


# --- the sampler ----------------------------------------------------------------------------------------------
@dataclass
class _Loaded:
    """One item's artifact in memory, with its per-pair alignment targets (zeros/False when unlabelled)."""

    flow: np.ndarray  # float16 [N, 2, h, w]
    valid: np.ndarray  # bool [N, h, w]
    pairs: np.ndarray  # int32 [N, 2]
    action: np.ndarray  # float32 [N, width]
    action_mask: np.ndarray  # bool [N, width]
    frames: np.ndarray | None = None  # uint8 [N, 3, h, w] first frames, when the artifact stores them


@dataclass
class _Part:
    """Items one part of a batch draws from, grouped by tier: tier by weight, item ∝ pairs, pair uniform."""

    tiers: list[int]
    probs: np.ndarray  # [n_tiers]
    members: list[np.ndarray]  # per tier: indices into the sampler's items
    ends: list[np.ndarray]  # per tier: cumulative pair counts of its members

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        tier = rng.choice(len(self.tiers), size=n, p=self.probs)
        u = rng.random(n)
        items, pairs = np.empty(n, np.int64), np.empty(n, np.int64)
        for i, t in enumerate(tier):
            ends = self.ends[t]
            # a uniform pair of the whole tier = an item ∝ its pairs, then a uniform pair of it
            g = min(int(u[i] * ends[-1]), int(ends[-1]) - 1)
            k = int(np.searchsorted(ends, g, side="right"))
            items[i] = self.members[t][k]
            pairs[i] = g - (ends[k - 1] if k else 0)
        return items, pairs


def _tier_weight(weights: Mapping[str, float], tier: int) -> float:
    w = float(weights.get(str(tier), 1.0))
    if not np.isfinite(w) or w < 0:
        raise ValueError(f"vae.tier_weights[{str(tier)!r}] must be a finite number >= 0, got {w}")
    return w


def _make_part(name: str, items: list[dict[str, Any]], members: list[int], weights: Mapping[str, float]) -> _Part:
    by_tier: dict[int, list[int]] = {}
    for i in members:
        by_tier.setdefault(int(items[i]["tier"]), []).append(i)
    tiers = sorted(by_tier)
    w = np.array([_tier_weight(weights, t) for t in tiers])
    if w.sum() <= 0:
        raise ValueError(f"vae.tier_weights give every tier of the {name} items ({tiers}) weight 0")
    idx = [np.array(by_tier[t], np.int64) for t in tiers]
    ends = [np.cumsum([items[i]["n_pairs"] for i in m]).astype(np.int64) for m in idx]
    return _Part(tiers, w / w.sum(), idx, ends)


class PairSampler:
    """Flow pairs of the given manifest rows, as training batches (`batch`) or one ordered pass (`iter_batches`).

    Items are kept in item_id order, so the same rows in any order give the same batches.
    """

    def __init__(self, rows: Any, cfg: VAEConfig, action_stats: Mapping[str, ActionStats], seed: int,
                 cache_items: int = 64):
        if cache_items < 1:
            raise ValueError("cache_items must be >= 1")
        self.cfg, self.seed, self.cache_items = cfg, int(seed), int(cache_items)
        self.width = cfg.latent_dim
        self.action_stats = dict(action_stats)
        for s in self.action_stats.values():  # fail at construction, not at the first labelled draw
            if s.dim > self.width:
                raise ValueError(f"embodiment {s.embodiment} has {s.dim} action dims; the latent holds {self.width}")
        self.items = sorted(_as_rows(rows), key=lambda r: r["item_id"])
        if not self.items:
            raise ValueError("PairSampler needs at least one item")
        dup = [i for i, n in Counter(r["item_id"] for r in self.items).items() if n > 1]
        if dup:
            raise ValueError(f"duplicate item ids in the rows, e.g. {dup[0]}")
        for r in self.items:
            if int(r["n_pairs"] or 0) < 1:
                raise ValueError(f"{r['item_id']}: no flow pairs in the manifest")
        self.labelled = np.array([self._is_labelled(r) for r in self.items])
        # no labelled part when nothing is labelled or the batches take none (its tier weights then never matter)
        self._labelled_part = None
        if self.labelled.any() and cfg.labelled_fraction > 0:
            self._labelled_part = _make_part("labelled", self.items, list(np.flatnonzero(self.labelled)),
                                             cfg.tier_weights)
        self._all_part = _make_part("all", self.items, list(range(len(self.items))), cfg.tier_weights)
        self._cache: OrderedDict[int, _Loaded] = OrderedDict()
        self.loads = 0  # artifacts read so far (cache misses)

    def labelled_count(self, batch_size: int) -> int:
        """Labelled samples per batch: round(B · labelled_fraction) (Python's round), 0 without labelled items."""
        return int(round(batch_size * self.cfg.labelled_fraction)) if self._labelled_part else 0

    def _is_labelled(self, row: Mapping[str, Any]) -> bool:
        return bool(row["has_actions"]) and row["embodiment"] in self.action_stats

    # --- loading ------------------------------------------------------------------------------------------------
    @property
    def cached_item_ids(self) -> list[str]:
        return [self.items[i]["item_id"] for i in self._cache]

    def _get(self, index: int) -> _Loaded:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        loaded = self._load(self.items[index], bool(self.labelled[index]))
        self._cache[index] = loaded
        while len(self._cache) > self.cache_items:
            self._cache.popitem(last=False)
        self.loads += 1
        return loaded

    def _load(self, row: Mapping[str, Any], labelled: bool) -> _Loaded:
        """Read and check one artifact; compute its normalised per-pair action targets once."""
        from flow_extraction.artifacts import read_flow_artifact

        item_id, path = row["item_id"], row["artifact_path"]
        art = read_flow_artifact(path)
        n = len(art.pairs)
        _check_pair_count(row, n, path)
        if art.flow.shape[0] != n or art.valid.shape[0] != n:
            raise ValueError(f"{item_id}: artifact {path} has {art.flow.shape[0]} flow fields, {art.valid.shape[0]} "
                             f"masks and {n} pairs")
        if art.meta.get("item_id", item_id) != item_id:
            raise ValueError(f"{item_id}: artifact {path} belongs to {art.meta['item_id']}")
        if not np.isfinite(art.flow).all():
            raise ValueError(f"non-finite flow in {item_id} ({path})")
        action = np.zeros((n, self.width), np.float32)
        mask = np.zeros((n, self.width), bool)
        if labelled:
            delta = action_changes(row, art.pairs, art.meta["fps"])
            action, mask = normalise_action_change(delta, self.action_stats[row["embodiment"]], self.width)
        return _Loaded(art.flow, art.valid, art.pairs, action, mask, art.frames)

    def _assemble(self, items: np.ndarray, pairs: np.ndarray, labelled: np.ndarray) -> dict[str, Any]:
        """Gather (item, pair) samples into batch tensors, reading each item once per batch."""
        b = len(items)
        flow = valid = first = None
        with_frames = True
        action = np.zeros((b, self.width), np.float32)
        action_mask = np.zeros((b, self.width), bool)
        frames = np.zeros((b, 2), np.int64)
        shape_of = None
        for idx in dict.fromkeys(items.tolist()):  # distinct items in first-seen order
            loaded = self._get(idx)
            if flow is None:
                flow = np.empty((b, *loaded.flow.shape[1:]), np.float32)
                valid = np.empty((b, *loaded.valid.shape[1:]), bool)
                shape_of = self.items[idx]["item_id"]
            elif loaded.flow.shape[1:] != flow.shape[1:]:
                raise ValueError(f"{self.items[idx]['item_id']}: stored flow {loaded.flow.shape[1:]} differs from "
                                 f"{shape_of}'s {flow.shape[1:]} (mixed flow.store_size?)")
            rows = np.flatnonzero(items == idx)
            p = pairs[rows]
            with_frames = with_frames and loaded.frames is not None
            if with_frames:  # a batch carries frames only when every item has them
                if first is None:
                    first = np.empty((b, *loaded.frames.shape[1:]), np.uint8)
                first[rows] = loaded.frames[p]
            flow[rows] = loaded.flow[p]
            valid[rows] = loaded.valid[p]
            frames[rows] = loaded.pairs[p]
            lab = rows[labelled[rows]]
            action[lab] = loaded.action[pairs[lab]]
            action_mask[lab] = loaded.action_mask[pairs[lab]]
        return {
            "flow": torch.from_numpy(flow), "valid": torch.from_numpy(valid), "action": torch.from_numpy(action),
            "action_mask": torch.from_numpy(action_mask), "labelled": torch.from_numpy(labelled.copy()),
            "item_ids": [self.items[i]["item_id"] for i in items.tolist()],
            "embodiments": [self.items[i].get("embodiment") for i in items.tolist()],
            "pair_index": torch.from_numpy(pairs.astype(np.int64)),
            "pair_frames": torch.from_numpy(frames),  # (t1, t2) at the artifact's fps
            "frame": torch.from_numpy(first) if with_frames and first is not None else None,  # uint8 [B,3,h,w]
        }

    # --- training batches -------------------------------------------------------------------------------------
    def indices(self, step: int, batch_size: int | None = None,
                rank: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(item index, pair index, labelled) of each sample of a step's batch: a pure function of (seed, step) and,
        for the other processes of a distributed run, their rank."""
        b = int(batch_size or self.cfg.batch_size)
        n_lab = self.labelled_count(b)
        rng = np.random.default_rng([self.seed, int(step)] + ([int(rank)] if rank else []))
        lab_items, lab_pairs = (self._labelled_part.draw(rng, n_lab) if n_lab
                                else (np.empty(0, np.int64), np.empty(0, np.int64)))
        all_items, all_pairs = self._all_part.draw(rng, b - n_lab)
        labelled = np.r_[np.ones(n_lab, bool), np.zeros(b - n_lab, bool)]
        return np.r_[lab_items, all_items], np.r_[lab_pairs, all_pairs], labelled

    def batch(self, step: int, batch_size: int | None = None, rank: int = 0) -> dict[str, Any]:
        """The training batch of `step` (of process `rank`): labelled samples first, then samples from all items
        (flagged unlabelled)."""
        return self._assemble(*self.indices(step, batch_size, rank))

    # --- one ordered pass -------------------------------------------------------------------------------------
    def iter_batches(self, batch_size: int, max_pairs: int | None = None,
                     labelled_only: bool = False) -> Iterator[dict[str, Any]]:
        """Every pair of every item once, in item order (or `max_pairs` of them spread evenly over all pairs).

        Labelled items' samples carry their targets and labelled=True; `labelled_only` keeps only those items.
        """
        chosen = [i for i in range(len(self.items)) if self.labelled[i] or not labelled_only]
        counts = np.array([int(self.items[i]["n_pairs"]) for i in chosen], np.int64)
        total = int(counts.sum())
        if max_pairs is not None and max_pairs < total:
            # evenly spaced positions in the concatenation of all pairs: each item keeps its share
            picks = (np.arange(max_pairs, dtype=np.int64) * total) // max(max_pairs, 1)
        else:
            picks = np.arange(total, dtype=np.int64)
        starts = np.r_[0, np.cumsum(counts)[:-1]]
        which = np.searchsorted(np.cumsum(counts), picks, side="right")
        items = np.array(chosen, np.int64)[which] if len(chosen) else np.empty(0, np.int64)
        pairs = picks - starts[which] if len(chosen) else np.empty(0, np.int64)
        for lo in range(0, len(picks), batch_size):
            it, pr = items[lo : lo + batch_size], pairs[lo : lo + batch_size]
            yield self._assemble(it, pr, self.labelled[it])

    # --- reporting ----------------------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Items and pairs in total and per split, tier, source and labelled/unlabelled."""
        def count(key) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            for i, r in enumerate(self.items):
                c = out.setdefault(str(key(i, r)), {"items": 0, "pairs": 0})
                c["items"] += 1
                c["pairs"] += int(r["n_pairs"])
            return dict(sorted(out.items()))

        return {
            "items": len(self.items), "pairs": sum(int(r["n_pairs"]) for r in self.items),
            "by_split": count(lambda i, r: r["split"]), "by_tier": count(lambda i, r: r["tier"]),
            "by_source": count(lambda i, r: r["source"]),
            "by_labelled": count(lambda i, r: "labelled" if self.labelled[i] else "unlabelled"),
            "labelled_per_batch": self.labelled_count(self.cfg.batch_size), "batch_size": self.cfg.batch_size,
        }


__all__ = ["ACTION_WIDTH", "ActionStats", "PairSampler", "action_changes", "compute_action_stats",
           "normalise_action_change", "read_pairs", "stats_from_dict", "stats_to_dict"]
