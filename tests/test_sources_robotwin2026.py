"""RoboTwin's 2026 (XPolicyLab trajectory v1.0) episode layout: the sample writer's episode, ingest, frames, fps,
actions/state and quarantine of malformed files, next to the 2.0 episodes of the shared sample tree.

The 2026 episode comes from the project's own writer (`write_robotwin_2026`, once per module); the 2.0 episodes
from conftest's `sim_samples`. Expected values are read from the HDF5 files with h5py/cv2 here, never taken from
the adapter. Each damaging test works on a private copy.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from catalog import Catalog
from flow_extraction.frames import iter_frames
from media.hdf5_images import decode_image_bytes, has_xpl_rgb_marker, iter_hdf5_frames
from pipelines.config import config_from_dict
from pipelines.ingest import ingest
from pipelines.runners import LocalRunner
from samples.sim_robotwin import (convert_to_2026, encode_jpegs_like_robotwin, encode_jpegs_xpolicylab,
                                  write_robotwin_2026)
from sources import SourceError, load_actions
from sources.robotwin import RoboTwinSource, joint_vector

CAMS_2026 = ["cam_head", "cam_left_wrist", "cam_right_wrist"]
PARTS = ("left_arm_joint_states", "left_ee_joint_states", "right_arm_joint_states", "right_ee_joint_states")
EPISODE_2026 = Path("transfer_cube_2026") / "so100_bimanual" / "data" / "episode_0000000.hdf5"


# ------------------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def rt2026(tmp_path_factory) -> Path:
    """The sample writer's one 2026-layout episode (a RoboTwin root holding only it)."""
    root = tmp_path_factory.mktemp("rt2026") / "robotwin"
    written = write_robotwin_2026(root, seed=0)
    assert written == [root / EPISODE_2026]
    return root


@pytest.fixture
def tree(workdir, rt2026) -> Path:
    """A private RoboTwin root holding the shared 2.0 episodes and the 2026 episode side by side."""
    root = workdir / "samples" / "robotwin"
    shutil.copytree(rt2026 / EPISODE_2026.parts[0], root / EPISODE_2026.parts[0])
    return root


def run(workdir: Path, root: Path, **options) -> tuple:
    cfg = config_from_dict({"workdir": str(workdir), "runner": {"engine": "local"},
                            "sources": [{"kind": "robotwin", "root": str(root), "options": options}]})
    with Catalog(cfg.catalog_path) as cat:
        report = ingest(cfg, cat, LocalRunner(), progress=False)
        items = {r["item_id"]: r for r in cat.items().to_pylist()}
        state = {r["item_id"]: r for r in cat.sql("SELECT * FROM item_stages").to_pylist()}
    return report, items, state


def written(path: Path) -> dict:
    """What the file holds, read with h5py only."""
    with h5py.File(path, "r") as f:
        return {
            "frames": f["vision/cam_head/colors"].shape[0],
            "shape": tuple(int(x) for x in f["vision/cam_head/shape"][()]),
            "frequency": f["additional_info/frequency"][()],
            "action": np.concatenate([np.asarray(f[f"action/{k}"][()], np.float64).reshape(len(f[f"action/{k}"]), -1)
                                      for k in PARTS], axis=1),
            "state": np.concatenate([np.asarray(f[f"state/{k}"][()], np.float64).reshape(len(f[f"state/{k}"]), -1)
                                     for k in PARTS], axis=1),
            "instructions": [s.decode() for s in f["instructions"][()]],
            "instruction": f["instruction"][()].decode(),
        }


def decode_marked(blob: bytes) -> np.ndarray:
    """An XPolicyLab standard JPEG decoded independently: cv2 gives BGR for it, one swap gives RGB."""
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def native_frames(row: dict, camera: int = 0) -> np.ndarray:
    h, w = row["height"], row["width"]
    return np.stack([f for _, f, _ in iter_frames(row, (h, w), camera)])


def rewrite(path: Path, fn) -> None:
    with h5py.File(path, "r+") as f:
        fn(f)


# ------------------------------------------------------------------------------------------------ the sample file


