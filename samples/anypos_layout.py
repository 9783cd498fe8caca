"""Task-agnostic episodes in the layout AnyPos/ATARA publish (sources/anypos.py reads it): docs/samples.md#anypos."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import av
import cv2
import numpy as np

from samples.files import atomic_path
from sources.lerobot_video import composite_t_layout

CAPTION = "random joint-space exploration of both arms"


def _frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def write_anypos_episode(task_dir: Path, index: int, head: np.ndarray, left: np.ndarray, right: np.ndarray,
                         qpos: np.ndarray, fps: float) -> Path:
    """One episode: stacked views [T, H*3/2, W, 3] as mp4v and qpos [T, D] as a torch tensor file."""
    import torch

    if not len(head) == len(left) == len(right) == len(qpos):
        raise ValueError(f"episode {index}: {len(head)}/{len(left)}/{len(right)} frames and {len(qpos)} qpos rows")
    if head.shape[1] % 2 or head.shape[2] % 2:
        raise ValueError(f"the main view must have an even size to stack (got {head.shape[1:3]})")
    task_dir.mkdir(parents=True, exist_ok=True)
    video = task_dir / f"episode_{index}.mp4"
    stacked = [composite_t_layout(h, l, r) for h, l, r in zip(head, left, right)]
    height, width = stacked[0].shape[:2]
    with atomic_path(video) as tmp:
        # OpenCV picks the container from the name: keep .mp4 last in the temporary name
        tmp_mp4 = Path(f"{tmp}.mp4")
        try:
            writer = cv2.VideoWriter(str(tmp_mp4), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
            if not writer.isOpened():
                raise RuntimeError("OpenCV cannot write mp4v (FFmpeg backend missing?)")
            for frame in stacked:
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            writer.release()
            os.replace(tmp_mp4, tmp)
        finally:
            tmp_mp4.unlink(missing_ok=True)
    # torch.save names the archive's inner folder after the file it writes: saving to the final name in a scratch
    # folder gives "episode_<i>_qpos/" as AnyPos's own files have, where a temporary name carried the process id
    # (different bytes on every run)
    qpos_path = task_dir / f"episode_{index}_qpos.pt"
    with tempfile.TemporaryDirectory(dir=task_dir, prefix=".qpos.") as scratch:
        tmp = Path(scratch) / qpos_path.name
        torch.save(torch.from_numpy(np.ascontiguousarray(qpos, np.float32)), tmp)
        os.replace(tmp, qpos_path)
    return video


def write_anypos(root: str | os.PathLike, episodes_from: str | os.PathLike, task: str = "random_exploration",
                 caption: str = CAPTION) -> list[Path]:
    """Convert a task-agnostic dataset (our generator's layout, with front + wrist views) into the AnyPos layout
    under `<root>/<task>/`; returns the episode videos."""
    src = Path(episodes_from)
    meta = json.loads((src / "dataset.json").read_text())
    main, *wrists = meta["cameras"]
    if len(wrists) < 2:
        raise ValueError(f"{src} has cameras {meta['cameras']}: the AnyPos layout needs a main view and two wrists")
    out = Path(root)
    written = []
    for i, ep in enumerate(sorted((src / "episodes").glob("episode_*"))):
        if not (ep / f"rgb_{main}.mp4").exists() or not (ep / "joints.npy").exists():
            continue  # not a whole episode (the defects the sample pyramid adds)
        views = [_frames(ep / f"rgb_{cam}.mp4") for cam in (main, wrists[0], wrists[1])]
        written.append(write_anypos_episode(out / task, i, *views, np.load(ep / "joints.npy"), meta["fps"]))
    with atomic_path(out / f"{task}.json") as tmp:
        Path(tmp).write_text(json.dumps({"task": task, "caption": caption}, indent=2))
    return written
