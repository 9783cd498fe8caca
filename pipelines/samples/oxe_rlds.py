"""Pyramid tier L5 sample data: small Open X-Embodiment datasets in the official TFDS/RLDS builder layout.

    <root>/<dataset>/0.1.0/dataset_info.json
    <root>/<dataset>/0.1.0/features.json
    <root>/<dataset>/0.1.0/<dataset>-train.tfrecord-00000-of-00001
    <root>/<dataset>/0.1.0/<dataset>-val.tfrecord-00000-of-00001      (when n_episodes >= 3)

One `tf.train.Example` per episode, flattened the way TFDS serializes RLDS (see pipelines/sources/oxe.py): every
step field is one feature holding all T steps concatenated (`steps/observation/image` = T JPEGs,
`steps/action/world_vector` = 3T floats, `steps/is_first` = T int64 0/1, text = T strings). The feature trees
below follow the released features.json files of each dataset (key names, shapes, dtypes; the long tail of
fields real datasets carry is trimmed to a few representative ones, which readers must ignore).

Motion: a smooth random end-effector path (position, roll-pitch-yaw, gripper) drives everything — actions are
its per-step deltas (fractal/kuka/bridge) or velocities (droid), states are the pose itself, and the image shows
a textured disc following the path over a textured table, so optical flow sees motion that matches the actions.
With `frames_from` (an mp4, e.g. a task-agnostic episode's rgb_front.mp4), real frames are used instead.
Images are RGB arrays encoded as standard JPEG (cv2 gets BGR, so channels are swapped before encoding).

Every file is written under a temporary name and renamed into place, and dataset_info.json is written last (and
removed first when regenerating), so an interrupted run never looks like a complete builder dir.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import av
import cv2
import numpy as np

from pipelines.samples.sim_task_agnostic import atomic_path as _atomic, write_json as _write_json
from pipelines.sources.tfrecord import TFRecordWriter, encode_example

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


def _smooth(rng: np.random.Generator, t: int, dims: int, knots: int = 4) -> np.ndarray:
    """A smooth random curve [t, dims] in [-1, 1] (cubic interpolation of a few random knots)."""
    xs = np.linspace(0, t - 1, knots)
    ys = rng.uniform(-1, 1, (knots, dims))
    grid = np.arange(t, dtype=np.float64)
    out = np.empty((t, dims))
    for d in range(dims):
        coeffs = np.polyfit(xs, ys[:, d], min(3, knots - 1))
        out[:, d] = np.polyval(coeffs, grid)
    return np.clip(out, -1.2, 1.2)


def motion(rng: np.random.Generator, t: int) -> dict[str, np.ndarray]:
    """End-effector path: pos [t,3] (m), rpy [t,3] (rad), gripper [t] in {0, 1} (1 = closed)."""
    pos = np.array([0.5, 0.0, 0.2]) + _smooth(rng, t, 3) * np.array([0.15, 0.2, 0.08])
    rpy = _smooth(rng, t, 3) * 0.4
    close_at = int(rng.integers(t // 4, t // 2 + 1))
    gripper = (np.arange(t) >= close_at).astype(np.float64)
    return {"pos": pos, "rpy": rpy, "gripper": gripper}


def _quat(rpy: np.ndarray) -> np.ndarray:
    r, p, y = (rpy[:, i] / 2 for i in range(3))
    cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
    return np.stack([cr * cp * cy + sr * sp * sy, sr * cp * cy - cr * sp * sy,
                     cr * sp * cy + sr * cp * sy, cr * cp * sy - sr * sp * cy], axis=1)


def _texture(rng: np.random.Generator, h: int, w: int, colour: np.ndarray, contrast: float = 25.0) -> np.ndarray:
    """A muted surface of `colour` with blotches and fine grain (enough texture for optical flow)."""
    blotches = cv2.resize(rng.normal(0, 1, (h // 24 + 2, w // 24 + 2, 1)).astype(np.float32), (w, h),
                          interpolation=cv2.INTER_CUBIC)[..., None]
    grain = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 1.2)[..., None]
    out = colour[None, None, :] + contrast * blotches + contrast * 0.8 * grain
    return np.clip(out, 0, 255).astype(np.uint8)


def _table(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A wooden-looking table with a few static objects on it."""
    table = _texture(rng, h, w, np.array([150.0, 115.0, 80.0]) + rng.uniform(-20, 20, 3))
    for _ in range(3):
        x, y = int(rng.uniform(0.05, 0.8) * w), int(rng.uniform(0.05, 0.8) * h)
        bw, bh = int(rng.uniform(0.06, 0.15) * w), int(rng.uniform(0.06, 0.15) * h)
        colour = tuple(int(c) for c in rng.uniform(30, 230, 3))
        cv2.rectangle(table, (x, y), (x + bw, y + bh), colour, -1)
        cv2.rectangle(table, (x, y), (x + bw, y + bh), (40, 40, 40), 1)
    return table