def test_sample_writer_writes_the_2026_layout(rt2026):
    path = rt2026 / EPISODE_2026
    with h5py.File(path, "r") as f:
        assert f["data_format_version"][()].decode() == "v1.0"
        assert f["additional_info/frequency"].dtype == np.int32 and f["additional_info/frequency"][()] == 25
        assert "observation" not in f and "joint_action" not in f
        assert sorted(f["vision"]) == sorted(CAMS_2026)
        t = f["vision/cam_head/colors"].shape[0]
        for cam in CAMS_2026:
            colors = f[f"vision/{cam}/colors"]
            assert colors.dtype.kind == "S" and colors.shape == (t,)
            assert has_xpl_rgb_marker(bytes(colors[0])) and has_xpl_rgb_marker(bytes(colors[t - 1]))
            assert f[f"vision/{cam}/intrinsic_matrix"].shape == (t, 3, 3)
            assert f[f"vision/{cam}/extrinsic_matrix"].shape == (t, 4, 4)
        for group in ("state", "action"):
            assert f[f"{group}/left_arm_joint_states"].shape == (t, 5)
            assert f[f"{group}/left_ee_joint_states"].shape == (t, 1)
            assert f[f"{group}/joint_states"].shape == (t, 12)
        # RoboTwin's converter default: action[t] = state[t + 1]
        assert np.array_equal(f["action/joint_states"][:-1], f["state/joint_states"][1:])
    assert t == 199  # 400 control steps every 2nd, minus the last frame (no next state)
    w = written(path)
    assert w["instruction"] == w["instructions"][0] and 3 <= len(w["instructions"]) <= 5
    grip = w["action"][:, [5, 11]]
    assert (grip >= 0).all() and (grip <= 1).all() and np.ptp(w["action"][:, :5], axis=0).max() > 0.5


def test_marker_detection():
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 255
    legacy = bytes(encode_jpegs_like_robotwin([rgb])[0])
    payload = b"XPL-RGB1"
    com = b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    assert not has_xpl_rgb_marker(legacy)
    assert has_xpl_rgb_marker(legacy[:2] + com + legacy[2:])  # right after SOI
    assert has_xpl_rgb_marker(legacy[:2] + app1 + com + legacy[2:])  # after another segment
    assert not has_xpl_rgb_marker(legacy[:2] + app1 + legacy[2:])  # the payload must sit in a COM segment
    assert not has_xpl_rgb_marker(b"XPL-RGB1 is not a JPEG")
    marked = bytes(encode_jpegs_xpolicylab([rgb])[0])
    assert has_xpl_rgb_marker(marked)
    # the red image reads red through the reader, and a plain cv2.imdecode of the marked bytes gives BGR
    assert decode_image_bytes(marked)[..., 0].mean() > 200 and decode_image_bytes(legacy)[..., 0].mean() > 200
    assert cv2.imdecode(np.frombuffer(marked, np.uint8), cv2.IMREAD_COLOR)[..., 2].mean() > 200


# ------------------------------------------------------------------------------------------------ ingest


def test_2026_episode_ingests_next_to_the_2_0_episodes(workdir, tree):
    report, items, state = run(workdir, tree)
    assert report.stage.counts == Counter({"done": 3})
    by_layout = Counter(json.loads(it["extras"])["layout"] for it in items.values())
    assert by_layout == Counter({"robotwin2.0": 2, "robotwin2026": 1})
    path = tree / EPISODE_2026
    row = items["robotwin/transfer_cube_2026/so100_bimanual/episode_0000000"]
    w = written(path)
    assert row["tier"] == 3 and row["embodiment"] == "so100_bimanual" and row["has_actions"]
    assert row["fps"] == pytest.approx(float(w["frequency"])) == 25.0  # the file's frequency, not a 30 fps guess
    assert row["frame_count"] == w["frames"] and row["duration_s"] == pytest.approx(w["frames"] / 25.0)
    assert (row["height"], row["width"], 3) == w["shape"] == (240, 320, 3)
    assert row["cameras"] == CAMS_2026
    assert row["media_uris"] == [f"{path}#vision/{c}/colors" for c in CAMS_2026]
    assert row["action_dim"] == row["state_dim"] == 12
    assert row["action_names"][5] == "left_gripper" and row["action_names"][11] == "right_gripper"
    assert row["language"] == w["instructions"]  # no instructions/ sidecar: the file's own list
    extras = json.loads(row["extras"])
    assert extras["data_format_version"] == "v1.0" and extras["frequency"] == 25
    assert extras["image_encoding"] == {c: "jpeg-xpl-rgb1" for c in CAMS_2026}
    assert extras["sim_extras"] == []
    # actions through the project's loader equal what was written; so does the state vector
    actions = load_actions(row)
    assert actions.shape == (w["frames"], 12) and np.array_equal(actions, w["action"])
    with h5py.File(path, "r") as f:
        state_vec, names, keys = joint_vector(f, "state")
    assert np.array_equal(state_vec, w["state"]) and names == row["state_names"]
    assert keys == [f"state/{k}" for k in PARTS]


