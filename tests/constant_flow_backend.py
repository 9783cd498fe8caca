"""A flow backend written for a test: every pixel moves one pixel right. Its module and one line in
`flow_extraction.config.BACKENDS` are all the flow job needs (tests/test_flow_stage.py)."""

from __future__ import annotations

from typing import Any

import numpy as np


class ConstantFlow:
    name = "constant"

    def compute(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        out = np.zeros((len(first), 2, *first.shape[1:3]), np.float32)
        out[:, 0] = 1.0
        return out

    def describe(self) -> dict[str, Any]:
        return {"backend": "constant", "checkpoint": "none", "device": "cpu", "precision": "fp32"}


def from_config(fc: Any) -> ConstantFlow:
    return ConstantFlow()
