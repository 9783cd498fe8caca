"""Pyramid tier L4 sample data: task-agnostic random joint motion of the bimanual ALOHA (ViperX) arms, in our layout.
How it is made: docs/samples.md#task-agnostic; layout: docs/formats.md#task-agnostic."""

from __future__ import annotations

import functools
import logging
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from samples.aloha_sim import (CONTROL_HZ, DT, FRONT_CAMERA, WRIST_FOVY, RandomJointTargets, aloha_constants,
                               aloha_model, command_to_ctrl, measured_joints)
from samples.files import atomic_path, h5_compressed, write_h264, write_json, write_npy
from samples.mujoco_render import SimCamera, body_names, camera_extrinsics, run_render_jobs

# mujoco must be imported after mujoco_render has set MUJOCO_GL.
import mujoco  # noqa: E402  isort: skip

log = logging.getLogger(__name__)

EMBODIMENT = "aloha_viperx_bimanual"
FORMAT = "motus-pyramid/task_agnostic"
FORMAT_VERSION = 1
HOLD_SECONDS = 0.5  # time between random targets: long enough for the servos to get there, short enough to move
# "varied" motion: each episode gets its own speed (targets every HOLD_SECONDS / speed) and, per joint, its own
# amplitude (a fraction of that joint's box), so some episodes sweep a joint and others barely move it; the
# joints' moves are then less correlated and each joint's own pixel motion shows up in some episodes.
# Its targets stay in a box around a working pose that the front camera sees (offsets from the start pose, per
# arm; the waists mirror), so the arms stay large in view and a joint's move looks alike from episode to episode
# (a linear read of pooled flow needs that; bench/bench_task_agnostic_ceiling.py measures it). The hand is bent
# down (wrist angle +1.0) so wrist moves swing the fingers across the image instead of along the view.
WORK_OFFSET = np.array([0.2, 0.65, -0.2, 0.0, 1.0, 0.0, -0.2, 0.65, -0.2, 0.0, 1.0, 0.0])
WORK_HALF_RANGE = np.tile([0.3, 0.175, 0.225, 0.3, 0.4, 0.3], 2)  # rad, times joint_range
SPEED_RANGE = (0.6, 1.6)
AMPLITUDE_RANGE = (0.2, 1.0)
MOTIONS = ("varied", "uniform")  # "uniform": one speed, full boxes (the generator before issue 21)

# Cameras that move with the arm are rendered at this fraction of the main view's size: each view costs a draw
# per frame whatever its size, but at half size its read-back and encoding cost a quarter, which keeps the demo's
# generation time near what one camera cost.
MOVING_CAMERA_SCALE = 0.5
DEFAULT_CAMERAS = ("front", "left_wrist", "right_wrist")


# ---------------------------------------------------------------------------------------------- one episode
def _is_static_camera(model: mujoco.MjModel, cam_id: int) -> bool:
    """True if the camera never moves (world-fixed, and any tracking target is world-fixed too).

    Only such cameras can be used to test candidate targets for visibility; wrist cameras move with the arm.
    """
    if model.body_weldid[model.cam_bodyid[cam_id]] != 0:
        return False
    target = model.cam_targetbodyid[cam_id]
    return target < 0 or model.body_weldid[target] == 0


def camera_size(model: mujoco.MjModel, name: str, height: int, width: int) -> tuple[int, int]:
    """Image size of camera ``name``: the main size for static cameras, MOVING_CAMERA_SCALE of it otherwise."""
    cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, name)
    if _is_static_camera(model, cam_id):
        return int(height), int(width)
    return tuple(2 * round(x * MOVING_CAMERA_SCALE / 2) for x in (height, width))  # H.264 wants even sizes


def camera_renderer(model: mujoco.MjModel, cam: SimCamera, name: str) -> SimCamera:
    """The renderer for camera ``name``: ``cam`` itself, or its twin at the camera's own size."""
    return cam.sized(*camera_size(model, name, cam.height, cam.width))


