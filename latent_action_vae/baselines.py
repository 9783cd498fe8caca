"""Baselines and diagnostics a latent must be read next to: pooled flow, its PCA, per-source mean fields,
information per latent dim and S-PCFC (research `latent_actions.md` §2–4)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

POOL_GRID = (8, 8)  # the research's "8×8-pooled flow": 2 × 8 × 8 = 128 features
MOVING_PX = 0.5  # a pixel "moves" when |flow| exceeds this (working-canvas pixels)


def pooled_flow(flow_px: torch.Tensor, valid: torch.Tensor, grid: tuple[int, int] = POOL_GRID) -> np.ndarray:
    """Stored flow [B,2,h,w] (canvas px) + valid [B,h,w] → the mean valid flow per grid cell, [B, 2·gh·gw] float64.

    Cells with no valid pixel read 0 (no evidence of motion), so padding and occlusions never look like motion.
    """
    m = valid.float()[:, None]
    num = F.adaptive_avg_pool2d(flow_px.float() * m, grid)
    den = F.adaptive_avg_pool2d(m, grid)
    return torch.where(den > 0, num / den.clamp_min(1e-12), torch.zeros_like(num)).flatten(1).double().cpu().numpy()


@dataclass(frozen=True)
class PCA:
    """Principal components of train features: `transform` gives the top-k scores."""

    mean: np.ndarray  # [P]
    components: np.ndarray  # [k, P], rows orthonormal
    explained: np.ndarray  # [k] share of the train variance each component explains

    @classmethod
    def fit(cls, x: np.ndarray, k: int) -> PCA:
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"PCA needs at least 2 rows of features, got shape {x.shape}")
        mean = x.mean(0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        k = min(k, vt.shape[0])
        var = s ** 2
        total = var.sum()
        return cls(mean, vt[:k], var[:k] / total if total > 0 else np.zeros(k))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float64) - self.mean) @ self.components.T

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        """x projected onto the top-k components and back: the best rank-k linear reconstruction (squared error)."""
        return self.transform(x) @ self.components + self.mean


def information_bits(mu: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Per latent dim, the most bits an encoder can pass through it: ½·log2(1 + Var_x[μ] / E_x[σ²]).

    A Gaussian-channel bound: a dim whose μ barely moves compared to its posterior noise carries ~0 bits however
    far its σ is from 1 (which is all a KL threshold measures).
    """
    mu, var = np.asarray(mu, np.float64), np.asarray(var, np.float64)
    if len(mu) < 2:
        return np.full(mu.shape[1], np.nan)
    return 0.5 * np.log2(1.0 + mu.var(0) / np.maximum(var.mean(0), 1e-12))


def s_pcfc(past_to_now: np.ndarray, future_to_now: np.ndarray) -> float | None:
    """CoMo's S-PCFC: mean cosine between latents of past→now and future→now motion at the same frame.

    1.0 means the latent ignores the direction of motion (collapse to appearance or a constant); lower is better.
    """
    a, b = np.asarray(past_to_now, np.float64), np.asarray(future_to_now, np.float64)
    if not len(a):
        return None
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return float(cos.mean())


def consecutive_pairs(item_ids: list[str], frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices (p, q) of pairs of one item where p = (t−Δ → t) and q = (t → t+Δ): p ends where q starts."""
    start: dict[tuple[str, int], int] = {}
    for i, (item, (t1, _)) in enumerate(zip(item_ids, frames.tolist())):
        start.setdefault((item, int(t1)), i)
    ps, qs = [], []
    for i, (item, (_, t2)) in enumerate(zip(item_ids, frames.tolist())):
        j = start.get((item, int(t2)))
        if j is not None:
            ps.append(i)
            qs.append(j)
    return np.asarray(ps, np.int64), np.asarray(qs, np.int64)


class MeanFields:
    """Per-source mean flow field at the VAE's input size (network units), accumulated over train pairs: the
    "paint the usual motion of this source" predictor a decoder must beat."""

    def __init__(self) -> None:
        self._sum: dict[str, torch.Tensor] = {}
        self._count: dict[str, torch.Tensor] = {}

    def add(self, target: torch.Tensor, mask: torch.Tensor, sources: list[str]) -> None:
        for s in dict.fromkeys(sources):
            rows = torch.tensor([x == s for x in sources], device=target.device)
            m = mask[rows].float()
            t = (target[rows] * m[:, None]).sum(0)
            if s in self._sum:
                self._sum[s] += t
                self._count[s] += m.sum(0)
            else:
                self._sum[s], self._count[s] = t.clone(), m.sum(0)

    def field(self, source: str, like: torch.Tensor) -> torch.Tensor:
        """[2,H,W] mean field of a source (zeros for a source never seen in train)."""
        if source not in self._sum:
            return torch.zeros_like(like)
        return self._sum[source] / self._count[source].clamp_min(1)

    def predict(self, target: torch.Tensor, sources: list[str]) -> torch.Tensor:
        return torch.stack([self.field(s, target[0]) for s in sources])


def per_pair_epe_px(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, scale_px: float,
                    moving_px: float | None = None) -> torch.Tensor:
    """EPE per pair [B] in pixels over valid pixels — or, with `moving_px`, over valid pixels whose TRUE flow
    exceeds it; NaN where a pair has no such pixel."""
    err = (pred - target).pow(2).sum(1).sqrt() * scale_px
    m = mask.float()
    if moving_px is not None:
        m = m * (target.pow(2).sum(1).sqrt() * scale_px > moving_px).float()
    n = m.sum((1, 2))
    return torch.where(n > 0, (err * m).sum((1, 2)) / n.clamp_min(1), torch.full_like(n, float("nan")))


__all__ = ["MOVING_PX", "POOL_GRID", "PCA", "MeanFields", "consecutive_pairs", "information_bits", "per_pair_epe_px",
           "pooled_flow", "s_pcfc"]
