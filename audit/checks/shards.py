"""Shards: every registered WebDataset tar is there and is what the catalog says, every labelled item sits in
exactly one shard of its own split, and shard sizes are even.

The shard set is read through the format's owner, manifests/shard_format.py (layout: docs/formats.md); a set in
a bucket (`s3://...`) through common/storage.py.
"""

from __future__ import annotations

import json
import statistics
import tarfile
from collections import Counter, defaultdict
from pathlib import Path

from audit.context import AuditContext
from audit.registry import Outcome, check
from common import storage
from common.storage import sha256_file
from manifests.shard_format import index_path, read_index, read_sample_json

NO_SHARDS = "no shards registered in the catalog (run the shard stage)"


def shards_by_set(ctx: AuditContext) -> dict[str, list[dict]]:
    by_set: dict[str, list[dict]] = defaultdict(list)
    for row in ctx.shards:
        by_set[row["shard_set"]].append(row)
    return dict(by_set)


def shard_set_folder(rows: list[dict]) -> Path | str:
    """The shard set's root: the `shard_set` value when it names a folder (or a bucket URL), else the deepest
    common folder."""
    if storage.is_url(rows[0]["shard_set"]):
        return rows[0]["shard_set"]
    root = Path(rows[0]["shard_set"])
    if root.is_dir():
        return root
    common: list[str] = []
    for parts in zip(*(Path(r["path"]).parent.parts for r in rows)):
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    return Path(*common)


def tar_sample_meta(path: Path) -> list[dict]:
    """Each sample's `<key>.json` in a tar, in tar order; `item_id` filled in when the sample lacks one."""
    metas = []
    for key, meta in read_sample_json(path):
        meta = meta if isinstance(meta, dict) else {}
        metas.append({**meta, "item_id": str(meta.get("item_id", f"<no item_id in {key}.json>"))})
    return metas


def tar_item_ids(path: Path) -> list[str]:
    """Item ids of the samples in a tar, in tar order (from each sample's `<key>.json`)."""
    return [m["item_id"] for m in tar_sample_meta(path)]


