"""The flow-backend interface and the conventions every backend follows.

Conventions (DESIGN.md "Contracts worth keeping stable"):
- frames are RGB uint8 arrays [N, H, W, 3] at the working size (default H×W = 384×320, aspect-preserving pad);
- flow is float32 [N, 2, H, W]: channel 0 = x (right), channel 1 = y (down), in pixels of the working size,
  mapping frame t to frame t+Δ (a pixel at p in the first frame moves to p + flow(p) in the second);
- a backend converts colour order itself (ptlflow models want BGR; DIS wants grey).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class FlowBackend(Protocol):
    name: str

    def compute(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """first, second: uint8 RGB [N, H, W, 3] → float32 flow [N, 2, H, W] (first → second)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What to record with the artifact: backend name, checkpoint, preset, device, precision."""
        ...


class FlowConfigError(ValueError):
    """A flow backend cannot be set up as configured (missing checkpoint, unknown preset, no GPU, ...)."""


def end_point_error(flow: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean Euclidean distance between two flow fields [..., 2, H, W], optionally over a boolean mask [..., H, W]."""
    err = np.sqrt(((flow - reference) ** 2).sum(axis=-3))
    if mask is not None:
        return float(err[mask].mean())
    return float(err.mean())


class ScaledBackend:
    """Runs a frame backend at `flow_hw` instead of the working canvas `canvas_hw`: canvas frames are area-resized
    down (`shrink`; the flow stage instead places each decoded frame at the flow size as it streams), and the flow's vectors are scaled back
    to canvas pixels (x by W/w, y by H/h). The field stays at `flow_hw`; a pixel of it covers (H/h)×(W/w) canvas
    pixels. A 96×80 store keeps no more detail than a 192×160 field holds; DIS costs a third to a quarter there."""

    def __init__(self, backend: FlowBackend, canvas_hw: tuple[int, int], flow_hw: tuple[int, int]):
        self.backend = backend
        self.name = backend.name
        self.canvas_hw = (int(canvas_hw[0]), int(canvas_hw[1]))
        self.flow_hw = (int(flow_hw[0]), int(flow_hw[1]))
        h, w = self.flow_hw
        if not (0 < h <= self.canvas_hw[0] and 0 < w <= self.canvas_hw[1]):
            raise FlowConfigError(f"flow size {self.flow_hw} must be positive and no larger than the working "
                                  f"canvas {self.canvas_hw}")
        self._units = np.array([self.canvas_hw[1] / w, self.canvas_hw[0] / h], np.float32)[:, None, None]

    def shrink(self, frame: np.ndarray) -> np.ndarray:
        """One canvas frame [H, W, 3] → the flow size [h, w, 3]."""
        import cv2

        return cv2.resize(frame, (self.flow_hw[1], self.flow_hw[0]), interpolation=cv2.INTER_AREA)

    def compute(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Canvas frames, or frames already shrunk to the flow size → flow [N, 2, h, w] in canvas pixels."""
        frames = []
        for batch in (first, second):
            if batch.shape[1:3] == self.canvas_hw and self.canvas_hw != self.flow_hw:
                batch = np.stack([self.shrink(f) for f in batch])
            elif batch.shape[1:3] != self.flow_hw:
                raise ValueError(f"frames of {batch.shape[1:3]}: expected the canvas {self.canvas_hw} or the "
                                 f"flow size {self.flow_hw}")
            frames.append(batch)
        flow = self.backend.compute(*frames)
        flow *= self._units
        return flow

    def describe(self) -> dict[str, Any]:
        return {**self.backend.describe(), "flow_size": list(self.flow_hw)}
