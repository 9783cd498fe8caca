"""MuJoCo frames for the OXE sample: a ViperX arm whose end effector follows per-step pose deltas (by IK).
Scene, frames, timing and cameras: docs/samples.md#oxe."""

from __future__ import annotations


import numpy as np

from samples.mujoco_render import SimCamera, aloha_model_path, look_at_quat

# mujoco must be imported after mujoco_render has set MUJOCO_GL.
import mujoco  # noqa: E402  isort: skip

ARM = "vx300s_left"
GRIPPER_BODY = f"{ARM}/gripper_link"
ARM_JOINTS = tuple(f"{ARM}/{j}" for j in ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate"))
FINGERS = (f"{ARM}/left_finger", f"{ARM}/right_finger")
FINGER_OPEN, FINGER_CLOSED = 0.057, 0.021  # slide joint positions of the left finger (the right one mirrors)
START_JOINTS = (0.0, -0.96, 1.16, 0.0, -0.3, 0.0)  # gym-aloha's keyframe: the IK's first warm start
HOME = np.array([0.27, 0.0, 0.22, 0.0, 1.1, 0.0])  # x y z roll pitch yaw in the base frame: hand tilted down
# The commanded pose stays inside HOME ± HALF_RANGE: the arm reaches all of it, and the hand (gripper + fingers)
# covers 4-16% of the main image (median 7%; it touches the image border in ~1 of 6 frames, never leaves it).
HALF_RANGE = np.array([0.08, 0.12, 0.07, 0.5, 0.25, 0.45])
SPEED = (0.04, 0.16)  # m/s, an episode's translation speed is drawn from this range
TURN_S = (0.5, 1.5)  # s between new directions, per episode
ANGULAR_SPEED = (0.3, 1.0)  # rad/s
CAMERAS = {  # base-frame position, look-at point, vertical field of view (deg)
    "oxe_main": ((0.47, 0.06, 0.42), (0.25, 0.0, 0.17), 60.0),
    "oxe_side": ((0.30, 0.50, 0.50), (0.24, 0.0, 0.17), 60.0),
}
VIEWS = ("oxe_main", "oxe_side", "left_wrist")
WRIST_FOVY = 75.0
IK_ITERATIONS, IK_DAMPING, IK_TOLERANCE = 100, 1e-4, 1e-6
_ROLL = [3, 5]  # forearm_roll, wrist_rotate in ARM_JOINTS






def oxe_model() -> mujoco.MjModel:
    """gym-aloha's scene with the right arm (its body, finger actuators and the keyframe) removed and our cameras
    added; the left arm's wrist camera is fixed to the gripper and widened (as ALOHA's real one)."""
    spec = mujoco.MjSpec.from_file(str(aloha_model_path()))
    for key in list(spec.keys):
        spec.delete(key)
    for act in list(spec.actuators):
        if act.target.startswith("vx300s_right/"):
            spec.delete(act)
    spec.delete(spec.body("vx300s_right"))
    base = np.array(spec.body(ARM).pos, float)
    for name, (pos, target, fovy) in CAMERAS.items():
        spec.worldbody.add_camera(name=name, pos=base + pos, quat=look_at_quat(base + np.array(pos), base + target),
                                  fovy=fovy)
    wrist = spec.camera("left_wrist")
    focus = spec.body(f"{ARM}/camera_focus").pos
    wrist.mode, wrist.targetbody = mujoco.mjtCamLight.mjCAMLIGHT_FIXED, ""
    wrist.quat, wrist.fovy = look_at_quat(wrist.pos, focus), WRIST_FOVY
    return spec.compile()


def rpy_to_quat(rpy: np.ndarray) -> np.ndarray:
    """[..., 3] roll-pitch-yaw (R = Rz(yaw) Ry(pitch) Rx(roll)) → [..., 4] quaternion (w, x, y, z)."""
    r, p, y = (np.asarray(rpy, float)[..., i] / 2 for i in range(3))
    cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
    return np.stack([cr * cp * cy + sr * sp * sy, sr * cp * cy - cr * sp * sy,
                     cr * sp * cy + sr * cp * sy, cr * cp * sy - sr * sp * cy], axis=-1)


def quat_to_rpy(quat: np.ndarray) -> np.ndarray:
    """[..., 4] quaternion (w, x, y, z) → [..., 3] roll-pitch-yaw, the inverse of `rpy_to_quat` (pitch in ±π/2)."""
    w, x, y, z = (np.asarray(quat, float)[..., i] for i in range(4))
    roll = np.arctan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    pitch = np.arcsin(np.clip(2 * (w * y - z * x), -1.0, 1.0))
    yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return np.stack([roll, pitch, yaw], axis=-1)


def _walk(rng: np.random.Generator, t: int, fps: float, speed: float, turn_s: float, dims: int,
          lo: np.ndarray, hi: np.ndarray, start: np.ndarray) -> np.ndarray:
    """A path [t, dims] inside [lo, hi]: constant speed, a new random direction every `turn_s` seconds (blended
    over a step), reflected off the box's walls."""
    out = np.empty((t, dims))
    out[0] = start
    every = max(1, int(round(turn_s * fps)))
    step = speed / fps
    velocity = np.zeros(dims)
    for i in range(1, t):
        if (i - 1) % every == 0:
            direction = rng.normal(size=dims)
            target = direction / max(np.linalg.norm(direction), 1e-9) * step * rng.uniform(0.5, 1.0)
            velocity = target if i == 1 else 0.5 * (velocity + target)
        nxt = out[i - 1] + velocity
        over, under = nxt > hi, nxt < lo
        velocity = np.where(over | under, -velocity, velocity)
        out[i] = np.clip(out[i - 1] + velocity, lo, hi)
    return out


def motion(rng: np.random.Generator, t: int, fps: float) -> dict[str, np.ndarray]:
    """The commanded end-effector path of one episode (base frame): pos [t, 3] m, rpy [t, 3] rad, gripper [t]
    in {0, 1} (1 = closed), toggled two to five times. Speed and turn rate are drawn per episode."""
    lo, hi = HOME - HALF_RANGE, HOME + HALF_RANGE
    start = HOME + rng.uniform(-0.5, 0.5, 6) * HALF_RANGE
    speed, turn = rng.uniform(*SPEED), rng.uniform(*TURN_S)
    pos = _walk(rng, t, fps, speed, turn, 3, lo[:3], hi[:3], start[:3])
    rpy = _walk(rng, t, fps, rng.uniform(*ANGULAR_SPEED), rng.uniform(*TURN_S), 3, lo[3:], hi[3:], start[3:])
    toggles = np.sort(rng.choice(np.arange(1, t), size=min(t - 1, int(rng.integers(2, 6))), replace=False))
    gripper = (np.searchsorted(toggles, np.arange(t), side="right") % 2).astype(np.float64)
    if rng.random() < 0.5:
        gripper = 1.0 - gripper
    return {"pos": pos, "rpy": rpy, "gripper": gripper}


class ArmSim:
    """One model + renderer; `episode` renders a commanded path. Close it (or use it as a context manager)."""

    def __init__(self, size: tuple[int, int]):
        self.model = oxe_model()
        self.data = mujoco.MjData(self.model)
        self.cam = SimCamera(self.model, *size)
        self.base = np.array(self.model.body(ARM).pos, float)
        self._grip = self.model.body(GRIPPER_BODY).id
        joints = [self.model.joint(j) for j in ARM_JOINTS]
        self._qadr = np.array([j.qposadr[0] for j in joints])
        self._dofadr = np.array([j.dofadr[0] for j in joints])
        self._range = np.array([j.range for j in joints])
        self._fingers = [self.model.joint(j).qposadr[0] for j in FINGERS]
        self._jacp, self._jacr = np.zeros((3, self.model.nv)), np.zeros((3, self.model.nv))

    def solve(self, pose: np.ndarray) -> float:
        """Move the arm's joints so the gripper link sits at `pose` (base-frame x y z roll pitch yaw), starting from
        the current joints; returns the remaining error (metres + radians)."""
        model, data = self.model, self.data
        target_pos, target_quat = self.base + pose[:3], rpy_to_quat(pose[3:])
        err, neg, dq = np.zeros(6), np.zeros(4), np.zeros(4)
        for _ in range(IK_ITERATIONS):
            mujoco.mj_kinematics(model, data)
            err[:3] = target_pos - data.xpos[self._grip]
            mujoco.mju_negQuat(neg, data.xquat[self._grip])
            mujoco.mju_mulQuat(dq, target_quat, neg)
            mujoco.mju_quat2Vel(err[3:], dq, 1.0)  # world-frame rotation vector from the current to the target
            if np.abs(err).max() < IK_TOLERANCE:
                break
            mujoco.mj_comPos(model, data)
            mujoco.mj_jacBody(model, data, self._jacp, self._jacr, self._grip)
            jac = np.vstack([self._jacp[:, self._dofadr], self._jacr[:, self._dofadr]])
            q = data.qpos[self._qadr] + jac.T @ np.linalg.solve(jac @ jac.T + IK_DAMPING * np.eye(6), err)
            # forearm roll and wrist rotate span exactly ±π: wrapping them is the same pose, while clipping them
            # would stall the solver against a limit near the wrist singularity (wrist angle ≈ 0)
            q[_ROLL] = (q[_ROLL] + np.pi) % (2 * np.pi) - np.pi
            data.qpos[self._qadr] = np.clip(q, self._range[:, 0], self._range[:, 1])
        return float(np.abs(err).max())

    def episode(self, m: dict[str, np.ndarray], views: tuple[str, ...] = VIEWS[:1]
                ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Frames {view: uint8 [T, H, W, 3]} and the reached gripper-link pose [T, 7] (base-frame position,
        quaternion w x y z) at each frame; frame t shows commanded pose t and gripper closedness t."""
        model, data = self.model, self.data
        pose = np.concatenate([m["pos"], m["rpy"]], axis=1)
        t = len(pose)
        mujoco.mj_resetData(model, data)
        data.qpos[self._qadr] = START_JOINTS
        frames = {v: np.empty((t, self.cam.height, self.cam.width, 3), np.uint8) for v in views}
        reached = np.empty((t, 7))
        for i in range(t):
            self.solve(pose[i])
            opening = FINGER_OPEN + (FINGER_CLOSED - FINGER_OPEN) * m["gripper"][i]
            data.qpos[self._fingers] = [opening, -opening]
            mujoco.mj_forward(model, data)
            for v in views:
                frames[v][i] = self.cam.render(data, v, depth=False, segmentation=False).rgb
            reached[i, :3] = data.xpos[self._grip] - self.base
            reached[i, 3:] = data.xquat[self._grip]
        return frames, reached

    def close(self) -> None:
        self.cam.close()

    def __enter__(self) -> ArmSim:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
