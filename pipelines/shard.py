"""The shard stage: labelled clips → WebDataset tars per split, deterministic, registered only when complete (a
per-item sample step, then packing). Format and commit protocol: docs/formats.md#shards."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
from rich.console import Console

from catalog import Catalog
from common import storage
from common.column_stats import ColumnStats
from common.fingerprint import fingerprint
from flow_extraction.artifacts import artifact_path
from flow_extraction.frames import iter_frames, native_frame_index
from manifests.actions import row_semantics
from manifests.io import atomic_write
from pipelines.config import PipelineConfig
from pipelines.driver import ItemStage, Manifest, StageReport, run_item_stage
from pipelines.label import read_latents
from common.progress import make_console
from pipelines.stages import BadInput, Resources, Stage
from manifests.shard_format import (INDEX_NAME, SAMPLE_FORMAT, SampleMeta, encode_sample, index_entry, index_path,
                                    read_labels, read_tar, read_index, sample_key, write_index, write_tar)
from manifests.shard_video import encode_jpeg_stream, encode_mp4


# --- step 1: one sample per item ----------------------------------------------------------------------------------

def load_sample_context(encoder: str, encoder_path: str | None, max_tokens: int, threads: int):
    """Per worker: the frozen text encoder (or None)."""
    import torch

    from pipelines.language import load_text_encoder

    torch.set_num_threads(threads)
    return load_text_encoder(encoder, encoder_path, max_tokens)


def _item_actions(row: Mapping[str, Any], actions_path: str | None, n_frames: int, fps: float | None
                  ) -> np.ndarray | None:
    """The item's actions at the stored frames (resampled with the same rule as frames), or None."""
    if not row["has_actions"]:
        return None
    from sources import item_actions

    actions = item_actions({**row, "actions_path": actions_path})
    idx = native_frame_index(np.arange(n_frames), float(row["fps"]), fps)
    if idx[-1] >= len(actions):
        raise BadInput(f"{len(actions)} action rows for {idx[-1] + 1} frames")
    actions = actions[idx]
    if not np.isfinite(actions).all():
        raise BadInput("non-finite values in actions")
    return actions.astype(np.float32)


def build_sample(task: Mapping[str, Any], encoder) -> dict[str, Any]:
    row, s = task["row"], task["settings"]
    latents, latent_meta = read_latents(task["latent_path"])
    frames = (frame for _, frame, _ in iter_frames(row, tuple(s["working_size"]), s["camera"], s["fps"]))
    if s["video_format"] == "jpeg":
        video, offsets = encode_jpeg_stream(frames, s["jpeg_quality"])
        n_frames = len(offsets) - 1
    else:
        video, n_frames = encode_mp4(frames, float(latent_meta["fps"]), s["mp4_crf"])
        offsets = None
    if len(latents) != n_frames - 1:
        raise BadInput(f"{len(latents)} latent rows for {n_frames} frames (expected frames − 1): relabel the item")
    actions = _item_actions(row, task.get("actions_path"), n_frames, s["fps"])
    lines = [line for line in (row.get("language") or []) if line.strip()]
    language = encoder.encode(lines) if (encoder is not None and lines) else []
    meta = SampleMeta(
        item_id=row["item_id"], source=row["source"], tier=int(row["tier"]), split=row["split"],
        group_id=row["group_id"], embodiment=row["embodiment"], fps=float(latent_meta["fps"]),
        n_frames=n_frames, frame_size=list(s["working_size"]), video_format=s["video_format"],
        frame_offsets=offsets, delta_frames=int(latent_meta["delta_frames"]), delta_s=s["delta_s"],
        grid=latent_meta["grid"], flow_backend=latent_meta["flow_backend"],
        vae_checkpoint_blake2b=latent_meta.get("checkpoint_blake2b", latent_meta.get("checkpoint_sha")),
        latent_dim=int(latents.shape[1]),
        action_dim=int(actions.shape[1]) if actions is not None else 0,
        action_names=list(row.get("action_names") or []) if actions is not None else [],
        # what each dim means and whether row t acts after frame t (manifests/actions.py): a trainer that derives
        # the action over a window from actions.npy needs it
        action_semantics=row_semantics(row)[0] if actions is not None else [],
        action_timing=row_semantics(row)[1] if actions is not None else None,
        language_encoder=encoder.name if (encoder is not None and lines) else None,
        language_dim=encoder.dim if (encoder is not None and lines) else None,
    )
    members = encode_sample(meta, video, latents, actions, lines, language)
    path = Path(task["out_path"])
    size, checksum = atomic_write(path, lambda f: write_tar(f, members))
    return {"path": str(path), "bytes": size, "checksum": checksum, "n_frames": n_frames}


