"""LeRobot datasets (tier L6 by default, L5 for the LeRobot mirrors of Open X-Embodiment): one item per episode.

The root is a local LeRobot dataset folder (the one holding `meta/info.json`), e.g. what `pipelines.hub.fetch`
or `huggingface-cli download --repo-type dataset` puts on disk. The files are read directly with pyarrow/json
and PyAV, so any plain folder works (LeRobotDataset is not needed, nor the Hub). The reader is keyed on
`meta/info.json` `codebase_version` (facts: shared research motus_and_formats.md §2.6 and §1.4):

v3.0 (lerobot >= 0.4; many episodes per file)
    meta/info.json                                   fps, features, splits, data_path, video_path templates
    meta/episodes/chunk-XXX/file-XXX.parquet         episode_index, tasks, length, data/chunk_index,
                                                     data/file_index, videos/<key>/{chunk_index, file_index,
                                                     from_timestamp, to_timestamp}, stats/...
    data/chunk-XXX/file-XXX.parquet                  frame rows of several episodes (episode_index column)
    videos/<key>/chunk-XXX/file-XXX.mp4              one concatenated mp4 per camera and file (AV1 by default)
    An episode is the window [from_timestamp, to_timestamp) of its camera files: the item's `media_uris` are the
    concatenated mp4s and `start_s` is the window start, so the frame streamer decodes only that window.

v2.0 / v2.1 (lerobot 0.1-0.3, what Motus's loader reads; one file per episode)
    meta/info.json                                   chunks_size, data_path, video_path templates
    meta/episodes.jsonl                              {"episode_index", "tasks", "length"} per line
    meta/tasks.jsonl                                 {"task_index", "task"} per line
    data/chunk-XXX/episode_XXXXXX.parquet            chunk = episode_index // chunks_size
    videos/chunk-XXX/<key>/episode_XXXXXX.mp4        `start_s` = 0

Any other `codebase_version` (v1.x's safetensors layout, a future v4) is a SourceError naming the version.

Per item: item_id `lerobot/<repo name>/episode_<index:06d>` (repo name = option `repo_name`, else the root
folder's name), group_id = the item (an episode is its own recording), fps from info.json, frame_count = the
episode's `length`, checked in `probe` against the data rows and against the frames each camera's window really
decodes (a mismatch is a BadInput, the item is quarantined and the rest ingests). Actions and states come from
the `action` and `observation.state` features (dims and names from info.json); language is the episode's tasks.

Options
    tier: int                  5 for the OXE mirrors (default 6)
    cameras: [names]           which video features, in this order; short ("cam_high") or full
                               ("observation.images.cam_high") names. Default: all, primary camera first in
                               Motus's priority (cam_concatenated, cam_high, main/image/top/front, ...), wrists
                               after it; camera 0 is what flow uses.
    composite: bool            record Motus's 3-view T layout (head full size on top, wrists at half size side by
                               side below, see `composite_t_layout`) for the frame streamer: extras["composite"]
                               names the head/left/right cameras and the composite size. Default false.
    composite_cameras: [h, l, r]  which features form the composite (default cam_high, cam_left_wrist,
                               cam_right_wrist)
    official_splits: "auto" | true | false
                               info.json `splits` ("train": "0:40", "test": "40:50") give the split when they are a
                               real partition (more than one split named, "auto", the default) or always (true).
                               A lone {"train": "0:N"} is what every lerobot writer puts there, so under "auto" it
                               is ignored and the driver's hash split applies.
    action_key / state_key     default `action` (or `actions`) and `observation.state` (or `state`)
    embodiment, licence        default info.json `robot_type` / `license`, or the dataset card's `license:`
    check_decode: bool         decode every frame of each camera window (default true); false counts the
                               window's packets by timestamp and decodes only its first frame
    action_semantics           what the action dims mean (manifests/actions.py): one `kind[:part]` for all dims
                               ("delta", "absolute:joint") or a list per dim. Default: the data check below
    action_timing              "after" (default: row t is sent after frame t, as lerobot records) or "at"

Action semantics: unless the option says, the first data file is checked once per source: per dim, does action[t]
track state[t+1] (absolute), state[t+1] − state[t] (delta) or that × fps (velocity)? (rms error over the spread
of each target; within episodes only). Dims that never move follow the majority; the part (joint, gripper, ee_pos,
ee_rot) comes from the feature names. Extras record `action_semantics_source` (option | data check | assumed) and
the check's median errors.

Known traps
- Timestamps are floats written by the recorder: a window is [from - half a frame, to - half a frame) and the
  item's `start_s` is the time of the first frame that really is in the window (its pts), not the metadata value,
  so float drift across concatenated episodes (lerobot #3177) does not shift the window by a frame.
- In v3.0 each camera's mp4 rolls over to a new file on its own size budget, so cameras of one episode can start
  at different times in different files; `start_s` is camera 0's, and extras["camera_start_s"] holds each
  camera's start (same order as `cameras`) for streamers that read other cameras.
- A truncated concatenated mp4 (its moov atom is at the front, lerobot writes faststart) still opens: the
  episodes before the cut ingest, the later ones are quarantined because their windows hold too few frames.
- Image-mode datasets (`dtype: "image"`, frames as PNG bytes inside the parquet) have no video to stream: SourceError.
- AV1 (lerobot's default codec) decodes with PyAV's bundled libdav1d; torchcodec is not needed here.
- `input_blake2b` covers the episode's own bytes (its action/state rows and the compressed packets of its
  camera windows), not whole shared files, so checksumming stays proportional to the episode.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.media import check_finite, fingerprint
from manifests import actions as action_semantics
from pipelines.sources.base import ItemRef, SourceAdapter, SourceError, action_meaning, dumps_extras
from pipelines.stages import BadInput

V2_VERSIONS = ("v2.0", "v2.1")
V3_VERSIONS = ("v3.0",)
KNOWN_VERSIONS = V2_VERSIONS + V3_VERSIONS
V2_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V2_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V3_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
IMAGE_PREFIX = "observation.images."
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
T_LAYOUT = ("observation.images.cam_high", "observation.images.cam_left_wrist", "observation.images.cam_right_wrist")
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}
DEFAULT_LICENCE = "unknown (see the dataset card)"


# ------------------------------------------------------------------------------------------------ composite


def composite_t_layout(head: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Motus's 3-view frame: `head` at full size on top, `left` and `right` wrists at half size side by side below.

    For an H×W head the result is (H + H//2)×W: 480×640 → 720×640, RoboTwin's 240×320 → 360×320
    (Motus `data/utils/multi_camera_concat.py`, same cv2 bilinear resize). Motus needs an even W; here an odd W
    gives the left wrist W//2 columns and the right one the rest, so the rows always line up.
    """
    for name, img in (("head", head), ("left", left), ("right", right)):
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"{name} frame must be [H, W, 3], got {img.shape}")
    h, w = head.shape[:2]
    half_h, left_w = h // 2, w // 2
    if half_h == 0 or left_w == 0:
        raise ValueError(f"head frame {h}x{w} is too small for a T layout")
    out = np.empty((h + half_h, w, 3), dtype=head.dtype)
    out[:h] = head
    out[h:, :left_w] = cv2.resize(left, (left_w, half_h), interpolation=cv2.INTER_LINEAR)
    out[h:, left_w:] = cv2.resize(right, (w - left_w, half_h), interpolation=cv2.INTER_LINEAR)
    return out


