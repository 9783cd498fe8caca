"""LeRobot metadata and frame rows: feature names and dims from info.json, splits, the dataset card's licence, the
episode's rows of a data parquet, the task table and the episode's language."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sources.base import SourceError
from common.errors import BadInput

IMAGE_PREFIX = "observation.images."
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}


def short_camera(key: str) -> str:
    return key[len(IMAGE_PREFIX):] if key.startswith(IMAGE_PREFIX) else key


def flat_names(names: Any) -> list[str] | None:
    """Every name of an info.json `names` value in order: a list, a list of lists (`[["kLeftShoulderPitch", ...]]`,
    as some converters write them), a dict of lists (`{"motors": [...]}`, older datasets), nested alike; None when
    it holds anything else (null, numbers mixed with dicts, ...)."""
    if isinstance(names, (str, int)) and not isinstance(names, bool):
        return [str(names)]
    if isinstance(names, dict):
        names = list(names.values())
    if not isinstance(names, list):
        return None
    out: list[str] = []
    for n in names:
        sub = flat_names(n)
        if sub is None:
            return None
        out += sub
    return out


def feature_names(key: str, feature: dict[str, Any]) -> list[str]:
    """info.json `names` of a vector feature (any nesting `flat_names` reads) when they name every dim, else
    `<key>_<i>`."""
    dim = feature_dim(feature)
    names = flat_names(feature.get("names"))
    if names and len(names) == dim:
        return names
    return [f"{key}_{i}" for i in range(dim)]


def declared_size(feature: dict[str, Any]) -> tuple[int, int] | None:
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




def _text_lines(path: Path) -> list[str]:
    """The lines of a JSONL metadata file, or `SourceError` naming it when it is not UTF-8 text."""
    try:
        return path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise SourceError(f"lerobot: {path} is not UTF-8 text: {e}") from e


def read_task_table(root: Path) -> dict[int, str]:
    """task_index -> task text from meta/tasks.jsonl (v2.x) or meta/tasks.parquet (v3.0; lerobot writes the text
    as the pandas index); {} when the dataset has neither."""
    jsonl = root / "meta" / "tasks.jsonl"
    if jsonl.exists():
        out = {}
        for line in _text_lines(jsonl):
            if line.strip():
                entry = json.loads(line)
                out[int(entry["task_index"])] = str(entry["task"])
        return out
    parquet = root / "meta" / "tasks.parquet"
    if parquet.exists():
        df = pq.read_table(parquet).to_pandas()
        if "task" in df.columns:
            return {int(i): str(t) for i, t in zip(df["task_index"], df["task"])}
        return {int(i): str(t) for t, i in zip(df.index, df["task_index"])}
    return {}


def language_columns(features: dict[str, Any]) -> list[str]:
    """Integer annotation columns that index the task table with language (GR00T-style
    `annotation.human.action.task_description`); other annotation columns (`annotation.human.validity`) do not."""
    return [k for k, f in features.items() if k.startswith("annotation.") and isinstance(f, dict)
            and str(f.get("dtype", "")).startswith("int") and any(w in k for w in ("task_description", "instruction"))]


def episode_language(table: pa.Table, columns: Sequence[str], tasks: dict[int, str],
                     episode_tasks: Sequence[str]) -> tuple[list[str], list[str]]:
    """(language lines, episode tasks that are not language): the texts the rows' task_index and the language
    annotation `columns` point at, in first-seen order; the episode metadata's tasks when rows or table say
    nothing. Tasks the episode lists but no language column points at (annotation pseudo-tasks such as "valid")
    are returned apart so they are recorded, never used as language."""
    indices: list[int] = []
    for col in ("task_index", *columns):
        if col in table.column_names:
            for v in table.column(col).to_pylist():  # a scalar, or a one-value list (shape [1])
                indices += [int(i) for i in (v if isinstance(v, list) else [v]) if i is not None]
    lines = [tasks[i] for i in dict.fromkeys(indices) if i in tasks]
    if not lines:
        return [str(t) for t in episode_tasks], []
    return lines, [str(t) for t in episode_tasks if str(t) not in lines]


def v2_episodes(root: Path, version: str, data_path: str, video_path: str, camera_keys: Sequence[str],
                chunks_size: int) -> list[dict[str, Any]]:
    """v2.x: the episodes of meta/episodes.jsonl, with their data file and per-camera mp4 (whole file)."""
    path = root / "meta" / "episodes.jsonl"
    if not path.exists():
        raise SourceError(f"lerobot: {path} is missing (codebase_version {version} lists its episodes there)")
    episodes = []
    for n, line in enumerate(_text_lines(path), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            index = int(entry["episode_index"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise SourceError(f"lerobot: {path} line {n} is not an episode entry: {e}") from e
        chunk = index // chunks_size
        fmt = {"episode_chunk": chunk, "chunk_index": chunk, "episode_index": index}
        episodes.append({
            "version": version, "episode_index": index, "length": entry.get("length"),
            "tasks": [str(t) for t in entry.get("tasks") or []],
            "data_file": data_path.format(**fmt),
            "videos": {k: {"file": video_path.format(video_key=k, **fmt), "from": 0.0, "to": None}
                       for k in camera_keys},
        })
    return episodes

def v3_episodes(root: Path, version: str, data_path: str, video_path: str,
                camera_keys: Sequence[str]) -> list[dict[str, Any]]:
    """v3.0: the episodes of meta/episodes/*.parquet, with their data file and per-camera window of the
    concatenated mp4s."""
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise SourceError(f"lerobot: no meta/episodes/chunk-*/file-*.parquet under {root} "
                          f"(codebase_version {version})")
    episodes = []
    for f in files:
        rel = str(f.relative_to(root))
        try:
            names = pq.read_schema(f).names
        except (pa.ArrowException, OSError) as e:
            raise SourceError(f"lerobot: episodes metadata {rel} is unreadable: {e}") from e
        need = ["episode_index", "length", "data/chunk_index", "data/file_index"]
        for k in camera_keys:
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
            for k in camera_keys:
                fmt = {"chunk_index": int(r[f"videos/{k}/chunk_index"]), "file_index": int(r[f"videos/{k}/file_index"])}
                videos[k] = {"file": video_path.format(video_key=k, **fmt),
                             "from": float(r[f"videos/{k}/from_timestamp"]), "to": float(r[f"videos/{k}/to_timestamp"])}
            episodes.append({
                "version": version, "episode_index": int(r["episode_index"]), "length": r["length"],
                "tasks": [str(t) for t in r.get("tasks") or []],
                "data_file": data_path.format(chunk_index=int(r["data/chunk_index"]),
                                                   file_index=int(r["data/file_index"])),
                "videos": videos, "meta_file": rel,
            })
    return episodes


def totals_mismatch(declared: dict[str, Any], episodes: list[dict[str, Any]]) -> dict[str, list[int]]:
    """{info.json total: [what it says, what the episodes metadata holds]} where they disagree (a dataset trimmed
    after its info.json was written): total_episodes against the episodes listed, total_frames against the sum of
    their lengths. Each episode's own length is checked against its data rows and decoded frames in `probe`."""
    counted = {"total_episodes": len(episodes),
               "total_frames": sum(int(e["length"]) for e in episodes if e.get("length") is not None)}
    out = {}
    for key, n in counted.items():
        claimed = declared.get(key)
        if isinstance(claimed, int) and not isinstance(claimed, bool) and claimed != n:
            out[key] = [claimed, n]
    return out
