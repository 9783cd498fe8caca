"""Export a registered shard set as LeRobot v3.0 datasets, written by lerobot's own writer, one per embodiment, frame
rate and action presence. Layout and latent rule: docs/formats.md#export-lerobot."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from common import storage
from manifests.io import atomic_write_text
from common.storage import sha256_file
from manifests.shard_format import SampleMeta, index_path, read_index, read_sample_metas, read_samples, set_root
from pipelines.export import DEFAULT_CAPTION, caption_for, local_out

LEROBOT_EXPORT_FORMAT = "motus-pyramid/lerobot-export/v1"
CAMERA = "observation.images.main"
ACTION = "action"
LATENT = "action.latent"  # an ACTION-type feature for lerobot's policies, beside the real `action`
LATENT_RULE = "frame t carries latent row t (the motion starting at frame t); the last frame of an episode carries zeros"


@dataclass
class LeRobotGroup:
    """One LeRobot dataset of the export: the clips that share an embodiment, a frame rate and an action schema."""

    name: str
    embodiment: str
    fps: int
    frame_size: tuple[int, int]
    action_dim: int
    action_names: list[str]
    action_semantics: list[str]
    action_timing: str
    latent_dim: int
    item_ids: list[str] = field(default_factory=list)
    source_fps: set[float] = field(default_factory=set)
    delta_frames: set[int] = field(default_factory=set)
    frames: int = 0

    def features(self) -> dict[str, dict]:
        h, w = self.frame_size
        feats = {CAMERA: {"dtype": "video", "shape": (h, w, 3), "names": ["height", "width", "channels"]},
                 LATENT: {"dtype": "float32", "shape": (self.latent_dim,),
                          "names": [f"latent_{i}" for i in range(self.latent_dim)]}}
        if self.action_dim:
            names = self.action_names if len(self.action_names) == self.action_dim else \
                [f"action_{i}" for i in range(self.action_dim)]
            feats[ACTION] = {"dtype": "float32", "shape": (self.action_dim,), "names": list(names)}
        return feats

    def summary(self) -> dict[str, Any]:
        return {"embodiment": self.embodiment, "fps": self.fps, "source_fps": sorted(self.source_fps),
                "delta_frames": sorted(self.delta_frames), "frame_size": list(self.frame_size),
                "action_dim": self.action_dim, "action_names": self.action_names,
                "action_semantics": self.action_semantics, "action_timing": self.action_timing,
                "latent_feature": LATENT, "latent_rule": LATENT_RULE, "episodes": len(self.item_ids),
                "frames": self.frames, "item_ids": self.item_ids}


@dataclass
class LeRobotExportReport:
    out: Path
    datasets: dict[str, LeRobotGroup]


def dataset_name(meta: SampleMeta) -> str:
    """`<embodiment>-<fps>fps`, with `-noaction` for clips without real actions; only [A-Za-z0-9_-] kept."""
    emb = re.sub(r"[^A-Za-z0-9_-]", "_", str(meta.embodiment or "unknown"))
    return f"{emb}-{lerobot_fps(meta)}fps" + ("" if _has_actions(meta) else "-noaction")


def lerobot_fps(meta: SampleMeta) -> int:
    """LeRobot stores an integer fps; frames are kept as they are (16.67 Hz RoboTwin becomes 17)."""
    return max(1, round(float(meta.fps)))


def _has_actions(meta: SampleMeta) -> bool:
    return bool(meta.has_actions) and int(meta.action_dim or 0) > 0


def plan_groups(shard_root: str | Path, splits: tuple[str, ...] | None = ("train",)) -> dict[str, LeRobotGroup]:
    """Read every sample's JSON (not its video) and group the clips into datasets; a clip whose action schema or
    frame size disagrees with its dataset's is an error, before anything is written."""
    index = read_index(shard_root)
    groups: dict[str, LeRobotGroup] = {}
    for sh in index["shards"]:
        if splits and sh["split"] not in splits:
            continue
        for _, meta in read_sample_metas(storage.join(set_root(shard_root), sh["path"])):
            name = dataset_name(meta)
            dim = int(meta.action_dim or 0) if _has_actions(meta) else 0
            candidate = LeRobotGroup(
                name, str(meta.embodiment or "unknown"), lerobot_fps(meta),
                tuple(int(v) for v in meta.frame_size), dim, list(meta.action_names or []) if dim else [],
                list(meta.action_semantics or []) if dim else [], str(meta.action_timing or "") if dim else "",
                int(meta.latent_dim or 14))
            group = groups.setdefault(name, candidate)
            for attr in ("frame_size", "action_dim", "action_names", "action_semantics", "action_timing", "latent_dim"):
                if getattr(group, attr) != getattr(candidate, attr):
                    raise ValueError(f"LeRobot dataset {name}: {meta.item_id} has {attr} {getattr(candidate, attr)!r}, "
                                     f"{group.item_ids[0]} has {getattr(group, attr)!r}; one dataset holds one schema")
            group.item_ids.append(meta.item_id)
            group.source_fps.add(float(meta.fps))
            group.delta_frames.add(int(meta.delta_frames or 0))
            group.frames += int(meta.n_frames)
    return dict(sorted(groups.items()))


