"""Open X-Embodiment (tier L5): TFDS/RLDS builder dirs read without TensorFlow, one item per episode.
Layout, key table and quirks: docs/formats.md#oxe."""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from media.tfrecord import scan_records
from media.tfrecord_frames import camera_problem, decode_image_rgb, frame_uri, parse_episode, read_episode_record
from sources.media import check_finite, fingerprint
from sources.base import ACTION_OPTIONS, Item, ItemRef, SourceAdapter, SourceError, action_meaning, read_json
from sources.oxe_keys import (OXE_DATASETS, STEPS, _leaf, _names, _table_semantics,  # noqa: F401
                              columns, flatten_features, resolve_key_map, split_key)
from common.errors import BadInput

SPLITS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
_SHARD = re.compile(r"^(?P<name>.+)-(?P<split>[A-Za-z0-9_]+)\.tfrecord-(?P<index>\d+)-of-(?P<count>\d+)$")
_VERSION = re.compile(r"^\d+(\.\d+)*$")


# ------------------------------------------------------------------------------------------------ episodes


def _numbers(feats: dict[str, Any], key: str, where: str) -> Any:
    """A numeric feature's values; bytes are read as ZLIB-compressed float32 (how kuka's released shards store
    their state, which Octo's transform decodes), else they are bad input."""
    values = feats[key]
    if not isinstance(values, list):
        return values
    try:
        feats[key] = np.concatenate([np.frombuffer(zlib.decompress(v), "<f4") for v in values]) if values else values
    except (zlib.error, ValueError, TypeError):
        raise BadInput(f"{key} in {where} holds bytes that are neither numbers nor ZLIB-compressed float32") from None
    return feats[key]


