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