# --- step 2: pack -------------------------------------------------------------------------------------------------

def stable_order(item_id: str) -> str:
    return hashlib.blake2b(item_id.encode(), digest_size=8).hexdigest()


def plan_shards(samples: list[dict[str, Any]], target_bytes: float, per_tier: bool) -> list[dict[str, Any]]:
    """Group samples into shards: per split (and tier), in stable-hash order, closing a shard past the target."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for s in samples:
        groups.setdefault((s["split"], s["tier"] if per_tier else None), []).append(s)
    shards = []
    for (split, tier), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        members.sort(key=lambda s: (stable_order(s["item_id"]), s["item_id"]))
        current, size = [], 0
        for s in members:
            if current and size + s["bytes"] > target_bytes:
                shards.append({"split": split, "tier": tier, "samples": current})
                current, size = [], 0
            current.append(s)
            size += s["bytes"]
        if current:
            shards.append({"split": split, "tier": tier, "samples": current})
    counters: dict[tuple, int] = {}
    for sh in shards:
        key = (sh["split"], sh["tier"])
        sh["index"] = counters.get(key, 0)
        counters[key] = sh["index"] + 1
        tier = f"-t{sh['tier']}" if sh["tier"] is not None else ""
        sh["path"] = f"{sh['split']}/pyramid-{sh['split']}{tier}-{sh['index']:06d}.tar"
    return shards


def _stat_rows(samples: list[dict[str, Any]], splits: list[str]
               ) -> Iterator[tuple[SampleMeta, np.ndarray, np.ndarray | None]]:
    """(meta, latent rows, action rows or None) of every sample of `splits`, reading only those members of each tar."""
    for s in samples:
        if s["split"] in splits:
            yield from read_labels(s["path"])


def _source(item_id: str) -> str:
    return str(item_id).split("/")[0]  # the item id contract: `source/native_id`


def train_stats(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Normalisation statistics from the train split only: latent actions (over all items, and per embodiment,
    i.e. per source, the item id's prefix: `latent_action_by_embodiment`), and real actions per embodiment.
    A set without train samples (e.g. one validation download) gets them from the splits it has, so its loader can
    normalise too; `split` lists those splits and `note` says so (the audit accepts that only for a set without
    train shards). Two streaming passes over the sample tars (never the whole corpus in memory)."""
    present = {s["split"] for s in samples}
    splits = ["train"] if "train" in present or not present else sorted(present, key=("train", "val", "test").index)
    latents, by_source, actions = ColumnStats(), {}, {}
    encoders, n_items = set(), 0
    for meta, latent, action in _stat_rows(samples, splits):
        n_items += 1
        latents.add(latent)
        group = by_source.setdefault(_source(meta.item_id), [ColumnStats(), 0])  # [stats, items]
        group[0].add(latent)
        group[1] += 1
        if action is not None and len(action):
            actions.setdefault(meta.embodiment, ColumnStats()).add(action)
        if meta.language_encoder:
            encoders.add((meta.language_encoder, meta.language_dim))
    if len(encoders) > 1:
        raise ValueError(f"samples were embedded with different language encoders {sorted(encoders)}: rebuild them")
    if n_items:
        for meta, latent, action in _stat_rows(samples, splits):
            latents.add_to_histogram(latent)
            by_source[_source(meta.item_id)][0].add_to_histogram(latent)
            if action is not None and len(action):
                actions[meta.embodiment].add_to_histogram(action)
    stats: dict[str, Any] = {"split": "train"} if splits == ["train"] else {
        "split": splits, "note": f"no train shards: statistics from {' and '.join(splits)}"}
    if n_items:  # "items" lets an audit check the stats against the shards' item lists
        stats["latent_action"] = {**latents.describe(), "items": n_items}
        # per source, for loader.latent_normalise_by: embodiment (the global stats stay for older readers)
        stats["latent_action_by_embodiment"] = {src: {**s.describe(), "items": n}
                                                for src, (s, n) in sorted(by_source.items())}
    stats["actions"] = {emb: s.describe() for emb, s in sorted(actions.items())}
    if encoders:
        (name, dim), = encoders
        stats["language"] = {"encoder": name, "dim": dim}
    return stats


