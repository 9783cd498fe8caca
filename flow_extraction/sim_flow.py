"""Exact optical flow for the simulated tiers, from rendered depth, body segmentation, cameras and body poses.
The geometry and validity rules: docs/flow.md#sim-flow."""

from __future__ import annotations

# bumped when exact flow changes for the same inputs, so flow stages redo sim items (2: background valid)
SIM_FLOW_VERSION = 2

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np

from flow_extraction.base import FlowConfigError
from media.hdf5_open import open_hdf5

DEFAULT_ABS_TOL_M = 0.01  # occlusion tolerance: 1 cm (float16 depth steps are <= 0.5 mm below 1 m) ...
DEFAULT_REL_TOL = 0.01  # ... plus 1 % of the point's depth (depth-buffer precision falls off with distance)
_MIN_Z = 1e-6  # metres: a point this close to (or behind) the camera plane cannot be projected


# ------------------------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class SimFrame:
    """One camera's geometry at one instant, plus every body's pose at that instant."""

    depth: np.ndarray  # float32 [H, W], metres along the optical axis (planar z)
    segmentation: np.ndarray  # int [H, W], body id (index into the body arrays), -1 = no geometry
    intrinsics: np.ndarray  # float64 [3, 3]
    world_to_camera: np.ndarray  # float64 [4, 4], OpenCV axes (x right, y down, z forward)
    body_xpos: np.ndarray  # float64 [B, 3], body origin in world
    body_xmat: np.ndarray  # float64 [B, 3, 3], body→world rotation


@dataclass(frozen=True)
class SimExtras:
    """The simulation extras of one camera for a set of frames of one episode (only those frames are loaded)."""

    frames: np.ndarray  # int64 [F], the episode frame indices held, sorted and unique
    depth: np.ndarray  # float32 [F, H, W] metres
    segmentation: np.ndarray  # int16 [F, H, W] body id, -1 = none
    intrinsics: np.ndarray  # float64 [F, 3, 3]
    world_to_camera: np.ndarray  # float64 [F, 4, 4] OpenCV axes
    body_xpos: np.ndarray  # float64 [F, B, 3]
    body_xmat: np.ndarray  # float64 [F, B, 3, 3]
    body_names: tuple[str, ...]
    camera: str
    layout: str  # "task_agnostic" or "robotwin"

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.depth.shape[1]), int(self.depth.shape[2])

    def frame(self, index: int) -> SimFrame:
        """The :class:`SimFrame` of episode frame ``index`` (which must have been loaded)."""
        pos = int(np.searchsorted(self.frames, index))
        if pos >= len(self.frames) or self.frames[pos] != index:
            raise KeyError(f"frame {index} was not loaded (have {self.frames.tolist()})")
        return SimFrame(self.depth[pos], self.segmentation[pos], self.intrinsics[pos], self.world_to_camera[pos],
                        self.body_xpos[pos], self.body_xmat[pos])


# ------------------------------------------------------------------------------------------------ loading
def resolve_sim_file(media: str | Path) -> tuple[Path, str]:
    """The HDF5 file holding an item's sim extras and its layout ("task_agnostic" or "robotwin").

    Accepts what the ingest adapters store as media: a task-agnostic ``sim.h5``, its episode directory or one
    of its ``rgb_<cam>.mp4`` files; a RoboTwin episode ``.hdf5``, optionally with a ``#observation/...`` suffix.
    """
    path = Path(str(media).split("#", 1)[0])
    if path.is_dir():
        path = path / "sim.h5"
    elif path.suffix == ".mp4":
        path = path.with_name("sim.h5")
    if not path.is_file():
        raise FileNotFoundError(f"no simulation extras at {path} (from {media})")
    if path.name == "sim.h5":
        return path, "task_agnostic"
    with open_hdf5(path) as f:
        if "observation" in f and "sim" in f:
            return path, "robotwin"
    raise ValueError(f"{path}: neither a task-agnostic sim.h5 nor a RoboTwin episode with sim extras")