def _simulate_episode(
    model: mujoco.MjModel,
    cam: SimCamera,
    cameras: Sequence[str],
    rng: np.random.Generator,
    n_frames: int,
    steps_per_frame: int,
    hold_frames: int,
    motion: str = "uniform",
    sim_cameras: Sequence[str] | None = None,
    joint_range: float = 1.0,
) -> dict:
    """Run one episode; return per-frame arrays (images, joints, actions, depth, segmentation, poses).

    Depth, segmentation and camera poses are rendered for ``sim_cameras`` only (default: all ``cameras``).
    """
    c = aloha_constants()
    sim_cameras = list(cameras if sim_cameras is None else sim_cameras)
    amplitude = box = None
    if motion == "varied":
        box = (WORK_OFFSET - joint_range * WORK_HALF_RANGE, WORK_OFFSET + joint_range * WORK_HALF_RANGE)
        # per-episode speed and per-joint amplitude, drawn before any target
        hold_frames = max(3, int(round(hold_frames / rng.uniform(*SPEED_RANGE))))
        amplitude = rng.uniform(*AMPLITUDE_RANGE, 12)
    elif motion != "uniform":
        raise ValueError(f"motion must be one of {MOTIONS}, got {motion!r}")
    data = mujoco.MjData(model)
    n_sub = int(round(DT / model.opt.timestep))
    data.qpos[:16] = c.START_ARM_POSE
    data.ctrl[:] = c.START_ARM_POSE
    mujoco.mj_forward(model, data)
    views = [
        (cam.intrinsics(k), camera_extrinsics(data, cam.camera_id(k)), (cam.height, cam.width))
        for k in cameras
        if _is_static_camera(model, cam.camera_id(k))
    ]
    policy = RandomJointTargets(model, rng, hold_frames, views, amplitude, box)

    cams = {k: camera_renderer(model, cam, k) for k in cameras}
    out = {
        "rgb": {k: np.empty((n_frames, r.height, r.width, 3), np.uint8) for k, r in cams.items()},
        "depth": {k: np.empty((n_frames, cams[k].height, cams[k].width), np.float16) for k in sim_cameras},
        "seg": {k: np.empty((n_frames, cams[k].height, cams[k].width), np.int16) for k in sim_cameras},
        "w2c": {k: np.empty((n_frames, 4, 4), np.float32) for k in sim_cameras},
        "K": {k: cams[k].intrinsics(k).astype(np.float32) for k in sim_cameras},
        "joints": np.empty((n_frames, 14), np.float32),
        "actions": np.empty((n_frames, 14), np.float32),
        "xpos": np.empty((n_frames, model.nbody, 3), np.float32),
        "xmat": np.empty((n_frames, model.nbody, 3, 3), np.float32),
    }
    for t in range(n_frames):
        # mj_step leaves xpos/cam_xpos one substep behind qpos; recompute so pixels, poses and joints agree.
        mujoco.mj_forward(model, data)
        for k in cameras:
            with_sim = k in out["depth"]
            f = cams[k].render(data, k, depth=with_sim, segmentation=with_sim)
            out["rgb"][k][t] = f.rgb
            if with_sim:
                out["depth"][k][t] = f.depth  # background = far plane (~83 m), still inside float16 range
                out["seg"][k][t] = f.segmentation
                out["w2c"][k][t] = f.world_to_camera
        out["joints"][t] = measured_joints(data)
        out["xpos"][t] = data.xpos
        out["xmat"][t] = data.xmat.reshape(-1, 3, 3)
        action = policy(t)  # the target commanded after observing frame t (docs/samples.md#task-agnostic)
        out["actions"][t] = action
        data.ctrl[:] = command_to_ctrl(action)
        mujoco.mj_step(model, data, nstep=n_sub * steps_per_frame)
    return out


def _write_episode(ep_dir: Path, ep: dict, names: list[str], cameras: Sequence[str], fps: float) -> None:
    ep_dir.mkdir(parents=True, exist_ok=True)
    for k in cameras:
        write_h264(ep_dir / f"rgb_{k}.mp4", ep["rgb"][k], fps)
    write_npy(ep_dir / "joints.npy", ep["joints"])
    write_npy(ep_dir / "actions.npy", ep["actions"])
    with atomic_path(ep_dir / "sim.h5") as tmp, h5py.File(tmp, "w") as f:
        for k in ep["depth"]:
            h5_compressed(f.require_group("depth"), k, ep["depth"][k]).attrs["units"] = "m"
            h5_compressed(f.require_group("segmentation"), k, ep["seg"][k]).attrs["background"] = -1
            g = f.require_group(f"camera/{k}")
            g.create_dataset("intrinsics", data=ep["K"][k])
            g.create_dataset("world_to_camera", data=ep["w2c"][k]).attrs["axes"] = "opencv"
        b = f.require_group("bodies")
        b.create_dataset("names", data=names, dtype=h5py.string_dtype("utf-8"))
        h5_compressed(b, "xpos", ep["xpos"], per_frame_chunks=False)
        h5_compressed(b, "xmat", ep["xmat"], per_frame_chunks=False)


def _make_episode(
    model: mujoco.MjModel,
    cam: SimCamera,
    ep_dir: Path,
    rng_seed: list[int],
    n_frames: int,
    steps_per_frame: int,
    hold_frames: int,
    cameras: tuple[str, ...],
    fps: float,
    motion: str = "uniform",
    sim_cameras: tuple[str, ...] | None = None,
    joint_range: float = 1.0,
) -> Path:
    """Simulate, render and write one episode (runs in a render worker; see run_render_jobs)."""
    rng = np.random.default_rng(rng_seed)
    ep = _simulate_episode(model, cam, cameras, rng, n_frames, steps_per_frame, hold_frames, motion, sim_cameras,
                           joint_range)
    _write_episode(ep_dir, ep, body_names(model), cameras, fps)
    log.debug("wrote %s", ep_dir)
    return ep_dir


