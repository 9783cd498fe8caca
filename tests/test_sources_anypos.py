"""AnyPos/ATARA task-agnostic data in its published layout (issue 14): stacked head-over-wrists mp4v videos, qpos
tensor files, a caption file; written from our task-agnostic generator's episodes and read through the real ingest.

Expected values come from the generator's own files (its three views and joints.npy), never from the adapter.
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections import Counter
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from catalog import Catalog
from flow_extraction.frames import iter_frames
from pipelines.config import config_from_dict
from pipelines.ingest import ingest
from pipelines.runners import LocalRunner
from samples.anypos_layout import CAPTION, write_anypos
from sources import SOURCES, SourceError
from sources.anypos import ALOHA_NAMES, AnyPosSource, view_boxes
from pipelines.stages import BadInput

TASK = "random_exploration"


@pytest.fixture(scope="session")
def task_agnostic(tmp_path_factory) -> Path:
    from samples.sim_task_agnostic import write_task_agnostic

    root = tmp_path_factory.mktemp("anypos_src") / "aloha_random"
    write_task_agnostic(root, n_episodes=2, n_frames=12, seed=3, workers=1)
    return root


@pytest.fixture
def anypos(tmp_path, task_agnostic) -> Path:
    write_anypos(tmp_path / "atara", task_agnostic, task=TASK)
    return tmp_path / "atara"


def run(workdir: Path, root: Path, **options):
    cfg = config_from_dict({"workdir": str(workdir / "work"), "runner": {"engine": "local"},
                            "sources": [{"kind": "anypos", "root": str(root), "options": options}]})
    with Catalog(cfg.catalog_path) as cat:
        report = ingest(cfg, cat, LocalRunner(), progress=False)
        items = {r["item_id"]: r for r in cat.items().to_pylist()}
        state = {r["item_id"]: r for r in cat.sql("SELECT * FROM item_stages").to_pylist()}
    return report, items, state


def views(ep: Path) -> list[np.ndarray]:
    out = []
    for cam in ("front", "left_wrist", "right_wrist"):
        with av.open(str(ep / f"rgb_{cam}.mp4")) as c:
            out.append(np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]))
    return out


def test_anypos_episodes_split_into_cameras_with_qpos_and_caption(tmp_path, anypos, task_agnostic):
    assert SOURCES["anypos"] is AnyPosSource
    report, items, _ = run(tmp_path, anypos, embodiment="aloha")
    assert report.stage.counts == Counter({"done": 2})
    episodes = sorted((task_agnostic / "episodes").glob("episode_*"))
    fps = json.loads((task_agnostic / "dataset.json").read_text())["fps"]
    for i, ep in enumerate(episodes):
        it = items[f"anypos/{TASK}/episode_{i}"]
        head, left, right = views(ep)
        joints = np.load(ep / "joints.npy")
        assert it["tier"] == 4 and it["cameras"] == ["head", "left_wrist", "right_wrist"]
        assert it["frame_count"] == len(joints) == 12 and it["fps"] == pytest.approx(fps)
        assert (it["height"], it["width"]) == head.shape[1:3]  # the head view, not the stacked frame
        assert it["language"] == [CAPTION] and it["embodiment"] == "aloha"
        assert it["action_dim"] == it["state_dim"] == 14 and it["action_names"] == ALOHA_NAMES
        assert it["action_semantics"][6] == "absolute:gripper" and it["action_timing"] == "at"
        np.testing.assert_allclose(SOURCES["anypos"].load_actions(it), joints.astype(np.float32), rtol=0, atol=0)
        extras = json.loads(it["extras"])
        assert extras["stacked_size"] == [head.shape[2], head.shape[1] * 3 // 2] and extras["qpos_file"].endswith(
            f"episode_{i}_qpos.pt")
        # each camera streams its own view out of the stacked frame (mp4v is lossy: a few grey levels off), and
        # not the other wrist's (about 14 levels off)
        got = [np.stack([f for _, f, _ in iter_frames(it, want.shape[1:3], camera=cam)]).astype(float)
               for cam, want in enumerate((head, left, right))]
        for g, want in zip(got, (head, left, right)):
            assert g.shape == want.shape and np.abs(g - want).mean() < 5.0
        assert np.abs(got[1] - right).mean() > 8.0 and np.abs(got[2] - left).mean() > 8.0


def test_anypos_bad_episodes_are_quarantined_with_reasons(tmp_path, anypos):
    task = anypos / TASK
    shutil.copy(task / "episode_0.mp4", task / "episode_5.mp4")  # a video without qpos (AnyPos skips it silently)
    shutil.copy(task / "episode_0_qpos.pt", task / "episode_6_qpos.pt")  # qpos without its video
    shutil.copy(task / "episode_0.mp4", task / "episode_7.mp4")
    torch.save(torch.zeros(11, 14), task / "episode_7_qpos.pt")  # one row short of the video
    shutil.copy(task / "episode_0.mp4", task / "episode_8.mp4")
    # an arbitrary pickle (here a fractions.Fraction): weights_only refuses to build it
    (task / "episode_8_qpos.pt").write_bytes(pickle.dumps(Fraction(1, 3)))
    shutil.copy(task / "episode_0.mp4", task / "episode_9.mp4")
    torch.save({"qpos": torch.zeros(12, 14)}, task / "episode_9_qpos.pt")  # loads, but is no tensor
    _, items, state = run(tmp_path, anypos)
    reasons = {k.rsplit("/", 1)[1]: v["reason"] for k, v in state.items() if v["status"] == "quarantined"}
    assert set(items) == {f"anypos/{TASK}/episode_0", f"anypos/{TASK}/episode_1"}
    assert reasons["episode_5"] == f"video {TASK}/episode_5.mp4 has no qpos file {TASK}/episode_5_qpos.pt"
    assert reasons["episode_6"] == f"qpos file {TASK}/episode_6_qpos.pt has no video {TASK}/episode_6.mp4"
    assert reasons["episode_7"] == f"{TASK}/episode_7_qpos.pt has 11 rows, {TASK}/episode_7.mp4 holds 12 frames"
    assert reasons["episode_8"].startswith(f"{TASK}/episode_8_qpos.pt is not a plain tensor file (weights_only")
    assert reasons["episode_9"] == f"{TASK}/episode_9_qpos.pt holds dict, expected a float tensor [T, D]"

    with pytest.raises(BadInput, match="cannot be split into AnyPos views"):
        view_boxes(640, 721)
    assert view_boxes(640, 720) == {"head": (0, 0, 640, 480), "left_wrist": (0, 480, 320, 240),
                                    "right_wrist": (320, 480, 320, 240)}
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no <task>/episode_<i>.mp4"):
        AnyPosSource(tmp_path / "empty")


def test_the_sample_pyramid_writes_an_anypos_set_the_demo_ingests(tmp_path):
    from pipelines.config import load_config
    from samples.pyramid import write_anypos_sample

    samples = tmp_path / "samples"
    samples.mkdir()
    written = write_anypos_sample(samples / "anypos" / "atara", 1, seed=16)
    assert [p.name for p in written] == ["episode_0.mp4"]
    assert sorted(p.name for p in samples.iterdir()) == ["anypos"]  # the scratch render is gone
    cfg = load_config(Path(__file__).parent.parent / "configs" / "demo.yaml")
    (src,) = [s for s in cfg.sources if s.kind == "anypos"]
    assert src.root == "samples/anypos/atara"
    adapter = AnyPosSource(samples / "anypos" / "atara", **src.options)
    (row,) = [adapter.probe(ref).row() for ref in adapter.discover()]
    assert row["frame_count"] == 60 and row["embodiment"] == "aloha" and row["language"] == [CAPTION]
