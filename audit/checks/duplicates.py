"""Duplicates: the same clip twice, byte for byte (`exact_pairs`) or near enough (`near_pairs`), reported as sets of
which all but one (`keeper`) fail."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import numpy as np

from audit.context import AuditContext
from audit.registry import Outcome, check

SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
Pair = tuple[str, str, str]  # (item a, item b, why they match)


def connected_sets(pairs: Iterable[Pair]) -> list[list[str]]:
    """Union of linked pairs → sorted member lists (each set listed once, ordered by its first member)."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, _ in pairs:
        parent[root(a)] = root(b)
    sets: dict[str, list[str]] = defaultdict(list)
    for x in list(parent):
        sets[root(x)].append(x)
    return sorted(sorted(s) for s in sets.values())


def keeper(ctx: AuditContext, members: list[str]) -> str:
    """The member a set keeps: the one in the earliest split (train, val, test), then the smallest id."""
    return min(members, key=lambda i: (SPLIT_ORDER.get(ctx.items_by_id[i]["split"], 9), i))


def _window_key(row: dict) -> tuple | None:
    if not row["input_blake2b"]:
        return None
    fragment = (row["media_uris"] or [""])[0].partition("#")[2]  # an episode inside a shared file
    return row["input_blake2b"], row["start_s"], row["frame_count"], fragment


def _pixel_key(ctx: AuditContext, row: dict) -> str | None:
    facts = ctx.decoded.get(row["item_id"])
    return facts.pixel_hash if facts else None


def exact_pairs(ctx: AuditContext) -> list[Pair]:
    """Exact copies: the same input bytes over the same window (`items.input_blake2b`), or the same decoded pixels
    at the same sampled positions (which also catches a renamed or remuxed copy). Clips of one group may overlap,
    but an identical window twice is still an exact copy."""
    def compute() -> list[Pair]:
        reasons: dict[tuple[str, str], list[str]] = defaultdict(list)
        for label, key_of in (("same input bytes and window", _window_key),
                              ("same decoded frames", lambda r: _pixel_key(ctx, r))):
            first: dict[tuple | str, str] = {}
            for row in ctx.items:
                key = key_of(row)
                if key is None:
                    continue
                if key in first:
                    reasons[(first[key], row["item_id"])].append(label)
                else:
                    first[key] = row["item_id"]
        return [(a, b, " and ".join(why)) for (a, b), why in sorted(reasons.items())]

    return ctx.memo("exact_pairs", compute)


def hash_distances(hashes: np.ndarray, block: int = 64) -> np.ndarray:
    """bool [n, frames, bits] → [n, n] mean share of differing bits over aligned frames (popcount on packed bits)."""
    n, frames, bits = hashes.shape
    packed = np.packbits(hashes.reshape(n, frames * bits), axis=1).view(np.uint8)
    out = np.empty((n, n), np.float32)
    for start in range(0, n, block):
        diff = np.bitwise_count(packed[start : start + block, None, :] ^ packed[None, :, :]).sum(axis=2)
        out[start : start + block] = diff / (frames * bits)
    return out


def action_distance(a: np.ndarray, b: np.ndarray, points: int = 32) -> float:
    """Mean |a − b| in units of each dim's spread, both resampled to `points` steps along relative time
    (inf when their dims differ)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        return float("inf")
    t = np.linspace(0, 1, points)

    def resample(x: np.ndarray) -> np.ndarray:
        s = np.linspace(0, 1, len(x))
        return np.stack([np.interp(t, s, x[:, d]) for d in range(x.shape[1])], 1)

    ra, rb = resample(a), resample(b)
    scale = np.maximum(np.concatenate([ra, rb]).std(0), 1e-3)
    return float(np.mean(np.abs(ra - rb) / scale))


def near_pairs(ctx: AuditContext) -> list[Pair]:
    """Near-duplicate pairs among the items left after exact deduplication (one item per exact set).

    The sampled frames' dHashes agree (mean share of differing bits over aligned frames at most
    `near_dup_hash_bits`): robust to re-encoding, brightness and rescaling. Clips of one group (one source video or
    episode) may overlap, so they are never near-duplicates of each other. Simulated robot episodes of one task seen
    from one fixed camera look alike by design, so where both items have actions, the actions must agree too (a copy
    carries its labels along; another demonstration does not).
    """

    def compute() -> list[Pair]:
        s = ctx.settings
        copies = {m for members in connected_sets(exact_pairs(ctx)) for m in members if m != keeper(ctx, members)}
        by_length: dict[int, list[str]] = defaultdict(list)  # only equally many sampled frames align
        for item_id, facts in ctx.decoded.items():
            if item_id not in copies:
                by_length[len(facts.indices)].append(item_id)
        pairs: list[Pair] = []
        for ids in by_length.values():
            dist = hash_distances(np.stack([ctx.decoded[i].dhash for i in ids]))
            for i, j in zip(*np.nonzero(np.triu(dist <= s.near_dup_hash_bits, k=1))):
                a, b = ids[i], ids[j]
                ra, rb = ctx.items_by_id[a], ctx.items_by_id[b]
                if ra["group_id"] == rb["group_id"]:
                    continue
                why = f"{dist[i, j]:.1%} of dHash bits differ"
                acts_a, acts_b = ctx.actions.get(a), ctx.actions.get(b)
                if isinstance(acts_a, np.ndarray) and isinstance(acts_b, np.ndarray):
                    d = action_distance(acts_a, acts_b)
                    if d > s.near_dup_action_distance:
                        continue
                    why += f", actions agree ({d:.3f})"
                pairs.append((a, b, why))
        return sorted(pairs)

    return ctx.memo("near_pairs", compute)


def report_sets(ctx: AuditContext, pairs: list[Pair], out: Outcome, what: str) -> Outcome:
    """Fail every member of every set but its keeper; list the sets with the reason each link was made."""
    why = {frozenset(p[:2]): p[2] for p in pairs}
    for members in connected_sets(pairs):
        keep = keeper(ctx, members)
        out.sets.append(members)
        for m in members:
            if m == keep:
                continue
            if frozenset((m, keep)) in why:
                out.fail(m, f"{what} of {keep} ({why[frozenset((m, keep))]})")
            else:  # linked to the keeper through other members
                other, link = next((next(iter(k - {m})), w) for k, w in why.items() if m in k)
                out.fail(m, f"{what} of {keep}, through {other} ({link})")
    return out


@check("exact_duplicates", "duplicates", "warning",
       "Sets of items with the same content: the same input bytes over the same window, or the same decoded "
       "frames. All but one per set (the earliest split, then the smallest id) fail.")
def exact_duplicates(ctx: AuditContext) -> Outcome:
    return report_sets(ctx, exact_pairs(ctx), Outcome(checked=[r["item_id"] for r in ctx.items]), "exact copy")


@check("near_duplicates", "duplicates", "warning",
       "Sets of items from different groups whose sampled frames look the same (dHash over aligned frames; a "
       "re-encoded, rescaled or brightened copy) and, for items with actions, whose actions agree too.")
def near_duplicates(ctx: AuditContext) -> Outcome:
    return report_sets(ctx, near_pairs(ctx), Outcome(checked=list(ctx.decoded)), "near-duplicate")