def _per_step(feats: Mapping[str, Any], key: str, km: Mapping[str, Any], steps: int) -> tuple[int | None, str]:
    """(values per step of the whole feature, how many steps the feature holds as text) of a numeric feature."""
    values = feats[split_key(key)[0]]
    if isinstance(values, list):
        raise BadInput(f"{key} holds bytes, not numbers (key map {km['dataset']})")
    n = len(values)
    given = km["dims"].get(key) if split_key(key)[1] is None else None
    dim = given or (n // steps if steps and n % steps == 0 and n else None)
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
    required = [*km["action"], *km["state"]]
    missing = [k for k in required if split_key(k)[0] not in feats]
    if not any(k in feats for k in km["cameras"]):
        missing = [" or ".join(km["cameras"])] + missing
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
            _numbers(feats, split_key(key)[0], where)
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

    def stack(keys: list[str]) -> list[np.ndarray]:
        return [columns(k, np.asarray(feats[split_key(k)[0]], np.float64).reshape(steps, dims[k])) for k in keys]

    action_parts, state_parts = stack(km["action"]), stack(km["state"])
    actions = np.concatenate(action_parts, axis=1)
    state = np.concatenate(state_parts, axis=1) if state_parts else np.zeros((steps, 0))
    check_finite(f"actions ({', '.join(km['action'])}) of {where}", actions)
    if state.size:
        check_finite(f"state ({', '.join(km['state'])}) of {where}", state)
    return Episode(steps, actions, [p.shape[1] for p in action_parts], state, [p.shape[1] for p in state_parts], cams)


def _text(values: Any, steps: int = 0) -> list[str]:
    """The distinct strings of a text feature; a numeric one holds Unicode code points per step, zero-padded
    (language_table's `instruction`)."""
    if values is None:
        return []
    if not isinstance(values, list):
        codes = np.asarray(values, np.int64)
        if not steps or codes.size % steps:
            return []
        values = ["".join(chr(c) for c in row if c > 0).encode() for row in codes.reshape(steps, -1)]
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
    OPTIONS = frozenset({"datasets", "embodiment", "fps", "key_maps", "licence", "version"}) | ACTION_OPTIONS

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
        return read_json(path, "oxe")

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
        km = resolve_key_map(dataset, specs, overrides, self.options.get("fps"), self.options.get("licence"),
                             self.options.get("embodiment"))
        if km.get("action_problem") and not dataset_error:
            dataset_error = f"{builder.parent.name}/{builder.name}: {km['action_problem']}"
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

    def probe(self, ref: ItemRef) -> Item:
        d = ref.details
        if d.get("dataset_error"):
            raise BadInput(d["dataset_error"])
        if d.get("error"):
            raise BadInput(d["error"])
        shard = Path(ref.input_uri)
        km = d["key_map"]
        where = f"{shard.name} record {d['record']}"
        data = read_episode_record(shard, d["record"], d["offset"])
        feats = parse_episode(data, where)
        ep = read_episode(feats, km, where)
        # a camera with empty or undecodable bytes is bad input: the others are used, and it is named in extras
        images, skipped = {}, {}
        for cam in km["cameras"]:
            problem = "is not in the record" if cam not in feats else camera_problem(feats[cam])
            if problem:
                skipped[cam] = problem
            else:
                images[cam] = decode_image_rgb(feats[cam][0]).shape
        if not images:
            raise BadInput(f"no camera of {where} decodes: " + "; ".join(f"{c} {why}" for c, why in skipped.items()))
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
        control = {k: km["dims"].get(k) or len(feats[k]) // ep.steps for k in km["control"]
                   if k in feats and not isinstance(feats[k], list)}
        control.update({k: km["dims"].get(k) for k in km["control"] if split_key(k)[1] is not None
                        and split_key(k)[0] in feats})
        file_path = _text(feats.get("episode_metadata/file_path"))
        return self.item(
            ref,
            split=SPLITS.get(d["split_name"]),
            media_uris=[frame_uri(shard, d["record"], d["offset"], cam) for cam in cams],
            cameras=[_leaf(c) for c in cams],
            fps=fps,
            frame_count=ep.steps,
            width=int(width),
            height=int(height),
            embodiment=km["embodiment"],
            action_dim=int(ep.actions.shape[1]),
            action_names=action_names,
            action_semantics=semantics,
            action_timing=timing,
            state_dim=int(ep.state.shape[1]),
            state_names=_names(km["state"], ep.state_dims, km["state_names"]),
            language=list(dict.fromkeys(t for k in km["language"] for t in _text(feats.get(k), ep.steps))),
            licence=km["licence"],
            input_blake2b=hashlib.blake2b(data, digest_size=16).hexdigest(),
            input_bytes=len(data) + 16,
            extras={
                "dataset": d["dataset"], "version": d["version"], "split_name": d["split_name"],
                "shard": shard.name, "record": d["record"], "offset": d["offset"],
                "file_path": file_path[0] if file_path else None,
                "action_keys": km["action"], "action_dims": ep.action_dims,
                "state_keys": km["state"], "state_dims": ep.state_dims,
                "language_keys": km["language"], "key_map_source": km["source"],
                "embodiment_source": km["embodiment_source"],
                "action_semantics_source": came_from or km["semantics_source"], "episode_control": control,
                "fps_source": km["fps_source"],
                "camera_sizes": {_leaf(c): list(s[:2]) for c, s in images.items()},
                "cameras_skipped": {_leaf(c): why for c, why in skipped.items()},
            },
        )

    @classmethod
    def load_actions(cls, row: dict[str, Any]) -> np.ndarray:
        extras = json.loads(row.get("extras") or "{}")
        keys, dims = extras.get("action_keys"), extras.get("action_dims")
        if not keys or dims is None or extras.get("offset") is None:
            raise BadInput(f"item {row['item_id']} has no OXE record location / action keys in its extras")
        shard = Path(row["input_uri"])
        where = f"{shard.name} record {extras.get('record')}"
        data = read_episode_record(shard, extras.get("record"), extras["offset"])
        bases = [split_key(k)[0] for k in keys]
        feats = parse_episode(data, where, set(bases) | {"steps/is_first"})
        missing = [k for k, b in zip(keys, bases) if b not in feats]
        if missing:
            raise BadInput(f"missing key {', '.join(missing)} in {where}")
        steps = int(row.get("frame_count") or 0) or len(feats.get("steps/is_first", []))
        parts = []
        for key, base, dim in zip(keys, bases, dims):
            values = np.asarray(_numbers(feats, base, where), dtype=np.float64)
            if not steps or len(values) % steps:
                raise BadInput(f"{key} in {where} holds {len(values)} values, not a multiple of {steps} steps")
            part = columns(key, values.reshape(steps, -1))
            if part.shape[1] != dim:
                raise BadInput(f"{key} in {where} holds {part.shape[1]} values per step, expected {dim}")
            parts.append(part)
        actions = np.concatenate(parts, axis=1)
        check_finite(f"actions of {row['item_id']}", actions)
        return actions


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)