def _remove_stale_episodes(ep_root: Path, keep: int) -> None:
    """Delete episode_NNNNNN dirs from an earlier, larger run so the folder matches dataset.json."""
    if not ep_root.is_dir():
        return
    for p in ep_root.iterdir():
        m = re.fullmatch(r"episode_(\d{6})", p.name)
        if m and int(m.group(1)) >= keep and p.is_dir():
            shutil.rmtree(p)


# ------------------------------------------------------------------------------------------------ public API
def write_task_agnostic(
    root: Path,
    n_episodes: int,
    n_frames: int,
    seed: int = 0,
    fps: float = 25.0,
    height: int = 240,
    width: int = 320,
    cameras: tuple[str, ...] = DEFAULT_CAMERAS,
    *,
    motion: str = "varied",
    sim_cameras: tuple[str, ...] | None = None,
    front_camera: dict | None = None,
    joint_range: float = 1.0,
    workers: int | None = None,
) -> list[Path]:
    """Generate ``n_episodes`` random-joint-motion ALOHA episodes of ``n_frames`` frames under ``root``.

    ``cameras``: names in :func:`aloha_model`; the first is the main view (the flow stage's camera 0).
    ``motion``: "varied" (per-episode speed, per-joint amplitude) or "uniform" (the pre-issue-21 generator).
    ``sim_cameras``: cameras whose depth, segmentation and poses go into ``sim.h5`` (default: the main view
    only; the wrist views' extras cost as much to render as their pictures, and the flow stage reads camera 0).
    ``joint_range``: scales the "varied" box (``WORK_HALF_RANGE``).
    ``front_camera``: {pos, target, fovy} of the "front" camera (default ``FRONT_CAMERA``).
    Episode ``i`` uses ``numpy.random.default_rng([seed, i])``, so each episode is reproducible on its own
    and the output does not depend on ``workers`` (render processes; default: up to 2, one per core).
    Returns the episode directories, in order.
    """
    if n_episodes < 1 or n_frames < 2:
        raise ValueError("need n_episodes >= 1 and n_frames >= 2")
    if motion not in MOTIONS:
        raise ValueError(f"motion must be one of {MOTIONS}, got {motion!r}")
    sim_cameras = tuple(cameras[:1] if sim_cameras is None else sim_cameras)
    if not set(sim_cameras) <= set(cameras):
        raise ValueError(f"sim_cameras {sim_cameras} must be among the cameras {cameras}")
    steps_per_frame = int(round(CONTROL_HZ / fps))
    if steps_per_frame < 1 or abs(CONTROL_HZ / steps_per_frame - fps) > 1e-6:
        raise ValueError(f"fps must divide the {CONTROL_HZ:g} Hz control rate, got {fps}")
    hold_frames = max(2, int(round(HOLD_SECONDS * fps)))

    root = Path(root)
    (root / "dataset.json").unlink(missing_ok=True)  # regenerating: never look complete half-way through
    ep_root = root / "episodes"
    front_camera = {k: tuple(v) if isinstance(v, (list, tuple)) else float(v)
                    for k, v in (front_camera or FRONT_CAMERA).items()}
    build_model = functools.partial(aloha_model, front_camera)
    model = build_model()
    for k in cameras:  # fail fast on a bad camera name, before starting any worker
        if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, k) < 0:
            raise ValueError(f"camera {k!r} not in the ALOHA model")
    c = aloha_constants()

    jobs = [
        (ep_root / f"episode_{i:06d}", [seed, i], n_frames, steps_per_frame, hold_frames, tuple(cameras), fps,
         motion, sim_cameras, joint_range)
        for i in range(n_episodes)
    ]
    episode_dirs = run_render_jobs(_make_episode, jobs, build_model, height, width, workers)
    _remove_stale_episodes(ep_root, n_episodes)

    write_json(
        root / "dataset.json",
        {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "embodiment": EMBODIMENT,
            "fps": float(fps),
            "action_space": "joint_position",
            # actions[t] is the target commanded after observing frame t, held until frame t + 1
            "action_applied": "after_frame",
            "action_names": list(c.ACTIONS),
            "state_names": list(c.JOINTS),
            "cameras": list(cameras),
            "sim_cameras": list(sim_cameras),
            "image_size": [int(height), int(width)],  # the main view's; camera_sizes has every camera's
            "camera_sizes": {k: list(camera_size(model, k, height, width)) for k in cameras},
            "mode": "sequential",
            "licence": "Apache-2.0 (gym-aloha assets)",
            "generator": {
                "name": "aloha_random_joint_targets", "seed": int(seed), "motion": motion, "hold_frames": hold_frames,
                "joint_range": float(joint_range),
                **({"speed_range": list(SPEED_RANGE), "amplitude_range": list(AMPLITUDE_RANGE)}
                   if motion == "varied" else {}),
                "front_camera": {k: list(v) if isinstance(v, tuple) else v for k, v in front_camera.items()},
                "wrist_fovy": WRIST_FOVY,
            },
            "n_episodes": int(n_episodes),
        },
    )
    return episode_dirs
