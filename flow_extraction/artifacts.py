"""The per-item flow artifact: one .npz, written under a temp name and renamed, so a killed run never leaves a
file that looks complete.

Contents: `flow` float16 [N, 2, h, w] (pixels of the working canvas, first→second, stored at `store_size`),
`valid` bool [N, h, w], `pairs` int32 [N, 2] (frame indices of the item at `fps`), and `meta` (a JSON string:
backend, checkpoint, Δ in seconds and frames, grid, fps, working and store sizes, units, canvas geometry).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from manifests.io import atomic_write

FORMAT = "motus-pyramid/flow/v1"


@dataclass
class FlowArtifact:
    flow: np.ndarray
    valid: np.ndarray
    pairs: np.ndarray
    meta: dict[str, Any]


def artifact_path(root: str | os.PathLike, item_id: str, suffix: str = ".flow.npz") -> Path:
    """A stable file path for an item id (its '/' become folders; other odd characters become '_')."""
    safe = re.sub(r"[^A-Za-z0-9._/=-]", "_", item_id).strip("/")
    safe = "/".join(p if p not in ("", ".", "..") else "_" for p in safe.split("/"))
    return Path(root) / (safe + suffix)


def write_flow_artifact(path: str | os.PathLike, flow: np.ndarray, valid: np.ndarray, pairs: np.ndarray,
                        meta: dict[str, Any]) -> tuple[int, str]:
    """Write atomically; return (bytes, blake2b checksum)."""
    return atomic_write(path, lambda f: np.savez(
        f, flow=flow.astype(np.float16), valid=valid.astype(bool), pairs=pairs.astype(np.int32),
        meta=np.array(json.dumps({"format": FORMAT, **meta}, sort_keys=True))))


def read_flow_artifact(path: str | os.PathLike) -> FlowArtifact:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} artifact (format={meta.get('format')!r})")
        return FlowArtifact(z["flow"], z["valid"], z["pairs"], meta)
