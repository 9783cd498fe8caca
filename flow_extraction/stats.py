"""Motion statistics per item, accumulated pair by pair (no pair is kept), and the motion filter.

All magnitudes are in pixels of the working canvas and are taken over valid pixels only (not the black padding,
not occluded sim pixels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

_BIN_PX = 0.05  # histogram resolution for percentiles
_MAX_PX = 512.0


@dataclass(frozen=True)
class MotionFilter:
    """A pair is near-static when even its fastest pixels barely move: its 99th-percentile magnitude is below
    `static_pair_px` (a percentile, not the mean, so a small robot moving over a still table counts as motion).
    An item is static when more than `max_static_fraction` of its pairs are near-static."""

    static_pair_px: float = 0.5
    max_static_fraction: float = 0.8
    patch_px: int = 32  # patch size for the per-patch minimum, in canvas pixels


class StatsAccumulator:
    """`field_hw`: the size fields arrive at (the canvas, or a reduced flow size whose vectors are in canvas
    pixels); `patch_px`: the per-patch minimum's patch in pixels of that field (default: the motion filter's)."""

    def __init__(self, field_hw: tuple[int, int], motion: MotionFilter = MotionFilter(), patch_px: int | None = None):
        self.motion = motion
        self.patch_px = patch_px or motion.patch_px
        self.hist = np.zeros(int(_MAX_PX / _BIN_PX) + 1, np.int64)
        self.pixel_sum = np.zeros(field_hw, np.float64)
        self.pixel_count = np.zeros(field_hw, np.int64)
        self.pair_means: list[float] = []
        self.pair_p99: list[float] = []
        self.pair_vectors: list[tuple[float, float]] = []
        self.valid_fraction: list[float] = []
        self._mask, self._index = None, None  # add_batch's mask and its flat indices

    def add(self, flow: np.ndarray, valid: np.ndarray) -> None:
        """flow [2, H, W], valid [H, W] bool."""
        mag = np.sqrt(flow[0] ** 2 + flow[1] ** 2)
        valid = valid & np.isfinite(mag)
        self.valid_fraction.append(float(valid.mean()))
        if not valid.any():
            self.pair_means.append(0.0)
            self.pair_p99.append(0.0)
            self.pair_vectors.append((0.0, 0.0))
            return
        m = mag[valid]
        bins = np.minimum((m / _BIN_PX).astype(np.int64), len(self.hist) - 1)
        self.hist += np.bincount(bins, minlength=len(self.hist))
        self.pixel_sum += np.where(valid, mag, 0.0)
        self.pixel_count += valid
        self.pair_means.append(float(m.mean()))
        k = min(len(m) - 1, int(0.99 * len(m)))
        self.pair_p99.append(float(np.partition(m, k)[k]))
        self.pair_vectors.append((float(flow[0][valid].mean()), float(flow[1][valid].mean())))

    def add_batch(self, flow: np.ndarray, valid: np.ndarray) -> None:
        """flow [B, 2, H, W] with one valid mask [H, W] for every pair (frame flow: the letterbox): what `add`
        does pair by pair, as whole-batch array operations over the valid pixels only."""
        if self._mask is not valid:
            self._mask, self._index = valid, np.flatnonzero(valid)
        index, b = self._index, len(flow)
        inside = flow.reshape(b, 2, -1).take(index, axis=2)  # [B, 2, n]
        m = np.sqrt(inside[:, 0] ** 2 + inside[:, 1] ** 2)  # [B, n]
        if not len(index) or not np.isfinite(m).all():
            for f in flow:
                self.add(f, valid)
            return
        n = len(index)
        self.valid_fraction.extend([n / valid.size] * b)
        bins = np.minimum((m / _BIN_PX).astype(np.int64), len(self.hist) - 1)
        self.hist += np.bincount(bins.ravel(), minlength=len(self.hist))
        self.pixel_sum.ravel()[index] += m.sum(0, dtype=np.float64)
        self.pixel_count.ravel()[index] += b
        self.pair_means.extend((m.sum(1, dtype=np.float64) / n).tolist())
        k = min(n - 1, int(0.99 * n))
        self.pair_p99.extend(np.partition(m, k, axis=1)[:, k].tolist())
        self.pair_vectors.extend(map(tuple, (inside.sum(2, dtype=np.float64) / n).tolist()))

    def _percentile(self, q: float) -> float:
        total = self.hist.sum()
        if total == 0:
            return 0.0
        idx = int(np.searchsorted(np.cumsum(self.hist), q * total))
        return (idx + 0.5) * _BIN_PX

    def _patch_min(self) -> float:
        p = self.patch_px
        h, w = self.pixel_sum.shape
        best = np.inf
        for y in range(0, h - p + 1, p):
            for x in range(0, w - p + 1, p):
                cnt = self.pixel_count[y : y + p, x : x + p]
                if cnt.min() == 0:
                    continue  # patches touching padding or never-valid pixels do not count
                best = min(best, float((self.pixel_sum[y : y + p, x : x + p] / cnt).mean()))
        return best if np.isfinite(best) else 0.0

    def finish(self) -> dict[str, Any]:
        means = np.asarray(self.pair_means)
        vec = np.asarray(self.pair_vectors).reshape(-1, 2)
        total = self.hist.sum()
        mean_px = float((self.pixel_sum.sum() / max(self.pixel_count.sum(), 1))) if total else 0.0
        jitter = float(np.median(np.linalg.norm(vec[2:] - 2 * vec[1:-1] + vec[:-2], axis=1))) if len(vec) >= 3 else 0.0
        p99 = np.asarray(self.pair_p99)
        static_fraction = float((p99 < self.motion.static_pair_px).mean()) if len(p99) else 1.0
        reasons = []
        if static_fraction > self.motion.max_static_fraction:
            reasons.append(f"{static_fraction:.0%} of pairs near-static (99th-percentile flow < "
                           f"{self.motion.static_pair_px}px; limit {self.motion.max_static_fraction:.0%})")
        return {
            "n_pairs": len(means),
            "mean_px": mean_px,
            "p50_px": self._percentile(0.50),
            "p90_px": self._percentile(0.90),
            "p99_px": self._percentile(0.99),
            "patch_min_px": self._patch_min(),
            "static_pair_fraction": static_fraction,
            "jitter_px": jitter,
            "valid_fraction": float(np.mean(self.valid_fraction)) if self.valid_fraction else 0.0,
            "is_static": bool(reasons),
            "static_reason": "; ".join(reasons) or None,
        }
