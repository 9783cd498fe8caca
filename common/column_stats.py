"""Per-column statistics of rows streamed in twice (moments and range, then a histogram): memory O(dims × bins)."""

from __future__ import annotations

from typing import Any

import numpy as np


class ColumnStats:
    """Per-dim rows, mean, std, min, max, q01 and q99 of rows streamed in twice — moments and range first, then a
    histogram between the global min and max — so memory stays O(dims × bins) for any number of rows (Motus's
    quantile script works the same way). A quantile is within one bin, (max − min) / `BINS`, of the two rows
    `np.quantile` interpolates between (exact to a bin where rows are dense)."""

    BINS = 4096

    def __init__(self) -> None:
        self.n, self.total, self.squares, self.lo, self.hi, self.hist = 0, None, None, None, None, None

    def add(self, x: np.ndarray) -> None:  # pass 1
        x = np.asarray(x, np.float64)
        if self.total is None:
            self.total, self.squares = np.zeros(x.shape[1]), np.zeros(x.shape[1])
            self.lo, self.hi = np.full(x.shape[1], np.inf), np.full(x.shape[1], -np.inf)
        self.n += len(x)
        self.total += x.sum(0)
        self.squares += (x * x).sum(0)
        self.lo, self.hi = np.minimum(self.lo, x.min(0)), np.maximum(self.hi, x.max(0))

    def add_to_histogram(self, x: np.ndarray) -> None:  # pass 2
        if self.hist is None:
            self.hist = np.zeros((len(self.lo), self.BINS), np.int64)
        width = np.where(self.hi > self.lo, (self.hi - self.lo) / self.BINS, 1.0)
        bins = np.clip(((np.asarray(x, np.float64) - self.lo) / width).astype(np.int64), 0, self.BINS - 1)
        for d in range(bins.shape[1]):
            self.hist[d] += np.bincount(bins[:, d], minlength=self.BINS)

    def quantile(self, q: float) -> np.ndarray:
        width = np.where(self.hi > self.lo, (self.hi - self.lo) / self.BINS, 0.0)
        out = np.empty(len(self.lo))
        for d, h in enumerate(self.hist):
            cum = np.cumsum(h)
            target = q * (self.n - 1) + 1  # the rank (1-based) of np.quantile's linear estimate
            k = int(np.searchsorted(cum, target, side="left"))
            before = cum[k - 1] if k else 0
            inside = (target - before) / h[k] if h[k] else 0.0
            out[d] = self.lo[d] + (k + inside) * width[d]
        return np.clip(out, self.lo, self.hi)

    def describe(self) -> dict[str, Any]:
        mean = self.total / self.n
        std = np.sqrt(np.maximum(self.squares / self.n - mean * mean, 0.0))
        return {"rows": int(self.n), "mean": mean.tolist(), "std": std.tolist(), "min": self.lo.tolist(),
                "max": self.hi.tolist(), "q01": self.quantile(0.01).tolist(), "q99": self.quantile(0.99).tolist()}
