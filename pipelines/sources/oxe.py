"""Open X-Embodiment (tier L5): TFDS/RLDS builder dirs read without TensorFlow, one item per episode.

Layout read (facts: shared research motus_and_formats.md §2.3; gs://gresearch/robotics/<name>/<version>/):

    <builder>/dataset_info.json                          name, version, splits[{name, shardLengths}]
    <builder>/features.json                              the TFDS FeaturesDict (proto JSON)
    <builder>/<name>-<split>.tfrecord-XXXXX-of-YYYYY     one tf.train.Example per EPISODE

The root is one builder dir, a dataset dir holding version dirs (`<name>/0.1.0/`, the newest is read unless
the `version` option pins one), or a folder of dataset dirs (`<root>/<name>/<version>/`).

How TFDS stores an RLDS episode (tensorflow_datasets `core/example_serializer.py`): the nested feature dict is
flattened with "/" (`steps/observation/image`, `steps/action/world_vector`, `episode_metadata/file_path`), and
`steps` (a `tfds.features.Dataset`, i.e. a Sequence) stacks its T step values, so each step field is ONE
Example feature holding all steps concatenated in step order: images are T encoded JPEG/PNG byte strings in a
bytes_list, a float tensor of shape (D,) is T*D values in a float_list, bools and ints are int64_list, text is a
bytes_list of T strings. float64 tensors travel as float_list (float32) too. Episode-level fields
(`episode_metadata/...`) hold one value. Only nested sequences inside `steps` would get extra
`ragged_row_lengths_*` fields; no dataset in the key map table uses them.

Per-dataset keys (image, state, action, language, control rate) come from the `OXE_DATASETS` table below (keys
are relative to `steps/`), extendable with the `key_maps` option; a dataset not in the table falls back to
`features.json` (its RGB image features, `action`, `observation/state`, a language text feature) at the
`fps` option's rate (10 Hz when unset, marked `fps_source: assumed` in extras).

Items: `oxe/<dataset>/<split>/<episode index>`, the index counting episodes in file order over the split's
shards (shard 0 first). `episode_metadata/file_path`, when the dataset has it, is kept in extras. Split:
`train` -> train, `val`/`validation` -> val, `test` -> test, any other name -> the driver's hash split.
Actions: RLDS step t holds observation t and the action taken after it, so `actions[t]` belongs to frame t
(timing `after`). What each dim means comes from the table's `action_semantics` (per action key), else it is
assumed (per-step delta, velocity or gripper by key name; extras `action_semantics_source: assumed`); the
`action_semantics` / `action_timing` options (or a `key_maps` entry's `action_semantics`) override it. Episode
control fields (`terminate_episode`) stay out of the action vector; extras `episode_control` names them.

Media: frames stay inside the record. `media_uris` hold one URI per camera:

    <shard path>#record=<index in shard>&offset=<byte offset>&key=<feature key>
    e.g. /data/fractal20220817_data/0.1.0/fractal20220817_data-train.tfrecord-00000-of-01024#record=3&offset=918231&key=steps/observation/image

`iter_tfrecord_frames(uri)` yields that camera's frames as RGB uint8 arrays (TFDS encodes RGB arrays as standard
JPEG/PNG; cv2 decodes to BGR, which is swapped back here). `offset` wins when present; without it the record is
found by walking the shard's headers up to `record`.

Malformed input: a dataset dir without features.json, a shard missing although dataset_info.json declares it, a
truncated or CRC-damaged record (reason names the file and byte offset), steps whose counts disagree, missing
key-map keys, undecodable images and non-finite actions/states each quarantine the episodes concerned
(BadInput); the other episodes and datasets still ingest. A root holding no builder dir at all is a SourceError.
`input_blake2b` is the blake2b-128 of the episode's record bytes (a shard is hundreds of MB; hashing it per episode
would read it once per episode).
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import cv2
import numpy as np

from pipelines.media import check_finite, fingerprint
from manifests import actions
from pipelines.sources.base import ItemRef, SourceAdapter, SourceError, action_meaning, dumps_extras
from pipelines.sources.tfrecord import ExampleDecodeError, TFRecordError, parse_example, read_record_at, scan_records
from pipelines.stages import BadInput

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
SPLITS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
_SHARD = re.compile(r"^(?P<name>.+)-(?P<split>[A-Za-z0-9_]+)\.tfrecord-(?P<index>\d+)-of-(?P<count>\d+)$")
_VERSION = re.compile(r"^\d+(\.\d+)*$")
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


# ------------------------------------------------------------------------------------------------ media URIs


def frame_uri(shard: str | Path, record: int, offset: int, key: str) -> str:
    """`<shard>#record=<n>&offset=<byte>&key=<feature key>`: one camera's frames inside one episode record."""
    return f"{shard}#record={int(record)}&offset={int(offset)}&key={urllib.parse.quote(key, safe='/')}"


