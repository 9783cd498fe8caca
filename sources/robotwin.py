"""RoboTwin episodes (tier L3): one HDF5 per episode, in either of the two layouts RoboTwin has shipped (2.0, 2026).
Layouts, rates, colour and quirks: docs/formats.md#robotwin."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from media.hdf5_images import image_encoding, image_reader
from media.hdf5_open import open_hdf5, open_hdf5_input
from sources.media import check_finite, file_checksum, fingerprint
from sources.base import ACTION_OPTIONS, Item, ItemRef, SourceAdapter, SourceError, action_meaning
from common.errors import BadInput

ROBOTWIN_HZ = 250.0 / 15.0
SIM_HZ = 250.0  # RoboTwin's physics rate (timestep 1/250 s)
CAMERAS = ("head_camera", "left_camera", "right_camera")
CAMERAS_2026 = ("cam_head", "cam_left_wrist", "cam_right_wrist", "cam_wrist", "cam_third_view")
LAYOUT_20, LAYOUT_2026 = "robotwin2.0", "robotwin2026"
FREQUENCY_MEANINGS = ("auto", "hz", "save_freq")
# per-part joint keys of the 2026 state/ and action/ groups, in the 2.0 vector order: (key, name prefix)
DUAL_ARM_PARTS = (("left_arm_joint_states", "left_arm"), ("left_ee_joint_states", "left_gripper"),
                  ("right_arm_joint_states", "right_arm"), ("right_ee_joint_states", "right_gripper"))
SINGLE_ARM_PARTS = (("arm_joint_states", "arm"), ("ee_joint_states", "gripper"))
_EPISODE = re.compile(r"episode_?(\d+)\.hdf5$")
_SETTING = re.compile(r"(.+)_(clean|randomized)_\d+")


# ------------------------------------------------------------------------------------------------ vectors


def action_names(left_arm: int, right_arm: int) -> list[str]:
    return ([f"left_arm_{i}" for i in range(left_arm)] + ["left_gripper"]
            + [f"right_arm_{i}" for i in range(right_arm)] + ["right_gripper"])


def _part_names(prefix: str, width: int) -> list[str]:
    if prefix.endswith("gripper"):  # an end effector: one value is a gripper, more are hand joints
        return [prefix] if width == 1 else [f"{prefix.replace('gripper', 'ee')}_{i}" for i in range(width)]
    return [f"{prefix}_{i}" for i in range(width)]


def joint_vector(h5: h5py.File, group: str) -> tuple[np.ndarray, list[str], list[str]]:
    """The 2026 `state/` or `action/` group as one float64 [T, D] vector in the 2.0 order, its names and the
    keys it was built from. Per-part keys (dual arm, then single arm) are preferred over `joint_states`."""
    if group not in h5 or not isinstance(h5[group], h5py.Group):
        article = "an" if group[0] in "aeiou" else "a"
        raise BadInput(f"RoboTwin 2026 episode without {article} {group}/ group (top-level keys: {sorted(h5.keys())})")
    g = h5[group]
    for parts in (DUAL_ARM_PARTS, SINGLE_ARM_PARTS):
        if all(k in g for k, _ in parts):
            break
    else:
        if "joint_states" in g:
            parts = (("joint_states", "joint"),)
        else:
            present = [k for k, _ in DUAL_ARM_PARTS if k in g]
            if present:
                missing = [f"{group}/{k}" for k, _ in DUAL_ARM_PARTS if k not in g]
                raise BadInput(f"missing key {', '.join(missing)} (the other joint keys of {group}/ are there)")
            raise BadInput(f"{group}/ has no joint-space keys (expected left_arm_joint_states, left_ee_joint_states, "
                           f"right_arm_joint_states, right_ee_joint_states, or joint_states); it holds "
                           f"{sorted(g.keys())}")
    arrays, names, keys = [], [], []
    for key, prefix in parts:
        a = np.asarray(g[key][()], dtype=np.float64)
        if a.ndim == 1:
            a = a[:, None]
        if a.ndim != 2:
            raise BadInput(f"{group}/{key} has shape {a.shape}; expected [T] or [T, D]")
        if arrays and a.shape[0] != arrays[0].shape[0]:
            raise BadInput(f"{group}/{key} has {a.shape[0]} steps, {group}/{keys[0]} has {arrays[0].shape[0]}")
        arrays.append(a)
        names += _part_names(prefix, a.shape[1])
        keys.append(f"{group}/{key}")
    return np.concatenate(arrays, axis=1), names, keys


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _embedded_instructions(h5: h5py.File) -> list[str]:
    """`instructions` (a JSON string or an array of strings, per RoboTwin's converter option) or `instruction`."""
    for key in ("instructions", "instruction"):
        if key not in h5 or not isinstance(h5[key], h5py.Dataset):
            continue
        value = h5[key][()]
        if isinstance(value, np.ndarray):
            lines = [_text(v) for v in value.ravel()]
        else:
            text = _text(value)
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                parsed = text
            lines = [str(s) for s in parsed] if isinstance(parsed, list) else [str(parsed)]
        lines = [s for s in (line.strip() for line in lines) if s]
        if lines:
            return lines
    return []


# ------------------------------------------------------------------------------------------------ adapter


class RoboTwinSource(SourceAdapter):
    name = "robotwin"
    default_tier = 3
    OPTIONS = frozenset({"fps", "frequency_means", "licence", "sim_hz"}) | ACTION_OPTIONS

    def __init__(self, root, tier=None, **options):
        super().__init__(root, tier, **options)
        meaning = options.get("frequency_means", "auto")
        if meaning not in FREQUENCY_MEANINGS:
            raise SourceError(f"robotwin: frequency_means must be one of {', '.join(FREQUENCY_MEANINGS)}, "
                              f"got {meaning!r}")

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

    def probe(self, ref: ItemRef) -> Item:
        path = Path(ref.input_uri)
        with open_hdf5_input(path) as h5:
            layout = self._layout(h5)
            if layout == LAYOUT_2026:
                facts = self._probe_2026(h5, ref)
            else:
                facts = self._probe_20(h5, ref)
            embodiment = _text(h5.attrs.get("embodiment", "")) or self._embodiment(ref.details["setting"])
        language = self._instructions(path) or facts.pop("embedded_language", [])
        height, width = facts["first"].shape[:2]
        frames, fps = facts["frames"], facts["fps"]
        try:  # joint targets in both layouts: 2.0's joint_action is the commanded target, 2026's action[t] = state[t+1]
            semantics, timing, came_from = action_meaning(self.options, facts["action_names"], "absolute", "after",
                                                          f"robotwin {ref.details['task']}")
        except SourceError as e:
            raise BadInput(str(e)) from None
        facts["extras"]["action_semantics_source"] = came_from or "layout"
        return self.item(
            ref,
            media_uris=[f"{path}#{key}" for key in facts["keys"]],
            cameras=facts["cameras"],
            fps=fps,
            frame_count=frames,
            width=width,
            height=height,
            embodiment=embodiment,
            action_names=facts["action_names"],
            action_semantics=semantics,
            action_timing=timing,
            state_names=facts["state_names"],
            language=language,
            licence=self.options.get("licence", "MIT (RoboTwin 2.0)"),
            input_blake2b=file_checksum(path),
            input_bytes=path.stat().st_size,
            extras={"layout": layout, "task": ref.details["task"], "setting": ref.details["setting"],
                    **facts["extras"]},
        )

    def _probe_20(self, h5: h5py.File, ref: ItemRef) -> dict[str, Any]:
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
        first = self._first_and_last(rgb, "observation/head_camera/rgb", frames)
        fps = float(h5.attrs.get("control_hz", self.options.get("fps", ROBOTWIN_HZ)))
        left = int(h5["joint_action/left_arm"].shape[-1]) if "joint_action/left_arm" in h5 else (vector.shape[1] - 2) // 2
        right = vector.shape[1] - 2 - left
        names = action_names(left, right)  # RoboTwin's joint_action doubles as state (Motus uses it as qpos)
        sim_keys = [k for k in ("observation/head_camera/depth", "observation/head_camera/segmentation", "sim/body_xpos") if k in h5]
        return {"cameras": cams, "keys": [f"observation/{c}/rgb" for c in cams], "frames": frames, "first": first,
                "fps": fps, "action_names": names, "state_names": names, "extras": {"sim_extras": sim_keys}}

    def _probe_2026(self, h5: h5py.File, ref: ItemRef) -> dict[str, Any]:
        vision = h5["vision"]
        named = [c for c in CAMERAS_2026 if c in vision]
        cams = [c for c in named + sorted(set(vision.keys()) - set(named))
                if isinstance(vision[c], h5py.Group) and "colors" in vision[c]]
        if not cams:
            raise BadInput(f"RoboTwin 2026 episode without any vision/<cam>/colors "
                           f"(vision/ holds {sorted(vision.keys())})")
        primary = f"vision/{cams[0]}/colors"
        frames = int(h5[primary].shape[0])
        if frames < 2:
            raise BadInput(f"episode has {frames} frames")
        for cam in cams[1:]:
            n = int(h5[f"vision/{cam}/colors"].shape[0])
            if n != frames:
                raise BadInput(f"vision/{cam}/colors has {n} frames, {primary} has {frames}")
        action, a_names, a_keys = joint_vector(h5, "action")
        state, s_names, s_keys = joint_vector(h5, "state")
        for group, vec in (("action", action), ("state", state)):
            if vec.shape[0] != frames:
                raise BadInput(f"{group}/ has {vec.shape[0]} steps but {primary} has {frames} frames")
            check_finite(f"{group}/ joint vector", vec)
        encodings = {}
        for cam in cams:
            try:
                encodings[cam] = image_encoding(h5[f"vision/{cam}/colors"])
            except ValueError as e:
                raise BadInput(f"vision/{cam}/colors: {e}") from e
        first = self._first_and_last(h5[primary], primary, frames)
        fps, fps_from, raw = self._fps_2026(h5)
        version = _text(h5["data_format_version"][()]) if "data_format_version" in h5 else None
        return {"cameras": cams, "keys": [f"vision/{c}/colors" for c in cams], "frames": frames, "first": first,
                "fps": fps, "action_names": a_names, "state_names": s_names,
                "embedded_language": _embedded_instructions(h5),
                "extras": {"sim_extras": [], "data_format_version": version, "frequency": raw, "fps_from": fps_from,
                           "action_keys": a_keys, "state_keys": s_keys, "image_encoding": encodings,
                           "source_format": _text(h5.attrs.get("source_format", "")) or None}}

    @staticmethod
    def _first_and_last(ds: h5py.Dataset, key: str, frames: int) -> np.ndarray:
        try:
            read = image_reader(ds)
            first = read(0)
            read(frames - 1)
        except ValueError as e:
            raise BadInput(f"{key}: {e}") from e
        return first

    def _fps_2026(self, h5: h5py.File) -> tuple[float, str, float | None]:
        """(fps, where it came from, the raw additional_info/frequency value)."""
        raw = None
        if "additional_info/frequency" in h5:
            value = np.asarray(h5["additional_info/frequency"][()]).ravel()
            raw = float(value[0]) if value.size else float("nan")
            if not np.isfinite(raw) or raw <= 0:
                raise BadInput(f"additional_info/frequency is {raw}: not a positive rate")
        if raw is None:
            if "control_hz" in h5.attrs:
                return float(h5.attrs["control_hz"]), "attribute control_hz", None
            fps = float(self.options.get("fps", ROBOTWIN_HZ))
            return fps, "option fps (the file has no additional_info/frequency)", None
        meaning = self.options.get("frequency_means", "auto")
        if meaning == "auto":
            meaning = "save_freq" if _text(h5.attrs.get("source_format", "")) == "RoboTwin" else "hz"
        if meaning == "save_freq":
            sim_hz = float(self.options.get("sim_hz", SIM_HZ))
            return sim_hz / raw, f"additional_info/frequency as save_freq ({sim_hz:g} Hz sim / {raw:g})", raw
        return raw, "additional_info/frequency (Hz)", raw

    @classmethod
    def sim_media(cls, row: dict[str, Any], camera: str, uri: str) -> str | None:
        # our RoboTwin sample keeps depth, segmentation and poses for the head camera inside the episode HDF5
        return uri.split("#", 1)[0] if camera == "head_camera" else None

    @classmethod
    def load_actions(cls, row: dict[str, Any]) -> np.ndarray:
        path = row["input_uri"]
        with open_hdf5(path) as h5:
            if "joint_action" not in h5 and ("action" in h5 or "vision" in h5):  # the 2026 layout
                vector, _, _ = joint_vector(h5, "action")
                name = "action/ joint vector"
            else:
                if "joint_action/vector" not in h5:
                    raise BadInput(f"missing key joint_action/vector in {Path(path).name}")
                vector = np.asarray(h5["joint_action/vector"][()], dtype=np.float64)
                name = "joint_action/vector"
        check_finite(f"{name} of {row['item_id']}", vector)
        return vector

    @staticmethod
    def _layout(h5: h5py.File) -> str:
        if "observation" in h5 and "joint_action" in h5:
            return LAYOUT_20
        if "vision" in h5 and any(k in h5 for k in ("state", "action", "additional_info", "data_format_version")):
            return LAYOUT_2026
        raise BadInput(
            f"not a RoboTwin 2.0 episode nor a 2026 one: top-level keys {sorted(h5.keys())}; "
            "expected observation/ and joint_action/ (2.0) or vision/, state/ and action/ (2026)"
        )

    @staticmethod
    def _embodiment(setting: str) -> str:
        """`aloha-agilex_clean_50` → `aloha-agilex` (2.0 naming); a 2026 env_cfg folder (`aloha_agilex`) as is."""
        m = _SETTING.fullmatch(setting)
        return m.group(1) if m else setting

    @staticmethod
    def _instructions(episode_path: Path) -> list[str]:
        """`instructions/episode{i}.json` beside `data/` ("seen" list), also for 2026 names `episode_{i:07d}`."""
        folder = episode_path.parent.parent / "instructions"
        m = _EPISODE.search(episode_path.name)
        candidates = [folder / f"{episode_path.stem}.json"]
        if m:
            candidates.append(folder / f"episode{int(m.group(1))}.json")
        f = next((c for c in candidates if c.exists()), None)
        if f is None:
            return []
        try:
            data = json.loads(f.read_bytes().decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadInput(f"instructions file {f.name} is not JSON: {e}") from e
        if isinstance(data, dict):
            return [str(s) for s in data.get("seen", [])]
        if isinstance(data, list):
            return [str(s) for s in data]
        return [str(data)]
