"""A LeRobot dataset as the dataset checks read it, straight from disk (v2.0/v2.1 and v3.0): info.json, the
episodes metadata with its stats, the task table, meta/stats.json, and the data tables' bookkeeping columns
(episode_index, frame_index, timestamp, index, task_index) with action and state, read once per dataset.

Nothing here needs the catalog: `read_tables(root)` works on any dataset root, and the audit reads the roots of
its configured `lerobot` sources (`dataset_tables`). Whatever cannot be read is listed in `problems` for the
checks to report, never raised, so one broken file does not hide the rest of the dataset."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common.errors import BadInput
from sources.base import SourceError
from sources.lerobot_meta import (_column_2d, feature_dim, read_task_table, v2_episodes,
                                  v3_episodes)

V2_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V2_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V3_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
BOOKKEEPING = ("episode_index", "frame_index", "timestamp", "index", "task_index")
STAT_NAMES = ("min", "max", "mean", "std")


@dataclass
class Tables:
    root: Path
    prefix: str  # item ids of its episodes are f"{prefix}/episode_{index:06d}"
    info: dict[str, Any]
    version: str
    fps: float
    cameras: list[str]  # video feature keys
    action_key: str | None
    state_key: str | None
    episodes: dict[int, dict[str, Any]]  # episode_index → v2_episodes/v3_episodes entry (+ "stats" when stored)
    tasks: dict[int, str]
    stats: dict[str, Any] | None  # meta/stats.json
    data_files: list[str]  # every data parquet under data/, relative to root
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # bookkeeping columns over all data rows
    action: np.ndarray | None = None  # [rows, D], same row order
    state: np.ndarray | None = None
    row_file: np.ndarray | None = None  # data file number (in data_files) of each row
    problems: list[str] = field(default_factory=list)
    _rows: dict[int, np.ndarray] | None = None

    @property
    def v3(self) -> bool:
        return self.version.startswith("v3")

    @property
    def name(self) -> str:
        return self.prefix

    def item_id(self, episode: int) -> str:
        return f"{self.prefix}/episode_{int(episode):06d}"

    def segments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(order, episodes, starts): row numbers grouped by episode (file order within one), the listed episodes
        that have rows, and where each one's rows start in `order` — for per-episode reductions (`np.add.reduceat`)."""
        ep = self.columns.get("episode_index")
        if ep is None or not len(ep):
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        order = np.argsort(ep, kind="stable")
        order = order[np.isin(ep[order], list(self.episodes))]
        values, starts = np.unique(ep[order], return_index=True)
        return order, values, starts

    def rows(self) -> dict[int, np.ndarray]:
        """episode_index → its data row numbers, in file order (the order a reader sees them); listed episodes."""
        if self._rows is None:
            order, values, starts = self.segments()
            self._rows = {int(v): r for v, r in zip(values, np.split(order, starts[1:]))} if len(order) else {}
        return self._rows

    def video_files(self) -> dict[str, list[int]]:
        """Relative video file → the listed episodes that read it."""
        out: dict[str, list[int]] = {}
        for index, ep in self.episodes.items():
            for v in ep["videos"].values():
                out.setdefault(v["file"], []).append(index)
        return out


def _json(path: Path, problems: list[str]) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        problems.append(f"{path.name} is unreadable: {e}")
        return None


def _v2_stats(root: Path, problems: list[str]) -> dict[int, dict]:
    path = root / "meta" / "episodes_stats.jsonl"
    out: dict[int, dict] = {}
    if not path.exists():
        return out
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                entry = json.loads(line)
                out[int(entry["episode_index"])] = entry["stats"]
            except (ValueError, KeyError, TypeError) as e:
                problems.append(f"episodes_stats.jsonl line {n} is not an episode's stats: {e}")
    return out


def _v3_stats(root: Path, keys: list[str], problems: list[str]) -> dict[int, dict]:
    """stats/<feature>/<stat> columns of meta/episodes/*.parquet, for the `keys` features."""
    out: dict[int, dict] = {}
    for f in sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet")):
        try:
            names = pq.read_schema(f).names
            cols = [f"stats/{k}/{s}" for k in keys for s in STAT_NAMES if f"stats/{k}/{s}" in names]
            if not cols:
                continue
            table = pq.read_table(f, columns=["episode_index", *cols])
            index = table.column("episode_index").to_numpy()
            for c in cols:
                key, stat = c[len("stats/"):].rsplit("/", 1)
                col = table.column(c).combine_chunks()
                values = (col.flatten().to_numpy(zero_copy_only=False).reshape(len(index), -1)
                          if pa.types.is_list(col.type) or pa.types.is_large_list(col.type)
                          else col.to_numpy(zero_copy_only=False).reshape(len(index), -1))
                for i, v in zip(index, values):
                    out.setdefault(int(i), {}).setdefault(key, {})[stat] = v
        except (pa.ArrowException, OSError) as e:
            problems.append(f"{f.relative_to(root)} stats are unreadable: {e}")
    return out


