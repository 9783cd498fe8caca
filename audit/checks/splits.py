"""Splits: nothing of val/test may be seen in training — not a clip of the same recording, not a copy, not the
statistics used to normalise."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

from audit.checks.duplicates import SPLIT_ORDER, connected_sets, exact_pairs, near_pairs
from audit.checks.shards import shard_set_folder, shards_by_set
from audit.context import AuditContext
from audit.registry import Outcome, check
from common import storage
from manifests.shard_format import index_path, read_index


@check("group_split_leak", "splits", "error",
       "A group (one source video or episode) has items in more than one split, so clips of one recording are seen "
       "in training and in evaluation.")
def group_split_leak(ctx: AuditContext) -> Outcome:
    splits: dict[str, set[str]] = defaultdict(set)
    for row in ctx.items:
        splits[row["group_id"]].add(row["split"])
    out = Outcome(checked=[r["item_id"] for r in ctx.items])
    for row in ctx.items:
        if len(splits[row["group_id"]]) > 1:
            out.fail(row["item_id"], f"group {row['group_id']} spans {', '.join(sorted(splits[row['group_id']]))}")
    return out


@check("cross_split_duplicates", "splits", "error",
       "Exact or near-duplicates in different splits (leakage, as FiftyOne's leaky-splits check): the copy outside "
       "the earliest split fails.")
def cross_split_duplicates(ctx: AuditContext) -> Outcome:
    pairs = exact_pairs(ctx) + near_pairs(ctx)
    out = Outcome(checked=[r["item_id"] for r in ctx.items])
    for members in connected_sets(pairs):
        split_of = {m: ctx.items_by_id[m]["split"] for m in members}
        if len(set(split_of.values())) < 2:
            continue
        out.sets.append(members)
        first = min(split_of.values(), key=lambda s: SPLIT_ORDER.get(s, 9))
        seen_in = sorted(m for m in members if split_of[m] == first)
        for m in members:
            if split_of[m] != first:
                out.fail(m, f"in {split_of[m]}, but a duplicate ({', '.join(seen_in)}) is in {first}")
    return out


def _recorded_splits(stats: Any, path: str = "stats") -> Iterator[tuple[str, list[str]]]:
    """(where, splits) for every place a stats block records which splits it was computed from."""
    if isinstance(stats, dict):
        for key, value in stats.items():
            if key in ("split", "splits", "computed_from") and isinstance(value, (str, list)):
                yield f"{path}.{key}", [value] if isinstance(value, str) else [str(v) for v in value]
            else:
                yield from _recorded_splits(value, f"{path}.{key}")


def _shard_index_paths(ctx: AuditContext) -> list[Path]:
    folders = {shard_set_folder(rows) for rows in shards_by_set(ctx).values()}
    return sorted((index_path(f) for f in folders if storage.exists(index_path(f))), key=str)


@check("normalisation_from_train", "splits", "error",
       "Normalisation statistics must come from the train split only. Checked where that is recorded: the VAE "
       "checkpoint's action statistics (items per embodiment, against the train items with actions) and any "
       "split named in a shard index's `stats`.")
def normalisation_from_train(ctx: AuditContext) -> Outcome:
    out = Outcome()
    ckpt = ctx.cfg.path(ctx.cfg.vae.output) / "checkpoints" / "last.pt"
    if ckpt.exists():
        import torch

        state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)  # only the stats are read
        train_items: dict[str, int] = defaultdict(int)
        for row in ctx.items:
            if row["split"] == "train" and row["has_actions"] and row["item_id"] in ctx.flow_stats:
                train_items[row["embodiment"]] += 1
        for embodiment, stats in sorted(state.get("action_stats", {}).items()):
            subject = f"vae checkpoint: {embodiment}"
            out.checked.append(subject)
            if stats["n_items"] > train_items[embodiment]:
                out.fail(subject, f"action stats of {ckpt.name} come from {stats['n_items']} items, but only "
                                  f"{train_items[embodiment]} train items of {embodiment} have actions and flow")
    for index in _shard_index_paths(ctx):
        try:
            content = read_index(index, check_files=False)
        except (OSError, ValueError):
            continue  # shard_files reports an unreadable index
        stats, shards = content.get("stats") or {}, content["shards"]
        # a set without train shards (one validation download) has nothing to leak into: its stats come from the
        # splits it has, and say so (pipelines/shard.py train_stats)
        no_train = not any(sh.get("split") == "train" for sh in shards)
        for where, splits in _recorded_splits(stats):
            subject = f"{index}: {where}"
            out.checked.append(subject)
            if set(splits) != {"train"} and not no_train:
                out.fail(subject, f"computed from {', '.join(splits)}")
        counted = (stats.get("latent_action") or {}).get("items")
        if counted is not None:  # the stats say how many clips they cover: as many as the train shards hold
            subject = f"{index}: latent_action items"
            out.checked.append(subject)
            n_train = sum(len(sh.get("item_ids") or []) for sh in shards if sh.get("split") == "train" or no_train)
            if counted != n_train:
                out.fail(subject, f"latent-action stats cover {counted} clips; the {'' if no_train else 'train '}"
                                  f"shards hold {n_train}")
    if not out.checked:
        return Outcome.skipped("no VAE checkpoint, and no shard index records the split of its stats")
    return out
