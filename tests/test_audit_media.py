"""The audit's media pass (audit/media.py) on real mp4s written with PyAV: a held picture between moving frames is a
stutter and a scene that pauses, a still clip or a robot that stands still is not; bytes flipped inside the video
data decode with error concealment and are named; the pass gives the same facts in the driver and on Ray workers."""

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from audit.checks.content import held_pictures
from audit.config import AuditConfig
from audit.media import media_facts, run_media_stage
from jobs.cli import app
from samples.defects import write_h264_ticks
from samples.lerobot_ds import HEAD, write_lerobot

FPS = 30
N = 48


def scene(positions) -> np.ndarray:
    """A textured background with a bright square at each x position (one frame per position)."""
    rng = np.random.default_rng(0)
    background = rng.integers(30, 90, (96, 128, 3)).astype(np.uint8)
    frames = []
    for x in positions:
        f = background.copy()
        f[30:60, int(x):int(x) + 24] = (240, 200, 40)
        frames.append(f)
    return np.stack(frames)


def row_of(path, n=N):
    return {"item_id": f"test/{path.stem}", "media_uris": [str(path)], "fps": FPS, "frame_count": n,
            "extras": None, "start_s": 0.0}


def stutters(tmp_path, frames, actions_steps=None, name="clip"):
    path = tmp_path / f"{name}.mp4"
    write_h264_ticks(path, frames, FPS, 10 * np.arange(len(frames)), 10)
    s = AuditConfig()
    facts = media_facts(row_of(path, len(frames)), s.frames_per_item, tuple(s.frame_size), 0,
                        s.stutter_repeat_share, s.stutter_min_repeats)
    return facts, held_pictures(facts, actions_steps, s)


def test_a_picture_held_between_moving_frames_is_a_stutter(tmp_path):
    positions = 2.0 * np.arange(N)
    frames = scene(positions)
    frames[21:24] = frames[20]  # frame 20's picture shown 4 times; then the square jumps on
    facts, found = stutters(tmp_path, frames)
    assert facts.decoded == N and facts.corrupt_frames == 0
    assert len(found) == 1 and found[0].startswith("frames 20-23 show one picture (4 frames), then the picture jumps 4.")


def test_a_smooth_clip_a_pausing_scene_and_a_still_clip_are_not(tmp_path):
    _, found = stutters(tmp_path, scene(2.0 * np.arange(N)), name="smooth")
    assert found == []
    # the square slows to a stop, rests for 8 frames, and speeds up again: a scene that pauses
    speed = np.concatenate([np.linspace(3, 0, 16), np.zeros(8), np.linspace(0, 3, N - 24)])
    facts, found = stutters(tmp_path, scene(np.cumsum(speed)), name="pause")
    assert facts.repeat_runs and found == []
    _, found = stutters(tmp_path, scene(np.full(N, 40.0)), name="still")
    assert found == []


def test_a_held_picture_while_the_actions_hold_too_is_a_robot_standing_still(tmp_path):
    frames = scene(2.0 * np.arange(N))
    frames[21:24] = frames[20]
    steps = np.full((N - 1, 2), 0.01)
    steps[20:23] = 0.0  # the commands did not move during the hold: the frames are right
    _, found = stutters(tmp_path, frames, steps, name="robot_still")
    assert found == []
    steps[20:23] = 0.01  # the commands moved on: the camera stalled
    _, found = stutters(tmp_path, frames, steps, name="robot_moving")
    assert len(found) == 1


def flip_bytes(path, n=4, seed=3):
    """Overwrite n bytes in the middle of the file (seed 3 misses the NAL length fields of this tiny file: a flip
    there makes the decode raise, which media_readable reports)."""
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    for k in rng.integers(int(len(data) * 0.3), int(len(data) * 0.6), n):
        data[k] ^= 0x5A
    path.write_bytes(bytes(data))


def test_flipped_bytes_decode_with_concealment_and_fail_concealed_errors(tmp_path):
    root = write_lerobot(tmp_path / "ds", 3, seed=2, version="v2.1", size=(96, 128))
    video = root / "videos" / "chunk-000" / HEAD / "episode_000001.mp4"
    clean_copy = tmp_path / "clean.mp4"
    shutil.copyfile(video, clean_copy)
    flip_bytes(video)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["audit", "--source", f"lerobot:{root}", "--decode", "--out", str(out),
                                      "--fail-on", "never"])
    assert result.exit_code == 0, result.output
    checks = {c["name"]: c for c in json.loads((out / "audit.json").read_text())["checks"]}
    damaged = "lerobot/ds/episode_000001"
    assert checks["media_readable"]["failing_item_ids"] == []  # every frame is there and "decodes"
    assert checks["concealed_errors"]["failing_item_ids"] == [damaged]
    assert checks["concealed_errors"]["n_checked"] == 3
    assert "decoded with error concealment" in checks["concealed_errors"]["reasons"][damaged]
    s = AuditConfig()
    facts = media_facts(row_of(clean_copy, 20), s.frames_per_item, tuple(s.frame_size), 0, 0.1, 2)
    assert facts.corrupt_frames == 0


@pytest.mark.parametrize("engine", ["local", "ray", "beam"])
def test_the_media_pass_on_workers_gives_the_drivers_facts(tmp_path, engine):
    from pipelines.runners import make_runner

    frames = scene(2.0 * np.arange(N))
    rows = []
    for k in range(3):
        path = tmp_path / f"clip{k}.mp4"
        write_h264_ticks(path, frames[k:], FPS, 10 * np.arange(N - k), 10)
        rows.append(row_of(path, N - k))
    rows.append({**row_of(tmp_path / "missing.mp4"), "item_id": "test/missing"})
    s = AuditConfig()
    in_driver = run_media_stage(rows, s, 0)
    runner = {"ray": lambda: make_runner("ray", num_cpus=2), "beam": lambda: make_runner("beam", num_workers=2),
              "local": lambda: make_runner("local")}[engine]()
    try:
        on_engine = run_media_stage(rows, s, 0, runner)
    finally:
        runner.close()
    assert list(on_engine) == [r["item_id"] for r in rows]
    assert "does not decode" in on_engine["test/missing"] and "does not decode" in in_driver["test/missing"]
    for r in rows[:3]:
        a, b = in_driver[r["item_id"]], on_engine[r["item_id"]]
        assert (a.decoded, a.frames.pixel_hash, a.median_step) == (b.decoded, b.frames.pixel_hash, b.median_step)
        np.testing.assert_array_equal(a.frames.dhash, b.frames.dhash)
