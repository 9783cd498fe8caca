"""Pyramid tier L5 sample data: small Open X-Embodiment datasets in the official TFDS/RLDS builder layout.
How they are made: docs/samples.md#oxe."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import av
import cv2
import numpy as np

from samples.sim_oxe import VIEWS, ArmSim, motion, quat_to_rpy, rpy_to_quat
from samples.files import atomic_path as _atomic, write_json as _write_json
from media.tfrecord import TFRecordWriter, encode_example

VERSION = "0.1.0"
F32, F64, I32, I64, BOOL = "float32", "float64", "int32", "int64", "bool"
TEXT, IMAGE = "text", "image"

INSTRUCTIONS = ("pick coke can", "move blue chip bag near apple", "open top drawer", "place sponge in bowl",
                "knock redbull can over", "put the carrot on the plate")

# Per dataset: image size (H, W), control rate, and the feature tree of one step / of the episode metadata.
# Leaves: IMAGE, TEXT, or (shape, dtype). Values are produced by `_step_values` from the shared motion.
# the RT-1 action layout, shared by fractal and kuka
RT1_ACTION = {
    "base_displacement_vector": ((2,), F32), "base_displacement_vertical_rotation": ((1,), F32),
    "gripper_closedness_action": ((1,), F32), "rotation_delta": ((3,), F32),
    "terminate_episode": ((3,), I32), "world_vector": ((3,), F32),
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "fractal20220817_data": {
        "size": (256, 320), "fps": 3.0,
        "steps": {
            "action": RT1_ACTION,
            "is_first": ((), BOOL), "is_last": ((), BOOL), "is_terminal": ((), BOOL),
            "observation": {
                "base_pose_tool_reached": ((7,), F32), "gripper_closed": ((1,), F32), "image": IMAGE,
                "natural_language_embedding": ((512,), F32), "natural_language_instruction": TEXT,
            },
            "reward": ((), F32),
        },
        "episode_metadata": None,
    },
    "kuka": {
        "size": (512, 640), "fps": 10.0,
        "steps": {
            "action": RT1_ACTION,
            "is_first": ((), BOOL), "is_last": ((), BOOL), "is_terminal": ((), BOOL),
            "observation": {
                "clip_function_input": {"base_pose_tool_reached": ((7,), F32), "workspace_bounds": ((3, 3), F32)},
                "gripper_closed": ((1,), F32), "height_to_bottom": ((1,), F32), "image": IMAGE,
                "natural_language_embedding": ((512,), F32), "natural_language_instruction": TEXT,
                "task_id": ((1,), F32),
            },
            "reward": ((), F32),
        },
        "episode_metadata": None,
    },
    "bridge_dataset": {
        "size": (256, 256), "fps": 5.0,
        "steps": {
            "action": ((7,), F32),
            "discount": ((), F32), "is_first": ((), BOOL), "is_last": ((), BOOL), "is_terminal": ((), BOOL),
            "language_instruction": TEXT,
            "observation": {"image_0": IMAGE, "image_1": IMAGE, "state": ((7,), F32)},
            "reward": ((), F32),
        },
        "episode_metadata": {"file_path": TEXT, "has_image_0": ((), BOOL), "has_image_1": ((), BOOL),
                             "has_language": ((), BOOL)},
    },
    "droid": {
        "size": (180, 320), "fps": 15.0,
        "steps": {
            "action": ((7,), F64),
            "action_dict": {"cartesian_position": ((6,), F64), "cartesian_velocity": ((6,), F64),
                            "gripper_position": ((1,), F64), "gripper_velocity": ((1,), F64)},
            "discount": ((), F32), "is_first": ((), BOOL), "is_last": ((), BOOL), "is_terminal": ((), BOOL),
            "language_instruction": TEXT, "language_instruction_2": TEXT,
            "observation": {"cartesian_position": ((6,), F64), "exterior_image_1_left": IMAGE,
                            "exterior_image_2_left": IMAGE, "gripper_position": ((1,), F64),
                            "wrist_image_left": IMAGE},
            "reward": ((), F32),
        },
        "episode_metadata": {"file_path": TEXT, "recording_folderpath": TEXT},
    },
}


# ------------------------------------------------------------------------------------------------ files



def _features_json(node: Any, doc: str = "") -> dict[str, Any]:
    """A schema node as TFDS features.json (proto JSON: pythonClassName + featuresDict/tensor/image/text)."""
    if isinstance(node, dict):
        return {"pythonClassName": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
                "featuresDict": {"features": {k: _features_json(v) for k, v in node.items()}}}
    if node == IMAGE:
        return {"pythonClassName": "tensorflow_datasets.core.features.image_feature.Image",
                "image": {"shape": {"dimensions": []}, "dtype": "uint8", "encodingFormat": "jpeg"},
                "description": "Camera RGB observation."}
    if node == TEXT:
        return {"pythonClassName": "tensorflow_datasets.core.features.text_feature.Text", "text": {}}
    shape, dtype = node
    cls = "scalar.Scalar" if shape == () else "tensor_feature.Tensor"
    return {"pythonClassName": f"tensorflow_datasets.core.features.{cls}",
            "tensor": {"shape": {"dimensions": [str(d) for d in shape]} if shape else {}, "dtype": dtype,
                       "encoding": "none"}}


def features_json(dataset: str, size: tuple[int, int]) -> dict[str, Any]:
    schema = SCHEMAS[dataset]
    tree: dict[str, Any] = {"steps": None}
    if schema["episode_metadata"]:
        tree["episode_metadata"] = schema["episode_metadata"]
    out = _features_json({k: v for k, v in tree.items() if v is not None})
    steps = _features_json(schema["steps"])
    _set_image_shapes(steps, size)
    out["featuresDict"]["features"]["steps"] = {
        "pythonClassName": "tensorflow_datasets.core.features.dataset_feature.Dataset",
        "sequence": {"feature": steps, "length": "-1"},
    }
    return out


def _set_image_shapes(node: dict[str, Any], size: tuple[int, int]) -> None:
    if "image" in node:
        node["image"]["shape"]["dimensions"] = [str(size[0]), str(size[1]), "3"]
    for sub in (node.get("featuresDict") or {}).get("features", {}).values():
        _set_image_shapes(sub, size)


# ------------------------------------------------------------------------------------------------ content


def _video_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _fit(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre-crop to the target aspect, then resize to (H, W)."""
    h, w = size
    fh, fw = frame.shape[:2]
    scale = min(fh / h, fw / w)
    ch, cw = int(round(h * scale)), int(round(w * scale))
    y0, x0 = (fh - ch) // 2, (fw - cw) // 2
    return cv2.resize(frame[y0:y0 + ch, x0:x0 + cw], (w, h), interpolation=cv2.INTER_AREA)


