"""The bimanual ALOHA (ViperX) arms in MuJoCo for the sample generators: gym-aloha's model with our cameras, the
14-d joint vector it is measured and commanded in, and random joint targets that stay in view."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from samples.mujoco_render import aloha_model_path, look_at_quat

# mujoco must be imported after mujoco_render has set MUJOCO_GL.
import mujoco  # noqa: E402  isort: skip

log = logging.getLogger(__name__)

CONTROL_HZ = 50.0  # gym-aloha / ACT control rate
DT = 1.0 / CONTROL_HZ
# Per-arm joint target box around the start pose (waist, shoulder, elbow, forearm roll, wrist angle, wrist
# rotate), in radians; candidates are then filtered by forward kinematics (see RandomJointTargets).
TARGET_OFFSETS = (np.array([-0.8, -0.3, -0.6, -1.0, -0.8, -1.2]), np.array([0.8, 0.9, 0.4, 1.0, 0.8, 1.2]))
# Cameras we add to gym-aloha's model (it has top, angle, left/right_pillar, front_close and the two wrists):
# "front" frames the workspace between the arms so the arms fill the image (gym-aloha's top camera, 0.8 m up
# with a 78° field of view, shows them a few dozen pixels long). Position and look-at point in world metres.
FRONT_CAMERA = {"pos": (0.0, 0.05, 0.62), "target": (0.0, 0.5, 0.12), "fovy": 52.0}
# gym-aloha's wrist cameras see a 20° cone around the fingertips and turn to keep world "up" up (targetbody
# mode); ALOHA's real wrist cameras (and AnyPos's) are rigidly mounted and wide-angle, showing the fingers and
# what lies ahead, so ours are fixed to the gripper (same place, looking at the same point) and widened.
WRIST_FOVY = 75.0
TIP_Z_RANGE = (0.05, 0.30)  # fingertip height above the table top (z = 0), m: no table strikes, no folding up
TIP_REACH_RANGE = (0.25, 0.60)  # horizontal fingertip distance from the arm's own base, m
VIEW_MARGIN = 0.05  # fingertip and wrist must project at least this fraction inside the image borders
MAX_TARGET_TRIES = 500  # ~20 % of candidates pass, so this practically never runs out

# 14-d joint vector: per arm 6 revolute joints (qpos) + 1 normalised gripper computed from the left finger.
_ARM_QPOS = (np.r_[0:6], np.r_[8:14])  # qpos indices of the two arms' revolute joints
_FINGER_QPOS = (6, 14)  # left finger slide joint of each gripper (the right finger mirrors it)
_ARM_DIMS = np.r_[0:6, 7:13]  # positions of the revolute joints inside the 14-d vector
_GRIPPER_DIMS = np.array([6, 13])


def aloha_model(front_camera: dict | None = None) -> mujoco.MjModel:
    """gym-aloha's bimanual ViperX model with our "front" camera added and its wrist cameras widened.

    ``front_camera``: {pos, target, fovy} (default FRONT_CAMERA). Module-level, so render workers can build the
    model themselves from a ``functools.partial`` of it (see run_render_jobs).
    """
    spec = mujoco.MjSpec.from_file(str(aloha_model_path()))
    f = front_camera or FRONT_CAMERA
    spec.worldbody.add_camera(name="front", pos=f["pos"], quat=look_at_quat(f["pos"], f["target"]), fovy=f["fovy"])
    for side in ("left", "right"):
        cam = spec.camera(f"{side}_wrist")
        focus = spec.body(f"vx300s_{side}/camera_focus").pos  # in the gripper link's frame, like the camera
        cam.mode, cam.targetbody = mujoco.mjtCamLight.mjCAMLIGHT_FIXED, ""
        cam.quat = look_at_quat(cam.pos, focus)
        cam.fovy = WRIST_FOVY
    return spec.compile()


def aloha_constants():
    from gym_aloha import constants as c

    return c


def measured_joints(data: mujoco.MjData) -> np.ndarray:
    """14-d measured joint vector: per arm 6 joint angles + gripper normalised to ~0 (closed) .. 1 (open)."""
    c = aloha_constants()
    q = data.qpos
    out = np.empty(14)
    for arm in range(2):
        out[_ARM_DIMS[6 * arm : 6 * arm + 6]] = q[_ARM_QPOS[arm]]
        out[_GRIPPER_DIMS[arm]] = c.normalize_puppet_gripper_position(q[_FINGER_QPOS[arm]])
    return out


def command_to_ctrl(action: np.ndarray) -> np.ndarray:
    """14-d joint command -> the 16 position actuators (two mirrored finger actuators per gripper)."""
    c = aloha_constants()
    g = c.unnormalize_puppet_gripper_position(action[_GRIPPER_DIMS])
    return np.concatenate([action[0:6], [g[0], -g[0]], action[7:13], [g[1], -g[1]]])


def reflect(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """x folded back into [lo, hi] at its edges: a walk that bounces off its box instead of sticking to the edge
    (clipping held joints at their limit for seconds, which the audit reads as saturated actions)."""
    width = np.maximum(hi - lo, 1e-12)
    return lo + width - np.abs(np.mod(x - lo, 2 * width) - width)


class RandomJointTargets:
    """Smooth random 14-d joint commands: a new target every ``hold`` frames, smoothstep in between.

    Targets are drawn per joint in a box around the ALOHA start pose (``TARGET_OFFSETS``) and accepted only if
    forward kinematics puts both fingertips in a safe, visible workspace (:meth:`_acceptable`): above the
    table, reached out from the arm's own base, and inside every recording camera's image. That is a cheap
    stand-in for AnyPos-style "diverse yet safe" sampling; without it the arms often fold up towards the
    overhead camera or swing out of the frame.
    """

    def __init__(self, model: mujoco.MjModel, rng: np.random.Generator, hold: int, views: Sequence[tuple],
                 amplitude: np.ndarray | None = None, box: tuple[np.ndarray, np.ndarray] | None = None):
        c = aloha_constants()
        self.model, self.rng, self.hold, self.views = model, rng, hold, list(views)
        self.scratch = mujoco.MjData(model)  # for forward kinematics of candidate targets
        self.start16 = start16 = np.asarray(c.START_ARM_POSE, dtype=float)  # 16 = 2 x (6 joints + 2 fingers)
        lo, hi = model.actuator_ctrlrange[:, 0], model.actuator_ctrlrange[:, 1]
        arm_act = np.r_[0:6, 8:14]  # actuator (== first 16 qpos) indices of the revolute joints
        self.centre = start16[arm_act]
        # box: the targets' bounds as offsets [12] from the start pose (default TARGET_OFFSETS for both arms)
        box = (np.tile(TARGET_OFFSETS[0], 2), np.tile(TARGET_OFFSETS[1], 2)) if box is None else box
        self.lo = np.maximum(lo[arm_act], self.centre + box[0])
        self.hi = np.minimum(hi[arm_act], self.centre + box[1])
        # amplitude [12] (None: targets anywhere in the box): per revolute joint, the largest move from one target
        # to the next as a fraction of half its box, so each episode moves each joint by its own typical amount
        self.step = None if amplitude is None else np.asarray(amplitude, float) * (self.hi - self.lo) / 2
        self.tips = [model.body(f"vx300s_{s}/camera_focus").id for s in ("left", "right")]  # between fingertips
        self.wrists = [model.body(f"vx300s_{s}/wrist_link").id for s in ("left", "right")]
        self.bases = [model.body(f"vx300s_{s}").id for s in ("left", "right")]
        # the current segment of the command runs from seg_from to goal; the first one starts at the start pose
        self.goal = np.empty(14)
        self.goal[_ARM_DIMS] = self.centre
        self.goal[_GRIPPER_DIMS] = c.normalize_puppet_gripper_position(start16[[6, 14]])
        self.seg_from = self.goal.copy()
        self.drawn = 0

    def _acceptable(self, arm_q: np.ndarray) -> bool:
        d = self.scratch
        d.qpos[:16] = self.start16
        d.qpos[np.r_[0:6, 8:14]] = arm_q
        mujoco.mj_kinematics(self.model, d)
        for tip, wrist, base in zip(self.tips, self.wrists, self.bases):
            p = d.xpos[tip]
            reach = np.hypot(*(p[:2] - d.xpos[base][:2]))
            if not (TIP_Z_RANGE[0] <= p[2] <= TIP_Z_RANGE[1] and TIP_REACH_RANGE[0] <= reach <= TIP_REACH_RANGE[1]):
                return False
            for k, w2c, (h, w) in self.views:
                for x in (p, d.xpos[wrist]):
                    u = k @ (w2c[:3, :3] @ x + w2c[:3, 3])
                    if u[2] <= 0:
                        return False
                    col, row = u[0] / u[2], u[1] / u[2]
                    inside_u = VIEW_MARGIN * w <= col <= (1 - VIEW_MARGIN) * w
                    inside_v = VIEW_MARGIN * h <= row <= (1 - VIEW_MARGIN) * h
                    if not (inside_u and inside_v):
                        return False
        return True

    def _draw(self) -> np.ndarray:
        # the first target, and every target without amplitudes, is drawn anywhere in the box; later ones step
        # from the current target by at most the per-joint amplitude (a walk that stays in the accepted set)
        walk = self.step is not None and self.drawn > 0
        here = self.goal[_ARM_DIMS]
        # fallback: stay at the current target (walk) or return to the start pose
        new = here.copy() if walk else self.start16[np.r_[0:6, 8:14]].copy()
        for _ in range(MAX_TARGET_TRIES):
            if walk:
                cand = reflect(here + self.step * self.rng.uniform(-1.0, 1.0, 12), self.lo, self.hi)
            else:
                cand = self.rng.uniform(self.lo, self.hi)
            if self._acceptable(cand):
                new = cand
                break
        else:
            log.warning("no acceptable random target in %d tries; %s", MAX_TARGET_TRIES,
                        "holding the current one" if walk else "returning to the start pose")
        self.drawn += 1
        out = np.empty(14)
        out[_ARM_DIMS] = new
        out[_GRIPPER_DIMS] = self.rng.uniform(0.0, 1.0, 2)
        return out

    def __call__(self, frame: int) -> np.ndarray:
        """Command to apply right after recorded frame ``frame``."""
        k = frame % self.hold
        if k == 0:  # reached the previous goal (as a command): draw the next one
            self.seg_from, self.goal = self.goal, self._draw()
        s = (k + 1) / self.hold
        s = s * s * (3 - 2 * s)  # smoothstep: zero commanded velocity at the knots, no jerks in the servos
        return (1 - s) * self.seg_from + s * self.goal
