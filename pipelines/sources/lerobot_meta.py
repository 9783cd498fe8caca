"""LeRobot metadata and frame rows: feature names and dims from info.json, splits, the dataset card's licence, the
episode's rows of a data parquet, and the task table."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.stages import BadInput

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


