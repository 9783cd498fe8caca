"""LeRobot datasets (tier L6 by default, L5 for the LeRobot mirrors of Open X-Embodiment), v2.x and v3.0: one item
per episode. Layout, options and quirks: docs/formats.md#lerobot."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sources.media import check_finite, fingerprint
from manifests import actions as action_semantics
from sources.base import ACTION_OPTIONS, Item, ItemRef, SourceAdapter, SourceError, action_meaning, read_json
from sources.lerobot_meta import (_card_licence, _column_2d, declared_size,  # noqa: F401  re-exported
                                  episode_language, feature_dim, feature_names, language_columns,
                                  parse_splits, read_episode_rows, read_task_table, short_camera,
                                  totals_mismatch, v2_episodes, v3_episodes)
from sources.lerobot_video import CameraWindow, composite_t_layout, probe_window  # noqa: F401
from common.errors import BadInput

V2_VERSIONS = ("v2.0", "v2.1")
V3_VERSIONS = ("v3.0",)
KNOWN_VERSIONS = V2_VERSIONS + V3_VERSIONS
V2_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V2_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V3_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
# Motus's image-source priority (data/lerobot/lerobot_dataset.py), extended with common single-camera names.
CAMERA_PRIORITY = (
    "observation.images.cam_concatenated",
    "observation.images.cam_high",
    "observation.images.main",
    "observation.image",
    "image",
    "observation.images.image",
    "observation.images.top",
    "observation.images.front",
    "observation.images.cam_left_wrist",
    "observation.images.cam_right_wrist",
)
DEFAULT_LICENCE = "unknown (see the dataset card)"


# ------------------------------------------------------------------------------------------------ adapter


class LeRobotSource(SourceAdapter):
    name = "lerobot"
    default_tier = 6
    OPTIONS = frozenset({"action_key", "cameras", "check_decode", "embodiment", "licence", "official_splits",
                           "repo_name", "state_key", "video_path",
                           "composite", "composite_cameras"}) | ACTION_OPTIONS  # the last two: removed, refused below

    def __init__(self, root, tier=None, **options):
        super().__init__(root, tier, **options)
        info_path = self.root / "meta" / "info.json"
        if not info_path.exists():
            raise SourceError(f"lerobot: {info_path} is missing (is {self.root} a LeRobot dataset folder?)")
        info = read_json(info_path, "lerobot")
        version = str(info.get("codebase_version"))
        if version not in KNOWN_VERSIONS:
            raise SourceError(
                f"lerobot: {info_path} has codebase_version {version!r}; this reader knows v2.0/v2.1 "
                "(meta/episodes.jsonl, one parquet and one mp4 per episode) and v3.0 (meta/episodes/*.parquet, "
                "concatenated data and video files)")
        self.version = version
        features = info.get("features")
        if not isinstance(features, dict) or not features:
            raise SourceError(f"lerobot: {info_path} has no features")
        try:
            self.fps = float(info["fps"])
        except (KeyError, TypeError, ValueError):
            raise SourceError(f"lerobot: {info_path} has no usable fps ({info.get('fps')!r})") from None
        if self.fps <= 0:
            raise SourceError(f"lerobot: {info_path} has fps {self.fps}")
        self.repo_name = str(options.get("repo_name") or self.root.name)
        self.camera_keys = self._select_cameras(features)
        # cameras the config names must be there in every episode; others may lack files (recorded per item)
        self.required_cameras = set(self.camera_keys) if options.get("cameras") else set()
        self.action_key = self._pick(features, options.get("action_key"), ("action", "actions"))
        self.state_key = self._pick(features, options.get("state_key"), ("observation.state", "state"))
        self.action_dim = feature_dim(features[self.action_key]) if self.action_key else 0
        self.state_dim = feature_dim(features[self.state_key]) if self.state_key else 0
        self.action_names = feature_names(self.action_key, features[self.action_key]) if self.action_key else []
        self.state_names = feature_names(self.state_key, features[self.state_key]) if self.state_key else []
        self.declared_sizes = {k: declared_size(features[k]) for k in self.camera_keys}
        removed = [k for k in ("composite", "composite_cameras") if k in options]
        if removed:  # nothing read extras["composite"]; the T layout itself is `composite_t_layout`
            raise SourceError(f"lerobot: the option {removed[0]} was removed (nothing read what it recorded); name "
                              "the cameras under `cameras` (e.g. [cam_high, cam_left_wrist, cam_right_wrist]) to "
                              "require them in every episode")
        self.embodiment = str(options.get("embodiment") or info.get("robot_type") or "unknown")
        self.licence = str(options.get("licence") or info.get("license") or _card_licence(self.root) or DEFAULT_LICENCE)
        self.splits = self._official_splits(info.get("splits"), options.get("official_splits", "auto"))
        self.data_path = str(info.get("data_path") or (V3_DATA_PATH if self.v3 else V2_DATA_PATH))
        self.video_path = str(options.get("video_path") or info.get("video_path")
                              or (V3_VIDEO_PATH if self.v3 else V2_VIDEO_PATH))
        self.video_path_from = ("the video_path option" if options.get("video_path") else
                                "info.json" if info.get("video_path") else "the default layout")
        self.chunks_size = int(info.get("chunks_size") or 1000)
        self.declared_totals = {k: info.get(k) for k in ("total_episodes", "total_frames")}
        self.check_decode = bool(options.get("check_decode", True))
        self.tasks = read_task_table(self.root)
        self.language_columns = language_columns(features)
        self.action_semantics, self.action_timing, self.semantics_from, self.action_check = self._action_meaning()

    @property
    def v3(self) -> bool:
        return self.version in V3_VERSIONS

    # ---------------------------------------------------------------------------------------- set-up
    def _action_meaning(self) -> tuple[list[str], str, str, dict[str, Any]]:
        """What the action dims mean: the `action_semantics` option, else the data check on the first data file
        (does action[t] track state[t+1], state[t+1] − state[t], or that × fps?), else absolute (assumed)."""
        if not self.action_key:
            return [], "after", "", {}
        check: dict[str, Any] = {}
        kinds: list[str | None] = [None] * self.action_dim
        if not self.options.get("action_semantics"):
            kinds, check = self._check_actions()
        decided = [k for k in kinds if k]
        # a dim the check cannot decide (it never moves) follows the others; nothing decided: joint targets,
        # what most LeRobot datasets record (assumed, and said so)
        majority = max(set(decided), key=decided.count) if decided else "absolute"
        spec = [f"{k or majority}:{action_semantics.part_from_name(n)}" for k, n in zip(kinds, self.action_names)]
        semantics, timing, came_from = action_meaning(self.options, self.action_names, spec, "after",
                                                      f"lerobot {self.repo_name}")
        return semantics, timing, came_from or ("data check" if decided else "assumed"), check

    def _check_actions(self, max_rows: int = 20000) -> tuple[list[str | None], dict[str, Any]]:
        """The data check on up to `max_rows` rows of the first data file; ([None] * D, reason) when impossible."""
        undecided: list[str | None] = [None] * self.action_dim
        if not self.state_key or self.state_dim != self.action_dim:
            return undecided, {"skipped": f"no state of the action's width ({self.state_key}: {self.state_dim} dims)"}
        files = sorted((self.root / "data").rglob("*.parquet"))
        if not files:
            return undecided, {"skipped": "no data parquet"}
        try:
            pf = pq.ParquetFile(files[0])
            cols = [c for c in (self.action_key, self.state_key, "episode_index") if c in pf.schema_arrow.names]
            batch = next(pf.iter_batches(batch_size=max_rows, columns=cols), None)
            if batch is None or self.action_key not in cols or self.state_key not in cols:
                return undecided, {"skipped": f"{files[0].name} lacks {self.action_key} or {self.state_key}"}
            table = pa.Table.from_batches([batch])
            a = _column_2d(table, self.action_key, self.action_dim, files[0].name)
            st = _column_2d(table, self.state_key, self.state_dim, files[0].name)
        except (BadInput, pa.ArrowException, OSError) as e:
            return undecided, {"skipped": f"unreadable {files[0].name}: {e}"}
        episode = (table.column("episode_index").to_numpy(zero_copy_only=False) if "episode_index" in table.column_names
                   else np.zeros(len(a)))
        kinds, medians = action_semantics.infer_kinds(a, st, episode[1:] == episode[:-1], self.fps)
        return kinds, {"file": str(files[0].relative_to(self.root)), "rows": int(len(a)),
                       "median_error": {k: round(v, 4) for k, v in medians.items()}}


    def _select_cameras(self, features: dict[str, Any]) -> list[str]:
        videos = [k for k, f in features.items() if isinstance(f, dict) and f.get("dtype") == "video"]
        if not videos:
            images = [k for k, f in features.items() if isinstance(f, dict) and f.get("dtype") == "image"]
            what = f"only image features stored in the parquet ({', '.join(images)})" if images else "no video features"
            raise SourceError(f"lerobot: {self.root.name} has {what}; this reader streams video features only")
        wanted = self.options.get("cameras")
        if wanted:
            if isinstance(wanted, str):
                wanted = [wanted]
            keys = []
            for cam in wanted:
                matches = [k for k in videos if k == cam or short_camera(k) == cam]
                if not matches:
                    raise SourceError(f"lerobot: camera {cam!r} is not a video feature of {self.root.name}; "
                                      f"it has {', '.join(short_camera(k) for k in videos)}")
                keys.append(matches[0])
            return list(dict.fromkeys(keys))
        ranked = [k for k in CAMERA_PRIORITY if k in videos]
        return ranked + [k for k in videos if k not in ranked]

    @staticmethod
    def _pick(features: dict[str, Any], chosen: str | None, defaults: Sequence[str]) -> str | None:
        if chosen:
            if chosen not in features:
                raise SourceError(f"lerobot: feature {chosen!r} is not in info.json (features: {', '.join(features)})")
            return chosen
        return next((k for k in defaults if k in features), None)

    def _official_splits(self, splits: Any, mode: Any) -> dict[str, str] | None:
        if mode is False or str(mode).lower() in ("false", "no", "off") or not isinstance(splits, dict) or not splits:
            return None
        if str(mode).lower() == "auto" and len(splits) < 2:
            return None  # {"train": "0:N"} is every lerobot writer's default, not a publisher's split
        return splits

    # ---------------------------------------------------------------------------------------- discovery

    def discover(self) -> Iterator[ItemRef]:
        layout = (self.root, self.version, self.data_path, self.video_path, self.camera_keys)
        episodes = v3_episodes(*layout) if self.v3 else v2_episodes(*layout, self.chunks_size)
        if not episodes:
            raise SourceError(f"lerobot: {self.root.name} lists no episodes")
        totals = totals_mismatch(self.declared_totals, episodes)
        if totals:  # info.json is not trusted: what the dataset holds is counted, and a disagreement reported
            where = "meta/episodes.jsonl" if not self.v3 else "meta/episodes/*.parquet"
            self.notes.append("info.json disagrees with " + where + ": " + "; ".join(
                f"{k} {claimed}, counted {counted}" for k, (claimed, counted) in totals.items()))
        for ep in sorted(episodes, key=lambda e: e["episode_index"]):
            if totals:
                ep["metadata_totals"] = totals
            index = ep["episode_index"]
            native_id = f"{self.repo_name}/episode_{index:06d}"
            data = self.root / ep["data_file"]
            files = [data] + [self.root / v["file"] for v in ep["videos"].values()]
            if ep.get("meta_file"):
                files.append(self.root / ep["meta_file"])
            yield ItemRef(self.item_id(native_id), native_id, str(data), fingerprint(files), ep)

    # ---------------------------------------------------------------------------------------- probe

    def probe(self, ref: ItemRef) -> Item:
        ep = ref.details
        index = int(ep["episode_index"])
        if ep.get("length") is None:
            raise BadInput(f"episode {index} has no length in the episodes metadata")
        length = int(ep["length"])
        if length < 2:
            raise BadInput(f"episode {index} has {length} frames")
        data = self.root / ep["data_file"]
        if not data.exists():
            raise BadInput(f"missing data file {ep['data_file']}")
        cols = [c for c in (self.action_key, self.state_key, "timestamp", "task_index", *self.language_columns) if c]
        table = read_episode_rows(data, index, cols, shared=self.v3)
        what = f"{ep['data_file']} episode {index}"
        if table.num_rows != length:
            raise BadInput(f"data file {ep['data_file']} has {table.num_rows} rows for episode {index}, "
                           f"the episodes metadata says length {length}")
        if "frame_index" in table.column_names:
            fi = table.column("frame_index").to_numpy(zero_copy_only=False)
            if not np.array_equal(fi, np.arange(length)):
                raise BadInput(f"{what}: frame_index is not 0..{length - 1}")
        digest = hashlib.blake2b(digest_size=16)
        arrays = {}
        for key, dim in ((self.action_key, self.action_dim), (self.state_key, self.state_dim)):
            if not key:
                continue
            if key not in table.column_names:
                raise BadInput(f"{what}: missing column {key}")
            arr = _column_2d(table, key, dim, what)
            check_finite(f"{key} of {what}", arr)
            digest.update(key.encode() + arr.tobytes())
            arrays[key] = arr
        data_bytes = sum(a.nbytes for a in arrays.values())

        wins, missing, extended = self._camera_windows(ep, length, digest)
        cams = list(wins)
        camera_start = [round(float(wins[k].first_time), 6) for k in cams]
        sizes = {short_camera(k): [wins[k].width, wins[k].height] for k in cams}
        video_bytes = sum(w.packet_bytes for w in wins.values())

        language, not_language = episode_language(table, self.language_columns, self.tasks, ep.get("tasks") or [])
        width, height = wins[cams[0]].width, wins[cams[0]].height
        extras: dict[str, Any] = {
            "layout": f"lerobot {self.version}", "episode_index": index, "data_file": ep["data_file"],
            "camera_keys": cams, "camera_start_s": camera_start, "camera_sizes": sizes, "cameras_missing": missing,
            "tasks_not_language": not_language, "metadata_totals": ep.get("metadata_totals") or {},
            "action_key": self.action_key, "state_key": self.state_key,
            "action_semantics_source": self.semantics_from, "action_check": self.action_check,
        }
        if self.v3:
            extras["video_windows"] = {short_camera(k): [ep["videos"][k]["from"], ep["videos"][k]["to"]] for k in cams}
            if extended:  # to_timestamp is the last frame's own time: the window was read one frame period longer
                extras["window_end_is_last_frame"] = [short_camera(k) for k in extended]
        mismatched = {short_camera(k): list(self.declared_sizes[k]) for k in cams
                      if self.declared_sizes.get(k) and list(self.declared_sizes[k]) != sizes[short_camera(k)]}
        if mismatched:
            extras["declared_sizes"] = mismatched  # info.json says otherwise; the decoded size wins
        return self.item(
            ref,
            split=parse_splits(self.splits, index) if self.splits else None,
            media_uris=[str(self.root / ep["videos"][k]["file"]) for k in cams],
            cameras=[short_camera(k) for k in cams],
            fps=self.fps,
            frame_count=length,
            width=width,
            height=height,
            start_s=camera_start[0],
            embodiment=self.embodiment,
            action_dim=self.action_dim,
            action_names=list(self.action_names),
            action_semantics=list(self.action_semantics),
            action_timing=self.action_timing if self.action_key else None,
            state_dim=self.state_dim,
            state_names=list(self.state_names),
            has_actions=self.action_key is not None,
            language=language,
            licence=self.licence,
            input_blake2b=digest.hexdigest(),
            input_bytes=int(data_bytes + video_bytes),
            extras=extras,
        )

    def _camera_windows(self, ep: dict[str, Any], length: int, digest: Any
                        ) -> tuple[dict[str, CameraWindow], dict[str, str], list[str]]:
        """Each camera's episode window, checked against the frames that really decode in it.

        Returns ({key: CameraWindow} of the cameras with files, {short name: reason} of those without, the cameras whose
        v3.0 `to_timestamp` is the last frame's own time). A camera without files is left out unless the config
        names it (`cameras`); none left is BadInput, and so is a file with the wrong frames.
        """
        wins, missing, extended = {}, {}, []
        for key in self.camera_keys:
            v = ep["videos"][key]
            path = self.root / v["file"]
            if not path.exists():
                missing[key] = self._missing_video(v["file"])
                continue
            if path.stat().st_size == 0:
                raise BadInput(f"empty video file {v['file']}")
            end = v["to"]
            # some writers store the last frame's timestamp as to_timestamp, one frame period short of the end:
            # tolerated (one period, no more), and the longer window must still decode exactly `length` frames
            if end is not None and abs(end - v["from"] - (length - 1) / self.fps) < 0.5 / self.fps:
                end += 1.0 / self.fps
                extended.append(key)
            win = probe_window(path, v["from"], end, self.fps, self.check_decode, digest, v["file"])
            window = f"[{v['from']:.3f}, {v['to']:.3f}) s" if v["to"] is not None else "(whole file)"
            if win.frames != length:
                why = ""
                if win.ended and win.frames < length:
                    where = (f"at {win.stream_end:.3f} s" if win.stream_end is not None
                             else "before any frame of the window decodes")
                    why = f"; the stream ends {where} (truncated file?)"
                raise BadInput(f"video {v['file']} holds {win.frames} decodable frames in the episode window {window}, "
                               f"the episode has {length} frames{why}")
            if win.width == 0:
                raise BadInput(f"video {v['file']}: no frame of the episode window decodes")
            wins[key] = win
        required = [k for k in missing if k in self.required_cameras]
        if required:
            raise BadInput("a camera the config names has no file: " + "; ".join(missing[k] for k in required))
        if not wins:
            raise BadInput("no camera has files: " + "; ".join(missing.values()))
        return wins, {short_camera(k): why for k, why in missing.items()}, extended

    def _missing_video(self, rel: str) -> str:
        """Why a video file is absent, naming the path the `video_path` template gives and, when the same file lies
        under another top-level folder (`video/` for `videos/`), that path and the option that reads it."""
        reason = f"missing video file {rel} (video_path {self.video_path!r} from {self.video_path_from})"
        parts = Path(rel).parts
        if len(parts) > 1:
            for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and p.name != parts[0]):
                if folder.joinpath(*parts[1:]).exists():
                    other = str(Path(folder.name, *parts[1:]))
                    template = folder.name + self.video_path[len(self.video_path.split("/")[0]):]
                    return f"{reason}; {other} exists: set the source option video_path: {template!r}"
        return reason

    # ---------------------------------------------------------------------------------------- actions

    @classmethod
    def load_actions(cls, row: dict[str, Any]) -> np.ndarray:
        extras = json.loads(row.get("extras") or "{}")
        path = Path(row["input_uri"])
        if "episode_index" not in extras:
            raise BadInput(f"item {row['item_id']} has no episode_index in its extras (ingested by another version?)")
        index = int(extras["episode_index"])
        key = extras.get("action_key")
        if not key:
            raise BadInput(f"lerobot item {row['item_id']} has no action feature")
        shared = str(extras.get("layout", "")).endswith(V3_VERSIONS)
        table = read_episode_rows(path, index, [key], shared=shared)
        if key not in table.column_names:
            raise BadInput(f"missing column {key} in {path.name} for {row['item_id']}")
        dim = int(row.get("action_dim") or 0)
        if not dim:
            first = table.column(key).combine_chunks()
            dim = len(first[0].as_py()) if len(first) and isinstance(first[0].as_py(), list) else 1
        actions = _column_2d(table, key, dim, f"{path.name} episode {index}")
        expected = row.get("frame_count")
        if expected is not None and actions.shape[0] != int(expected):
            raise BadInput(f"{path.name} has {actions.shape[0]} action rows for episode {index}, "
                           f"the item has {expected} frames")
        check_finite(f"{key} of {row['item_id']}", actions)
        return actions
