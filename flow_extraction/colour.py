"""Flow → RGB with the Middlebury/Baker colour wheel and a FIXED maximum radius.

Hue = direction, saturation = speed relative to `max_radius` (zero flow is white). Normalising by each image's
own maximum (flowpy's default) would paint a slow and a fast motion in the same direction identically, which
destroys the magnitude a latent action must carry; so the radius comes from config and is recorded.
"""

from __future__ import annotations

import numpy as np

# hues per segment: red→yellow→green→cyan→blue→magenta→red (Baker et al., 55 entries)
_SEGMENTS = (15, 6, 4, 11, 13, 6)


def colour_wheel() -> np.ndarray:
    """[55, 3] float RGB in [0, 1]."""
    ry, yg, gc, cb, bm, mr = _SEGMENTS
    ramps = []
    ramp = lambda n: np.arange(n) / n  # noqa: E731
    ramps.append(np.stack([np.ones(ry), ramp(ry), np.zeros(ry)], 1))
    ramps.append(np.stack([1 - ramp(yg), np.ones(yg), np.zeros(yg)], 1))
    ramps.append(np.stack([np.zeros(gc), np.ones(gc), ramp(gc)], 1))
    ramps.append(np.stack([np.zeros(cb), 1 - ramp(cb), np.ones(cb)], 1))
    ramps.append(np.stack([ramp(bm), np.zeros(bm), np.ones(bm)], 1))
    ramps.append(np.stack([np.ones(mr), np.zeros(mr), 1 - ramp(mr)], 1))
    return np.concatenate(ramps, 0)


_WHEEL = colour_wheel()


def flow_to_rgb(flow: np.ndarray, max_radius: float) -> np.ndarray:
    """flow [..., 2, H, W] (pixels) → uint8 RGB [..., H, W, 3]. Speeds above `max_radius` darken."""
    if max_radius <= 0:
        raise ValueError("max_radius must be > 0")
    u, v = flow[..., 0, :, :], flow[..., 1, :, :]
    finite = np.isfinite(u) & np.isfinite(v)
    u, v = np.where(finite, u, 0.0), np.where(finite, v, 0.0)
    radius = np.sqrt(u**2 + v**2) / max_radius
    angle = np.arctan2(-v, -u) / np.pi  # in [-1, 1]
    position = (angle + 1) / 2 * (len(_WHEEL) - 1)
    k0 = np.floor(position).astype(int)
    k1 = (k0 + 1) % len(_WHEEL)
    frac = (position - k0)[..., None]
    colour = (1 - frac) * _WHEEL[k0] + frac * _WHEEL[k1]
    r = radius[..., None]
    colour = np.where(r <= 1, 1 - r * (1 - colour), colour * 0.75 / np.maximum(r, 1))
    colour = np.where(finite[..., None], colour, 0.0)
    return np.clip(np.round(colour * 255), 0, 255).astype(np.uint8)
