"""A decoder that sees the current frame: flow = U-Net(frame t1), modulated by z at every scale. Why, leakage and
layout: docs/vae.md#frame-decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    groups = 8 if cout % 8 == 0 else 1
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(groups, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, 1, 1), nn.GroupNorm(groups, cout), nn.SiLU())


class FrameConditionedDecoder(nn.Module):
    def __init__(self, latent_dim: int, widths: tuple[int, ...] = (16, 32, 64, 96, 128), hidden: int = 256,
                 out_channels: int = 2):
        super().__init__()
        self.widths = tuple(widths)
        self.down = nn.ModuleList([_block(3, widths[0])] +
                                  [_block(a, b, stride=2) for a, b in zip(widths[:-1], widths[1:])])
        # up stage i works at the resolution of down stage i (deepest first), on [upsampled, skip] channels
        self.up = nn.ModuleList([_block(widths[-1], widths[-1])] +
                                [_block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(len(widths) - 1))])
        self.film = nn.Sequential(nn.Linear(latent_dim, hidden), nn.SiLU(),
                                  nn.Linear(hidden, 2 * sum(m[0].out_channels for m in self.up)))
        # FiLM keeps PyTorch's default init: zero-initialised (an unmodulated U-Net at step 0), z got no gradient,
        # the decoder learnt from the frame alone and z collapsed to the prior in 2 of 3 seeds (0 bits; measured
        # with bench/bench_latent_quality.py, docs/latent_quality.md)
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, z: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
        """z [B, latent_dim], frame [B, 3, H, W] in [−1, 1] → [B, out_channels, H, W] (flow in network units)."""
        skips, h = [], frame
        for stage in self.down:
            h = stage(h)
            skips.append(h)
        film = self.film(z)
        offset = 0
        for i, stage in enumerate(self.up):
            if i > 0:
                skip = skips[-1 - i]
                h = torch.cat([F.interpolate(h, size=skip.shape[-2:], mode="nearest"), skip], 1)
            h = stage(h)
            c = h.shape[1]
            scale, shift = film[:, offset : offset + c], film[:, offset + c : offset + 2 * c]
            offset += 2 * c
            h = h * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        return self.head(h)


def frame_input(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Stored first frames (uint8 [B, 3, h, w]) → the decoder's input: float in [−1, 1] at size²."""
    x = frames.float() / 127.5 - 1.0
    return F.interpolate(x, size=(size, size), mode="area")


__all__ = ["FrameConditionedDecoder", "frame_input"]