def _check_tar(row: dict) -> str | None:
    path = row["path"] if storage.is_url(row["path"]) else Path(row["path"])
    if not storage.exists(path):
        return "file missing"
    size = storage.size(path)
    if size != row["bytes"]:
        return f"{size} bytes {'in the bucket' if storage.is_url(path) else 'on disk'}, {row['bytes']} registered"
    if sha256_file(path) != row["sha256"]:
        return "sha256 differs from the registered one (the file changed after it was written)"
    try:
        ids = tar_item_ids(path)
    except (tarfile.TarError, OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"unreadable tar: {type(e).__name__}: {e}"
    if len(ids) != row["n_samples"]:
        return f"{len(ids)} samples in the tar, {row['n_samples']} registered"
    if ids != list(row["item_ids"]):
        return "the tar's item ids differ from the registered list"
    return None


def _same(path: str | Path) -> str:
    """A shard path in one spelling, to compare index.json's entries with the catalog's rows."""
    return str(path) if storage.is_url(path) else str(Path(path).resolve())


def _check_index(folder: Path | str, rows: list[dict]) -> str | None:
    if not storage.exists(index_path(folder)):
        return "no index.json in the shard set folder"
    try:
        index = read_index(folder, check_files=False)
    except (OSError, json.JSONDecodeError) as e:
        return f"unreadable index.json: {e}"
    except ValueError as e:  # the format or the shards list
        return str(e).removeprefix(f"{index_path(folder)}: ")
    listed = {_same(storage.join(folder, s["path"])): s for s in index.get("shards", [])}
    registered = {_same(r["path"]): r for r in rows}
    problems = [f"{storage.name(p)} registered but not in index.json" for p in sorted(set(registered) - set(listed))]
    problems += [f"{storage.name(p)} in index.json but not registered" for p in sorted(set(listed) - set(registered))]
    for p in sorted(set(listed) & set(registered)):
        if listed[p].get("sha256") != registered[p]["sha256"] or listed[p].get("n_samples") != registered[p]["n_samples"]:
            problems.append(f"{storage.name(p)}: index.json and catalog disagree on sha256 or n_samples")
    return "; ".join(problems[:5]) if problems else None


@check("shard_files", "shards", "error",
       "Every registered shard exists with the registered size and sha256, reads as a tar, and holds the "
       "registered samples in the registered order; the shard set's index.json lists exactly the registered shards.")
def shard_files(ctx: AuditContext) -> Outcome:
    if not ctx.shards:
        return Outcome.skipped(NO_SHARDS)
    out = Outcome()
    for rows in shards_by_set(ctx).values():
        for row in rows:
            out.checked.append(row["path"])
            problem = _check_tar(row)
            if problem:
                out.fail(row["path"], problem)
        folder = shard_set_folder(rows)
        subject = str(index_path(folder))
        out.checked.append(subject)
        problem = _check_index(folder, rows)
        if problem:
            out.fail(subject, problem)
    return out


@check("shard_membership", "shards", "error",
       "Per shard set: every item in a shard is in the catalog, in the shard's split, and in exactly one shard; "
       "every labelled item the motion filter kept is in some shard.")
def shard_membership(ctx: AuditContext) -> Outcome:
    if not ctx.shards:
        return Outcome.skipped(NO_SHARDS)
    out = Outcome()
    labelled = [i for i in ctx.latent_paths if not ctx.flow_stats.get(i, {}).get("is_static")]
    for shard_set, rows in shards_by_set(ctx).items():
        where: dict[str, list[dict]] = defaultdict(list)
        for row in rows:
            for item_id in row["item_ids"]:
                where[item_id].append(row)
        for item_id in sorted(set(where) | set(labelled)):
            if item_id not in out.checked:
                out.checked.append(item_id)
            shards = where.get(item_id, [])
            item = ctx.items_by_id.get(item_id)
            if not shards:
                out.fail(item_id, f"labelled but in no shard of {shard_set}")
            elif item is None:
                out.fail(item_id, f"in {Path(shards[0]['path']).name} but not in the catalog")
            elif len(shards) > 1:
                names = Counter(Path(s["path"]).name for s in shards)
                out.fail(item_id, f"{len(shards)} times in the set: " +
                         ", ".join(f"{n} ×{k}" if k > 1 else n for n, k in sorted(names.items())))
            elif shards[0]["split"] != item["split"]:
                out.fail(item_id, f"in a {shards[0]['split']} shard ({Path(shards[0]['path']).name}) but the item is "
                                  f"in {item['split']}")
    return out


@check("shard_sizes", "shards", "warning",
       "Sample counts and sizes per split: a shard that is not the last of its split (and tier) but holds less "
       "than shard_small_fraction of the median shard size fails (uneven shards skew streaming mixtures).")
def shard_sizes(ctx: AuditContext) -> Outcome:
    if not ctx.shards:
        return Outcome.skipped(NO_SHARDS)
    out = Outcome()
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in ctx.shards:
        groups[(row["shard_set"], row["split"], row["tier"])].append(row)
    summary = []
    for (shard_set, split, tier), rows in sorted(groups.items(), key=lambda kv: str(kv[0])):
        rows = sorted(rows, key=lambda r: r["index"])
        median = statistics.median(r["bytes"] for r in rows)
        summary.append({"shard_set": shard_set, "split": split, "tier": tier, "shards": len(rows),
                        "samples": sum(r["n_samples"] for r in rows), "bytes_min": min(r["bytes"] for r in rows),
                        "bytes_median": median, "bytes_max": max(r["bytes"] for r in rows)})
        for row in rows:
            out.checked.append(row["path"])
            if row is not rows[-1] and row["bytes"] < ctx.settings.shard_small_fraction * median:
                out.fail(row["path"], f"{row['bytes']} bytes, under {ctx.settings.shard_small_fraction:.0%} of the "
                                      f"median {median:.0f} of {split} shards")
    out.stats = {"per_split": summary}
    return out