def test_2026_frames_stream_in_rgb_order(workdir, tree):
    _, items, _ = run(workdir, tree)
    row = items["robotwin/transfer_cube_2026/so100_bimanual/episode_0000000"]
    path = tree / EPISODE_2026
    for cam, name in enumerate(CAMS_2026):
        frames = native_frames(row, cam)
        assert frames.shape == (row["frame_count"], 240, 320, 3) and frames.dtype == np.uint8
        with h5py.File(path, "r") as f:
            blobs = [bytes(f[f"vision/{name}/colors"][i]) for i in (0, row["frame_count"] - 1)]
        assert np.array_equal(frames[0], decode_marked(blobs[0]))
        assert np.array_equal(frames[-1], decode_marked(blobs[1]))
    # the red cube reads red: channel 0 high where the frame is strongly red-dominant
    head = native_frames(row, 0)[0].astype(int)
    reddish = (head[..., 0] > 120) & (head[..., 0] > 2 * head[..., 1]) & (head[..., 0] > 2 * head[..., 2])
    bluish = (head[..., 2] > 120) & (head[..., 2] > 2 * head[..., 1]) & (head[..., 2] > 2 * head[..., 0])
    assert reddish.sum() >= 4 and reddish.sum() > 4 * bluish.sum()


def test_2026_image_encodings_all_decode_to_the_same_rgb(workdir, sim_samples):
    """A 2.0 episode converted to 2026 streams the frames of the original, whichever way `colors` stores them:
    XPolicyLab-marked JPEGs, RoboTwin's legacy bytes, or raw uint8 RGB arrays."""
    src = next((sim_samples / "robotwin").rglob("data/episode0.hdf5"))
    seen = json.loads((src.parent.parent / "instructions" / "episode0.json").read_text())["seen"]
    root = workdir / "rt"
    base = root / "conv" / "so100_bimanual" / "data"
    marked = convert_to_2026(src, base / "episode_0000000.hdf5", 17, seen)
    legacy, raw = base / "episode_0000001.hdf5", base / "episode_0000002.hdf5"
    shutil.copyfile(marked, legacy)
    shutil.copyfile(marked, raw)
    with h5py.File(src, "r") as f:
        legacy_bytes = f["observation/head_camera/rgb"][:-1]
        original = np.stack([cv2.imdecode(np.frombuffer(bytes(b), np.uint8), cv2.IMREAD_COLOR) for b in legacy_bytes])

    def replace(f, data):
        del f["vision/cam_head/colors"]
        f.create_dataset("vision/cam_head/colors", data=data)

    rewrite(legacy, lambda f: replace(f, legacy_bytes))
    rewrite(raw, lambda f: replace(f, original))
    report, items, _ = run(workdir, root)
    assert report.stage.counts == Counter({"done": 3})
    coloured = np.abs(original[..., 0].astype(int) - original[..., 2].astype(int)) > 60  # where a swap shows
    assert coloured.sum() > 100
    encodings = {}
    for i, name in enumerate(("marked", "legacy", "raw")):
        row = items[f"robotwin/conv/so100_bimanual/episode_000000{i}"]
        encodings[name] = json.loads(row["extras"])["image_encoding"]["cam_head"]
        frames = native_frames(row)
        assert frames.shape == original.shape
        err = np.abs(frames.astype(float) - original.astype(float))[coloured].mean()
        swapped = np.abs(frames[..., ::-1].astype(float) - original.astype(float))[coloured].mean()
        assert err < 12.0 and swapped > 40.0, (name, err, swapped)  # a wrong (or missing) swap would show
        assert row["fps"] == 17.0 and row["frame_count"] == len(original)
    assert encodings == {"marked": "jpeg-xpl-rgb1", "legacy": "jpeg-legacy", "raw": "raw-rgb"}
    assert np.array_equal(next(iter_hdf5_frames(str(raw), "vision/cam_head/colors")), original[0])


