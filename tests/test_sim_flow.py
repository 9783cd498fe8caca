"""Tests for exact simulation flow (flow_extraction/sim_flow.py).

Three kinds of evidence: hand-computed scenes built in numpy (a plane moving or a camera moving, where the
flow is fx·dx/Z in closed form; two bodies where one covers the other), the real renders of the sample
generators (the exact flow must warp frame t+Δ onto frame t far better than no flow, and agree with OpenCV DIS
on textured moving pixels, for a static and for a moving camera), and the loading/canvas contracts.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import av
import cv2
import h5py
import numpy as np
import pytest

from flow_extraction.base import FlowConfigError
from flow_extraction.sim_flow import (
    SimFlowBackend,
    SimFrame,
    exact_flow,
    load_sim_extras,
    resolve_sim_file,
    to_canvas,
)
from samples.sim_task_agnostic import DEFAULT_CAMERAS

MAIN = DEFAULT_CAMERAS[0]  # the task-agnostic main view, the one camera with sim extras by default
H, W = 48, 64
FX, FY = 100.0, 120.0  # different, so a swapped axis shows


# ------------------------------------------------------------------------------------------------- helpers
def intrinsics() -> np.ndarray:
    return np.array([[FX, 0.0, (W - 1) / 2], [0.0, FY, (H - 1) / 2], [0.0, 0.0, 1.0]])


def rot_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def world_to_camera(r_world_cam: np.ndarray, centre) -> np.ndarray:
    """4×4 world→camera for a camera at ``centre`` whose OpenCV axes are the columns of ``r_world_cam``."""
    e = np.eye(4)
    e[:3, :3] = r_world_cam.T
    e[:3, 3] = -r_world_cam.T @ np.asarray(centre, float)
    return e


def frame(depth, seg, w2c, xpos, xmat) -> SimFrame:
    return SimFrame(np.asarray(depth, np.float32), np.asarray(seg, np.int16), intrinsics(), w2c,
                    np.asarray(xpos, float), np.asarray(xmat, float))


def pixel_grid() -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))


def decode_mp4(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])])


def decode_robotwin_rgb(path: Path, camera: str, frames) -> np.ndarray:
    with h5py.File(path, "r") as f:
        blobs = f[f"observation/{camera}/rgb"]
        # RoboTwin JPEGs hold RGB arrays encoded as if BGR: cv2.imdecode gives RGB back (docs/formats.md)
        return np.stack([cv2.imdecode(np.frombuffer(blobs[t], np.uint8), cv2.IMREAD_COLOR) for t in frames])


def backward_warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample ``image`` (frame t+Δ) at p + flow(p): ≈ frame t wherever the flow is right."""
    h, w = flow.shape[1:]
    u, v = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(image, u + flow[0], v + flow[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def pixel_evidence(rgb_t, rgb_t2, flow, valid, a: SimFrame, b: SimFrame, bodies) -> dict:
    """How well a flow field t → t+Δ explains the render, on valid pixels of ``bodies`` that move >= 1 px:
    photometric error of backward warping (with the flow and with zero flow), end-point error against OpenCV
    DIS on the textured ones, and how often a pixel lands on the same body in the segmentation of t+Δ."""
    mag = np.hypot(flow[0], flow[1])
    moving = valid & (mag >= 1.0) & np.isin(a.segmentation, bodies)
    i1, i2 = rgb_t.astype(np.float32), rgb_t2.astype(np.float32)
    photo_exact = np.abs(backward_warp(i2, flow) - i1).mean(-1)[moving].mean()
    photo_zero = np.abs(i2 - i1).mean(-1)[moving].mean()
    g1, g2 = (cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in (rgb_t, rgb_t2))
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(g1, g2, None).transpose(2, 0, 1)
    gradient = np.hypot(cv2.Sobel(g1, cv2.CV_32F, 1, 0), cv2.Sobel(g1, cv2.CV_32F, 0, 1))
    textured = moving & (gradient > 40)  # DIS has nothing to go on in flat regions
    epe = np.sqrt(((dis - flow) ** 2).sum(0))[textured]
    u, v = np.meshgrid(np.arange(flow.shape[2]), np.arange(flow.shape[1]))
    col = np.clip(np.rint(u + flow[0]).astype(int), 0, flow.shape[2] - 1)
    row = np.clip(np.rint(v + flow[1]).astype(int), 0, flow.shape[1] - 1)
    same_body = (b.segmentation[row, col] == a.segmentation)[moving]
    return {"n_moving": int(moving.sum()), "n_textured": int(textured.sum()), "photo_exact": float(photo_exact),
            "photo_zero": float(photo_zero), "epe_dis_median": float(np.median(epe)),
            "motion_median": float(np.median(mag[textured])), "same_body": float(same_body.mean())}


def assert_pixels_agree(ev: dict) -> None:
    assert ev["n_textured"] >= 100, ev
    assert ev["motion_median"] >= 2.0, f"pair has too little motion to be a test: {ev}"
    assert ev["photo_exact"] < 0.6 * ev["photo_zero"], ev
    assert ev["epe_dis_median"] < 2.5, ev
    assert ev["epe_dis_median"] < 0.5 * ev["motion_median"], ev
    assert ev["same_body"] > 0.9, ev  # misses only on silhouettes, where rounding picks the neighbour


def moving_bodies(extras, t: int, t2: int) -> np.ndarray:
    a, b = extras.frame(t), extras.frame(t2)
    moved = np.abs(a.body_xpos - b.body_xpos).max(-1) > 1e-5
    turned = np.abs(a.body_xmat - b.body_xmat).max((-1, -2)) > 1e-5
    return np.flatnonzero(moved | turned)


def most_moving_pair(extras, pairs) -> tuple[int, int]:
    """The pair whose moving bodies' valid pixels move most (median |flow|): a pair worth testing on."""
    def score(pair):
        flow, valid = exact_flow(extras.frame(pair[0]), extras.frame(pair[1]))
        sel = valid & np.isin(extras.frame(pair[0]).segmentation, moving_bodies(extras, *pair))
        return np.median(np.hypot(*flow)[sel]) if sel.sum() > 200 else 0.0

    return max(pairs, key=score)


# ------------------------------------------------------------------------------------ hand-computed scenes
@pytest.mark.parametrize("shift", [(0.05, 0.0), (0.0, -0.03)])
def test_translating_plane(shift):
    """A fronto-parallel plane at depth Z translated by (dx, dy, 0) in camera axes: flow = (fx·dx/Z, fy·dy/Z)."""
    z, (dx, dy) = 2.0, shift
    # The camera looks down on a world-fixed table frame (as in the sample scenes); the plane body is rotated
    # arbitrarily about its own normal, so the body-local frame is not the camera frame.
    r_cam = np.diag([1.0, -1.0, -1.0])  # camera x = world x, camera y = -world y, looking down
    w2c = world_to_camera(r_cam, [0.1, 0.2, z])
    body_rot = np.array([[np.cos(0.7), -np.sin(0.7), 0], [np.sin(0.7), np.cos(0.7), 0], [0, 0, 1]])
    xpos_t = np.array([[0, 0, 0], [0.3, -0.1, 0.0]])
    move_world = r_cam @ np.array([dx, dy, 0.0])  # the translation, given in camera axes
    xpos_t2 = xpos_t + np.array([[0, 0, 0], move_world])
    xmat = np.stack([np.eye(3), body_rot])
    depth, seg = np.full((H, W), z), np.ones((H, W))
    flow, valid = exact_flow(frame(depth, seg, w2c, xpos_t, xmat), frame(depth, seg, w2c, xpos_t2, xmat))

    assert flow.dtype == np.float32 and flow.shape == (2, H, W) and valid.shape == (H, W)
    np.testing.assert_allclose(flow[0], FX * dx / z, atol=1e-4)
    np.testing.assert_allclose(flow[1], FY * dy / z, atol=1e-4)
    u, v = pixel_grid()
    lands_inside = (u + FX * dx / z < W - 0.5) & (u + FX * dx / z >= -0.5) & (v + FY * dy / z < H - 0.5) & (
        v + FY * dy / z >= -0.5)
    np.testing.assert_array_equal(valid, lands_inside)


def test_translating_camera():
    """Static scene, camera moves by dx along its x axis: everything on a plane at depth Z flows by −fx·dx/Z."""
    z, dx = 1.5, 0.02
    r_cam = rot_x(np.pi) @ rot_y(0.3)  # looking down, yawed: camera x is not a world axis
    w2c_t = world_to_camera(r_cam, [0.0, 0.0, z])
    w2c_t2 = world_to_camera(r_cam, r_cam @ [dx, 0.0, 0.0] + [0.0, 0.0, z])
    xpos, xmat = np.zeros((2, 3)), np.stack([np.eye(3)] * 2)  # body 1 (the table) never moves
    depth, seg = np.full((H, W), z), np.ones((H, W))
    flow, valid = exact_flow(frame(depth, seg, w2c_t, xpos, xmat), frame(depth, seg, w2c_t2, xpos, xmat))

    np.testing.assert_allclose(flow[0], -FX * dx / z, atol=1e-4)
    np.testing.assert_allclose(flow[1], 0.0, atol=1e-4)
    assert valid[:, 1:].all() and not valid[:, 0].any()  # −1.33 px: only the first column's points leave the image


def test_background_is_a_point_at_infinity():
    """Background flows like an infinitely far plane (camera rotation only, no parallax) and is valid where it
    stays inside the image."""
    r_t = rot_x(np.pi)
    r_t2 = r_t @ rot_y(0.01) @ rot_x(-0.02)  # the camera turns a little ...
    w2c_t, w2c_t2 = world_to_camera(r_t, [0, 0, 1.0]), world_to_camera(r_t2, [0.05, 0.02, 1.1])  # ... and moves
    xpos, xmat = np.zeros((2, 3)), np.stack([np.eye(3)] * 2)
    far = 1e7  # metres: the translation's parallax is ~1e-6 px here

    def flow_of(depth, seg, w2c_second):
        return exact_flow(frame(depth, seg, w2c_t, xpos, xmat), frame(depth, seg, w2c_second, xpos, xmat))

    flow_far, _ = flow_of(np.full((H, W), far), np.ones((H, W)), w2c_t2)  # body 1 (static), very far away
    flow_bg, valid_bg = flow_of(np.full((H, W), 80.0), -np.ones((H, W)), w2c_t2)  # no geometry at all
    assert np.abs(flow_far).max() > 1.0, "the rotation should move the far plane"
    np.testing.assert_allclose(flow_bg, flow_far, atol=1e-3)
    u2 = np.arange(W)[None, :] + flow_bg[0]
    v2 = np.arange(H)[:, None] + flow_bg[1]
    inside = (u2 >= -0.5) & (u2 < W - 0.5) & (v2 >= -0.5) & (v2 < H - 0.5)
    assert inside.any() and not inside.all()
    np.testing.assert_array_equal(valid_bg, inside)
    # and with a static camera the background does not move at all, everywhere valid
    flow_static, valid_static = flow_of(np.full((H, W), 80.0), -np.ones((H, W)), w2c_t)
    assert not flow_static.any() and valid_static.all()


def test_background_a_body_moves_over_is_invalid():
    """A box slides over empty background: the background it newly covers is invalid, the rest of the background
    (static camera: flow 0) and the box are valid."""
    dx, z_box = 0.05, 1.0
    shift = int(FX * dx / z_box)
    xmat = np.stack([np.eye(3)] * 2)
    xpos_t, xpos_t2 = np.zeros((2, 3)), np.array([[0, 0, 0], [dx, 0, 0]])

    def render(c0):
        depth, seg = np.full((H, W), 80.0), -np.ones((H, W))
        depth[10:30, c0:c0 + 15], seg[10:30, c0:c0 + 15] = z_box, 1
        return depth, seg

    (d1, s1), (d2, s2) = render(20), render(20 + shift)
    flow, valid = exact_flow(frame(d1, s1, np.eye(4), xpos_t, xmat), frame(d2, s2, np.eye(4), xpos_t2, xmat))
    covered = (s1 < 0) & (s2 >= 0)
    assert covered.sum() == 20 * shift and not valid[covered].any() and valid[~covered].all()
    assert not flow[:, s1 < 0].any()


def test_occlusion_by_a_moving_body():
    """A near square (body 2, Z = 1 m) slides right over a far plane (body 1, Z = 2 m): the plane pixels it
    newly covers are invalid, everything else is valid, and each body has its own flow."""
    z_plane, z_box, dx = 2.0, 1.0, 0.05
    shift = FX * dx / z_box  # 5 px
    w2c = np.eye(4)  # camera = world, OpenCV axes
    xmat = np.stack([np.eye(3)] * 3)
    xpos_t = np.array([[0, 0, 0], [0, 0, 0], [0, 0, 0]], float)
    xpos_t2 = xpos_t + np.array([[0, 0, 0], [0, 0, 0], [dx, 0, 0]])
    rows, cols_t = slice(10, 30), slice(20, 35)
    cols_t2 = slice(20 + int(shift), 35 + int(shift))

    def render(cols):
        depth, seg = np.full((H, W), z_plane), np.ones((H, W))
        depth[rows, cols], seg[rows, cols] = z_box, 2
        return depth, seg

    (d1, s1), (d2, s2) = render(cols_t), render(cols_t2)
    flow, valid = exact_flow(frame(d1, s1, w2c, xpos_t, xmat), frame(d2, s2, w2c, xpos_t2, xmat))

    covered = np.zeros((H, W), bool)
    covered[rows, cols_t2] = True
    covered[rows, cols_t] = False  # those were the box at t, and the box stays visible
    assert covered.sum() == 20 * 5
    np.testing.assert_array_equal(valid, ~covered)
    np.testing.assert_allclose(flow[0][s1 == 2], shift, atol=1e-4)
    np.testing.assert_allclose(flow[0][s1 == 1], 0.0, atol=1e-4)
    # a looser tolerance than the 1 m gap hides the occlusion: the mask really comes from the depth test
    _, valid_loose = exact_flow(frame(d1, s1, w2c, xpos_t, xmat), frame(d2, s2, w2c, xpos_t2, xmat), abs_tol=1.5)
    assert valid_loose.all()


# ---------------------------------------------------------------------------------------- real generated data
@pytest.fixture(scope="module")
def ta_episode(sim_samples) -> Path:
    return sim_samples / "task_agnostic" / "aloha_random" / "episodes" / "episode_000000"


@pytest.fixture(scope="module")
def rt_episode(sim_samples) -> Path:
    return next((sim_samples / "robotwin").rglob("data/episode0.hdf5"))


def test_task_agnostic_flow_matches_pixels(ta_episode):
    main = json.loads((ta_episode.parents[1] / "dataset.json").read_text())["cameras"][0]
    rgb = decode_mp4(ta_episode / f"rgb_{main}.mp4")
    extras = load_sim_extras(ta_episode / "sim.h5", main, range(len(rgb)))
    t, t2 = most_moving_pair(extras, [(t, t + 1) for t in range(len(rgb) - 1)])
    flow, valid = exact_flow(extras.frame(t), extras.frame(t2))
    bodies = moving_bodies(extras, t, t2)
    ev = pixel_evidence(rgb[t], rgb[t2], flow, valid, extras.frame(t), extras.frame(t2), bodies)
    assert_pixels_agree(ev)
    # The same checks fail for a wrong flow: sign flipped, or half of it.
    for wrong in (-flow, 0.5 * flow):
        bad = pixel_evidence(rgb[t], rgb[t2], wrong, valid, extras.frame(t), extras.frame(t2), bodies)
        with pytest.raises(AssertionError):
            assert_pixels_agree(bad)


def test_robotwin_flow_matches_pixels(rt_episode):
    backend = SimFlowBackend()
    with h5py.File(rt_episode, "r") as f:
        n = f["observation/head_camera/depth"].shape[0]
    delta = 3  # ~0.18 s at the 16.7 Hz save rate: a few pixels of motion
    extras = load_sim_extras(rt_episode, "head_camera", range(0, n, delta))
    t, t2 = most_moving_pair(extras, [(t, t + delta) for t in range(0, n - delta, delta)])
    flow, valid = backend.compute_item(str(rt_episode), "head_camera", np.array([[t, t2]]))
    rgb = decode_robotwin_rgb(rt_episode, "head_camera", [t, t2])
    bodies = moving_bodies(extras, t, t2)
    ev = pixel_evidence(rgb[0], rgb[1], flow[0], valid[0], extras.frame(t), extras.frame(t2), bodies)
    assert_pixels_agree(ev)


def test_moving_camera_flow_matches_pixels(tmp_path):
    """A wrist camera moves with the arm: the whole scene flows, and the camera term is what explains it."""
    from samples.sim_task_agnostic import write_task_agnostic

    # wrist views render at half the main size: ask for 480×640 to get a 240×320 wrist picture
    (ep,) = write_task_agnostic(tmp_path / "wrist", n_episodes=1, n_frames=5, seed=3, cameras=("left_wrist",),
                                height=480, width=640, workers=1)
    rgb = decode_mp4(ep / "rgb_left_wrist.mp4")
    extras = load_sim_extras(ep, "left_wrist", range(len(rgb)))
    assert np.abs(np.diff(extras.world_to_camera, axis=0)).max() > 0.01, "the wrist camera should move"
    t, t2 = most_moving_pair(extras, [(t, t + 1) for t in range(len(rgb) - 1)])
    flow, valid = exact_flow(extras.frame(t), extras.frame(t2))
    everything = np.arange(len(extras.body_names))  # the table moves too, in this camera
    ev = pixel_evidence(rgb[t], rgb[t2], flow, valid, extras.frame(t), extras.frame(t2), everything)
    assert_pixels_agree(ev)
    # Ignoring the camera's motion (pretending it stayed where it was at t) is visibly wrong.
    still = dataclasses.replace(extras.frame(t2), world_to_camera=extras.frame(t).world_to_camera)
    bad = pixel_evidence(rgb[t], rgb[t2], exact_flow(extras.frame(t), still)[0], valid, extras.frame(t),
                         extras.frame(t2), everything)
    with pytest.raises(AssertionError):
        assert_pixels_agree(bad)


# ------------------------------------------------------------------------------------------ loading, backend
def test_both_layouts_load(ta_episode, rt_episode):
    backend = SimFlowBackend(camera=MAIN)
    pairs = np.array([[0, 1], [3, 5], [1, 2]])
    native_hw = {MAIN: decode_mp4(ta_episode / f"rgb_{MAIN}.mp4").shape[1:3],
                 "head_camera": decode_robotwin_rgb(rt_episode, "head_camera", [0]).shape[1:3]}
    for media, camera in ((ta_episode / "sim.h5", MAIN), (rt_episode, "head_camera")):
        flow, valid = backend.compute_item(str(media), camera, pairs)
        h, w = native_hw[camera]
        assert flow.shape == (3, 2, h, w) and flow.dtype == np.float32
        assert valid.shape == (3, h, w) and valid.dtype == bool
        assert np.isfinite(flow).all() and valid.mean(axis=(1, 2)).min() > 0.2
    extras = load_sim_extras(rt_episode, "head_camera", [5, 1, 5, 0])
    assert extras.frames.tolist() == [0, 1, 5] and extras.depth.shape == (3, 240, 320)  # only those frames
    assert extras.layout == "robotwin" and extras.world_to_camera.shape == (3, 4, 4)
    assert extras.body_names[0] == "world" and extras.body_xpos.shape[1] == len(extras.body_names)
    with pytest.raises(KeyError):
        extras.frame(2)
    assert extras.segmentation.max() < len(extras.body_names)  # segmentation ids index the body arrays


def test_media_forms_and_errors(ta_episode, rt_episode):
    assert resolve_sim_file(ta_episode) == (ta_episode / "sim.h5", "task_agnostic")
    assert resolve_sim_file(ta_episode / f"rgb_{MAIN}.mp4") == (ta_episode / "sim.h5", "task_agnostic")
    assert resolve_sim_file(f"{rt_episode}#observation/head_camera/rgb") == (rt_episode, "robotwin")
    with pytest.raises(KeyError, match="left_camera"):  # RoboTwin side cameras have no depth
        load_sim_extras(rt_episode, "left_camera", [0])
    with pytest.raises(KeyError, match="left_wrist"):  # task-agnostic wrist views: pictures only, by default
        load_sim_extras(ta_episode, "left_wrist", [0])
    with pytest.raises(IndexError):
        load_sim_extras(ta_episode / "sim.h5", MAIN, [0, 10_000])
    with pytest.raises(FileNotFoundError):
        load_sim_extras(ta_episode / "nothing.h5", MAIN, [0])


def test_backend_describe_and_pixels_entry_point():
    backend = SimFlowBackend(camera="head_camera", occlusion_tolerance_m=0.02)
    d = backend.describe()
    assert d["backend"] == "sim" == backend.name and d["camera"] == "head_camera"
    assert d["occlusion_tolerance_m"] == 0.02
    with pytest.raises(FlowConfigError):
        backend.compute(np.zeros((1, 4, 4, 3), np.uint8), np.zeros((1, 4, 4, 3), np.uint8))


def test_exact_flow_speed(ta_episode):
    import time

    extras = load_sim_extras(ta_episode / "sim.h5", MAIN, [4, 5])
    a, b = extras.frame(4), extras.frame(5)
    exact_flow(a, b)
    start = time.perf_counter()
    for _ in range(5):
        exact_flow(a, b)
    assert (time.perf_counter() - start) / 5 < 0.05  # per 240×320 pair (about 8 ms on the 2-core dev box)


# -------------------------------------------------------------------------------------------------- canvas
def test_to_canvas_paste_and_scale():
    flow = np.zeros((2, 2, H, W), np.float32)
    flow[:, 0], flow[:, 1] = 4.0, -2.0
    valid = np.ones((2, H, W), bool)
    valid[:, :, :8] = False
    flow[:, :, :, :8] = 1e6  # garbage under invalid pixels must not leak into valid ones

    out, ok = to_canvas(flow, valid, 1.0, (3, 10), (70, 80))
    assert out.shape == (2, 2, 70, 80) and ok.shape == (2, 70, 80)
    np.testing.assert_array_equal(ok[:, 10 : 10 + H, 3 + 8 : 3 + W], True)
    assert ok.sum() == 2 * H * (W - 8)
    assert not out[:, :, :10].any() and not out[:, :, :, :3].any()  # padding: zero flow
    np.testing.assert_array_equal(out[0, 0][ok[0]], 4.0)

    for scale in (0.5, 1.5):
        out, ok = to_canvas(flow[0], valid[0], scale, (0, 5), (100, 100))
        h2, w2 = round(H * scale), round(W * scale)
        assert out.shape == (2, 100, 100) and ok[:5].sum() == 0 and ok[5 + h2 :].sum() == 0 and ok[:, w2:].sum() == 0
        np.testing.assert_allclose(out[0][ok], 4.0 * scale, rtol=1e-5)
        np.testing.assert_allclose(out[1][ok], -2.0 * scale, rtol=1e-5)
        assert not ok[5 : 5 + h2, : int(8 * scale) - 1].any()  # the invalid band stays invalid
        assert ok[5 : 5 + h2, int(8 * scale) + 2 : w2].all()
    with pytest.raises(ValueError):
        to_canvas(flow[0], valid[0], 1.0, (50, 0), (H, W))
