"""Flow building blocks: DIS accuracy on known motion, the colour wheel, statistics, frame streaming."""

import av
import cv2
import numpy as np
import pytest

from flow_extraction.base import ScaledBackend, end_point_error
from flow_extraction.colour import flow_to_rgb
from flow_extraction.dis import DISBackend
from flow_extraction.frames import fit_canvas, iter_frames, resampled_count, to_canvas
from flow_extraction.stats import MotionFilter, StatsAccumulator
from pipelines.stages import BadInput


def texture(h=320, w=384, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.random((h // 4, w // 4, 3)).astype(np.float32)
    img = cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC)
    img += 0.15 * rng.random((h, w, 3)).astype(np.float32)  # fine detail for the coarse-to-fine search
    return np.clip(img / img.max() * 255, 0, 255).astype(np.uint8)


def affine_pair(angle_deg, tx, ty, scale=1.0):
    first = texture()
    h, w = first.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle_deg, scale)
    m[:, 2] += (tx, ty)
    second = cv2.warpAffine(first, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    moved_x = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
    moved_y = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
    truth = np.stack([moved_x - xs, moved_y - ys])  # where each pixel of `first` lands in `second`
    interior = np.zeros((h, w), bool)
    interior[40:-40, 40:-40] = True
    return first, second, truth, interior


@pytest.mark.parametrize("angle,tx,ty", [(0, 3.0, -2.0), (3, 0, 0), (-2, 4.0, 1.5)])
def test_dis_recovers_known_translation_and_rotation(angle, tx, ty):
    first, second, truth, interior = affine_pair(angle, tx, ty)
    flow = DISBackend("medium").compute(first[None], second[None])
    assert flow.shape == (1, 2, 320, 384) and flow.dtype == np.float32
    epe = end_point_error(flow[0], truth, interior)
    zero = end_point_error(np.zeros_like(truth), truth, interior)
    assert epe < 0.5, epe
    assert epe < 0.1 * zero


@pytest.mark.parametrize("flow_hw", [(160, 192), (160, 96)])  # half size; x quartered but y halved
def test_reduced_flow_size_gives_vectors_in_canvas_pixels(flow_hw):
    """DIS at a reduced size sees a translation of (tx, ty) canvas pixels as (tx·w/W, ty·h/H) of its own; the
    scaled backend must hand back the canvas-pixel displacement, as the full-size run does."""
    first, second, truth, interior = affine_pair(0, 8.0, -4.0)
    full = DISBackend("medium").compute(first[None], second[None])[0]
    scaled = ScaledBackend(DISBackend("medium"), first.shape[:2], flow_hw)
    small = scaled.compute(first[None], second[None])
    assert small.shape == (1, 2, *flow_hw) and small.dtype == np.float32
    inner = cv2.resize(interior.astype(np.float32), flow_hw[::-1], interpolation=cv2.INTER_AREA) > 0.999
    for field, mask in ((full, interior), (small[0], inner)):
        assert np.median(field[0][mask]) == pytest.approx(8.0, abs=0.25)
        assert np.median(field[1][mask]) == pytest.approx(-4.0, abs=0.25)
    # frames shrunk beforehand (as the stage streams them) give the same field
    pre = scaled.compute(scaled.shrink(first)[None], scaled.shrink(second)[None])
    assert np.array_equal(pre, small) and scaled.describe()["flow_size"] == list(flow_hw)


def test_scaled_backend_rejects_a_size_above_the_canvas_and_frames_of_another_size():
    from flow_extraction.base import FlowConfigError

    with pytest.raises(FlowConfigError, match="no larger than the working canvas"):
        ScaledBackend(DISBackend("fast"), (320, 384), (640, 192))
    with pytest.raises(ValueError, match="expected the canvas"):
        ScaledBackend(DISBackend("fast"), (320, 384), (160, 192)).compute(*np.zeros((2, 1, 100, 100, 3), np.uint8))


def test_dis_rejects_unknown_preset():
    with pytest.raises(ValueError, match="unknown DIS preset"):
        DISBackend("turbo")


def test_dis_knobs_reach_opencv_change_the_flow_and_are_recorded():
    """A knob set over the preset is what OpenCV's object holds (the others stay the preset's), gives another
    field that still recovers the motion, and names itself in the recorded checkpoint; grey frames give the same
    flow as the RGB frames they came from."""
    first, second, truth, interior = affine_pair(0, 3.0, -2.0)
    plain, tuned = DISBackend("medium"), DISBackend("medium", refinement_iterations=0, patch_stride=4)
    assert tuned.settings() == {**plain.settings(), "refinement_iterations": 0, "patch_stride": 4}
    assert plain.settings()["refinement_iterations"] > 0
    a, b = plain.compute(first[None], second[None]), tuned.compute(first[None], second[None])
    assert not np.allclose(a, b)
    assert end_point_error(b[0], truth, interior) < 0.5
    assert tuned.describe()["checkpoint"].endswith("/medium+st4+vr0")
    assert plain.describe()["checkpoint"].endswith("/medium")
    grey = np.stack([DISBackend.grey(first)]), np.stack([DISBackend.grey(second)])
    assert np.array_equal(tuned.compute(*grey), b)


@pytest.mark.parametrize("knobs,message", [
    ({"refinement_iterations": -1}, "refinement_iterations must be an integer >= 0"),
    ({"patch_size": 1.5}, "patch_size must be an integer >= 2"),
    ({"patch_stride": 9}, "patch_stride 9 must not exceed the patch size 8"),
    ({"patch_size": 4, "patch_stride": 5}, "patch_stride 5 must not exceed the patch size 4"),
    ({"iterations": 3}, "unknown DIS knob 'iterations'"),
])
def test_dis_rejects_bad_knobs(knobs, message):
    from flow_extraction.base import FlowConfigError

    with pytest.raises(FlowConfigError, match=message):
        DISBackend("medium", **knobs)


def test_colour_wheel_fixed_radius_keeps_speed():
    slow = np.zeros((2, 4, 4), np.float32)
    slow[0] = 2.0
    fast = slow * 5
    rgb_slow, rgb_fast = flow_to_rgb(slow, max_radius=20), flow_to_rgb(fast, max_radius=20)
    assert rgb_slow.shape == (4, 4, 3) and rgb_slow.dtype == np.uint8
    assert not np.array_equal(rgb_slow, rgb_fast)  # same direction, different speed → different colour
    # saturation grows with speed: the fast pixel is further from white
    assert (255 - rgb_fast.astype(int)).sum() > (255 - rgb_slow.astype(int)).sum()
    # per-image normalisation (radius = own max) would have made them identical
    assert np.array_equal(flow_to_rgb(slow, 2.0), flow_to_rgb(fast, 10.0))
    assert (flow_to_rgb(np.zeros((2, 2, 2)), 20) == 255).all()  # no motion is white
    left = flow_to_rgb(np.array([[[-5.0]], [[0.0]]]), 20)[0, 0]
    right = flow_to_rgb(np.array([[[5.0]], [[0.0]]]), 20)[0, 0]
    assert not np.array_equal(left, right)  # opposite directions differ in hue


def test_stats_mark_static_and_moving_items():
    mask = np.ones((64, 64), bool)
    still, moving = StatsAccumulator((64, 64)), StatsAccumulator((64, 64))
    rng = np.random.default_rng(0)
    for _ in range(10):
        still.add(rng.normal(0, 0.05, (2, 64, 64)).astype(np.float32), mask)
        f = np.zeros((2, 64, 64), np.float32)
        f[0] = 3.0
        moving.add(f, mask)
    s, m = still.finish(), moving.finish()
    assert s["is_static"] and "near-static" in s["static_reason"]
    assert not m["is_static"] and m["static_reason"] is None
    assert m["mean_px"] == pytest.approx(3.0, abs=0.01) and m["p50_px"] == pytest.approx(3.0, abs=0.06)
    assert m["jitter_px"] == pytest.approx(0.0, abs=1e-6) and m["n_pairs"] == 10
    assert m["patch_min_px"] == pytest.approx(3.0, abs=0.01)


def test_small_moving_object_on_still_background_is_not_static():
    acc = StatsAccumulator((64, 64))
    for _ in range(5):
        f = np.zeros((2, 64, 64), np.float32)
        f[:, 10:18, 10:18] = 2.0  # a small arm moving over a still table: 1.6% of the pixels
        acc.add(f, np.ones((64, 64), bool))
    out = acc.finish()
    assert out["mean_px"] < 0.1 and not out["is_static"]


def test_stats_ignore_padding():
    acc = StatsAccumulator((32, 32), MotionFilter(patch_px=8))
    flow = np.zeros((2, 32, 32), np.float32)
    flow[0, :16] = 100.0  # garbage in the padding rows
    flow[0, 16:] = 1.0
    valid = np.zeros((32, 32), bool)
    valid[16:] = True
    acc.add(flow, valid)
    out = acc.finish()
    assert out["mean_px"] == pytest.approx(1.0) and out["valid_fraction"] == pytest.approx(0.5)


def test_batched_statistics_match_pair_by_pair():
    """The flow stage hands the statistics a batch of pairs with one letterbox mask; the verdict and every number
    must be what pair-by-pair accumulation gives (a pair with a non-finite vector falls back to it)."""
    rng = np.random.default_rng(1)
    flow = rng.normal(0, 2, (8, 2, 48, 40)).astype(np.float32)
    flow[2] *= 0.05  # a near-static pair
    flow[5, 0, 30, 7] = np.nan  # one broken vector inside the content
    valid = np.zeros((48, 40), bool)
    valid[9:39] = True  # the letterbox's content rows
    by_pair, batched = StatsAccumulator((48, 40), patch_px=8), StatsAccumulator((48, 40), patch_px=8)
    for f in flow:
        by_pair.add(f, valid)
    batched.add_batch(flow[:4].copy(), valid)
    batched.add_batch(flow[4:].copy(), valid)
    a, b = by_pair.finish(), batched.finish()
    assert a.keys() == b.keys() and a["n_pairs"] == b["n_pairs"] == 8
    for key in a:
        assert b[key] == (pytest.approx(a[key], rel=1e-5, abs=1e-6) if isinstance(a[key], float) else a[key]), key


@pytest.mark.parametrize("src_hw", [(144, 176), (240, 294), (240, 564), (272, 640), (101, 37)])
def test_frames_placed_at_a_reduced_size_are_the_canvas_frame_shrunk(src_hw):
    """The flow stage places each decoded frame straight at the flow and store sizes; at sizes the canvas divides
    into, that is the canvas frame area-shrunk pixel for pixel (odd letterbox offsets included), and at others too."""
    from flow_extraction.frames import place

    frame = texture(*src_hw, seed=2)
    canvas = fit_canvas(src_hw, (384, 320))
    sizes = [(192, 160), (96, 80), (128, 106), (384, 320)]
    for size, small in zip(sizes, place(frame, canvas, sizes)):
        shrunk = cv2.resize(to_canvas(frame, canvas), size[::-1], interpolation=cv2.INTER_AREA)
        assert small.shape == (*size, 3) and np.array_equal(small, shrunk), size


def test_canvas_pads_like_motus():
    c = fit_canvas((240, 320), (384, 320))  # RoboTwin frames on the Motus canvas
    assert (c.scale, c.offset_x, c.offset_y, c.content_hw) == (1.0, 0, 72, (240, 320))
    frame = np.full((240, 320, 3), 200, np.uint8)
    out = to_canvas(frame, c)
    assert out.shape == (384, 320, 3) and out[:72].max() == 0 and out[72:312].min() == 200
    c2 = fit_canvas((720, 640), (384, 320))  # Motus's own example: 720x640 → 360x320 with 12 px bars
    assert c2.content_hw == (360, 320) and c2.offset_y == 12
    assert c2.valid_mask().sum() == 360 * 320


def write_mp4(path, n=30, fps=30, size=(64, 48)):
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(n):
            img = np.full((size[1], size[0], 3), i * 8 % 256, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


def test_iter_frames_windows_resamples_and_reports_short_media(tmp_path):
    path = tmp_path / "v.mp4"
    write_mp4(path, n=30, fps=30)
    row = {"item_id": "x/1", "media_uris": [str(path)], "fps": 30.0, "frame_count": 30, "start_s": 0.0}
    frames = list(iter_frames(row, (48, 64)))
    assert len(frames) == 30 and frames[0][1].shape == (48, 64, 3)
    resampled = list(iter_frames(row, (48, 64), fps=10))
    assert len(resampled) == resampled_count(30, 30.0, 10)[0] == 10
    window = list(iter_frames({**row, "start_s": 0.5, "frame_count": 10}, (48, 64)))
    assert len(window) == 10
    assert abs(int(window[0][1].mean()) - (15 * 8 % 256)) <= 3  # the window starts at frame 15
    with pytest.raises(BadInput, match="ended after 30 of 40 frames"):
        list(iter_frames({**row, "frame_count": 40}, (48, 64)))