def read_tables(root: str | Path, prefix: str | None = None, vectors: bool = True) -> Tables:
    """Read a LeRobot dataset root. `prefix` defaults to `lerobot/<folder name>`, the ingest's item ids;
    `vectors=False` leaves action and state unread."""
    root = Path(root)
    problems: list[str] = []
    info = _json(root / "meta" / "info.json", problems)
    if not isinstance(info, dict):
        raise SourceError(f"lerobot: {root} has no readable meta/info.json")
    version = str(info.get("codebase_version") or "")
    features = info.get("features") if isinstance(info.get("features"), dict) else {}
    cameras = [k for k, f in features.items() if isinstance(f, dict) and f.get("dtype") == "video"]
    action_key = next((k for k in ("action", "actions") if k in features), None)
    state_key = next((k for k in ("observation.state", "state") if k in features), None)
    v3 = version.startswith("v3")
    data_path = str(info.get("data_path") or (V3_DATA_PATH if v3 else V2_DATA_PATH))
    video_path = str(info.get("video_path") or (V3_VIDEO_PATH if v3 else V2_VIDEO_PATH))
    try:
        listed = (v3_episodes(root, version, data_path, video_path, cameras) if v3 else
                  v2_episodes(root, version, data_path, video_path, cameras, int(info.get("chunks_size") or 1000)))
    except SourceError as e:
        problems.append(str(e))
        listed = []
    episodes: dict[int, dict] = {}
    for ep in listed:
        if ep["episode_index"] in episodes:
            problems.append(f"episode {ep['episode_index']} is listed twice in the episodes metadata")
        episodes[ep["episode_index"]] = ep
    vector_keys = [k for k in (action_key, state_key) if k]
    stored = _v3_stats(root, vector_keys, problems) if v3 else _v2_stats(root, problems)
    for index, stats in stored.items():
        if index in episodes:
            episodes[index]["stats"] = stats
    try:
        fps = float(info.get("fps") or 0)
    except (TypeError, ValueError):
        fps = 0.0
    t = Tables(root, prefix or f"lerobot/{root.name}", info, version, fps, cameras, action_key, state_key, episodes,
               read_task_table(root), _json(root / "meta" / "stats.json", problems),
               sorted(str(p.relative_to(root)) for p in (root / "data").rglob("*.parquet")), problems=problems)
    _read_data(t, features, vector_keys if vectors else [])
    return t


def _read_data(t: Tables, features: dict[str, Any], vector_keys: list[str]) -> None:
    parts: dict[str, list[np.ndarray]] = {}
    files: list[np.ndarray] = []
    for n, rel in enumerate(t.data_files):
        path = t.root / rel
        try:
            if path.stat().st_size == 0 or path.read_bytes()[:4] != b"PAR1":
                t.problems.append(f"{rel} is not a parquet file")
                continue
            names = pq.read_schema(path).names
            table = pq.read_table(path, columns=[c for c in (*BOOKKEEPING, *vector_keys) if c in names])
        except (pa.ArrowException, OSError) as e:
            t.problems.append(f"{rel} is unreadable: {e}")
            continue
        rows = table.num_rows
        for c in BOOKKEEPING:
            col = (table.column(c).to_numpy() if c in table.column_names else None)
            if col is not None and col.dtype == object:  # a shape-[1] column stored as one-value lists
                col = np.array([v[0] if isinstance(v, (list, np.ndarray)) else v for v in col])
            parts.setdefault(c, []).append(col if col is not None else np.full(rows, np.nan))
        for k in vector_keys:
            try:
                arr = _column_2d(table, k, feature_dim(features[k]), rel) if k in table.column_names else None
            except BadInput as e:
                t.problems.append(str(e))
                arr = None
            parts.setdefault(k, []).append(arr if arr is not None else np.full((rows, feature_dim(features[k])), np.nan))
        files.append(np.full(rows, n))
    for c in BOOKKEEPING:
        if c in parts:
            t.columns[c] = np.concatenate(parts[c])
    if "episode_index" in t.columns:
        t.columns["episode_index"] = np.nan_to_num(t.columns["episode_index"], nan=-1).astype(np.int64)
    t.row_file = np.concatenate(files) if files else np.zeros(0, np.int64)
    if t.action_key in parts:
        t.action = np.concatenate(parts[t.action_key]).astype(np.float64)
    if t.state_key in parts:
        t.state = np.concatenate(parts[t.state_key]).astype(np.float64)


def dataset_tables(ctx) -> list[Tables]:
    """The LeRobot datasets of the audit's configured sources, each read once per audit (memoised)."""

    def compute() -> list[Tables]:
        out = []
        for s in ctx.cfg.sources:
            if s.kind != "lerobot":
                continue
            root = ctx.cfg.source_dir(s.root)  # a root in a bucket: its mirror in the source cache
            if not (root / "meta" / "info.json").exists():
                continue  # the source's own errors are the ingest's business
            repo = str((s.options or {}).get("repo_name") or root.name)
            out.append(read_tables(root, f"lerobot/{repo}"))
        return out

    return ctx.memo("lerobot_tables", compute)
