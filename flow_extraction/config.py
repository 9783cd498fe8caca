"""The flow section of the pipeline config: backend, pair spacing, sizes, motion filter."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

# flow backends: name → the module that makes it. A module provides `from_config(fc: FlowConfig)` → a FlowBackend
# (flow_extraction/base.py), and may provide `prepare(fc) → fc`, run once by the flow job before any worker starts
# (to fail early, or to pin what workers should load). A new backend is its module and one line here.
BACKENDS = {"dis": "flow_extraction.dis", "dpflow": "flow_extraction.dpflow"}

# DIS knob → smallest allowed value (flow_extraction/dis.py sets them on OpenCV's object)
DIS_KNOB_MIN = {"finest_scale": 0, "patch_size": 2, "patch_stride": 1, "gradient_descent_iterations": 1,
                "refinement_iterations": 0}
DIS_PRESET_PATCH = {"ultrafast": (8, 4), "fast": (8, 4), "medium": (8, 3)}  # OpenCV 4.x: (patch size, stride)


def check_dis_knobs(preset: str, knobs: dict) -> dict[str, int]:
    """The knobs that are set (None: the preset's), checked: known names, integers at or above each one's minimum,
    a patch stride no larger than the patch size. Raises ValueError naming the knob. Imports no OpenCV."""
    unknown = set(knobs) - set(DIS_KNOB_MIN)
    if unknown:
        raise ValueError(f"unknown DIS knob {sorted(unknown)[0]!r}; choose from {', '.join(DIS_KNOB_MIN)}")
    out = {}
    for name, value in ((k, knobs.get(k)) for k in DIS_KNOB_MIN):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < DIS_KNOB_MIN[name]:
            raise ValueError(f"DIS {name} must be an integer >= {DIS_KNOB_MIN[name]} (or null for the preset's), "
                             f"got {value!r}")
        out[name] = value
    size, stride = DIS_PRESET_PATCH.get(preset, (8, 4))
    size, stride = out.get("patch_size", size), out.get("patch_stride", stride)
    if stride > size:
        raise ValueError(f"DIS patch_stride {stride} must not exceed the patch size {size}")
    return out


@dataclass
class FlowConfig:
    backend: str = "dis"  # dis (CPU) | dpflow (ptlflow's DPFlow; GPU in production)
    sim_for_sim_tiers: bool = False  # exact flow from saved depth/segmentation/poses where an item has them
    delta_s: float = 0.2  # pair (t, t+Δ) with Δ in seconds, so 12 fps SSv2 and 30 fps Ego4D stay comparable
    grid: str = "native"  # pair starts: every frame (native) or every Δ (delta)
    fps: float | None = None  # resample before flow (None: each item's native rate)
    working_size: list[int] = field(default_factory=lambda: [384, 320])  # H, W: Motus's canvas
    store_size: list[int] = field(default_factory=lambda: [96, 80])  # H, W of the stored flow
    flow_size: list[int] | None = None  # H, W the frame backend (DIS, DPFlow) runs at, vectors rescaled to canvas
    #   pixels; None: twice store_size (192×160), capped at the canvas; working_size: full size (before 2026-12).
    #   128×106 with dis_refinement_iterations 2 is 1.5× faster at the same error against exact flow, but a small
    #   RoboTwin motion then reads as static (README "Flow"), so it is not the default. Exact sim flow is always
    #   made at the canvas.
    store_frames: bool = True  # also store each pair's first frame (RGB, store size): the VAE's frame-conditioned
    #   decoder reads it (vae.decoder_condition: frame)
    camera: int = 0  # which camera of multi-camera items
    batch_size: int = 8  # pairs per backend call
    dis_preset: str = "medium"  # ultrafast | fast | medium
    # DIS knobs over the preset (None: the preset's; flow_extraction/dis.py): the coarse-to-fine pyramid's finest
    #   level (0 = the flow size itself, 1 = half of it, ...), patch size and stride (px), gradient-descent
    #   iterations per patch, variational-refinement iterations per level (0: none)
    dis_finest_scale: int | None = None
    dis_patch_size: int | None = None
    dis_patch_stride: int | None = None
    dis_gradient_descent_iterations: int | None = None
    dis_refinement_iterations: int | None = None
    dpflow_checkpoint: str | None = "things"  # a name (things, sintel, kitti, spring, chairs) or a .ckpt path
    dpflow_random_init: bool = False  # tests only: never silently random
    dpflow_allow_download: bool = False
    num_gpus: float = 0.0  # GPUs per flow worker (set 1 for dpflow on a GPU machine)
    colour_max_radius: float = 20.0  # px; fixed radius of the flow colour wheel
    static_pair_px: float = 0.5  # motion filter: a pair whose 99th-percentile flow is below this is near-static
    max_static_fraction: float = 0.8  # an item with more near-static pairs than this is marked static

    def dis_knobs(self) -> dict[str, int | None]:
        """The `dis_*` knobs by DISBackend's names (None: the preset's)."""
        return {k: getattr(self, f"dis_{k}") for k in ("finest_scale", "patch_size", "patch_stride",
                                                         "gradient_descent_iterations", "refinement_iterations")}

    def flow_hw(self) -> tuple[int, int]:
        """(H, W) the frame backend computes at: `flow_size`, or by default twice the store size (192×160 for
        96×80), no larger than the working canvas."""
        if self.flow_size:
            return int(self.flow_size[0]), int(self.flow_size[1])
        return tuple(min(2 * int(s), int(w)) for s, w in zip(self.store_size, self.working_size))  # type: ignore


def backend_module(fc: FlowConfig) -> Any:
    """The module of `fc.backend` (imported now: DPFlow's pulls in torch, so only when it is the one used)."""
    if fc.backend not in BACKENDS:
        raise ValueError(f"flow.backend: {fc.backend!r} is not one of {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[fc.backend])