# ------------------------------------------------------------------------------------------------ helpers


@dataclass(frozen=True)
class Window:
    """What one camera's episode window really holds."""

    frames: int
    first_time: float | None  # pts time of the first frame in the window
    width: int
    height: int
    stream_end: float | None  # time of the last frame the file yielded (None: nothing decoded)
    ended: bool  # the stream ran out before the window's end
    packet_bytes: int


def short_camera(key: str) -> str:
    return key[len(IMAGE_PREFIX):] if key.startswith(IMAGE_PREFIX) else key


def feature_names(key: str, feature: dict[str, Any]) -> list[str]:
    """info.json `names` of a vector feature: a list, {"motors": [...]} (older datasets) or null."""
    dim = feature_dim(feature)
    names = feature.get("names")
    if isinstance(names, dict):
        flat = [str(n) for v in names.values() if isinstance(v, list) for n in v]
        names = flat or None
    if isinstance(names, list) and len(names) == dim and all(isinstance(n, (str, int)) for n in names):
        return [str(n) for n in names]
    return [f"{key}_{i}" for i in range(dim)]


def feature_dim(feature: dict[str, Any]) -> int:
    return int(np.prod(feature.get("shape") or [0]))


def parse_splits(splits: Any, episode_index: int) -> str | None:
    """The split name info.json gives this episode ("train": "0:40" ranges, end exclusive), mapped to ours."""
    if not isinstance(splits, dict):
        return None
    for name, spec in splits.items():
        ranges = spec if isinstance(spec, list) else [spec]
        for r in ranges:
            m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(r))
            if m and int(m.group(1)) <= episode_index < int(m.group(2)):
                return SPLIT_NAMES.get(str(name).lower())
    return None