def is_tfrecord_uri(uri: str) -> bool:
    """True for `frame_uri` URIs (what a frame streamer should hand to `iter_tfrecord_frames`)."""
    return "#" in uri and ".tfrecord" in uri.rsplit("#", 1)[0] and "key=" in uri.rsplit("#", 1)[1]


def parse_frame_uri(uri: str) -> tuple[Path, int | None, int | None, str]:
    """(shard path, record index or None, byte offset or None, feature key) of a `frame_uri` URI."""
    if "#" not in uri:
        raise BadInput(f"not a TFRecord frame URI (no #record=...&key=...): {uri}")
    path, fragment = uri.rsplit("#", 1)
    query = urllib.parse.parse_qs(fragment, keep_blank_values=True)
    try:
        key = query["key"][0]
        record = int(query["record"][0]) if "record" in query else None
        offset = int(query["offset"][0]) if "offset" in query else None
    except (KeyError, ValueError, IndexError) as e:
        raise BadInput(f"malformed TFRecord frame URI {uri!r}: expected #record=<n>&offset=<byte>&key=<key>") from e
    if record is None and offset is None:
        raise BadInput(f"TFRecord frame URI {uri!r} names neither record nor offset")
    return Path(path), record, offset, key


def read_episode_record(shard: str | Path, record: int | None, offset: int | None) -> bytes:
    """The verified bytes of one record (by byte offset, else by walking the headers to index `record`)."""
    shard = Path(shard)
    if not shard.exists():
        raise BadInput(f"missing shard file {shard.name}")
    try:
        if offset is None:
            found, err = scan_records(shard)
            if record is None or record >= len(found):
                raise BadInput(f"{shard.name}: record {record} not found ({len(found)} readable records"
                               + (f"; {err}" if err else "") + ")")
            offset = found[record][0]
        with open(shard, "rb") as f:
            data, _ = read_record_at(f, shard, offset)
    except TFRecordError as e:
        raise BadInput(str(e)) from e
    except OSError as e:
        raise BadInput(f"unreadable shard {shard.name}: {e}") from e
    return data


def _parse(data: bytes, where: str, keys=None) -> dict[str, Any]:
    try:
        return parse_example(data, keys)
    except ExampleDecodeError as e:
        raise BadInput(f"{where}: not a tf.train.Example: {e}") from e


