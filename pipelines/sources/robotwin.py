"""RoboTwin 2.0 episodes (tier L3): one HDF5 per episode, as RoboTwin's collector writes them.

Layout: `<root>/<task>/<embodiment>_<clean|randomized>_<N>/data/episode{i}.hdf5`, with
`instructions/episode{i}.json` ({"seen": [...], "unseen": [...]}) and `video/episode{i}.mp4` beside `data/`.
Episode HDF5 (2.0 layout): `observation/<cam>/rgb` per-frame JPEG bytes, `joint_action/vector` [T, D]
(left arm, left gripper, right arm, right gripper). Facts: shared research motus_and_formats.md §2.4, §1.6.

- Sample rate: RoboTwin saves every 15th step of a 250 Hz sim, about 16.7 Hz, although its mp4s say 30 fps;
  the file's `control_hz` attribute wins when present, else the `fps` option (default 250/15).
- Colour: RoboTwin JPEG-encodes RGB arrays without converting to BGR, so `cv2.imdecode` returns RGB order.
  Readers must not swap channels again.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import cv2
import h5py
import numpy as np

from pipelines.media import check_finite, file_checksum, fingerprint
from pipelines.sources.base import ItemRef, SourceAdapter, SourceError, dumps_extras
from pipelines.stages import BadInput

ROBOTWIN_HZ = 250.0 / 15.0
CAMERAS = ("head_camera", "left_camera", "right_camera")
_EPISODE = re.compile(r"episode(\d+)\.hdf5$")


def decode_jpeg_rgb(data: bytes) -> np.ndarray:
    """RoboTwin's JPEG bytes → RGB array (cv2.imdecode gives RGB order here, see the module docstring)."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("JPEG does not decode")
    return img


def action_names(left_arm: int, right_arm: int) -> list[str]:
    return ([f"left_arm_{i}" for i in range(left_arm)] + ["left_gripper"]
            + [f"right_arm_{i}" for i in range(right_arm)] + ["right_gripper"])


class RoboTwinSource(SourceAdapter):
    name = "robotwin"
    default_tier = 3

    def discover(self) -> Iterator[ItemRef]:
        files = sorted(self.root.glob("*/*/data/episode*.hdf5"))
        if not files:
            raise SourceError(f"robotwin: no <task>/<setting>/data/episode*.hdf5 under {self.root}")
        for f in files:
            if not _EPISODE.search(f.name):
                continue
            task, setting = f.parent.parent.parent.name, f.parent.parent.name
            native_id = f"{task}/{setting}/{f.stem}"
            yield ItemRef(self.item_id(native_id), native_id, str(f), fingerprint(f),
                          {"task": task, "setting": setting})

    def probe(self, ref: ItemRef) -> dict[str, Any]:
        path = Path(ref.input_uri)
        try:
            h5 = h5py.File(path, "r")
        except OSError as e:
            raise BadInput(f"unreadable HDF5 {path.name}: {e}") from e
        with h5:
            layout = self._layout(h5)
            cams = [c for c in CAMERAS if f"observation/{c}/rgb" in h5]
            if "head_camera" not in cams:
                raise BadInput("missing key observation/head_camera/rgb")
            if "joint_action/vector" not in h5:
                raise BadInput("missing key joint_action/vector")
            rgb = h5["observation/head_camera/rgb"]
            frames = int(rgb.shape[0])
            if frames < 2:
                raise BadInput(f"episode has {frames} frames")
            vector = np.asarray(h5["joint_action/vector"][()], dtype=np.float64)
            if vector.ndim != 2 or vector.shape[0] != frames:
                raise BadInput(f"joint_action/vector shape {vector.shape} does not match {frames} frames")
            check_finite("joint_action/vector", vector)
            for cam in cams:
                if h5[f"observation/{cam}/rgb"].shape[0] != frames:
                    raise BadInput(f"observation/{cam}/rgb has {h5[f'observation/{cam}/rgb'].shape[0]} frames, head has {frames}")
            try:
                first = decode_jpeg_rgb(bytes(rgb[0]))
                decode_jpeg_rgb(bytes(rgb[frames - 1]))
            except ValueError as e:
                raise BadInput(f"observation/head_camera/rgb: {e}") from e
            fps = float(h5.attrs.get("control_hz", self.options.get("fps", ROBOTWIN_HZ)))
            left = int(h5["joint_action/left_arm"].shape[-1]) if "joint_action/left_arm" in h5 else (vector.shape[1] - 2) // 2
            right = vector.shape[1] - 2 - left
            embodiment = str(h5.attrs.get("embodiment", "")) or ref.details["setting"].rsplit("_", 2)[0]
            sim_keys = [k for k in ("observation/head_camera/depth", "observation/head_camera/segmentation", "sim/body_xpos") if k in h5]
        language = self._instructions(path)
        height, width = first.shape[:2]
        row = self.base_row(ref)
        row.update(
            group_id=ref.item_id,
            media_uris=[f"{path}#observation/{c}/rgb" for c in cams],
            cameras=cams,
            fps=fps,
            frame_count=frames,
            width=width,
            height=height,
            duration_s=frames / fps,
            start_s=0.0,
            embodiment=embodiment,
            action_dim=vector.shape[1],
            action_names=action_names(left, right),
            state_dim=vector.shape[1],  # RoboTwin's joint_action doubles as state (Motus uses it as qpos)
            state_names=action_names(left, right),
            has_actions=True,
            language=language,
            licence=self.options.get("licence", "MIT (RoboTwin 2.0)"),
            input_checksum=file_checksum(path),
            input_bytes=path.stat().st_size,
            extras=dumps_extras({"layout": layout, "task": ref.details["task"], "setting": ref.details["setting"],
                                 "sim_extras": sim_keys}),
        )
        return row

    @classmethod
    def load_actions(cls, row: dict[str, Any]) -> np.ndarray:
        path = row["input_uri"]
        with h5py.File(path, "r") as h5:
            if "joint_action/vector" not in h5:
                raise BadInput(f"missing key joint_action/vector in {Path(path).name}")
            vector = np.asarray(h5["joint_action/vector"][()], dtype=np.float64)
        check_finite(f"joint_action/vector of {row['item_id']}", vector)
        return vector

    @staticmethod
    def _layout(h5: h5py.File) -> str:
        if "observation" in h5 and "joint_action" in h5:
            return "robotwin2.0"
        if "vision" in h5 and ("state" in h5 or "action" in h5):
            raise BadInput("RoboTwin 2026 layout (vision/, state/, action/) is not supported by this version yet")
        raise BadInput(
            f"not a RoboTwin 2.0 episode: top-level keys {sorted(h5.keys())}; "
            "expected observation/ and joint_action/"
        )

    @staticmethod
    def _instructions(episode_path: Path) -> list[str]:
        f = episode_path.parent.parent / "instructions" / f"{episode_path.stem}.json"
        if not f.exists():
            return []
        try:
            data = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise BadInput(f"instructions file {f.name} is not JSON: {e}") from e
        if isinstance(data, dict):
            return [str(s) for s in data.get("seen", [])]
        if isinstance(data, list):
            return [str(s) for s in data]
        return [str(data)]