def _card_licence(root: Path) -> str | None:
    """`license:` from the YAML front matter of the dataset card (README.md), when there is one."""
    card = root / "README.md"
    if not card.exists():
        return None
    m = re.match(r"---\s*\n(.*?)\n---", card.read_text(errors="replace"), re.S)
    if not m:
        return None
    lic = re.search(r"^license:\s*(.+)$", m.group(1), re.M)
    return lic.group(1).strip().strip("'\"") if lic else None


def _column_2d(table: pa.Table, name: str, dim: int, what: str) -> np.ndarray:
    """A list / fixed-size-list column → float64 [rows, dim]; BadInput for ragged or mis-sized rows."""
    col = table.column(name).combine_chunks()
    n = len(col)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
        if col.null_count:
            raise BadInput(f"{what}: column {name} has {col.null_count} null rows")
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        if n and (lengths != dim).any():
            bad = int(np.nonzero(lengths != dim)[0][0])
            raise BadInput(f"{what}: column {name} row {bad} has {lengths[bad]} values, info.json says {dim}")
        values = col.flatten().to_numpy(zero_copy_only=False)
    else:  # a scalar feature (shape [1]) stored as a plain column
        values = col.to_numpy(zero_copy_only=False)
    try:
        return np.asarray(values, dtype=np.float64).reshape(n, dim)
    except ValueError as e:
        raise BadInput(f"{what}: column {name} does not fit [{n}, {dim}]: {e}") from e


def read_episode_rows(path: Path, episode_index: int, columns: Sequence[str], shared: bool) -> pa.Table:
    """The episode's frame rows of a data parquet, sorted by frame_index (a v3.0 file holds several episodes)."""
    try:
        schema = pq.read_schema(path)
        present = [c for c in dict.fromkeys([*columns, "frame_index", "episode_index"]) if c in schema.names]
        filters = [("episode_index", "=", episode_index)] if shared and "episode_index" in schema.names else None
        table = pq.read_table(path, columns=present, filters=filters)
    except FileNotFoundError as e:
        raise BadInput(f"missing data file {path.name}") from e
    except (pa.ArrowException, OSError) as e:
        raise BadInput(f"unreadable data file {path.name}: {e}") from e
    if "episode_index" in table.column_names and not shared:
        other = set(table.column("episode_index").to_pylist()) - {episode_index}
        if other:
            raise BadInput(f"data file {path.name} holds rows of episodes {sorted(other)[:5]}, expected {episode_index}")
    if "frame_index" in table.column_names:
        table = table.sort_by("frame_index")
    return table


