"""OpenCV DIS optical flow: the CPU backend (~100 pairs/s at 384×320 with the medium preset, data_sources.md §4)."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from flow_extraction.base import FlowConfigError

PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


class DISBackend:
    name = "dis"

    def __init__(self, preset: str = "medium"):
        if preset not in PRESETS:
            raise FlowConfigError(f"unknown DIS preset {preset!r}; choose one of {', '.join(PRESETS)}")
        self.preset = preset
        self._dis = cv2.DISOpticalFlow_create(PRESETS[preset])

    def compute(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        out = np.empty((len(first), 2, *first.shape[1:3]), np.float32)
        for i, (a, b) in enumerate(zip(first, second)):
            g0 = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)
            g1 = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
            out[i] = self._dis.calc(g0, g1, None).transpose(2, 0, 1)
        return out

    def describe(self) -> dict[str, Any]:
        return {"backend": "dis", "checkpoint": f"opencv-{cv2.__version__}/{self.preset}", "device": "cpu",
                "precision": "fp32"}