def _clip(video: np.ndarray, start: int, t: int, size: tuple[int, int]) -> np.ndarray:
    """t frames from `video` starting at `start`, ping-ponging when the video is shorter."""
    n = len(video)
    period = max(1, 2 * n - 2)
    idx = [(start + i) % period for i in range(t)]
    idx = [i if i < n else period - i for i in idx]
    return np.stack([_fit(video[i], size) for i in idx])


def jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _leaves(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}/{k}" if prefix else k)
    else:
        yield prefix, node


def _step_values(key: str, spec: Any, m: dict[str, np.ndarray], fps: float, t: int, instruction: str,
                 rng: np.random.Generator, images: dict[str, np.ndarray], seen: dict[str, np.ndarray]) -> Any:
    """Values [t, *shape] of one step field (key relative to steps/): actions from the commanded path `m`,
    observed poses from `seen` (pos, rpy, quat at each frame)."""
    leaf = key.rsplit("/", 1)[-1]
    pos, rpy, grip = m["pos"], m["rpy"], m["gripper"]
    dpos = np.diff(pos, axis=0, append=pos[-1:])  # action t moves from pose t to pose t+1; last one is zero
    drpy = np.diff(rpy, axis=0, append=rpy[-1:])
    dgrip = np.diff(grip, append=grip[-1:])
    if spec == IMAGE:
        return [jpeg(f) for f in images[leaf]]
    if spec == TEXT:
        text = instruction if leaf != "language_instruction_2" else f"please {instruction}"
        return [text] * t
    shape, dtype = spec
    steps = np.arange(t)
    if key == "action":  # flat 7-d action: bridge EEF delta + gripper; droid (float64) velocity + gripper
        flat = np.concatenate([dpos, drpy, grip[:, None]], axis=1) * (np.r_[[fps] * 6, 1] if dtype == F64 else 1)
    elif key == "observation/state":
        flat = np.concatenate([seen["pos"], seen["rpy"], grip[:, None]], axis=1)
    elif key == "action_dict/cartesian_position":  # the commanded next pose
        flat = np.concatenate([np.roll(pos, -1, 0), np.roll(rpy, -1, 0)], axis=1)
    elif leaf in ("is_first", "is_last", "is_terminal", "reward"):
        flat = steps == (0 if leaf == "is_first" else t - 1)
    elif leaf == "discount":
        flat = np.ones(t)
    elif leaf == "world_vector":
        flat = dpos
    elif leaf == "rotation_delta":
        flat = drpy
    elif leaf == "gripper_closedness_action":
        flat = dgrip[:, None]  # +1 on the step the gripper closes, else 0
    elif leaf == "terminate_episode":
        flat = np.eye(3, dtype=np.int64)[np.where(steps == t - 1, 0, 1)]
    elif leaf == "base_pose_tool_reached":
        flat = np.concatenate([seen["pos"], seen["quat"]], axis=1)
    elif leaf in ("gripper_closed", "gripper_position"):
        flat = grip[:, None]
    elif leaf == "cartesian_position":
        flat = np.concatenate([seen["pos"], seen["rpy"]], axis=1)
    elif leaf == "cartesian_velocity":
        flat = np.concatenate([dpos, drpy], axis=1) * fps
    elif leaf == "gripper_velocity":
        flat = dgrip[:, None] * fps
    elif leaf == "natural_language_embedding":
        flat = np.tile(rng.normal(0, 0.05, 512), (t, 1))
    else:  # fields no reader maps (base displacement, workspace bounds, ...): small noise
        flat = rng.normal(0, 0.01, (t, int(np.prod(shape)) if shape else 1))
    return np.asarray(flat).reshape(t, *shape).astype(np.dtype(dtype) if dtype != BOOL else bool)