def probe_window(path: Path, start: float, end: float | None, fps: float, check_decode: bool = True,
                 digest: Any = None, label: str | None = None) -> Window:
    """Frames of `path` whose pts lie in [start - half a frame, end - half a frame) (end None: to the end).

    Seeks to the window, then demuxes; with `check_decode` every packet of the window is decoded and only frames
    that decode are counted, else packets are counted by pts and only the first frame is decoded. The window's
    compressed packets go into `digest` (the episode's own video bytes, for its checksum).
    """
    label = label or path.name
    tol = 0.5 / fps
    lo, hi = start - tol, (end - tol) if end is not None else float("inf")
    reorder = 32 / fps  # packets come in decode order: look this far past the window before stopping (demux mode)
    frames, first_time, size, last_time, packet_bytes, ended = 0, None, (0, 0), None, 0, True
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise BadInput(f"no video stream in {label}")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            tb = stream.time_base
            if start > tol and tb:
                container.seek(max(0, int(lo / tb)), stream=stream, backward=True)
            for packet in container.demux(stream):
                t_packet = float(packet.pts * tb) if packet.pts is not None and tb is not None else None
                if t_packet is not None and packet.size and lo <= t_packet < hi:
                    packet_bytes += packet.size
                    if digest is not None:
                        digest.update(bytes(packet))
                    if not check_decode:
                        frames += 1
                        first_time = t_packet if first_time is None else min(first_time, t_packet)
                if not check_decode and t_packet is not None and t_packet >= hi + reorder:
                    ended = False
                    break
                if not (check_decode or size == (0, 0)):
                    continue
                stop = False
                for frame in packet.decode():
                    t = float(frame.time) if frame.time is not None else 0.0
                    last_time = t
                    if t < lo:
                        continue
                    if t >= hi:
                        stop = True
                        break
                    if size == (0, 0):
                        size = (frame.width, frame.height)
                    if check_decode:
                        frames += 1
                        first_time = t if first_time is None else first_time
                if stop and check_decode:
                    ended = False
                    break
    except BadInput:
        raise
    except FileNotFoundError as e:
        raise BadInput(f"missing video file {label}") from e
    except av.error.FFmpegError as e:
        raise BadInput(f"video {label} does not decode in the episode window ({e.strerror or type(e).__name__}; "
                       "truncated or corrupt file?)") from e
    except (OSError, ValueError) as e:
        raise BadInput(f"unreadable video {label}: {type(e).__name__}: {e}") from e
    return Window(frames, first_time, size[0], size[1], last_time, ended, packet_bytes)


# ------------------------------------------------------------------------------------------------ adapter


