"""The per-item flow artifact: one .npz, written under a temp name and renamed, so a killed run never leaves a
file that looks complete.

Contents: `flow` float16 [N, 2, h, w] (pixels of the working canvas, first→second, stored at `store_size`),
`valid` bool [N, h, w], `pairs` int32 [N, 2] (frame indices of the item at `fps`), optionally `frames` uint8
[N, 3, h, w] (each pair's first frame on the same canvas, RGB, at the store size: what a frame-conditioned VAE
decoder sees), and `meta` (a JSON string: backend, checkpoint, Δ in seconds and frames, grid, fps, working and
store sizes, units, canvas geometry).
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
    frames: np.ndarray | None = None  # uint8 [N, 3, h, w] first frames, when the flow stage stored them


def artifact_path(root: str | os.PathLike, item_id: str, suffix: str = ".flow.npz") -> Path:
    """A stable file path for an item id (its '/' become folders; other odd characters become '_')."""
    safe = re.sub(r"[^A-Za-z0-9._/=-]", "_", item_id).strip("/")
    safe = "/".join(p if p not in ("", ".", "..") else "_" for p in safe.split("/"))
    return Path(root) / (safe + suffix)


def write_flow_artifact(path: str | os.PathLike, flow: np.ndarray, valid: np.ndarray, pairs: np.ndarray,
                        meta: dict[str, Any], frames: np.ndarray | None = None) -> tuple[int, str]:
    """Write atomically; return (bytes, blake2b checksum)."""
    members = {"flow": flow.astype(np.float16), "valid": valid.astype(bool), "pairs": pairs.astype(np.int32),
               "meta": np.array(json.dumps({"format": FORMAT, **meta}, sort_keys=True))}
    if frames is not None:
        if frames.dtype != np.uint8 or frames.shape != (len(pairs), 3, *flow.shape[-2:]):
            raise ValueError(f"frames must be uint8 [{len(pairs)}, 3, {flow.shape[-2]}, {flow.shape[-1]}], "
                             f"got {frames.dtype} {frames.shape}")
        members["frames"] = frames
    return atomic_write(path, lambda f: np.savez(f, **members))


def read_flow_artifact(path: str | os.PathLike) -> FlowArtifact:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} artifact (format={meta.get('format')!r})")
        frames = z["frames"] if "frames" in z.files else None
        return FlowArtifact(z["flow"], z["valid"], z["pairs"], meta, frames)