def test_frequency_written_by_robotwins_converter_is_a_save_freq(workdir, tree):
    """RoboTwin's process_data_xpolicylab.py writes save_freq (15) there and tags the file source_format=RoboTwin."""
    path = tree / EPISODE_2026
    root = tree.parent / "rt_conv"
    dst = root / EPISODE_2026
    dst.parent.mkdir(parents=True)
    shutil.copyfile(path, dst)

    def as_robotwin(f):
        f.attrs["source_format"] = "RoboTwin"
        f["additional_info/frequency"][()] = 15

    rewrite(dst, as_robotwin)
    _, items, _ = run(workdir, root)
    (row,) = items.values()
    assert row["fps"] == pytest.approx(250 / 15)
    assert "save_freq" in json.loads(row["extras"])["fps_from"]
    _, items, _ = run(workdir / "hz", root, frequency_means="hz")
    assert next(iter(items.values()))["fps"] == 15.0
    with pytest.raises(SourceError, match="frequency_means"):
        RoboTwinSource(root, frequency_means="per_second")


def test_sidecar_instructions_win_over_the_embedded_ones(workdir, tree):
    lines = ["Hand the cube over.", "Pass the red block to the left arm."]
    sidecar = tree / EPISODE_2026.parent.parent / "instructions" / "episode0.json"
    sidecar.parent.mkdir()
    sidecar.write_text(json.dumps({"seen": lines, "unseen": ["x"]}))
    _, items, _ = run(workdir, tree)
    assert items["robotwin/transfer_cube_2026/so100_bimanual/episode_0000000"]["language"] == lines


# ------------------------------------------------------------------------------------------------ quarantine


def test_malformed_2026_files_are_quarantined_with_readable_reasons(workdir, tree):
    good = tree / EPISODE_2026
    no_action = good.with_name("episode_0000001.hdf5")
    short = good.with_name("episode_0000002.hdf5")
    one_part = good.with_name("episode_0000003.hdf5")
    bad_rate = good.with_name("episode_0000004.hdf5")
    for p in (no_action, short, one_part, bad_rate):
        shutil.copyfile(good, p)
    rewrite(no_action, lambda f: f.__delitem__("action"))

    def drop_last_action(f):
        for k in list(f["action"]):
            data = f[f"action/{k}"][:-1]
            del f[f"action/{k}"]
            f.create_dataset(f"action/{k}", data=data)

    rewrite(short, drop_last_action)

    def drop_part(f):  # without joint_states to fall back on
        del f["state/right_ee_joint_states"]
        del f["state/joint_states"]

    rewrite(one_part, drop_part)

    def zero_rate(f):
        f["additional_info/frequency"][()] = 0

    rewrite(bad_rate, zero_rate)
    report, items, state = run(workdir, tree)
    reasons = {k.rsplit("/", 1)[-1]: v["reason"] for k, v in state.items() if v["status"] == "quarantined"}
    frames = written(good)["frames"]
    assert reasons == {
        "episode_0000001": "RoboTwin 2026 episode without an action/ group (top-level keys: ['additional_info', "
                           "'data_format_version', 'instruction', 'instructions', 'state', 'vision'])",
        "episode_0000002": f"action/ has {frames - 1} steps but vision/cam_head/colors has {frames} frames",
        "episode_0000003": "missing key state/right_ee_joint_states (the other joint keys of state/ are there)",
        "episode_0000004": "additional_info/frequency is 0.0: not a positive rate",
    }
    # the rest still ingests: both 2.0 episodes and the good 2026 one
    assert report.stage.counts == Counter({"done": 3, "quarantined": 4})
    assert sorted(items) == sorted(["robotwin/transfer_cube_2026/so100_bimanual/episode_0000000"]
                                   + [k for k in items if "/so100-bimanual_clean_2/" in k])
    assert len(items) == 3


def test_file_of_neither_layout_names_both(workdir, tree):
    rewrite(tree / EPISODE_2026, lambda f: f.move("vision", "images"))
    _, _, state = run(workdir, tree)
    reason = state["robotwin/transfer_cube_2026/so100_bimanual/episode_0000000"]["reason"]
    assert "not a RoboTwin 2.0 episode nor a 2026 one" in reason and "'images'" in reason
    assert "vision/, state/ and action/ (2026)" in reason