def draw_scene(m: dict[str, np.ndarray], size: tuple[int, int], rng: np.random.Generator,
               view: int = 0) -> np.ndarray:
    """RGB frames [t, H, W, 3]: a textured disc at the projected end-effector over a textured table."""
    h, w = size
    table = _table(rng, h, w)
    disc = _texture(rng, h, w, rng.uniform(40, 220, 3), contrast=35.0)
    frames = np.empty((len(m["pos"]), h, w, 3), np.uint8)
    for i, (p, g) in enumerate(zip(m["pos"], m["gripper"])):
        if view == 0:  # overhead camera: table plane (y right, x down), disc grows as the gripper rises
            cx, cy = w * (0.5 + p[1] * 1.5), h * (0.5 + (p[0] - 0.5) * 2.2)
            radius = min(h, w) * (0.06 + 0.3 * p[2])
        else:  # side camera: x right, z up
            cx, cy = w * (0.5 + (p[0] - 0.5) * 2.2), h * (0.5 - (p[2] - 0.2) * 4.0)
            radius = min(h, w) * (0.1 + 0.1 * p[1])
        cx, cy, radius = int(cx), int(cy), max(4, int(radius))
        mask = np.zeros((h, w), np.uint8)
        cv2.circle(mask, (cx, cy), radius, 255, -1)
        frame = table.copy()
        frame[mask > 0] = disc[mask > 0]
        cv2.circle(frame, (cx, cy), radius, (30, 30, 30) if g else (230, 230, 230), 2)
        frames[i] = frame
    return frames


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
                 rng: np.random.Generator, images: dict[str, np.ndarray]) -> Any:
    """Values [t, *shape] of one step field (key relative to steps/)."""
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
        flat = np.concatenate([pos, rpy, grip[:, None]], axis=1)
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
        flat = np.concatenate([pos, _quat(rpy)], axis=1)
    elif leaf in ("gripper_closed", "gripper_position"):
        flat = grip[:, None]
    elif leaf == "cartesian_position":
        flat = np.concatenate([pos, rpy], axis=1)
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
                    video: np.ndarray | None = None) -> bytes:
    """One serialized RLDS episode (tf.train.Example in TFDS's flattening)."""
    schema = SCHEMAS[dataset]
    rng = np.random.default_rng([seed, index])
    m = motion(rng, t)
    instruction = INSTRUCTIONS[(seed + index) % len(INSTRUCTIONS)]
    cams = [k.rsplit("/", 1)[-1] for k, v in _leaves(schema["steps"], "") if v == IMAGE]
    images = {}
    for view, cam in enumerate(cams):
        if video is not None:
            images[cam] = _clip(video, 7 * index + 5 * view, t, size)
        else:
            images[cam] = draw_scene(m, size, rng, view=min(view, 1))
    feats: dict[str, Any] = {}
    for key, spec in _leaves(schema["steps"], ""):
        values = _step_values(key, spec, m, schema["fps"], t, instruction, rng, images)
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
    rng = np.random.default_rng(seed)
    lengths = rng.integers(steps[0], steps[1] + 1, n_episodes)
    n_val = max(1, n_episodes // 4) if n_episodes >= 3 else 0
    splits = {"train": range(0, n_episodes - n_val)}
    if n_val:
        splits["val"] = range(n_episodes - n_val, n_episodes)
    shards, info_splits = [], []
    for split, episodes in splits.items():
        path = builder / f"{dataset}-{split}.tfrecord-00000-of-00001"
        with _atomic(path) as tmp:
            with TFRecordWriter(tmp) as w:
                for i in episodes:
                    w.write(episode_example(dataset, i, int(lengths[i]), size, seed, video))
        shards.append(path)
        info_splits.append({"filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}", "name": split,
                            "numBytes": str(path.stat().st_size), "shardLengths": [str(len(episodes))]})
    _write_json(builder / "features.json", features_json(dataset, size))
    _write_json(builder / "dataset_info.json", {
        "citation": "", "description": f"Sample of {dataset} in the RLDS layout (motus-pyramid generator).",
        "fileFormat": "tfrecord", "moduleName": f"{dataset}.{dataset}_dataset_builder", "name": dataset,
        "releaseNotes": {VERSION: "Sample."}, "splits": info_splits, "version": VERSION,
    })
    return shards
