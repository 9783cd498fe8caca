"""Small LeRobot datasets in both layouts the LeRobot adapter reads: v3.0 through lerobot's own writer, v2.1 as
lerobot 0.3 wrote it. How: docs/samples.md#lerobot."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import av.logging
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from samples.files import X264_REPRODUCIBLE

HEAD = "observation.images.cam_high"
WRISTS = ("observation.images.cam_left_wrist", "observation.images.cam_right_wrist")
STATE, ACTION = "observation.state", "action"
JOINT_NAMES = ([f"left_arm_{i}" for i in range(6)] + ["left_gripper"]
               + [f"right_arm_{i}" for i in range(6)] + ["right_gripper"])
TASKS = ("transfer the red cube to the right arm", "insert the peg into the socket", "fold the towel in half")
RAMP = 5  # background brightness step per frame (drawn frames)
ROBOT_TYPE = "aloha"
GRIPPERS = [6, 13]  # action/state dims of the two grippers (left arm 6 joints + gripper, right arm the same)


@dataclass
class Episode:
    index: int
    task: str
    frames: dict[str, np.ndarray]  # camera key -> uint8 [T, H, W, 3]
    state: np.ndarray  # float32 [T, 14]
    action: np.ndarray  # float32 [T, 14]

    @property
    def length(self) -> int:
        return len(self.action)


# ------------------------------------------------------------------------------------------------ content


def _read_mp4(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    if not frames:
        raise ValueError(f"{path} holds no decodable frame")
    return np.stack(frames)


def _drawn(index: int, length: int, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    h, w = size
    base = np.array([10 + 13 * index % 40, 45 - 11 * index % 35, 20 + 7 * index % 30], np.int32)
    frames = np.empty((length, h, w, 3), np.uint8)
    side = max(4, h // 6)
    x0, y0 = rng.integers(0, w - side), rng.integers(0, h - side)
    vx, vy = rng.choice([-3, -2, 2, 3], size=2)
    for t in range(length):
        frames[t] = np.clip(base + RAMP * t, 0, 255).astype(np.uint8)
        x = int(abs((x0 + vx * t) % (2 * (w - side)) - (w - side)))
        y = int(abs((y0 + vy * t) % (2 * (h - side)) - (h - side)))
        frames[t, y:y + side, x:x + side] = (230, 230, 40)
    return frames


def _resize_all(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    return np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])


def sample_episodes(n_episodes: int, seed: int = 0, fps: int = 30, size: tuple[int, int] = (96, 128),
                    wrists: bool = False, frames_from: Path | None = None, actions: str = "absolute") -> list[Episode]:
    """The episodes `write_lerobot` writes for these arguments (deterministic in `seed`).

    `actions`: "absolute" (joint targets; the state reaches action[t] at t+1) or "delta" (action[t] = state[t+1] −
    state[t], the last step 0): the two conventions LeRobot datasets use.
    """
    if actions not in ("absolute", "delta"):
        raise ValueError(f"actions must be 'absolute' or 'delta', not {actions!r}")
    rng = np.random.default_rng(seed)
    source = _read_mp4(Path(frames_from)) if frames_from is not None else None
    offset = 0
    episodes = []
    for e in range(n_episodes):
        length = int(rng.integers(20, 41))
        if source is not None:
            take = source[(offset + np.arange(length)) % len(source)]
            offset += length
            head = _resize_all(take, size)
            half = take.shape[2] // 2
            cams = {HEAD: head}
            if wrists:  # the source's left and right halves stand in for the wrist views
                cams[WRISTS[0]] = _resize_all(take[:, :, :half], size)
                cams[WRISTS[1]] = _resize_all(take[:, :, half:], size)
        else:
            cams = {HEAD: _drawn(e, length, size, rng)}
            if wrists:
                cams[WRISTS[0]] = _drawn(e + 7, length, size, rng)
                cams[WRISTS[1]] = _drawn(e + 13, length, size, rng)
        # smooth joint targets; the measured state lags the command by one step, as a servo would
        steps = rng.normal(0.0, 0.05, size=(length, 14)).cumsum(axis=0) + rng.uniform(-0.5, 0.5, size=14)
        steps[:, GRIPPERS] = steps[:, GRIPPERS].clip(-1.0, 1.0)  # normalised open/close, as ALOHA's grippers
        if actions == "absolute":
            action = steps.astype(np.float32)
            state = np.vstack([action[:1], action[:-1]]).astype(np.float32)
        else:
            state = steps.astype(np.float32)
            action = np.diff(state, axis=0, append=state[-1:]).astype(np.float32)
        episodes.append(Episode(e, TASKS[(e + seed) % len(TASKS)], cams, state, action))
    return episodes


def _features(size: tuple[int, int], cameras: list[str]) -> dict:
    h, w = size
    feats = {k: {"dtype": "video", "shape": (h, w, 3), "names": ["height", "width", "channels"]} for k in cameras}
    feats[STATE] = {"dtype": "float32", "shape": (14,), "names": list(JOINT_NAMES)}
    feats[ACTION] = {"dtype": "float32", "shape": (14,), "names": list(JOINT_NAMES)}
    return feats


# ------------------------------------------------------------------------------------------------ writers


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _replace_dir(root: Path) -> Iterator[Path]:
    """Write into a fresh temporary sibling, then move it to `root` (replacing an earlier LeRobot dataset only)."""
    root = Path(root)
    if root.exists() and any(root.iterdir()) and not (root / "meta" / "info.json").exists():
        raise FileExistsError(f"{root} exists and is not a LeRobot dataset; refusing to replace it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp_parent = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        yield tmp_parent / root.name
        if root.exists():
            shutil.rmtree(root)
        (tmp_parent / root.name).rename(root)
    finally:
        shutil.rmtree(tmp_parent, ignore_errors=True)


def write_lerobot(root: str | Path, n_episodes: int, seed: int = 0, version: str = "v3.0",
                  frames_from: Path | None = None, *, fps: int = 30, size: tuple[int, int] = (96, 128),
                  wrists: bool = False, actions: str = "absolute", damage: dict[int, str] | None = None) -> Path:
    """Write a small LeRobot dataset at `root` (its folder name is the repo name) and return `root`. `damage`:
    episode index → a planted action or state defect (`defects.damage_actions`, `defects.damage_state`; absolute
    actions only)."""
    episodes = sample_episodes(n_episodes, seed, fps, size, wrists, frames_from, actions)
    for index, kind in (damage or {}).items():
        if actions != "absolute":
            raise ValueError("planted action defects need absolute actions")
        if index < len(episodes):  # the state follows the damaged command one step later, as the samples' servo
            from samples.defects import STATE_DAMAGE, damage_actions, damage_state

            ep = episodes[index]
            if kind in STATE_DAMAGE:
                ep.state = damage_state(ep.action, ep.state, kind)
                continue
            ep.action = damage_actions(ep.action, kind)
            ep.state = np.vstack([ep.action[:1], ep.action[:-1]]).astype(np.float32)
    cameras = [HEAD] + (list(WRISTS) if wrists else [])
    root = Path(root)
    with _replace_dir(root) as tmp:
        if version == "v3.0":
            _write_v3(tmp, root.name, episodes, fps, size, cameras)
        elif version in ("v2.1", "v2.0"):
            _write_v2(tmp, episodes, fps, size, cameras, version)
        else:
            raise ValueError(f"write_lerobot writes v3.0 (lerobot's writer) or v2.1/v2.0, not {version!r}")
    return root


def _write_v3(root: Path, repo_name: str, episodes: list[Episode], fps: int, size: tuple[int, int],
              cameras: list[str]) -> None:
    # Offline, and a quiet encoder (SVT-AV1 prints its configuration for every file it writes).
    with _env(HF_HUB_OFFLINE="1", SVT_LOG="1"):
        from common.torch_compat import install_import_hook

        install_import_hook()  # the torchvision CPU shim, before lerobot imports torchvision
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        level = av.logging.get_level()
        try:
            ds = LeRobotDataset.create(repo_id=f"local/{repo_name}", fps=fps, root=root, robot_type=ROBOT_TYPE,
                                       features=_features(size, cameras), use_videos=True)
            for ep in episodes:
                for t in range(ep.length):
                    frame = {k: ep.frames[k][t] for k in cameras}
                    frame.update({STATE: ep.state[t], ACTION: ep.action[t], "task": ep.task})
                    ds.add_frame(frame)
                ds.save_episode()
            ds.finalize()
            _order_stats(root, list(ds.meta.features))
        finally:
            # lerobot's encoder calls av.logging.restore_default_callback(), after which every FFmpeg message of
            # the process (libx264 statistics, mp4 muxer notes) goes to stderr; put PyAV's own setting back
            av.logging.set_level(level)


def _order_stats(root: Path, features: list[str]) -> None:
    """Rewrite lerobot's meta/stats.json with its features in the dataset's feature order.

    lerobot aggregates the episodes' stats over a set of feature names (``compute_stats.aggregate_stats``), so the
    file's key order followed the interpreter's string hashing and changed from run to run (PYTHONHASHSEED).
    """
    from lerobot.datasets.utils import STATS_PATH, write_json

    path = root / STATS_PATH
    stats = json.loads(path.read_text())
    rank = {k: i for i, k in enumerate(features)}
    write_json({k: stats[k] for k in sorted(stats, key=lambda k: (rank.get(k, len(rank)), k))}, path)


def _write_h264(path: Path, frames: np.ndarray, fps: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[1:3]
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "18", "preset": "fast", "g": "2", **X264_REPRODUCIBLE}
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def _stats(values: np.ndarray) -> dict[str, list]:
    return {"min": values.min(0).tolist(), "max": values.max(0).tolist(), "mean": values.mean(0).tolist(),
            "std": values.std(0).tolist(), "count": [int(len(values))]}


def _write_v2(root: Path, episodes: list[Episode], fps: int, size: tuple[int, int], cameras: list[str],
              version: str) -> None:
    """The v2.1 layout lerobot 0.3.x wrote (v2.0: the same with meta/stats.json instead of episodes_stats.jsonl)."""
    chunks_size = 1000
    data_path = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
    video_path = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
    tasks = list(dict.fromkeys(ep.task for ep in episodes))
    task_index = {t: i for i, t in enumerate(tasks)}
    meta = root / "meta"
    meta.mkdir(parents=True)
    feats = _features(size, cameras)
    h, w = size
    for k in cameras:
        feats[k]["info"] = {"video.fps": float(fps), "video.height": h, "video.width": w, "video.channels": 3,
                            "video.codec": "h264", "video.pix_fmt": "yuv420p", "video.is_depth_map": False,
                            "has_audio": False}
    for k, dtype in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                     ("index", "int64"), ("task_index", "int64")):
        feats[k] = {"dtype": dtype, "shape": [1], "names": None}
    ep_lines, stats_lines, index = [], [], 0
    all_state, all_action = [], []
    for ep in episodes:
        chunk = ep.index // chunks_size
        n = ep.length
        table = pa.table({
            STATE: pa.array(list(ep.state), type=pa.list_(pa.float32())),
            ACTION: pa.array(list(ep.action), type=pa.list_(pa.float32())),
            "timestamp": pa.array(np.arange(n, dtype=np.float32) / fps, type=pa.float32()),
            "frame_index": pa.array(np.arange(n), type=pa.int64()),
            "episode_index": pa.array(np.full(n, ep.index), type=pa.int64()),
            "index": pa.array(index + np.arange(n), type=pa.int64()),
            "task_index": pa.array(np.full(n, task_index[ep.task]), type=pa.int64()),
        })
        path = root / data_path.format(episode_chunk=chunk, episode_index=ep.index)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        for k in cameras:
            _write_h264(root / video_path.format(episode_chunk=chunk, video_key=k, episode_index=ep.index),
                        ep.frames[k], fps)
        stats = {STATE: _stats(ep.state), ACTION: _stats(ep.action),
                 "timestamp": _stats(np.arange(n, dtype=np.float64)[:, None] / fps),
                 "frame_index": _stats(np.arange(n)[:, None]), "episode_index": _stats(np.full((n, 1), ep.index)),
                 "index": _stats(index + np.arange(n)[:, None]),
                 "task_index": _stats(np.full((n, 1), task_index[ep.task]))}
        for k in cameras:  # lerobot's image stats: per channel, scaled to [0, 1], shaped [3, 1, 1]
            px = ep.frames[k].reshape(-1, 3).astype(np.float64) / 255.0
            stats[k] = {s: [[[v]] for v in vals] for s, vals in _stats(px).items() if s != "count"}
            stats[k]["count"] = [n]
        ep_lines.append({"episode_index": ep.index, "tasks": [ep.task], "length": n})
        stats_lines.append({"episode_index": ep.index, "stats": stats})
        all_state.append(ep.state)
        all_action.append(ep.action)
        index += n
    info = {
        "codebase_version": version, "robot_type": ROBOT_TYPE, "total_episodes": len(episodes),
        "total_frames": index, "total_tasks": len(tasks), "total_videos": len(episodes) * len(cameras),
        "total_chunks": (max(ep.index for ep in episodes) // chunks_size + 1) if episodes else 0,
        "chunks_size": chunks_size, "fps": fps, "splits": {"train": f"0:{len(episodes)}"},
        "data_path": data_path, "video_path": video_path, "features": feats,
    }
    (meta / "info.json").write_text(json.dumps(info, indent=4))
    (meta / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in ep_lines))
    (meta / "tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(tasks)))
    if version == "v2.1":
        (meta / "episodes_stats.jsonl").write_text("".join(json.dumps(s) + "\n" for s in stats_lines))
    else:
        (meta / "stats.json").write_text(json.dumps({STATE: _stats(np.vstack(all_state)),
                                                     ACTION: _stats(np.vstack(all_action))}, indent=4))