def decode_image_rgb(data: bytes) -> np.ndarray | None:
    """Encoded JPEG/PNG bytes -> RGB uint8 [H, W, 3] (TFDS encodes RGB arrays; cv2 decodes to BGR)."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def iter_tfrecord_frames(uri: str) -> Iterator[np.ndarray]:
    """Yield the frames named by a `frame_uri` URI, decoded one at a time, as RGB uint8 [H, W, 3].

    Raises BadInput for a missing/truncated/corrupt shard, a missing key or an undecodable image.
    """
    shard, record, offset, key = parse_frame_uri(uri)
    data = read_episode_record(shard, record, offset)
    where = f"{shard.name} record {record if record is not None else '@' + str(offset)}"
    feats = _parse(data, where, {key})
    images = feats.get(key)
    if images is None:
        raise BadInput(f"missing key {key} in {where}")
    if not isinstance(images, list):
        raise BadInput(f"{key} in {where} is a numeric feature, not encoded images")
    for i, buf in enumerate(images):
        frame = decode_image_rgb(buf)
        if frame is None:
            raise BadInput(f"{key} step {i} in {where} does not decode (not JPEG/PNG)")
        yield frame


# ------------------------------------------------------------------------------------------------ episodes


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


def _per_step(feats: Mapping[str, Any], key: str, km: Mapping[str, Any], steps: int) -> tuple[int | None, str]:
    """(values per step, how many steps the feature holds as text) of a numeric per-step feature."""
    values = feats[key]
    if isinstance(values, list):
        raise BadInput(f"{key} holds bytes, not numbers (key map {km['dataset']})")
    n = len(values)
    dim = km["dims"].get(key) or (n // steps if steps and n % steps == 0 and n else None)
    if not dim:
        return None, f"{n} values"
    return dim, (str(n // dim) if n % dim == 0 else f"{n} values ({dim} per step)")


@dataclass
class Episode:
    steps: int
    actions: np.ndarray
    action_dims: list[int]
    state: np.ndarray
    state_dims: list[int]
    cameras: list[str]


def read_episode(feats: dict[str, Any], km: Mapping[str, Any], where: str) -> Episode:
    """Validate one decoded episode against its key map: keys present, step counts agree, values finite."""
    if not km["cameras"]:
        raise BadInput(f"{where}: no image feature known for dataset {km['dataset']} (not in the key map table and "
                       "features.json names none)")
    if not km["action"]:
        raise BadInput(f"{where}: no action feature known for dataset {km['dataset']}")
    required = [km["cameras"][0], *km["action"], *km["state"]]
    missing = [k for k in required if k not in feats]
    if missing:
        have = ", ".join(sorted(feats)[:12]) + (" ..." if len(feats) > 12 else "")
        raise BadInput(f"missing key {', '.join(missing)} in {where} (key map {km['dataset']} from {km['source']}; "
                       f"the record has {have})")
    cams = [k for k in km["cameras"] if k in feats]
    primary = cams[0]
    if not isinstance(feats[primary], list):
        raise BadInput(f"{primary} in {where} is numeric, not encoded images")
    n_images = len(feats[primary])
    steps = len(feats["steps/is_first"]) if "steps/is_first" in feats else n_images
    if steps < 1 or n_images < 1:
        raise BadInput(f"{where}: episode has no steps ({n_images} images)")
    # (what, key, count as text) for every per-step feature the item uses; all must equal `steps`
    counts = [("images", primary, str(n_images))]
    counts += [("images", cam, str(len(feats[cam]))) for cam in cams[1:]]
    dims: dict[str, int | None] = {}
    for what, keys in (("actions", km["action"]), ("states", km["state"])):
        for key in keys:
            dims[key], text = _per_step(feats, key, km, steps)
            counts.append((what, key, text))
    bad = [c for c in counts if c[2] != str(steps)]
    if bad:
        shown = [c for c in counts if c[1] in (primary, km["action"][0])] + [c for c in bad if c[1] not in
                                                                              (primary, km["action"][0])]
        summary = ", ".join(f"{text} {what}" for what, _, text in shown)
        detail = "; ".join(f"{key}: {text}" for _, key, text in bad)
        first = f", {steps} steps in steps/is_first" if "steps/is_first" in feats else ""
        raise BadInput(f"steps disagree: {summary} ({detail}{first}; {where})")

    def stack(keys: list[str]) -> np.ndarray:
        if not keys:
            return np.zeros((steps, 0))
        return np.concatenate([np.asarray(feats[k], np.float64).reshape(steps, dims[k]) for k in keys], axis=1)

    actions, state = stack(km["action"]), stack(km["state"])
    check_finite(f"actions ({', '.join(km['action'])}) of {where}", actions)
    if state.size:
        check_finite(f"state ({', '.join(km['state'])}) of {where}", state)
    return Episode(steps, actions, [dims[k] for k in km["action"]], state, [dims[k] for k in km["state"]], cams)


def _text(values: Any) -> list[str]:
    if not isinstance(values, list):
        return []
    out: list[str] = []
    for v in values:
        s = v.decode("utf-8", errors="replace").strip()
        if s and s not in out:
            out.append(s)
    return out


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(p) for p in name.split(".")) if _VERSION.match(name) else (-1,)


# ------------------------------------------------------------------------------------------------ adapter


class OXESource(SourceAdapter):
    name = "oxe"
    default_tier = 5

    def __init__(self, root, tier=None, **options):
        super().__init__(root, tier, **options)
        self.builders = self._find_builders()
        if not self.builders:
            raise SourceError(f"oxe: no TFDS builder dir under {self.root} (expected dataset_info.json, features.json "
                              "and <name>-<split>.tfrecord-XXXXX-of-YYYYY, or <name>/<version>/ folders of them)")
        wanted = self.options.get("datasets")
        if wanted:
            self.builders = {n: d for n, d in self.builders.items() if n in set(wanted)}
            if not self.builders:
                raise SourceError(f"oxe: none of the datasets {list(wanted)} under {self.root}")

    # -- discovery

    @staticmethod
    def _is_builder(d: Path) -> bool:
        return (d / "dataset_info.json").exists() or any(_SHARD.match(p.name) for p in d.glob("*.tfrecord-*"))

    def _find_builders(self) -> dict[str, Path]:
        """dataset name -> builder dir (the newest version, or the `version` option)."""
        root = self.root
        if self._is_builder(root):
            candidates = [root]
        else:
            candidates = []
            for child in sorted(p for p in root.iterdir() if p.is_dir()):
                if self._is_builder(child):
                    candidates.append(child)
                else:
                    candidates += [g for g in sorted(child.iterdir()) if g.is_dir() and self._is_builder(g)]
        pinned = self.options.get("version")
        best: dict[str, Path] = {}
        for d in candidates:
            if pinned and _VERSION.match(d.name) and d.name != str(pinned):
                continue
            name = self._dataset_name(d)
            if name not in best or _version_key(d.name) > _version_key(best[name].name):
                best[name] = d
        return dict(sorted(best.items()))

    @staticmethod
    def _dataset_info(d: Path) -> dict[str, Any]:
        path = d / "dataset_info.json"
        if not path.exists():
            return {}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise SourceError(f"oxe: {path} is not valid JSON: {e}") from e

    def _dataset_name(self, d: Path) -> str:
        info = self._dataset_info(d)
        if info.get("name"):
            return str(info["name"])
        for p in sorted(d.glob("*.tfrecord-*")):
            m = _SHARD.match(p.name)
            if m:
                return m["name"]
        return d.parent.name if _VERSION.match(d.name) else d.name

    def discover(self) -> Iterator[ItemRef]:
        for dataset, builder in self.builders.items():
            yield from self._discover_builder(dataset, builder)

    def _discover_builder(self, dataset: str, builder: Path) -> Iterator[ItemRef]:
        info = self._dataset_info(builder)
        version = str(info.get("version") or builder.name)
        features_path = builder / "features.json"
        dataset_error = None
        specs: dict[str, Any] = {}
        if not features_path.exists():
            dataset_error = (f"dataset dir {builder.parent.name}/{builder.name} has no features.json "
                             "(incomplete download? TFDS cannot read it either)")
        else:
            try:
                specs = flatten_features(json.loads(features_path.read_text()))
            except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as e:
                dataset_error = f"{builder.name}/features.json is not a TFDS FeaturesDict: {e}"
        overrides = (self.options.get("key_maps") or {}).get(dataset)
        km = resolve_key_map(dataset, specs, overrides, self.options.get("fps"), self.options.get("licence"))
        km_hash = hashlib.blake2b(json.dumps(km, sort_keys=True).encode(), digest_size=6).hexdigest()

        # shards per split: what the directory holds, and what dataset_info.json declares
        files: dict[str, dict[int, tuple[Path, int]]] = {}
        for p in builder.glob(f"{glob_escape(dataset)}-*.tfrecord-*"):
            m = _SHARD.match(p.name)
            if m and m["name"] == dataset:
                files.setdefault(m["split"], {})[int(m["index"])] = (p, int(m["count"]))
        declared: dict[str, list[int]] = {}
        for s in info.get("splits") or []:
            if s.get("name") and s.get("shardLengths"):
                declared[str(s["name"])] = [int(n) for n in s["shardLengths"]]
        order = {"train": 0, "val": 1, "validation": 1, "test": 2}
        for split in sorted(set(files) | set(declared), key=lambda s: (order.get(s, 9), s)):
            lengths = declared.get(split)
            n_shards = len(lengths) if lengths else max(c for _, c in files[split].values())
            episode = 0
            for index in range(n_shards):
                path = builder / f"{dataset}-{split}.tfrecord-{index:05d}-of-{n_shards:05d}"
                if index in files.get(split, {}):
                    path = files[split][index][0]
                want = lengths[index] if lengths and index < len(lengths) else None
                base = dict(dataset=dataset, version=version, builder=str(builder), split_name=split,
                            shard=str(path), key_map=km, dataset_error=dataset_error)
                fp = f"{fingerprint([path, features_path, builder / 'dataset_info.json'])}-{km_hash}"
                if not path.exists():
                    if want is None:
                        native = f"{dataset}/{split}/missing-shard-{index:05d}"
                        yield ItemRef(self.item_id(native), native, str(path), fp,
                                      {**base, "error": f"missing shard file {path.name}"})
                        continue
                    for k in range(want):
                        native = f"{dataset}/{split}/{episode + k}"
                        yield ItemRef(self.item_id(native), native, str(path), fp,
                                      {**base, "record": k, "error": f"missing shard file {path.name} (dataset_info.json "
                                                                      f"declares {want} episodes in it)"})
                    episode += want
                    continue
                found, err = scan_records(path)
                total = max(len(found) + (1 if err else 0), want or 0)
                for k in range(total):
                    native = f"{dataset}/{split}/{episode + k}"
                    details = {**base, "record": k}
                    if k < len(found):
                        details.update(offset=found[k][0], length=found[k][1])
                    elif err and k == len(found):
                        details["error"] = str(err)
                    elif err:
                        details["error"] = (f"{path.name}: record {k} cannot be located: the record at byte offset "
                                            f"{err.offset} is damaged ({err.problem.split(':')[0]})")
                    else:
                        details["error"] = (f"{path.name} ends after {len(found)} records but dataset_info.json "
                                            f"declares {want}: record {k} is missing")
                    yield ItemRef(self.item_id(native), native, str(path), fp, details)
                episode += total

    # -- probing

    def probe(self, ref: ItemRef) -> dict[str, Any]:
        d = ref.details
        if d.get("dataset_error"):
            raise BadInput(d["dataset_error"])
        if d.get("error"):
            raise BadInput(d["error"])
        shard = Path(ref.input_uri)
        km = d["key_map"]
        where = f"{shard.name} record {d['record']}"
        data = read_episode_record(shard, d["record"], d["offset"])
        feats = _parse(data, where)
        ep = read_episode(feats, km, where)
        images = {}
        for cam in ep.cameras:
            first = decode_image_rgb(feats[cam][0]) if feats[cam] else None
            if first is None or decode_image_rgb(feats[cam][-1]) is None:
                if cam == km["cameras"][0]:
                    raise BadInput(f"{cam} in {where} does not decode (not JPEG/PNG)")
                continue  # an optional camera that does not decode is left out
            images[cam] = first.shape
        cams = list(images)
        height, width = images[cams[0]][:2]
        fps = float(km["fps"])
        action_names = _names(km["action"], ep.action_dims, km["action_names"])
        try:
            semantics, timing, came_from = action_meaning(
                self.options, action_names, _table_semantics(km, ep.action_dims, action_names), "after",
                f"oxe {km['dataset']}")
        except (SourceError, ValueError) as e:
            raise BadInput(str(e)) from None
        control = {k: len(feats[k]) // ep.steps for k in km["control"] if k in feats and not isinstance(feats[k], list)}
        file_path = _text(feats.get("episode_metadata/file_path"))
        row = self.base_row(ref)
        row.update(
            group_id=ref.item_id,
            media_uris=[frame_uri(shard, d["record"], d["offset"], cam) for cam in cams],
            cameras=[_leaf(c) for c in cams],
            fps=fps,
            frame_count=ep.steps,
            width=int(width),
            height=int(height),
            duration_s=ep.steps / fps,
            start_s=0.0,
            embodiment=km["embodiment"],
            action_dim=int(ep.actions.shape[1]),
            action_names=action_names,
            action_semantics=semantics,
            action_timing=timing,
            state_dim=int(ep.state.shape[1]),
            state_names=_names(km["state"], ep.state_dims, km["state_names"]),
            has_actions=True,
            language=_text(feats.get(km["language"])) if km["language"] else [],
            licence=km["licence"],
            input_blake2b=hashlib.blake2b(data, digest_size=16).hexdigest(),
            input_bytes=len(data) + 16,
            extras=dumps_extras({
                "dataset": d["dataset"], "version": d["version"], "split_name": d["split_name"],
                "shard": shard.name, "record": d["record"], "offset": d["offset"],
                "file_path": file_path[0] if file_path else None,
                "action_keys": km["action"], "action_dims": ep.action_dims,
                "state_keys": km["state"], "state_dims": ep.state_dims,
                "language_key": km["language"], "key_map_source": km["source"],
                "action_semantics_source": came_from or km["semantics_source"], "episode_control": control,
                "fps_source": km["fps_source"],
                "camera_sizes": {_leaf(c): list(s[:2]) for c, s in images.items()},
            }),
        )
        split = SPLITS.get(d["split_name"])
        if split:
            row["split"] = split
        return row

    @classmethod
    def load_actions(cls, row: dict[str, Any]) -> np.ndarray:
        extras = json.loads(row.get("extras") or "{}")
        keys, dims = extras.get("action_keys"), extras.get("action_dims")
        if not keys or dims is None or extras.get("offset") is None:
            raise BadInput(f"item {row['item_id']} has no OXE record location / action keys in its extras")
        shard = Path(row["input_uri"])
        where = f"{shard.name} record {extras.get('record')}"
        data = read_episode_record(shard, extras.get("record"), extras["offset"])
        feats = _parse(data, where, set(keys) | {"steps/is_first"})
        missing = [k for k in keys if k not in feats]
        if missing:
            raise BadInput(f"missing key {', '.join(missing)} in {where}")
        steps = int(row.get("frame_count") or 0) or len(feats.get("steps/is_first", []))
        parts = []
        for key, dim in zip(keys, dims):
            values = np.asarray(feats[key], dtype=np.float64)
            if isinstance(feats[key], list) or len(values) != steps * dim:
                raise BadInput(f"{key} in {where} holds {len(values)} values, expected {steps} steps x {dim}")
            parts.append(values.reshape(steps, dim))
        actions = np.concatenate(parts, axis=1)
        check_finite(f"actions of {row['item_id']}", actions)
        return actions


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)