def episode_example(dataset: str, index: int, t: int, size: tuple[int, int], seed: int,
                    video: np.ndarray | None = None, sim: ArmSim | None = None) -> bytes:
    """One serialized RLDS episode (tf.train.Example in TFDS's flattening): frames from `video` when given, else
    rendered by `sim` (an ArmSim of image size `size`)."""
    schema = SCHEMAS[dataset]
    rng = np.random.default_rng([seed, index])
    m = motion(rng, t, schema["fps"])
    instruction = INSTRUCTIONS[(seed + index) % len(INSTRUCTIONS)]
    cams = [k.rsplit("/", 1)[-1] for k, v in _leaves(schema["steps"], "") if v == IMAGE]
    if video is not None:
        images = {cam: _clip(video, 7 * index + 5 * view, t, size) for view, cam in enumerate(cams)}
        seen = {"pos": m["pos"], "rpy": m["rpy"], "quat": rpy_to_quat(m["rpy"])}
    else:
        if sim is None:
            raise ValueError("episode_example needs a video or an ArmSim")
        frames, reached = sim.episode(m, VIEWS[:len(cams)])
        images = dict(zip(cams, frames.values()))
        seen = {"pos": reached[:, :3], "quat": reached[:, 3:], "rpy": quat_to_rpy(reached[:, 3:])}
    feats: dict[str, Any] = {}
    for key, spec in _leaves(schema["steps"], ""):
        values = _step_values(key, spec, m, schema["fps"], t, instruction, rng, images, seen)
        feats[f"steps/{key}"] = values if isinstance(values, list) else np.asarray(values).ravel()
    for key, spec in _leaves(schema["episode_metadata"] or {}, ""):
        if spec == TEXT:
            feats[f"episode_metadata/{key}"] = [f"/data/{dataset}/raw/episode_{index:06d}/{key}"]
        else:
            feats[f"episode_metadata/{key}"] = np.ones(1, np.int64)
    return encode_example(feats)


def write_oxe(root: str | os.PathLike, n_episodes: int, seed: int = 0, dataset: str = "fractal20220817_data",
              frames_from: Path | None = None, *, steps: tuple[int, int] = (24, 36),
              image_size: tuple[int, int] | None = None) -> list[Path]:
    """Write one RLDS builder dir `<root>/<dataset>/0.1.0/`; returns the shard paths (train, then val).

    Episode lengths are drawn from `steps` (inclusive); n_episodes >= 3 puts the last max(1, n // 4) episodes in
    a `val` split.
    """
    if dataset not in SCHEMAS:
        raise ValueError(f"no sample schema for {dataset!r}; known: {', '.join(SCHEMAS)}")
    if n_episodes < 1:
        raise ValueError("n_episodes must be >= 1")
    schema = SCHEMAS[dataset]
    size = tuple(image_size or schema["size"])
    builder = Path(root) / dataset / VERSION
    builder.mkdir(parents=True, exist_ok=True)
    (builder / "dataset_info.json").unlink(missing_ok=True)
    video = _video_frames(Path(frames_from)) if frames_from else None
    sim = ArmSim(size) if video is None else None
    rng = np.random.default_rng(seed)
    lengths = rng.integers(steps[0], steps[1] + 1, n_episodes)
    n_val = max(1, n_episodes // 4) if n_episodes >= 3 else 0
    splits = {"train": range(0, n_episodes - n_val)}
    if n_val:
        splits["val"] = range(n_episodes - n_val, n_episodes)
    shards, info_splits = [], []
    try:
        for split, episodes in splits.items():
            path = builder / f"{dataset}-{split}.tfrecord-00000-of-00001"
            with _atomic(path) as tmp:
                with TFRecordWriter(tmp) as w:
                    for i in episodes:
                        w.write(episode_example(dataset, i, int(lengths[i]), size, seed, video, sim))
            shards.append(path)
            info_splits.append({"filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}", "name": split,
                                "numBytes": str(path.stat().st_size), "shardLengths": [str(len(episodes))]})
    finally:
        if sim is not None:
            sim.close()
    _write_json(builder / "features.json", features_json(dataset, size))
    _write_json(builder / "dataset_info.json", {
        "citation": "", "description": f"Sample of {dataset} in the RLDS layout (motus-pyramid generator).",
        "fileFormat": "tfrecord", "moduleName": f"{dataset}.{dataset}_dataset_builder", "name": dataset,
        "releaseNotes": {VERSION: "Sample."}, "splits": info_splits, "version": VERSION,
    })
    return shards
