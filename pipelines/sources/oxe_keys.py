"""Open X-Embodiment key maps: which features of an RLDS episode are cameras, state, action, language and
episode control, from the per-dataset table or, for other datasets, from their `features.json`.

Used by `pipelines/sources/oxe.py`; see its docstring for the layout and docs/formats.md for the rules.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from manifests import actions

STEPS = "steps/"

# Per-dataset key maps. Keys are relative to `steps/`; `cameras[0]` is the primary camera (required), the others
# are used when present. Control rates: the OXE dataset overview sheet (fractal 3 Hz, kuka 10 Hz, bridge 5 Hz,
# droid 15 Hz); keys: OpenVLA/Octo OXE_DATASET_CONFIGS and the released features.json files.
# `action_semantics`: per action key, one `kind:part` for all its dims or a list per dim (manifests/actions.py);
# `control`: episode-control keys, recorded in extras and never part of the action vector. Sources: RT-1/kuka
# command the end effector by per-step deltas (OpenVLA configs.py ActionEncoding.EEF_POS), and their
# gripper_closedness_action is relative (+1 close, −1 open, 0 keep: Octo oxe_standardization_transforms.py
# rt1_/kuka_dataset_transform make it absolute with rel2abs_gripper_actions); bridge's last dim is an absolute
# gripper (Octo's bridge transform binarizes it as is); DROID's action_dict holds cartesian_velocity and an
# absolute gripper_position (DROID RLDS features.json).
OXE_DATASETS: dict[str, dict[str, Any]] = {
    "fractal20220817_data": {  # RT-1 (Google Robot); images 256x320 JPEG
        "embodiment": "google_robot",
        "control_hz": 3.0,
        "cameras": ["observation/image"],
        "state": ["observation/base_pose_tool_reached", "observation/gripper_closed"],
        "action": ["action/world_vector", "action/rotation_delta", "action/gripper_closedness_action"],
        "action_semantics": {"action/world_vector": "delta:ee_pos", "action/rotation_delta": "delta:ee_rot",
                             "action/gripper_closedness_action": "delta:gripper"},
        "control": ["action/terminate_episode"],
        "language": "observation/natural_language_instruction",
        "licence": "CC-BY-4.0",
    },
    "kuka": {  # QT-Opt grasping (KUKA iiwa); images 512x640 JPEG
        "embodiment": "kuka_iiwa",
        "control_hz": 10.0,
        "cameras": ["observation/image"],
        "state": ["observation/clip_function_input/base_pose_tool_reached", "observation/gripper_closed"],
        "action": ["action/world_vector", "action/rotation_delta", "action/gripper_closedness_action"],
        "action_semantics": {"action/world_vector": "delta:ee_pos", "action/rotation_delta": "delta:ee_rot",
                             "action/gripper_closedness_action": "delta:gripper"},
        "control": ["action/terminate_episode"],
        "language": "observation/natural_language_instruction",
        "licence": "CC-BY-4.0",
    },
    "bridge_dataset": {  # BridgeData V2 RLDS (WidowX 250); images 256x256 JPEG, image_1..3 optional
        "embodiment": "widowx_250",
        "control_hz": 5.0,
        "cameras": ["observation/image_0", "observation/image_1"],
        "state": ["observation/state"],
        "action": ["action"],
        "action_names": ["x", "y", "z", "roll", "pitch", "yaw", "gripper"],
        "state_names": ["x", "y", "z", "roll", "pitch", "yaw", "gripper"],
        "language": "language_instruction",
        "action_semantics": {"action": ["delta:ee_pos"] * 3 + ["delta:ee_rot"] * 3 + ["absolute:gripper"]},
        "licence": "CC-BY-4.0",
    },
    "droid": {  # DROID (Franka Panda); images 180x320 JPEG
        "embodiment": "franka_panda",
        "control_hz": 15.0,
        "cameras": ["observation/exterior_image_1_left", "observation/exterior_image_2_left",
                    "observation/wrist_image_left"],
        "state": ["observation/cartesian_position", "observation/gripper_position"],
        "action": ["action_dict/cartesian_velocity", "action_dict/gripper_position"],
        "language": "language_instruction",
        "action_semantics": {"action_dict/cartesian_velocity": ["velocity:ee_pos"] * 3 + ["velocity:ee_rot"] * 3,
                             "action_dict/gripper_position": "absolute:gripper"},
        "licence": "CC-BY-4.0",
    },
}


FALLBACK_HZ = 10.0
_LANGUAGE_CANDIDATES = ("language_instruction", "observation/natural_language_instruction",
                        "observation/language_instruction")


# ------------------------------------------------------------------------------------------------ features.json


def flatten_features(spec: Mapping[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    """TFDS features.json (proto JSON) -> {flattened key: {"kind", "shape", "dtype", "encoding"}} in file order.

    kind: image | tensor | text | label | unknown. `shape` is the per-step shape (None for unknown dims); keys
    under `steps/` are per-step features.
    """
    out: dict[str, dict[str, Any]] = {}
    if "featuresDict" in spec:
        for name, sub in (spec["featuresDict"].get("features") or {}).items():
            out.update(flatten_features(sub, f"{prefix}{name}/"))
        return out
    if "sequence" in spec:  # Dataset / Sequence: elements gain a leading T; the flat keys stay the same
        inner = flatten_features(spec["sequence"].get("feature") or {}, prefix)
        if prefix and prefix != STEPS and "steps/" in prefix:
            for v in inner.values():
                v["nested_sequence"] = True
        out.update(inner)
        return out
    key = prefix.rstrip("/")

    def dims(block: Mapping[str, Any]) -> list[int | None]:
        return [None if int(d) < 0 else int(d) for d in (block.get("shape") or {}).get("dimensions", [])]

    if "image" in spec:
        block = spec["image"]
        out[key] = {"kind": "image", "shape": dims(block), "dtype": block.get("dtype"),
                    "encoding": block.get("encodingFormat")}
    elif "tensor" in spec:
        block = spec["tensor"]
        out[key] = {"kind": "tensor", "shape": dims(block), "dtype": block.get("dtype"),
                    "encoding": block.get("encoding")}
    elif "text" in spec:
        out[key] = {"kind": "text", "shape": [], "dtype": "string"}
    elif "classLabel" in spec:
        out[key] = {"kind": "label", "shape": [], "dtype": "int64"}
    else:
        out[key] = {"kind": "unknown", "shape": None, "dtype": None}
    return out


def _size(spec: Mapping[str, Any] | None) -> int | None:
    """Values per step of a tensor feature (1 for scalars), None when unknown."""
    if not spec or spec.get("shape") is None or any(d is None for d in spec["shape"]):
        return None
    return int(np.prod(spec["shape"], dtype=np.int64)) if spec["shape"] else 1


# ------------------------------------------------------------------------------------------------ key maps


def resolve_key_map(dataset: str, specs: Mapping[str, Mapping[str, Any]] | None,
                    overrides: Mapping[str, Any] | None = None, fps: float | None = None,
                    licence: str | None = None) -> dict[str, Any]:
    """The full-key map the probe uses: the table entry (with overrides), or the features.json fallback."""
    entry = dict(OXE_DATASETS.get(dataset, {}))
    entry.update(overrides or {})
    source = "table" if dataset in OXE_DATASETS or overrides else "features.json"
    specs = specs or {}
    if not entry.get("cameras") or not entry.get("action"):
        entry.update(_fallback_keys(specs))
        source = "features.json"
    km = {
        "dataset": dataset,
        "source": source,
        "embodiment": entry.get("embodiment", "unknown"),
        "cameras": [STEPS + k for k in entry.get("cameras", [])],
        "state": [STEPS + k for k in entry.get("state", [])],
        "action": [STEPS + k for k in entry.get("action", [])],
        "language": STEPS + entry["language"] if entry.get("language") else None,
        "action_names": list(entry.get("action_names", [])),
        "state_names": list(entry.get("state_names", [])),
        "action_semantics": {STEPS + k: v for k, v in (entry.get("action_semantics") or {}).items()},
        "control": [STEPS + k for k in entry.get("control", [])],
        "licence": licence or entry.get("licence") or "unknown (see the dataset card)",
    }
    if fps:
        km["fps"], km["fps_source"] = float(fps), "option"
    elif entry.get("control_hz"):
        km["fps"], km["fps_source"] = float(entry["control_hz"]), "table"
    else:
        km["fps"], km["fps_source"] = FALLBACK_HZ, "assumed"
    missing = [k for k in km["action"] if k not in km["action_semantics"]]
    # a dataset outside the table: most of OXE commands per-step end-effector deltas (Octo's transforms), so
    # that is assumed, by key name where it says more, and marked so; the source option overrides it
    for k in missing:
        leaf = _leaf(k)
        km["action_semantics"][k] = ("velocity" if "velocity" in leaf else
                                     "absolute:gripper" if "gripper" in leaf and "delta" not in leaf else "delta")
    km["semantics_source"] = "assumed" if missing else source
    km["dims"] = {k: _size(specs.get(k)) for k in km["state"] + km["action"] + km["control"]}
    return km


def _fallback_keys(specs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    images = [k[len(STEPS):] for k, s in specs.items()
              if k.startswith(STEPS + "observation/") and s["kind"] == "image"
              and (not s.get("shape") or s["shape"][-1] in (3, None))]

    def rank(k: str) -> int:  # "image" first, then other scene cameras, wrist/hand/depth views last
        leaf = k.rsplit("/", 1)[-1]
        return 0 if leaf == "image" else 2 if any(w in leaf for w in ("wrist", "hand", "depth")) else 1

    images.sort(key=rank)  # stable: features.json order inside each rank
    control = [k[len(STEPS):] for k in specs if k.startswith(STEPS + "action/") and _is_control(k)]
    if "steps/action" in specs:
        action = ["action"]
    else:
        action = [k[len(STEPS):] for k, s in specs.items() if k.startswith(STEPS + "action/")
                  and s["kind"] == "tensor" and str(s.get("dtype", "")).startswith("float") and not _is_control(k)]
    state = ["observation/state"] if "steps/observation/state" in specs else []
    language = next((c for c in _LANGUAGE_CANDIDATES if specs.get(STEPS + c, {}).get("kind") == "text"), None)
    return {"cameras": images, "action": action, "state": state, "language": language, "control": control}


def _is_control(key: str) -> bool:
    """Episode-control fields inside an action dict (RT-1's terminate_episode): never part of the action vector."""
    return any(w in _leaf(key) for w in ("terminate", "is_terminal", "episode_end"))



def _leaf(key: str) -> str:
    return key.rsplit("/", 1)[-1]


def _names(keys: list[str], dims: list[int], given: list[str]) -> list[str]:
    if given and len(given) == sum(dims):
        return list(given)
    return [(_leaf(k) if d == 1 else f"{_leaf(k)}_{i}") for k, d in zip(keys, dims) for i in range(d)]


def _table_semantics(km: Mapping[str, Any], dims: list[int], names: list[str]) -> list[str]:
    """Per-dim semantics from the key map's per-key specs (one string for a key's dims, or a list per dim)."""
    out, at = [], 0
    for key, d in zip(km["action"], dims):
        out += actions.expand(km["action_semantics"][key], names[at:at + d], f"{km['dataset']} {key}")
        at += d
    return out