def write_shard_set(root: Path | str, shards: list[dict[str, Any]], stats: dict[str, Any], settings: dict[str, Any],
                    run_id: str) -> list[dict[str, Any]]:
    """Write every shard and index.json into a staging folder, then swap it in for `root`. Returns the rows."""
    if storage.is_url(root):
        return _write_remote_set(str(root), shards, stats, settings, run_id)
    staging = root.with_name(f"{root.name}.staging-{run_id}")
    shutil.rmtree(staging, ignore_errors=True)
    rows, entries = [], []
    try:
        for sh in shards:
            path = staging / sh["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            write_tar(path, (m for s in sh["samples"] for m in read_tar(s["path"])))
            entries.append(index_entry(staging, sh["path"], sh["split"], sh["tier"], sh["index"],
                                       [s["item_id"] for s in sh["samples"]]))
            rows.append({**entries[-1], "path": str(root / sh["path"]), "run_id": run_id})
        write_index(staging, entries, stats, settings)
        old = root.with_name(f"{root.name}.old-{run_id}")
        if root.exists():
            root.rename(old)
        staging.rename(root)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return rows


def _write_remote_set(root: str, shards: list[dict[str, Any]], stats: dict[str, Any], settings: dict[str, Any],
                      run_id: str) -> list[dict[str, Any]]:
    """The object-store swap: old index deleted first, each shard built in a local temp file and uploaded as one
    object, the index last, then the objects the new index does not list (the old set's leftovers) deleted."""
    storage.remove(index_path(root))
    rows, entries = [], []
    with tempfile.TemporaryDirectory(prefix="pyramid-shard-") as tmp:
        for sh in shards:
            local = Path(tmp) / sh["path"]
            local.parent.mkdir(parents=True, exist_ok=True)
            write_tar(local, (m for s in sh["samples"] for m in read_tar(s["path"])))
            entries.append(index_entry(tmp, sh["path"], sh["split"], sh["tier"], sh["index"],
                                       [s["item_id"] for s in sh["samples"]]))
            storage.put_file(local, storage.join(root, sh["path"]))
            local.unlink()
            rows.append({**entries[-1], "path": storage.join(root, sh["path"]), "run_id": run_id})
    write_index(root, entries, stats, settings)
    listed = {e["path"] for e in entries} | {INDEX_NAME}
    for rel in storage.list_files(root):
        if rel not in listed:
            storage.remove(storage.join(root, rel))
    return rows


def clean_stale(root: Path | str) -> list[Path]:
    """Remove what a killed run left: staging folders (never registered), and the previous set once the new one
    is in place (a run killed between the two renames gets its previous set back). An object-storage root has
    neither (a killed run's uploads are unlisted objects, replaced or deleted by the next write)."""
    if storage.is_url(root):
        return []
    stale = sorted(root.parent.glob(f"{root.name}.staging-*"))
    for old in sorted(root.parent.glob(f"{root.name}.old-*")):
        if root.exists():
            stale.append(old)
        else:
            old.rename(root)
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


# --- the stage ----------------------------------------------------------------------------------------------------

@dataclass
class ShardReport:
    run_id: str
    stage: StageReport
    root: Path | str  # a str for an object-storage URL
    shards: list[dict[str, Any]] = field(default_factory=list)
    unchanged: bool = False

    def per_split(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for r in self.shards:
            d = out.setdefault(r["split"], {"shards": 0, "samples": 0, "bytes": 0})
            d["shards"] += 1
            d["samples"] += r["n_samples"]
            d["bytes"] += r["bytes"]
        return out


def shard_settings(cfg: PipelineConfig) -> dict[str, Any]:
    sh, fc = cfg.shards, cfg.flow
    # the sample format is a setting: samples built in an older format are rebuilt on the next run
    return {"sample_format": SAMPLE_FORMAT, "working_size": list(fc.working_size), "camera": fc.camera, "fps": fc.fps, "delta_s": fc.delta_s,
            "video_format": sh.video_format, "jpeg_quality": sh.jpeg_quality, "mp4_crf": sh.mp4_crf,
            "language_encoder": sh.language_encoder, "language_encoder_path": sh.language_encoder_path,
            "max_text_tokens": sh.max_text_tokens}


def sample_fingerprint(latent_blake2b: str, row: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    """Everything a sample is made of: the latents, the item's catalog row (language, tier, split, window, input
    checksum, ...) and the shard settings."""
    return fingerprint([latent_blake2b, row, fingerprint(settings)])


def run_shard(cfg: PipelineConfig, catalog: Catalog, runner: Any, force: bool = False, progress: bool = True,
              console: Console | None = None) -> ShardReport:
    console = console or make_console(stderr=True)
    root = cfg.path(cfg.shards.output)
    for p in clean_stale(root):
        console.print(f"[shard] removed {p.name}, left by an interrupted run", highlight=False, markup=False)
    settings = shard_settings(cfg)
    out_root = cfg.artifacts_dir / "samples"
    planned: list[str] = []

    def plan(catalog: Catalog) -> list[dict[str, Any]]:
        static = "" if cfg.shards.include_static else "AND NOT f.is_static"
        items = catalog.sql(
            f"""SELECT i.*, a.path AS latent_path, a.blake2b AS latent_checksum, x.path AS actions_path FROM items i
                JOIN done_items('label') d ON d.item_id = i.item_id
                JOIN artifacts a ON a.item_id = i.item_id AND a.stage = 'label'
                JOIN flow_stats f ON f.item_id = i.item_id
                LEFT JOIN (SELECT a.item_id, a.path FROM artifacts a JOIN done_items('ingest') USING (item_id)
                           WHERE a.stage = 'ingest' AND a.kind = 'actions') x ON x.item_id = i.item_id
                WHERE true {static} ORDER BY i.item_id""").to_pylist()
        keys: dict[str, str] = {}
        for r in items:
            other = keys.setdefault(sample_key(r["item_id"]), r["item_id"])
            if other != r["item_id"]:
                raise ValueError(f"items {other} and {r['item_id']} map to the same shard key {sample_key(other)}")
        tasks = []
        planned[:] = [r["item_id"] for r in items]  # what the shard set packs (packing is global: it holds them)
        for r in items:
            row = {k: v for k, v in r.items() if k not in ("latent_path", "latent_checksum", "actions_path")}
            tasks.append({"item_id": r["item_id"], "input_uri": r["latent_path"], "latent_path": r["latent_path"],
                          "actions_path": r["actions_path"], "row": row, "settings": settings,
                          "out_path": str(artifact_path(out_root, r["item_id"], ".sample.tar")),
                          "input_fingerprint": sample_fingerprint(r["latent_checksum"], row, settings)})
        return tasks

    def pack(catalog: Catalog, run_id: str) -> tuple[list[dict[str, Any]], bool]:
        return pack_shard_set(cfg, catalog, root, settings, planned, run_id, console)

    sh = cfg.shards
    stage = Stage("shard", build_sample,
                  setup=functools.partial(load_sample_context, sh.language_encoder, sh.language_encoder_path,
                                          sh.max_text_tokens, cfg.runner.torch_threads),
                  resources=Resources(num_cpus=1, batch_size=2))
    manifest = Manifest(cfg.manifests_dir / "shards.parquet", "shards", lambda c: c.sql(
        "SELECT path, split, tier, index, n_samples, bytes, sha256, item_ids, run_id FROM shards "
        "WHERE shard_set = ? ORDER BY path", [str(root)]), meta={"root": str(root)})
    run = run_item_stage(ItemStage(stage, plan, cfg.to_dict(), folders=[out_root], artifact_kind="sample", after=pack,
                                   manifest=manifest), catalog, runner, force=force, progress=progress, console=console)
    rows, unchanged = run.after
    return ShardReport(run.run_id, run.report, root, rows, unchanged)


def pack_shard_set(cfg: PipelineConfig, catalog: Catalog, root: Path | str, settings: dict[str, Any],
                   wanted: list[str], run_id: str, console: Console) -> tuple[list[dict[str, Any]], bool]:
    """Step 2: pack the built samples of `wanted` into the shard set at `root`, unless the registered set there
    is already exactly that; returns its rows and whether it was unchanged."""
    samples = catalog.sql(
        """SELECT a.item_id, a.path, a.bytes, a.blake2b AS checksum, i.split, i.tier FROM artifacts a
           JOIN items i USING (item_id) JOIN done_items('shard') USING (item_id)
           WHERE a.stage = 'shard' AND list_contains(?, a.item_id) ORDER BY a.item_id""", [wanted]).to_pylist()
    shards = plan_shards(samples, cfg.shards.target_mb * 1e6, cfg.shards.per_tier)
    set_fp = hashlib.blake2b(json.dumps([settings, [(sh_["path"], [(s["item_id"], s["checksum"])
                             for s in sh_["samples"]]) for sh_ in shards]], sort_keys=True).encode(),
                             digest_size=16).hexdigest()
    settings = {**settings, "set_fingerprint": set_fp, "target_mb": cfg.shards.target_mb,
                "per_tier": cfg.shards.per_tier}
    if _unchanged(root, set_fp, catalog):
        rows = catalog.sql("SELECT * FROM shards WHERE shard_set = ? ORDER BY path", [str(root)]).to_pylist()
        console.print(f"[shard] {len(rows)} shards in {storage.redact(root)} are up to date", highlight=False,
                      markup=False)
        return rows, True
    rows = write_shard_set(root, shards, train_stats(samples), settings, run_id)
    catalog.replace_shard_set(str(root), rows)
    return rows, False


def _unchanged(root: Path | str, set_fp: str, catalog: Catalog) -> bool:
    """The registered set at `root` was built from exactly these samples and settings, and its files are intact."""
    try:
        index = read_index(root, check_files=False)
        if index["settings"].get("set_fingerprint") != set_fp:
            return False
    except (OSError, ValueError, KeyError):
        return False
    # the registered rows must be the ones this index describes: a run killed after swapping a new set in but
    # before registering it leaves the previous set's rows, which this catches (the set is then rewritten)
    listed = {str(storage.join(root, sh["path"])): (sh["sha256"], sh["item_ids"]) for sh in index["shards"]}
    rows = catalog.sql("SELECT path, bytes, sha256, item_ids FROM shards WHERE shard_set = ?", [str(root)]).to_pylist()
    if not rows or {r["path"]: (r["sha256"], list(r["item_ids"])) for r in rows} != listed:
        return False
    if storage.is_url(root):
        sizes = storage.list_files(root)
        return all(sizes.get(sh["path"]) == sh["bytes"] for sh in index["shards"])
    return all(Path(r["path"]).exists() and Path(r["path"]).stat().st_size == r["bytes"] for r in rows)
