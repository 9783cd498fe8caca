"""Task-agnostic robot data as AnyPos/ATARA publish it (tier L4): one item per episode video with its joint positions.
Layout, views and quirks: docs/formats.md#anypos."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from sources.media import check_finite, file_checksum, fingerprint, probe_video
from sources.base import ACTION_OPTIONS, Item, ItemRef, SourceAdapter, SourceError, action_meaning, read_json
from common.errors import BadInput

CAMERAS = ("head", "left_wrist", "right_wrist")
ALOHA_NAMES = ([f"left_arm_{i}" for i in range(6)] + ["left_gripper"]
               + [f"right_arm_{i}" for i in range(6)] + ["right_gripper"])
CAPTION_KEYS = ("caption", "instruction", "language", "task", "description")
_EPISODE = re.compile(r"^episode_(?P<index>\d+)(?P<kind>_qpos\.pt|\.mp4)$")


def view_boxes(width: int, height: int) -> dict[str, tuple[int, int, int, int]]:
    """(x, y, w, h) of each view in a stacked frame: head on the top 2/3, wrists side by side on the bottom 1/3."""
    if height % 3 or width % 2:
        raise BadInput(f"a {width}x{height} frame cannot be split into AnyPos views (head on the top 2/3 of the "
                       "height, two wrists side by side below: height must be a multiple of 3, width even)")
    head_h, wrist_w = 2 * height // 3, width // 2
    return {"head": (0, 0, width, head_h), "left_wrist": (0, head_h, wrist_w, height - head_h),
            "right_wrist": (wrist_w, head_h, width - wrist_w, height - head_h)}


def load_qpos(path: Path) -> np.ndarray:
    """float64 [T, D] from an `episode_<i>_qpos.pt` (tensors only: `weights_only=True` refuses other pickles)."""
    import pickle

    import torch

    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BadInput(f"missing qpos file {path.parent.name}/{path.name}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise BadInput(f"{path.parent.name}/{path.name} is not a plain tensor file (weights_only load refused or "
                       f"failed: {str(e).splitlines()[0][:160]})") from None
    if not isinstance(value, torch.Tensor) or value.ndim != 2 or not value.dtype.is_floating_point:
        what = (f"a {value.dtype} tensor of shape {list(value.shape)}" if isinstance(value, torch.Tensor)
                else type(value).__name__)
        raise BadInput(f"{path.parent.name}/{path.name} holds {what}, expected a float tensor [T, D]")
    return value.detach().to(torch.float64).numpy()


class AnyPosSource(SourceAdapter):
    name = "anypos"
    default_tier = 4
    OPTIONS = frozenset({"action_names", "embodiment", "licence"}) | ACTION_OPTIONS

    def __init__(self, root, tier=None, **options):
        super().__init__(root, tier, **options)
        if not any(_EPISODE.match(p.name) for p in self.root.glob("*/episode_*")):
            raise SourceError(f"anypos: no <task>/episode_<i>.mp4 or episode_<i>_qpos.pt under {self.root} "
                              "(the AnyPos/ATARA layout)")

    def discover(self) -> Iterator[ItemRef]:
        for task_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            episodes: dict[int, dict[str, Path]] = {}
            for p in task_dir.glob("episode_*"):
                m = _EPISODE.match(p.name)
                if m:
                    episodes.setdefault(int(m["index"]), {})["qpos" if m["kind"] == "_qpos.pt" else "video"] = p
            caption, caption_file = self._caption(task_dir.name)
            for index, files in sorted(episodes.items()):
                video = files.get("video", task_dir / f"episode_{index}.mp4")
                qpos = files.get("qpos", task_dir / f"episode_{index}_qpos.pt")
                native = f"{task_dir.name}/episode_{index}"
                details = {"task": task_dir.name, "episode": index, "qpos": str(qpos), "caption": caption,
                           "caption_file": caption_file}
                yield ItemRef(self.item_id(native), native, str(video),
                              fingerprint([video, qpos] + ([self.root / caption_file] if caption_file else [])),
                              details)

    def _caption(self, task: str) -> tuple[list[str], str | None]:
        """The task's caption from `<task>.json` (beside the task folder, or inside it), and which file said so."""
        for rel in (f"{task}.json", f"{task}/{task}.json"):
            path = self.root / rel
            if not path.exists():
                continue
            meta = read_json(path, "anypos", rel)
            if isinstance(meta, str):
                return ([meta.strip()] if meta.strip() else []), rel
            if isinstance(meta, dict):
                for key in CAPTION_KEYS:
                    if isinstance(meta.get(key), str) and meta[key].strip():
                        return [meta[key].strip()], rel
            return [], rel
        return [], None

    def probe(self, ref: ItemRef) -> Item:
        d = ref.details
        video, qpos_path = Path(ref.input_uri), Path(d["qpos"])
        if not video.exists():
            raise BadInput(f"qpos file {d['task']}/{qpos_path.name} has no video {d['task']}/{video.name}")
        if not qpos_path.exists():
            raise BadInput(f"video {d['task']}/{video.name} has no qpos file {d['task']}/{qpos_path.name}")
        info = probe_video(video)  # BadInput for empty, truncated or undecodable files
        qpos = load_qpos(qpos_path)
        if len(qpos) != info.frame_count:
            raise BadInput(f"{d['task']}/{qpos_path.name} has {len(qpos)} rows, {d['task']}/{video.name} holds "
                           f"{info.frame_count} frames")
        check_finite(f"qpos of {ref.native_id}", qpos)
        boxes = view_boxes(info.width, info.height)
        dim = qpos.shape[1]
        names = self.options.get("action_names") or (ALOHA_NAMES if dim == 14 else [f"qpos_{i}" for i in range(dim)])
        if len(names) != dim:
            raise SourceError(f"anypos: action_names has {len(names)} names for {dim} qpos dims")
        spec = [f"absolute:{'gripper' if 'gripper' in n else 'joint'}" for n in names]
        try:
            semantics, timing, came_from = action_meaning(self.options, names, spec, "at", "anypos")
        except SourceError as e:
            raise BadInput(str(e)) from None
        head = boxes["head"]
        return self.item(
            ref,
            media_uris=[f"{video}#crop={','.join(str(v) for v in boxes[c])}" for c in CAMERAS],
            cameras=list(CAMERAS),
            fps=info.fps,
            frame_count=info.frame_count,
            width=head[2],
            height=head[3],
            embodiment=str(self.options.get("embodiment") or "unknown"),
            action_names=list(names),
            action_semantics=semantics,
            action_timing=timing,
            state_names=list(names),
            language=list(d["caption"]),
            licence=str(self.options.get("licence") or "unknown (see the dataset card)"),
            input_blake2b=file_checksum(video),
            input_bytes=video.stat().st_size + qpos_path.stat().st_size,
            extras={
                "task": d["task"], "episode": d["episode"], "qpos_file": f"{d['task']}/{qpos_path.name}",
                "caption_file": d["caption_file"], "stacked_size": [info.width, info.height], "views": boxes,
                "codec": info.codec, "action_semantics_source": came_from or "layout",
                "names_source": ("option" if self.options.get("action_names") else
                                 "assumed ALOHA/AgileX order" if dim == 14 else "index"),
            },
        )

    @classmethod
    def load_actions(cls, row: dict[str, Any]) -> np.ndarray:
        extras = json.loads(row.get("extras") or "{}")
        if not extras.get("qpos_file"):
            raise BadInput(f"item {row['item_id']} has no qpos file in its extras")
        path = Path(row["input_uri"]).parent.parent / extras["qpos_file"]
        qpos = load_qpos(path)
        if row.get("frame_count") is not None and len(qpos) != int(row["frame_count"]):
            raise BadInput(f"{extras['qpos_file']} has {len(qpos)} rows, the item has {row['frame_count']} frames")
        check_finite(f"qpos of {row['item_id']}", qpos)
        return qpos