def _layout_keys(layout: str, camera: str) -> dict[str, str]:
    if layout == "task_agnostic":
        return {"depth": f"depth/{camera}", "seg": f"segmentation/{camera}", "K": f"camera/{camera}/intrinsics",
                "w2c": f"camera/{camera}/world_to_camera", "names": "bodies/names", "xpos": "bodies/xpos",
                "xmat": "bodies/xmat"}
    obs = f"observation/{camera}"
    return {"depth": f"{obs}/depth", "seg": f"{obs}/segmentation", "K": f"{obs}/intrinsic_cv",
            "w2c": f"{obs}/extrinsic_cv", "names": "sim/body_names", "xpos": "sim/body_xpos", "xmat": "sim/body_xmat"}


def _read_frames(ds: h5py.Dataset, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` (sorted, unique) of a dataset whose first axis is time."""
    return ds[idx.tolist()] if len(idx) > 1 else ds[int(idx[0])][None]


def load_sim_extras(media: str | Path, camera: str, frames: Sequence[int]) -> SimExtras:
    """Read depth, segmentation, cameras and body poses of ``camera`` for episode frames ``frames`` only.

    ``media``: see :func:`resolve_sim_file`. ``camera``: a task-agnostic camera name (e.g. ``"front"``) or a
    RoboTwin one (e.g. ``"head_camera"``; only cameras with depth and segmentation qualify).
    """
    path, layout = resolve_sim_file(media)
    idx = np.unique(np.asarray(frames, dtype=np.int64))
    if idx.size == 0:
        raise ValueError("no frames requested")
    keys = _layout_keys(layout, camera)
    with open_hdf5(path) as f:
        missing = [k for k in ("depth", "seg", "K", "w2c") if keys[k] not in f]
        if missing:
            raise KeyError(f"{path}: camera {camera!r} has no {', '.join(keys[k] for k in missing)}")
        n = f[keys["depth"]].shape[0]
        if idx[0] < 0 or idx[-1] >= n:
            raise IndexError(f"{path}: frames must lie in [0, {n}), got {idx[0]}..{idx[-1]}")
        # h5py fancy indexing wants increasing indices; depth and segmentation are chunked one frame each, so
        # only the requested frames are decompressed (the small pose arrays may come in larger chunks).
        depth = _read_frames(f[keys["depth"]], idx).astype(np.float32)  # float16 → float32 is exact
        seg = _read_frames(f[keys["seg"]], idx).astype(np.int16)
        k_ds = f[keys["K"]]
        intr = np.broadcast_to(k_ds[()], (len(idx), 3, 3)) if k_ds.ndim == 2 else _read_frames(k_ds, idx)
        ext = _read_frames(f[keys["w2c"]], idx).astype(np.float64)
        xpos = _read_frames(f[keys["xpos"]], idx).astype(np.float64)
        xmat = _read_frames(f[keys["xmat"]], idx).astype(np.float64)
        names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in f[keys["names"]][()])
    if ext.shape[1] == 3:  # RoboTwin stores [T, 3, 4]
        ext = np.concatenate([ext, np.broadcast_to([[[0.0, 0.0, 0.0, 1.0]]], (len(idx), 1, 4))], axis=1)
    return SimExtras(frames=idx, depth=depth, segmentation=seg, intrinsics=np.array(intr, dtype=np.float64),
                     world_to_camera=ext, body_xpos=xpos, body_xmat=xmat, body_names=names, camera=camera,
                     layout=layout)


# ------------------------------------------------------------------------------------------------ geometry
def _pose(xpos: np.ndarray, xmat: np.ndarray) -> np.ndarray:
    """Body→world 4×4 transforms [..., 4, 4] from positions [..., 3] and rotations [..., 3, 3]."""
    t = np.zeros(xpos.shape[:-1] + (4, 4))
    t[..., :3, :3] = xmat
    t[..., :3, 3] = xpos
    t[..., 3, 3] = 1.0
    return t


def body_motion_in_camera(a: SimFrame, b: SimFrame) -> np.ndarray:
    """Per body, the 4×4 map from camera-a coordinates at t to camera-b coordinates at t+Δ: [B, 4, 4]."""
    if a.body_xpos.shape != b.body_xpos.shape:
        raise ValueError(f"body arrays differ between frames: {a.body_xpos.shape} vs {b.body_xpos.shape}")
    body_t, body_t2 = _pose(a.body_xpos, a.body_xmat), _pose(b.body_xpos, b.body_xmat)
    return b.world_to_camera @ body_t2 @ np.linalg.inv(body_t) @ np.linalg.inv(a.world_to_camera)


def _check_intrinsics(k: np.ndarray) -> None:
    # The projected depth is read off the third homogeneous coordinate, which needs K's last row = (0, 0, 1).
    if not np.allclose(k[2], [0.0, 0.0, 1.0]):
        raise ValueError(f"intrinsics must have last row (0, 0, 1), got {k[2]}")


def _pixel_maps(a: SimFrame, b: SimFrame) -> np.ndarray:
    """Per body, plus one static "world" entry at index B, the 3×4 map from (z·u, z·v, z, w) to K_b·X'.

    For a pixel (u, v) of depth z, (z·u, z·v, z, 1) = [K_a·X; 1] with X its camera-a point, so the map is
    K_b · M[:3] · diag(K_a⁻¹, 1). A background pixel is a point at infinity, (u, v, 1, 0) with w = 0: through
    the static world entry only the camera's rotation acts on it, the translation drops out.
    """
    _check_intrinsics(a.intrinsics)
    _check_intrinsics(b.intrinsics)
    static_world = b.world_to_camera @ np.linalg.inv(a.world_to_camera)
    motion = np.concatenate([body_motion_in_camera(a, b), static_world[None]])  # [B + 1, 4, 4]
    unproject = np.eye(4)
    unproject[:3, :3] = np.linalg.inv(a.intrinsics)
    return b.intrinsics @ motion[:, :3, :] @ unproject  # composed per body (a few dozen), not per pixel


def _apply_per_pixel(maps: np.ndarray, ids: np.ndarray, hom: tuple[np.ndarray, ...]) -> list[np.ndarray]:
    """Rows of ``maps[ids] @ hom`` per pixel, for maps [B + 1, 3, 4], ids [H, W] and hom = 4 × [H, W].

    One coefficient at a time: gathering a whole 3×4 matrix per pixel allocates ~7 MB per 240×320 frame and
    is about 4x slower, mostly in page faults.
    """
    rows = []
    for i in range(3):
        acc = maps[:, i, 3][ids] * hom[3]
        for j in range(3):
            acc += maps[:, i, j][ids] * hom[j]
        rows.append(acc)
    return rows


def _occluded(z: np.ndarray, col: np.ndarray, row: np.ndarray, depth_b: np.ndarray, abs_tol: float,
              rel_tol: float) -> np.ndarray:
    """True where the depth map of t+Δ at pixel (row, col) is closer than z by more than the tolerance.

    Nearest pixel, not interpolation: interpolating across a silhouette would invent depths between the
    occluder and what it covers. On a steep slope the sub-pixel offset can exceed the tolerance and flag a
    visible point; that errs on the safe side (a few pixels fewer, never a wrong one).
    """
    seen = depth_b[row, col].astype(np.float64)
    seen = np.where(np.isfinite(seen) & (seen > 0), seen, np.inf)  # no surface there: nothing hides the point
    return z > seen + abs_tol + rel_tol * z


def exact_flow(a: SimFrame, b: SimFrame, abs_tol: float = DEFAULT_ABS_TOL_M,
               rel_tol: float = DEFAULT_REL_TOL) -> tuple[np.ndarray, np.ndarray]:
    """Exact flow from frame ``a`` (t) to frame ``b`` (t+Δ) of the same camera.

    Returns flow float32 [2, H, W] (native pixels) and valid bool [H, W]: geometry at t, in front of the
    camera and inside the image at t+Δ, and not occluded there (tolerance ``abs_tol + rel_tol · z`` metres);
    or background at t whose point at infinity lands inside the image on background at t+Δ. Geometry pixels
    that leave the image or get occluded keep their true flow; pixels whose point ends up behind the camera
    get 0; background newly covered by a body at t+Δ keeps the flow of infinity. All of these are invalid.
    """
    h, w = a.depth.shape
    if b.depth.shape != (h, w) or a.segmentation.shape != (h, w):
        raise ValueError("depth and segmentation of both frames must have the same shape")
    n_bodies = len(a.body_xpos)
    maps = _pixel_maps(a, b)  # [B + 1, 3, 4]

    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    seg = a.segmentation.astype(np.intp)
    z = a.depth.astype(np.float64)
    if seg.max() >= n_bodies:  # ids index the body arrays (body 0 = world); anything else is a format error
        raise ValueError(f"segmentation id {seg.max()} but only {n_bodies} bodies")
    has_geom = (seg >= 0) & np.isfinite(z) & (z > 0)
    # Homogeneous inputs (z·u, z·v, z, 1) for geometry, (u, v, 1, 0) for points at infinity.
    zz = np.where(has_geom, z, 1.0)
    hom = (zz * u, zz * v, zz, has_geom.astype(np.float64))
    p = _apply_per_pixel(maps, np.where(has_geom, seg, n_bodies), hom)  # K_b·X' = (z'·u', z'·v', z')
    z2 = p[2]

    ahead = z2 > _MIN_Z
    safe_z = np.where(ahead, z2, 1.0)
    u2, v2 = p[0] / safe_z, p[1] / safe_z
    flow = np.empty((2, h, w), np.float32)
    np.subtract(u2, u, out=flow[0], casting="same_kind")
    np.subtract(v2, v, out=flow[1], casting="same_kind")
    flow[:, ~ahead] = 0.0

    # Pixel centres are integers, so the image covers [-0.5, W - 0.5) × [-0.5, H - 0.5).
    inside = ahead & (u2 >= -0.5) & (u2 < w - 0.5) & (v2 >= -0.5) & (v2 < h - 0.5)
    col = np.clip(np.floor(u2 + 0.5), 0, w - 1).astype(np.intp)
    row = np.clip(np.floor(v2 + 0.5), 0, h - 1).astype(np.intp)
    valid = has_geom & inside & ~_occluded(z2, col, row, b.depth, abs_tol, rel_tol)
    valid |= ~has_geom & inside & (b.segmentation[row, col] < 0)  # infinity, still seen at t+Δ
    return flow, valid


# ------------------------------------------------------------------------------------------------ canvas
def to_canvas(flow: np.ndarray, valid: np.ndarray, scale: float, offset_xy: tuple[int, int],
              canvas_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Map native flow [(N,) 2, H, W] and valid [(N,) H, W] onto a zero canvas of ``canvas_hw``.

    The field is resized to (round(H·scale), round(W·scale)) and its vectors scaled by the same factor (per
    axis, the realised size ratio, which is ``scale`` up to rounding), then pasted with its top-left corner at
    ``offset_xy`` = (x, y). Resizing averages only valid vectors (a masked resize), so the meaningless flow of
    invalid pixels never leaks in; a canvas pixel is valid only if every native pixel it draws from is.
    Invalid pixels carry flow 0 on the canvas (their native flow, e.g. of an occluded point, is dropped), and
    so does the padding.
    """
    single = flow.ndim == 3
    flow = flow[None] if single else flow
    valid = valid[None] if single else valid
    n, _, h, w = flow.shape
    new_h, new_w = int(round(h * scale)), int(round(w * scale))
    x0, y0 = int(offset_xy[0]), int(offset_xy[1])
    ch, cw = int(canvas_hw[0]), int(canvas_hw[1])
    if new_h < 1 or new_w < 1 or x0 < 0 or y0 < 0 or x0 + new_w > cw or y0 + new_h > ch:
        raise ValueError(f"a {h}x{w} field at scale {scale} and offset {offset_xy} does not fit {canvas_hw}")
    out_flow = np.zeros((n, 2, ch, cw), np.float32)
    out_valid = np.zeros((n, ch, cw), bool)
    factors = np.array([new_w / w, new_h / h], np.float32)[:, None, None]
    for i in range(n):
        f, m = _resize_masked(flow[i], valid[i], new_h, new_w)
        out_flow[i, :, y0 : y0 + new_h, x0 : x0 + new_w] = f * factors
        out_valid[i, y0 : y0 + new_h, x0 : x0 + new_w] = m
    return (out_flow[0], out_valid[0]) if single else (out_flow, out_valid)


def _resize_masked(flow: np.ndarray, valid: np.ndarray, new_h: int, new_w: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize one field [2, H, W] with its mask [H, W]: normalised (valid-weighted) area/bilinear averaging."""
    h, w = valid.shape
    if (new_h, new_w) == (h, w):
        return np.where(valid, flow, 0.0).astype(np.float32), valid.copy()
    interp = cv2.INTER_AREA if new_h < h or new_w < w else cv2.INTER_LINEAR
    masked = np.where(valid, flow, 0.0)  # zero, not multiply: invalid pixels may hold any value, even NaN
    stack = np.dstack([masked[0], masked[1], valid]).astype(np.float32)  # H, W, 3 for cv2
    small = cv2.resize(stack, (new_w, new_h), interpolation=interp)
    wsum = small[..., 2:]
    out = np.where(wsum > 1e-6, small[..., :2] / np.maximum(wsum, 1e-6), 0.0)
    return out.transpose(2, 0, 1).astype(np.float32), wsum[..., 0] > 1.0 - 1e-4


# ------------------------------------------------------------------------------------------------ backend
class SimFlowBackend:
    """Flow "backend" that reads the truth from simulation extras instead of estimating it from pixels.

    Unlike image backends it needs the item's files, so its entry point is :meth:`compute_item`; the output is
    at the native render size (use :func:`to_canvas` to place it on the working canvas).
    """

    name = "sim"

    def __init__(self, camera: str | None = None, occlusion_tolerance_m: float = DEFAULT_ABS_TOL_M,
                 occlusion_tolerance_rel: float = DEFAULT_REL_TOL):
        self.camera = camera
        self.occlusion_tolerance_m = float(occlusion_tolerance_m)
        self.occlusion_tolerance_rel = float(occlusion_tolerance_rel)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "camera": self.camera, "occlusion_tolerance_m": self.occlusion_tolerance_m,
                "occlusion_tolerance_rel": self.occlusion_tolerance_rel}

    def compute(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        raise FlowConfigError("the sim backend cannot work from pixels; call compute_item(media, camera, pairs)")

    def compute_item(self, media: str | Path, camera: str | None,
                     pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact flow for frame pairs [N, 2] (first, second) → flow float32 [N, 2, H, W], valid bool [N, H, W].

        ``camera`` None means the backend's own. Only the frames named in ``pairs`` are read.
        """
        camera = camera or self.camera
        if camera is None:
            raise ValueError("no camera given (neither to compute_item nor to the backend)")
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        extras = load_sim_extras(media, camera, pairs.ravel())
        h, w = extras.hw
        flow = np.empty((len(pairs), 2, h, w), np.float32)
        valid = np.empty((len(pairs), h, w), bool)
        for i, (t, t2) in enumerate(pairs):  # one vectorised field per pair
            flow[i], valid[i] = exact_flow(extras.frame(t), extras.frame(t2), self.occlusion_tolerance_m,
                                           self.occlusion_tolerance_rel)
        return flow, valid