@contextlib.contextmanager
def _lerobot_env() -> Iterator[None]:
    """Offline and quiet: SVT-AV1 prints its configuration per file; lerobot's encoder hands FFmpeg's logging back
    to FFmpeg's own stderr printer (a muxer note per episode), so FFmpeg prints errors only until PyAV's setting is
    put back; `datasets` draws a progress bar per episode."""
    import av.logging
    import datasets

    values = {"HF_HUB_OFFLINE": "1", "SVT_LOG": "1"}
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    level, bars = av.logging.get_level(), not datasets.are_progress_bars_disabled()
    av.logging.set_libav_level(av.logging.ERROR)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        av.logging.set_libav_level(av.logging.INFO)  # FFmpeg's default
        av.logging.set_level(level)
        if bars:
            datasets.enable_progress_bars()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _check_out(out: Path) -> None:
    """A previous LeRobot export is replaced whole; any other non-empty folder is refused, never emptied."""
    if out.exists() and any(out.iterdir()):
        previous = out / "export.json"
        if not previous.exists() or json.loads(previous.read_text()).get("format") != LEROBOT_EXPORT_FORMAT:
            raise FileExistsError(f"{out} is not empty and holds no LeRobot export.json: "
                                  "choose an empty or a previous LeRobot export folder")


def _latent_rows(latent: np.ndarray, n_frames: int) -> np.ndarray:
    """[T−1, 14] → [T, 14]: row t for frame t, zeros for the last frame."""
    rows = np.zeros((n_frames, latent.shape[1]), np.float32)
    rows[:len(latent)] = latent[:n_frames]
    return rows


def export_lerobot(shard_root: str | Path, out: str | Path, splits: tuple[str, ...] | None = ("train",),
                   on_item: Callable[[str], None] | None = None, caption: str = DEFAULT_CAPTION,
                   vcodec: str = "libsvtav1") -> LeRobotExportReport:
    """Write the shards of `splits` (train by default; None: every split) as LeRobot v3.0 datasets under `out`,
    one per `dataset_name`. Clips without language get `caption` (see `export.caption_for`) as their task."""
    out = local_out(out)
    caption_for(None, caption)
    groups = plan_groups(shard_root, splits)
    if not groups:
        raise ValueError(f"no clips of split(s) {', '.join(splits or ())} in {storage.redact(shard_root)}")
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        with _lerobot_env():
            import pipelines  # noqa: F401  the torchvision CPU shim, before lerobot imports torchvision
            from lerobot.datasets.lerobot_dataset import LeRobotDataset

            writers: dict[str, Any] = {}
            index = read_index(shard_root)
            for sh in index["shards"]:
                if splits and sh["split"] not in splits:
                    continue
                for sample in read_samples(storage.join(set_root(shard_root), sh["path"])):
                    group = groups[dataset_name(sample.meta)]
                    if group.name not in writers:
                        writers[group.name] = LeRobotDataset.create(
                            repo_id=f"local/{group.name}", fps=group.fps, root=staging / group.name,
                            robot_type=group.embodiment, features=group.features(), use_videos=True, vcodec=vcodec)
                    _write_episode(writers[group.name], group, sample, caption)
                    if on_item:
                        on_item(sample.meta.item_id)
            for name, ds in writers.items():
                ds.finalize()
                shutil.rmtree(staging / name / "images", ignore_errors=True)  # the writer's emptied frame folder
        index_sha = sha256_file(index_path(shard_root))
        atomic_write_text(staging / "export.json", json.dumps(
            {"format": LEROBOT_EXPORT_FORMAT, "codebase_version": "v3.0", "shard_index_sha256": index_sha,
             "splits": list(splits) if splits else None,
             "datasets": {name: g.summary() for name, g in groups.items()}}, indent=1))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return LeRobotExportReport(out, groups)


def _write_episode(ds: Any, group: LeRobotGroup, sample: Any, caption: str) -> None:
    n = sample.n_frames
    frames = sample.frames(range(n))
    latents = _latent_rows(sample.latent_action.astype(np.float32), n)
    task = sample.lines[0] if sample.lines and sample.lines[0].strip() else caption_for(sample.meta, caption)
    actions = sample.actions.astype(np.float32) if group.action_dim else None
    for t in range(n):
        frame = {CAMERA: frames[t], LATENT: latents[t], "task": task}
        if actions is not None:
            frame[ACTION] = actions[t]
        ds.add_frame(frame)
    ds.save_episode()
