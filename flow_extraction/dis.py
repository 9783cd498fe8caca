"""OpenCV DIS optical flow: the CPU backend (~100 pairs/s at 384×320 with the medium preset, data_sources.md §4).

A preset sets five knobs (finest scale, patch size and stride, gradient-descent and variational-refinement
iterations); any of them can be set over it (`flow.dis_*`). Frames may come as RGB [N, H, W, 3] or already grey
[N, H, W] (the flow stage converts each frame once as it streams, not once per pair it belongs to)."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from flow_extraction.base import FlowConfigError
from flow_extraction.config import check_dis_knobs

PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
SETTERS = {  # knob → (OpenCV setter, short name in the recorded checkpoint)
    "finest_scale": ("setFinestScale", "fs"),
    "patch_size": ("setPatchSize", "ps"),
    "patch_stride": ("setPatchStride", "st"),
    "gradient_descent_iterations": ("setGradientDescentIterations", "gd"),
    "refinement_iterations": ("setVariationalRefinementIterations", "vr"),
}


class DISBackend:
    name = "dis"

    def __init__(self, preset: str = "medium", **knobs: int | None):
        if preset not in PRESETS:
            raise FlowConfigError(f"unknown DIS preset {preset!r}; choose one of {', '.join(PRESETS)}")
        self.preset = preset
        try:
            self.knobs = check_dis_knobs(preset, knobs)
        except ValueError as e:
            raise FlowConfigError(str(e)) from None
        self._dis = cv2.DISOpticalFlow_create(PRESETS[preset])
        for name, value in self.knobs.items():
            getattr(self._dis, SETTERS[name][0])(value)

    def settings(self) -> dict[str, int]:
        """The five knobs as the DIS object holds them (the preset's, with any set over it)."""
        d = self._dis
        return {"finest_scale": d.getFinestScale(), "patch_size": d.getPatchSize(), "patch_stride": d.getPatchStride(),
                "gradient_descent_iterations": d.getGradientDescentIterations(),
                "refinement_iterations": d.getVariationalRefinementIterations()}

    @staticmethod
    def grey(frame: np.ndarray) -> np.ndarray:
        """One RGB frame [H, W, 3] → grey [H, W], what DIS reads."""
        return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)

    def compute(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """RGB [N, H, W, 3] or grey [N, H, W] uint8 frames → flow [N, 2, H, W]."""
        out = np.empty((len(first), 2, *first.shape[1:3]), np.float32)
        for i, (a, b) in enumerate(zip(first, second)):
            if a.ndim == 3:
                a, b = self.grey(a), self.grey(b)
            out[i] = self._dis.calc(a, b, None).transpose(2, 0, 1)
        return out

    def describe(self) -> dict[str, Any]:
        tuned = "".join(f"+{SETTERS[k][1]}{v}" for k, v in self.knobs.items())
        return {"backend": "dis", "checkpoint": f"opencv-{cv2.__version__}/{self.preset}{tuned}", "device": "cpu",
                "precision": "fp32"}


def from_config(fc: Any) -> DISBackend:
    """The DIS backend of a FlowConfig: its preset and `dis_*` knobs."""
    return DISBackend(fc.dis_preset, **fc.dis_knobs())
