"""Per-item action files: an item's actions, read once from its source at ingest, as a small Parquet table."""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from manifests.io import atomic_write

FORMAT = "motus-pyramid/actions/v1"
SUFFIX = ".actions.parquet"


def write_action_file(path: str | os.PathLike, item_id: str, actions: np.ndarray,
                      names: Sequence[str] = ()) -> tuple[int, str]:
    """Write `actions` [T, D] (float64, one row per native frame) atomically; return (bytes, blake2b)."""
    actions = np.asarray(actions, np.float64)
    if actions.ndim != 2:
        raise ValueError(f"actions of {item_id} have shape {actions.shape}, expected [T, D]")
    t, d = actions.shape
    column = pa.FixedSizeListArray.from_arrays(pa.array(actions.reshape(-1), pa.float64()), d)
    meta = {"format": FORMAT, "item_id": item_id, "action_names": list(names)}
    table = pa.table({"frame": pa.array(np.arange(t, dtype=np.int32)), "action": column},
                     metadata={"motus_pyramid": json.dumps(meta)})
    return atomic_write(path, lambda f: pq.write_table(table, f, compression="zstd"))


def read_action_file(path: str | os.PathLike, item_id: str | None = None) -> np.ndarray:
    """The actions [T, D] float64 of an action file (ValueError naming the file when it is not one, or when it
    holds another item's actions than `item_id`'s)."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise ValueError(f"{path}: not a readable action file: {e}") from e
    if table.column_names != ["frame", "action"] or not pa.types.is_fixed_size_list(table.schema.field("action").type):
        raise ValueError(f"{path}: not an action file (columns {table.column_names})")
    if item_id is not None:
        meta = json.loads((table.schema.metadata or {}).get(b"motus_pyramid", b"{}"))
        if meta.get("item_id") != item_id:
            raise ValueError(f"{path} holds the actions of {meta.get('item_id')!r}, not of {item_id!r}")
    d = table.schema.field("action").type.list_size
    flat = table.column("action").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, np.float64).reshape(table.num_rows, d)
