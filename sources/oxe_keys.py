"""Open X-Embodiment key maps: which features of an RLDS episode are cameras, state, action, language and
episode control, from the per-dataset table or, for other datasets, from their `features.json`.

Used by `sources/oxe.py`; see its docstring for the layout and docs/formats.md for the rules.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from manifests import actions
from sources.oxe_datasets import OXE_DATASETS
from sources.oxe_rates import OXE_OVERVIEW

STEPS = "steps/"

# The per-dataset key table (53 datasets of the Octo/OpenVLA mixture) lives in oxe_datasets.py with its sources.


FALLBACK_HZ = 10.0
# RT-1's action dict in the order its paper documents it: arm (x, y, z, roll, pitch, yaw, gripper opening), then
# base (x, y, yaw); `terminate_episode` (the mode switch) is episode control. Brohan et al. 2022, "RT-1: Robotics
# Transformer for real-world control at scale", §3 and §4 (action tokenization); the meanings as in the table above.
RT1_ORDER = ("world_vector", "rotation_delta", "gripper_closedness_action", "base_displacement_vector",
             "base_displacement_vertical_rotation")
RT1_SEMANTICS = {"world_vector": "delta:ee_pos", "rotation_delta": "delta:ee_rot",
                 "gripper_closedness_action": "delta:gripper", "base_displacement_vector": "delta:base",
                 "base_displacement_vertical_rotation": "delta:base"}


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
                    licence: str | None = None, embodiment: str | None = None) -> dict[str, Any]:
    """The full-key map the probe uses: the table entry (with overrides), or the features.json fallback; the
    embodiment and control rate of a dataset outside the key table come from the OXE overview (`oxe_rates.py`)."""
    entry = dict(OXE_DATASETS.get(dataset, {}))
    entry.update(overrides or {})
    source = "table" if dataset in OXE_DATASETS or overrides else "features.json"
    specs = specs or {}
    if not entry.get("cameras") or not entry.get("action"):
        # what the table or the key_maps option does not give is read from features.json; given keys stay
        fallback = _fallback_keys(specs)
        given = [k for k in fallback if entry.get(k)]
        for key, value in fallback.items():
            if not entry.get(key):
                entry[key] = value
        if "action" in given:
            entry.pop("action_problem", None)  # the option chose the action: nothing left to guess
        source = f"key_maps option ({', '.join(given)}) + features.json" if given else "features.json"
    overview_embodiment, overview_hz = OXE_OVERVIEW.get(dataset, (None, None))
    language = entry.get("language") or []
    km = {
        "dataset": dataset,
        "source": source,
        "embodiment": embodiment or entry.get("embodiment") or overview_embodiment or "unknown",
        "embodiment_source": ("option" if embodiment else "table" if entry.get("embodiment") else
                              "OXE overview" if overview_embodiment else "unknown"),
        "cameras": [STEPS + k for k in entry.get("cameras", [])],
        "state": [STEPS + k for k in entry.get("state", [])],
        "action": [STEPS + k for k in entry.get("action", [])],
        "language": [STEPS + k for k in ([language] if isinstance(language, str) else language)],
        "action_names": list(entry.get("action_names", [])),
        "state_names": list(entry.get("state_names", [])),
        "action_semantics": {STEPS + k: v for k, v in (entry.get("action_semantics") or {}).items()},
        "control": [STEPS + k for k in entry.get("control", [])],
        "licence": licence or entry.get("licence") or "unknown (see the dataset card)",
        "action_problem": None,
    }
    if entry.get("action_problem"):
        shown, first = entry["action_problem"]
        km["action_problem"] = (f"the action dict of features.json holds several action vectors ({shown}) and "
                                f"{dataset} is not in the key table: name the one to use with the source option "
                                f"key_maps, e.g. {{{dataset}: {{action: [{first}]}}}}")
    if fps:
        km["fps"], km["fps_source"] = float(fps), "option"
    elif entry.get("control_hz"):
        km["fps"], km["fps_source"] = float(entry["control_hz"]), "table"
    elif overview_hz:
        km["fps"], km["fps_source"] = float(overview_hz), "OXE overview"
    else:
        km["fps"], km["fps_source"] = FALLBACK_HZ, "assumed"
    missing = [k for k in km["action"] if k not in km["action_semantics"]]
    # a dataset outside the table: RT-1's action keys mean what RT-1 documents; for others most of OXE commands
    # per-step end-effector deltas (Octo's transforms), so that is assumed, by key name where it says more, and
    # marked so; the source option overrides it
    for k in missing:
        leaf = _leaf(k)
        km["action_semantics"][k] = RT1_SEMANTICS.get(leaf) or (
            "velocity" if "velocity" in leaf else
            "absolute:gripper" if "gripper" in leaf and "delta" not in leaf else "delta")
    km["semantics_source"] = "assumed" if missing else source
    km["dims"] = {k: sliced_size(k, _size(specs.get(split_key(k)[0]))) for k in km["state"] + km["action"] + km["control"]}
    km["assumed"] = entry.get("assumed", "")
    return km


_SLICE = re.compile(r"^(?P<base>.+)\[(?P<start>-?\d*):(?P<stop>-?\d*)\]$")


def split_key(key: str) -> tuple[str, slice | None]:
    """`steps/action[:7]` -> ("steps/action", slice(None, 7)); a key without a column slice -> (key, None)."""
    m = _SLICE.match(key)
    if not m:
        return key, None
    return m["base"], slice(int(m["start"]) if m["start"] else None, int(m["stop"]) if m["stop"] else None)


def sliced_size(key: str, full: int | None) -> int | None:
    """Values per step a key reads: its column slice applied to the feature's `full` size."""
    cols = split_key(key)[1]
    if cols is None or full is None:
        return full
    return len(range(*cols.indices(full)))