class LeRobotSource(SourceAdapter):
    name = "lerobot"
    default_tier = 6

    def __init__(self, root, tier=None, **options):
        super().__init__(root, tier, **options)
        info_path = self.root / "meta" / "info.json"
        if not info_path.exists():
            raise SourceError(f"lerobot: {info_path} is missing (is {self.root} a LeRobot dataset folder?)")
        try:
            info = json.loads(info_path.read_text())
        except json.JSONDecodeError as e:
            raise SourceError(f"lerobot: {info_path} is not valid JSON: {e}") from e
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
        self.action_key = self._pick(features, options.get("action_key"), ("action", "actions"))
        self.state_key = self._pick(features, options.get("state_key"), ("observation.state", "state"))
        self.action_dim = feature_dim(features[self.action_key]) if self.action_key else 0
        self.state_dim = feature_dim(features[self.state_key]) if self.state_key else 0
        self.action_names = feature_names(self.action_key, features[self.action_key]) if self.action_key else []
        self.state_names = feature_names(self.state_key, features[self.state_key]) if self.state_key else []
        self.declared_sizes = {k: self._declared_size(features[k]) for k in self.camera_keys}
        self.composite = self._composite(features) if options.get("composite") else None
        self.embodiment = str(options.get("embodiment") or info.get("robot_type") or "unknown")
        self.licence = str(options.get("licence") or info.get("license") or _card_licence(self.root) or DEFAULT_LICENCE)
        self.splits = self._official_splits(info.get("splits"), options.get("official_splits", "auto"))
        self.data_path = str(info.get("data_path") or (V3_DATA_PATH if self.v3 else V2_DATA_PATH))
        self.video_path = str(info.get("video_path") or (V3_VIDEO_PATH if self.v3 else V2_VIDEO_PATH))
        self.chunks_size = int(info.get("chunks_size") or 1000)
        self.check_decode = bool(options.get("check_decode", True))
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

    @staticmethod
    def _declared_size(feature: dict[str, Any]) -> tuple[int, int] | None:
        """(width, height) that info.json claims: video.width/height in `info` (v2.0: `video_info`), else shape."""
        info = feature.get("info") or feature.get("video_info") or {}
        if "video.width" in info and "video.height" in info:
            return int(info["video.width"]), int(info["video.height"])
        shape, names = feature.get("shape") or [], feature.get("names") or []
        if len(shape) == 3 and isinstance(names, list) and "height" in names and "width" in names:
            return int(shape[names.index("width")]), int(shape[names.index("height")])
        if len(shape) == 3:
            return int(shape[1]), int(shape[0])  # [H, W, C], what lerobot writes
        return None

    def _composite(self, features: dict[str, Any]) -> dict[str, Any]:
        names = self.options.get("composite_cameras") or T_LAYOUT
        keys = []
        for cam in names:
            match = [k for k in features if k == cam or short_camera(k) == cam]
            if not match or features[match[0]].get("dtype") != "video":
                raise SourceError(f"lerobot: composite needs video feature {cam!r}, which {self.root.name} lacks")
            keys.append(match[0])
        for k in keys:
            if k not in self.camera_keys:
                self.camera_keys.append(k)
        w, h = self._declared_size(features[keys[0]]) or (0, 0)
        return {"cameras": [short_camera(k) for k in keys], "width": w, "height": h + h // 2}

    def _official_splits(self, splits: Any, mode: Any) -> dict[str, str] | None:
        if mode is False or str(mode).lower() in ("false", "no", "off") or not isinstance(splits, dict) or not splits:
            return None
        if str(mode).lower() == "auto" and len(splits) < 2:
            return None  # {"train": "0:N"} is every lerobot writer's default, not a publisher's split
        return splits

    # ---------------------------------------------------------------------------------------- discovery

    def discover(self) -> Iterator[ItemRef]:
        episodes = self._v3_episodes() if self.v3 else self._v2_episodes()
        if not episodes:
            raise SourceError(f"lerobot: {self.root.name} lists no episodes")
        for ep in sorted(episodes, key=lambda e: e["episode_index"]):
            index = ep["episode_index"]
            native_id = f"{self.repo_name}/episode_{index:06d}"
            data = self.root / ep["data_file"]
            files = [data] + [self.root / v["file"] for v in ep["videos"].values()]
            if ep.get("meta_file"):
                files.append(self.root / ep["meta_file"])
            yield ItemRef(self.item_id(native_id), native_id, str(data), fingerprint(files), ep)

    def _v2_episodes(self) -> list[dict[str, Any]]:
        path = self.root / "meta" / "episodes.jsonl"
        if not path.exists():
            raise SourceError(f"lerobot: {path} is missing (codebase_version {self.version} lists its episodes there)")
        episodes = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                index = int(entry["episode_index"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise SourceError(f"lerobot: {path} line {n} is not an episode entry: {e}") from e
            chunk = index // self.chunks_size
            fmt = {"episode_chunk": chunk, "chunk_index": chunk, "episode_index": index}
            episodes.append({
                "version": self.version, "episode_index": index, "length": entry.get("length"),
                "tasks": [str(t) for t in entry.get("tasks") or []],
                "data_file": self.data_path.format(**fmt),
                "videos": {k: {"file": self.video_path.format(video_key=k, **fmt), "from": 0.0, "to": None}
                           for k in self.camera_keys},
            })
        return episodes

    def _v3_episodes(self) -> list[dict[str, Any]]:
        files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise SourceError(f"lerobot: no meta/episodes/chunk-*/file-*.parquet under {self.root} "
                              f"(codebase_version {self.version})")
        episodes = []
        for f in files:
            rel = str(f.relative_to(self.root))
            try:
                names = pq.read_schema(f).names
            except (pa.ArrowException, OSError) as e:
                raise SourceError(f"lerobot: episodes metadata {rel} is unreadable: {e}") from e
            need = ["episode_index", "length", "data/chunk_index", "data/file_index"]
            for k in self.camera_keys:
                need += [f"videos/{k}/{c}" for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
            missing = [c for c in need if c not in names]
            if missing:
                raise SourceError(f"lerobot: episodes metadata {rel} lacks columns {missing[:6]}")
            try:
                rows = pq.read_table(f, columns=need + (["tasks"] if "tasks" in names else [])).to_pylist()
            except (pa.ArrowException, OSError) as e:
                raise SourceError(f"lerobot: episodes metadata {rel} is unreadable: {e}") from e
            for r in rows:
                videos = {}
                for k in self.camera_keys:
                    fmt = {"chunk_index": int(r[f"videos/{k}/chunk_index"]), "file_index": int(r[f"videos/{k}/file_index"])}
                    videos[k] = {"file": self.video_path.format(video_key=k, **fmt),
                                 "from": float(r[f"videos/{k}/from_timestamp"]), "to": float(r[f"videos/{k}/to_timestamp"])}
                episodes.append({
                    "version": self.version, "episode_index": int(r["episode_index"]), "length": r["length"],
                    "tasks": [str(t) for t in r.get("tasks") or []],
                    "data_file": self.data_path.format(chunk_index=int(r["data/chunk_index"]),
                                                       file_index=int(r["data/file_index"])),
                    "videos": videos, "meta_file": rel,
                })
        return episodes

    # ---------------------------------------------------------------------------------------- probe

    def probe(self, ref: ItemRef) -> dict[str, Any]:
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
        cols = [c for c in (self.action_key, self.state_key, "timestamp", "task_index") if c]
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

        windows, camera_start, sizes, video_bytes = [], [], {}, 0
        for key in self.camera_keys:
            v = ep["videos"][key]
            path = self.root / v["file"]
            if not path.exists():
                raise BadInput(f"missing video file {v['file']}")
            if path.stat().st_size == 0:
                raise BadInput(f"empty video file {v['file']}")
            win = probe_window(path, v["from"], v["to"], self.fps, self.check_decode, digest, v["file"])
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
            camera_start.append(round(float(win.first_time), 6))
            sizes[short_camera(key)] = [win.width, win.height]
            video_bytes += win.packet_bytes
            windows.append(win)

        language = list(ep.get("tasks") or []) or self._tasks_from_rows(table)
        width, height = windows[0].width, windows[0].height
        extras: dict[str, Any] = {
            "layout": f"lerobot {self.version}", "episode_index": index, "data_file": ep["data_file"],
            "camera_keys": list(self.camera_keys), "camera_start_s": camera_start, "camera_sizes": sizes,
            "action_key": self.action_key, "state_key": self.state_key,
            "action_semantics_source": self.semantics_from, "action_check": self.action_check,
        }
        if self.v3:
            extras["video_windows"] = {short_camera(k): [ep["videos"][k]["from"], ep["videos"][k]["to"]]
                                       for k in self.camera_keys}
        mismatched = {short_camera(k): list(self.declared_sizes[k]) for k in self.camera_keys
                      if self.declared_sizes[k] and list(self.declared_sizes[k]) != sizes[short_camera(k)]}
        if mismatched:
            extras["declared_sizes"] = mismatched  # info.json says otherwise; the decoded size wins
        if self.composite:
            extras["composite"] = self.composite
        row = self.base_row(ref)
        row.update(
            group_id=ref.item_id,
            media_uris=[str(self.root / ep["videos"][k]["file"]) for k in self.camera_keys],
            cameras=[short_camera(k) for k in self.camera_keys],
            fps=self.fps,
            frame_count=length,
            width=width,
            height=height,
            duration_s=length / self.fps,
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
            extras=dumps_extras(extras),
        )
        if self.splits:
            split = parse_splits(self.splits, index)
            if split:
                row["split"] = split
        return row

    def _tasks_from_rows(self, table: pa.Table) -> list[str]:
        """Language when the episode metadata has no `tasks`: the rows' task_index through the tasks table."""
        if "task_index" not in table.column_names:
            return []
        indices = sorted(set(int(i) for i in table.column("task_index").to_pylist() if i is not None))
        names = self._task_table()
        return [names[i] for i in indices if i in names]

    def _task_table(self) -> dict[int, str]:
        jsonl = self.root / "meta" / "tasks.jsonl"
        if jsonl.exists():
            out = {}
            for line in jsonl.read_text().splitlines():
                if line.strip():
                    entry = json.loads(line)
                    out[int(entry["task_index"])] = str(entry["task"])
            return out
        parquet = self.root / "meta" / "tasks.parquet"
        if parquet.exists():
            df = pq.read_table(parquet).to_pandas()  # the task text is the pandas index (lerobot writes it so)
            if "task" in df.columns:
                return {int(i): str(t) for i, t in zip(df["task_index"], df["task"])}
            return {int(i): str(t) for t, i in zip(df.index, df["task_index"])}
        return {}

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
