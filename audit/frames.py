"""A few frames per item, cheaply: evenly spaced over the item's window, fitted into a small canvas.

The audit keeps only what the checks need from them (`FrameFacts`: darkness, how much the picture changes, a
hash of the decoded pixels, a perceptual dHash per frame), so memory does not grow with frames × items; the
report decodes the few items it shows again (`sample_frames`, `contact_sheet`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Mapping

import cv2
import numpy as np

from flow_extraction.frames import iter_frames
from common.errors import BadInput

HASH_SIZE = 16  # dHash of 17x16 grey pixels: 256 bits per frame


@dataclass(frozen=True)
class FrameFacts:
    item_id: str
    indices: list[int]  # sampled frame indices in the item's window
    mean_luma: list[float]  # per sampled frame, 0..255
    std_luma: list[float]
    max_change: float  # largest mean |grey difference| between a sampled frame and the first
    pixel_hash: str  # same decoded pictures at the same positions of equally long windows → same hash
    dhash: np.ndarray  # bool [frames, HASH_SIZE²]

    @classmethod
    def of(cls, item_id: str, indices: list[int], frames: list[np.ndarray]) -> "FrameFacts":
        grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float32) for f in frames]
        h = hashlib.blake2b(digest_size=16)
        h.update(str(indices).encode())
        for f in frames:
            h.update(np.ascontiguousarray(f).tobytes())
        return cls(item_id, indices, [float(g.mean()) for g in grey], [float(g.std()) for g in grey],
                   max((float(np.abs(g - grey[0]).mean()) for g in grey[1:]), default=0.0), h.hexdigest(),
                   np.stack([dhash(g) for g in grey]))


def dhash(grey: np.ndarray, margin: float = 2.0) -> np.ndarray:
    """Whether each pixel of a 17x16 grey thumbnail is brighter than its right neighbour by more than `margin`
    grey levels (256 bits): robust to re-encoding, brightness and rescaling. The margin keeps flat areas (a black
    background) from flipping bits with codec noise."""
    small = cv2.resize(grey, (HASH_SIZE + 1, HASH_SIZE), interpolation=cv2.INTER_AREA)
    return (small[:, 1:] > small[:, :-1] + margin).ravel()


def sample_positions(frame_count: int, k: int) -> list[int]:
    """k frame indices spread evenly from the first frame to the last (fewer when the item is shorter)."""
    if frame_count <= 0:
        return []
    return sorted({int(i) for i in np.linspace(0, frame_count - 1, k).round()})


def sample_frames(row: Mapping[str, Any], k: int, size_hw: tuple[int, int],
                  camera: int = 0) -> tuple[list[int], list[np.ndarray]]:
    """(indices, RGB frames without canvas padding) of k evenly spaced frames of the item's window. The window is
    streamed, never held whole. Raises BadInput when the media does not decode or ends early."""
    wanted = sample_positions(int(row["frame_count"] or 0), k)
    if not wanted:
        raise BadInput(f"the catalog gives {row['item_id']} no frames")
    keep = set(wanted)
    frames: dict[int, np.ndarray] = {}
    for index, frame, canvas in iter_frames(row, size_hw, camera):
        if index in keep:
            h, w = canvas.content_hw
            frames[index] = frame[canvas.offset_y : canvas.offset_y + h, canvas.offset_x : canvas.offset_x + w].copy()
        if index >= wanted[-1]:
            break
    if len(frames) < len(wanted):
        raise BadInput(f"only {len(frames)} of the {len(wanted)} sampled frames decode")
    return wanted, [frames[i] for i in wanted]


def contact_sheet(frames: list[np.ndarray], height: int = 72) -> np.ndarray:
    """Frames side by side, each scaled to `height`, with a 2-px white gap."""
    tiles = []
    for f in frames:
        w = max(1, round(f.shape[1] * height / f.shape[0]))
        tiles.append(cv2.resize(f, (w, height), interpolation=cv2.INTER_AREA))
        tiles.append(np.full((height, 2, 3), 255, np.uint8))
    return np.concatenate(tiles[:-1], axis=1)