def columns(key: str, values: np.ndarray) -> np.ndarray:
    """The key's columns of a [T, D] array (all of them for a key without a slice)."""
    cols = split_key(key)[1]
    return values if cols is None else values[:, cols]


def _is_text(spec: Mapping[str, Any]) -> bool:
    """A string feature: TFDS `Text`, or a `Tensor` of dtype string (how some datasets declare instructions)."""
    return spec.get("kind") == "text" or (spec.get("kind") == "tensor" and spec.get("dtype") == "string")


def _fallback_keys(specs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Keys of a dataset outside the table, from its features.json (all relative to `steps/`):

    cameras: RGB image features of the observation ("image" first, wrist/hand/depth views last); action: `action`,
    or the float features of an action dict in RT-1's documented order, then the rest in file order, episode
    control (terminate) left out and listed under `control`; state: the observation's float vectors whose name
    says state or proprio; language: every string feature (Text or string Tensor) whose name says instruction or
    language (embeddings are not text), `language_instruction` first.
    """
    steps = {k[len(STEPS):]: s for k, s in specs.items() if k.startswith(STEPS) and not s.get("nested_sequence")}
    images = [k for k, s in steps.items() if k.startswith("observation/") and s["kind"] == "image"
              and (not s.get("shape") or s["shape"][-1] in (3, None))]

    def rank(k: str) -> int:  # "image" first, then other scene cameras, wrist/hand/gripper/depth views last
        leaf = _leaf(k)
        return 0 if leaf == "image" else 2 if any(w in leaf for w in ("wrist", "hand", "gripper", "depth")) else 1

    images.sort(key=rank)  # stable: features.json order inside each rank
    control = [k for k in steps if k.startswith("action/") and _is_control(k)]
    if "action" in steps:
        action = ["action"]
    else:
        action = [k for k, s in steps.items() if k.startswith("action/") and s["kind"] == "tensor"
                  and str(s.get("dtype", "")).startswith("float") and not _is_control(k)]
        action.sort(key=lambda k: RT1_ORDER.index(_leaf(k)) if _leaf(k) in RT1_ORDER else len(RT1_ORDER))
        others = [k for k in action if _leaf(k) not in RT1_ORDER]
        if len(others) > 1:  # e.g. taco_play: absolute `actions` and two relative ones; concatenating them is wrong
            shown = ", ".join(f"{k} {tuple(steps[k].get('shape') or ())}" for k in others)
            return {"cameras": images, "action": action, "control": control,
                    "action_problem": (shown, others[0])} | _observation_keys(steps)
    return {"cameras": images, "action": action, "control": control} | _observation_keys(steps)


def _observation_keys(steps: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """State (the observation's float vectors named state/proprio) and language (string features named
    instruction/language, `language_instruction` first) of a features.json's steps."""
    state = [k for k, s in steps.items() if k.startswith("observation/") and s["kind"] == "tensor"
             and str(s.get("dtype", "")).startswith("float") and len(s.get("shape") or []) <= 1
             and any(w in _leaf(k) for w in ("state", "proprio"))]
    language = [k for k, s in steps.items() if _is_text(s) and "embedding" not in _leaf(k)
                and any(w in _leaf(k) for w in ("instruction", "language"))]
    language.sort(key=lambda k: 0 if k == "language_instruction" else 1)
    return {"state": state, "language": language}


def _is_control(key: str) -> bool:
    """Episode-control fields inside an action dict (RT-1's terminate_episode): never part of the action vector."""
    return any(w in _leaf(key) for w in ("terminate", "is_terminal", "episode_end"))



def _leaf(key: str) -> str:
    return split_key(key)[0].rsplit("/", 1)[-1]


def _names(keys: list[str], dims: list[int], given: list[str]) -> list[str]:
    if given and len(given) == sum(dims):
        return list(given)
    out = []
    for k, d in zip(keys, dims):
        cols = split_key(k)[1]
        first = (cols.start or 0) if cols is not None and (cols.start or 0) >= 0 else 0
        out += [(_leaf(k) if d == 1 and cols is None else f"{_leaf(k)}_{first + i}") for i in range(d)]
    return out


def _table_semantics(km: Mapping[str, Any], dims: list[int], names: list[str]) -> list[str]:
    """Per-dim semantics from the key map's per-key specs (one string for a key's dims, or a list per dim)."""
    out, at = [], 0
    for key, d in zip(km["action"], dims):
        out += actions.expand(km["action_semantics"][key], names[at:at + d], f"{km['dataset']} {key}")
        at += d
    return out

