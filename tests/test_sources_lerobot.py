"""LeRobot datasets (v3.0 written by lerobot 0.4.4's own writer, v2.1 in the layout lerobot 0.3 wrote) through the
real ingest: what a user sees in the catalog.

The datasets are written once per session (`write_lerobot`); each test damages a private copy. Expected values come
from what the writer was given (`sample_episodes`, same seed), from the files read here with pyarrow/json, and for
v3.0 frames from lerobot's own reader (LeRobotDataset, torchcodec) — never from the adapter.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catalog import Catalog
from flow_extraction.frames import iter_frames
from pipelines.config import config_from_dict
from pipelines.ingest import ingest
from pipelines.runners import LocalRunner
from samples.lerobot_ds import HEAD, JOINT_NAMES, WRISTS, sample_episodes, write_lerobot
from sources import SOURCES, SourceError
from sources.lerobot import LeRobotSource, composite_t_layout

V3_SEED, V2_SEED = 0, 1
N_V3, N_V2 = 3, 4
REPO = "aloha_demo"


@pytest.fixture(scope="module", autouse=True)
def _offline():
    """Nothing here may download (write_lerobot also sets HF_HUB_OFFLINE around lerobot's writer)."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield
    if old is None:
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ["HF_HUB_OFFLINE"] = old


@pytest.fixture(scope="session")
def lerobot_trees(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lerobot")
    write_lerobot(root / "v3" / REPO, N_V3, seed=V3_SEED, version="v3.0", wrists=True)
    write_lerobot(root / "v2" / REPO, N_V2, seed=V2_SEED, version="v2.1")
    return root


@pytest.fixture
def trees(tmp_path, lerobot_trees, monkeypatch) -> Path:
    shutil.copytree(lerobot_trees, tmp_path / "samples")
    monkeypatch.setitem(SOURCES, "lerobot", LeRobotSource)
    return tmp_path


def truth(version: str):
    return (sample_episodes(N_V3, V3_SEED, wrists=True) if version == "v3"
            else sample_episodes(N_V2, V2_SEED))


def source(workdir: Path, version: str, **options) -> dict:
    tier = options.pop("tier", None)
    return {"kind": "lerobot", "root": str(workdir / "samples" / version / REPO), "options": options,
            **({"tier": tier} if tier else {})}


def run(workdir: Path, *sources: dict):
    cfg = config_from_dict({"workdir": str(workdir), "runner": {"engine": "local"}, "sources": list(sources)})
    with Catalog(cfg.catalog_path) as cat:
        report = ingest(cfg, cat, LocalRunner(), progress=False)
        items = {r["item_id"]: r for r in cat.items().to_pylist()}
        state = {r["item_id"]: r for r in cat.sql("SELECT * FROM item_stages").to_pylist()}
    return report, items, state


def item_id(index: int) -> str:
    return f"lerobot/{REPO}/episode_{index:06d}"


def means(frames) -> np.ndarray:
    return np.array([np.asarray(f, np.float64).reshape(-1, 3).mean(0) for f in frames])


def decoded_window(row: dict, camera: int = 0) -> np.ndarray:
    """The item's frames as the later stages stream them (flow_extraction.frames), at their native size."""
    return np.stack([f for _, f, _ in iter_frames(row, (row["height"], row["width"]), camera=camera)])


def encode_h264(path: Path, frames: np.ndarray, fps: int = 30) -> None:
    with av.open(str(path), "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for i, rgb in enumerate(frames):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, fps)
            out.mux(s.encode(f))
        out.mux(s.encode(None))


# ------------------------------------------------------------------------------------------------ v3.0


def test_v3_episodes_are_windows_of_the_concatenated_videos(trees):
    report, items, state = run(trees, source(trees, "v3"))
    eps = truth("v3")
    root = trees / "samples" / "v3" / REPO
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0"  # written by lerobot's own writer
    assert report.stage.counts == Counter({"done": N_V3}) and set(items) == {item_id(e.index) for e in eps}
    head_mp4 = root / "videos" / HEAD / "chunk-000" / "file-000.mp4"
    start = 0.0
    for ep in eps:
        it = items[item_id(ep.index)]
        assert it["tier"] == 6 and it["group_id"] == it["item_id"] and it["source"] == "lerobot"
        assert it["fps"] == pytest.approx(30) and it["frame_count"] == ep.length
        assert it["duration_s"] == pytest.approx(ep.length / 30, rel=1e-5)
        assert it["start_s"] == pytest.approx(start, abs=1e-4)  # the episodes before it, back to back
        start += ep.length / 30
        assert it["cameras"] == ["cam_high", "cam_left_wrist", "cam_right_wrist"]
        assert it["media_uris"][0] == str(head_mp4)
        assert (it["width"], it["height"]) == (128, 96)
        assert it["embodiment"] == "aloha" and it["has_actions"]
        assert it["action_dim"] == 14 and it["state_dim"] == 14
        assert it["action_names"] == JOINT_NAMES and it["state_names"] == JOINT_NAMES
        assert it["language"] == [ep.task]
        assert it["split"] in ("train", "val", "test")
        extras = json.loads(it["extras"])
        assert extras["layout"] == "lerobot v3.0" and extras["episode_index"] == ep.index
        assert extras["camera_start_s"] == pytest.approx([it["start_s"]] * 3, abs=1e-6)
        # the actions are what the writer was given (float32 on disk)
        np.testing.assert_array_equal(LeRobotSource.load_actions(it), ep.action.astype(np.float64))
    assert len({it["language"][0] for it in items.values()}) > 1


def test_v3_window_frames_match_the_writer_and_lerobots_reader(trees, monkeypatch):
    _, items, _ = run(trees, source(trees, "v3"))
    eps = truth("v3")
    ep = eps[1]  # starts inside the concatenated file
    it = items[item_id(1)]
    assert it["start_s"] > 0
    got = means(decoded_window(it))
    want = means(ep.frames[HEAD])
    assert got.shape == want.shape
    err = np.abs(got - want).mean()
    # AV1 at crf 30 shifts a flat colour by a unit or two; a window one frame off is RAMP (5) per channel away
    assert err < 2.5
    assert err + 1.0 < np.abs(got[1:] - want[:-1]).mean() and err + 1.0 < np.abs(got[:-1] - want[1:]).mean()
    # wrist cameras stream from their own files with their own window
    got_wrist = means(decoded_window(it, camera=2))
    assert np.abs(got_wrist - means(ep.frames[WRISTS[1]])).mean() < 2.5

    import pipelines  # noqa: F401  torchvision shim before lerobot
    import datasets.config
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    # lerobot's reader loads the parquet through `datasets`, which caches an Arrow copy: keep it out of ~/.cache
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(trees / "hf_datasets_cache"))

    ds = LeRobotDataset(f"local/{REPO}", root=trees / "samples" / "v3" / REPO)
    offset = eps[0].length
    for k in (0, 7, ep.length - 1):
        sample = ds[offset + k]
        assert int(sample["episode_index"]) == 1 and int(sample["frame_index"]) == k
        theirs = sample[HEAD].numpy().transpose(1, 2, 0) * 255.0
        assert np.abs(means([theirs])[0] - got[k]).max() < 1.0


# ------------------------------------------------------------------------------------------------ v2.1


def test_v21_episodes_ingest_from_one_file_per_episode(trees):
    report, items, _ = run(trees, source(trees, "v2"))
    eps = truth("v2")
    root = trees / "samples" / "v2" / REPO
    lines = [json.loads(line) for line in (root / "meta" / "episodes.jsonl").read_text().splitlines()]
    assert json.loads((root / "meta" / "info.json").read_text())["codebase_version"] == "v2.1"
    assert report.stage.counts == Counter({"done": N_V2})
    for ep, line in zip(eps, lines):
        it = items[item_id(ep.index)]
        assert it["frame_count"] == ep.length == line["length"] and it["start_s"] == 0.0
        assert it["language"] == line["tasks"] == [ep.task]
        assert it["cameras"] == ["cam_high"]
        assert it["media_uris"] == [str(root / "videos" / "chunk-000" / HEAD / f"episode_{ep.index:06d}.mp4")]
        assert it["input_uri"] == str(root / "data" / "chunk-000" / f"episode_{ep.index:06d}.parquet")
        assert json.loads(it["extras"])["layout"] == "lerobot v2.1"
        np.testing.assert_array_equal(LeRobotSource.load_actions(it), ep.action.astype(np.float64))
        got, want = means(decoded_window(it)), means(ep.frames[HEAD])
        assert np.abs(got - want).mean() < 2.0  # H.264 crf 18


def test_frames_from_an_existing_mp4(tmp_path):
    rng = np.random.default_rng(3)
    src = np.stack([np.full((60, 80, 3), (4 * i, 200 - 3 * i, 90), np.uint8) for i in range(50)])
    src[:, 10:30, 20:40] = rng.integers(0, 255, size=(50, 20, 20, 3), dtype=np.uint8)
    encode_h264(tmp_path / "rgb_top.mp4", src)
    root = write_lerobot(tmp_path / "from_mp4", 2, seed=5, version="v2.1", frames_from=tmp_path / "rgb_top.mp4")
    eps = sample_episodes(2, 5, frames_from=tmp_path / "rgb_top.mp4")
    with av.open(str(tmp_path / "rgb_top.mp4")) as c:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    first = cv2.resize(decoded[eps[0].length], (128, 96), interpolation=cv2.INTER_AREA)  # episode 1 continues the clip
    np.testing.assert_array_equal(eps[1].frames[HEAD][0], first)
    src_adapter = LeRobotSource(root)
    rows = [src_adapter.probe(r).row() for r in src_adapter.discover()]
    assert [r["frame_count"] for r in rows] == [e.length for e in eps]
    assert np.abs(means(decoded_window(rows[1])) - means(eps[1].frames[HEAD])).mean() < 2.0


# ------------------------------------------------------------------------------------------------ options


def test_splits_tier_and_camera_options(trees):
    root = trees / "samples" / "v3" / REPO
    adapter = LeRobotSource(root)
    rows = [adapter.probe(r).row() for r in adapter.discover()]
    assert all(r["split"] is None for r in rows)  # lerobot's lone {"train": "0:N"} is no official split
    forced = LeRobotSource(root, official_splits=True)
    assert {forced.probe(r).row()["split"] for r in forced.discover()} == {"train"}

    info = json.loads((root / "meta" / "info.json").read_text())
    info["splits"] = {"train": "0:2", "validation": "2:3"}
    (root / "meta" / "info.json").write_text(json.dumps(info))
    _, items, _ = run(trees, source(trees, "v3", tier=5, cameras=["cam_right_wrist", "observation.images.cam_high"]))
    assert {k: v["split"] for k, v in items.items()} == {item_id(0): "train", item_id(1): "train", item_id(2): "val"}
    for it in items.values():
        assert it["tier"] == 5 and it["cameras"] == ["cam_right_wrist", "cam_high"]
        assert Path(it["media_uris"][0]).parts[-3] == WRISTS[1]

    with pytest.raises(SourceError, match="camera 'wrist' is not a video feature.*cam_high"):
        LeRobotSource(root, cameras=["wrist"])
    with pytest.raises(SourceError, match="option composite was removed.*under `cameras`"):
        LeRobotSource(root, composite=True)
    with pytest.raises(SourceError, match="option composite_cameras was removed"):
        LeRobotSource(root, composite_cameras=["cam_high", "cam_left_wrist", "cam_right_wrist"])


def test_composite_t_layout_places_head_on_top_and_half_size_wrists_below():
    head = np.zeros((96, 128, 3), np.uint8)
    head[:, :, 0] = np.arange(128)  # a gradient, so placement errors show
    left = np.full((96, 128, 3), 50, np.uint8)
    left[:48, :, 1] = 200
    right = np.full((48, 64, 3), 120, np.uint8)  # already half size: kept as is
    out = composite_t_layout(head, left, right)
    assert out.shape == (144, 128, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:96], head)
    np.testing.assert_array_equal(out[96:, :64], cv2.resize(left, (64, 48), interpolation=cv2.INTER_LINEAR))
    assert out[96:120, :64, 1].min() == 200 and out[121:, :64, 1].max() == 50  # top half of the left wrist on top
    np.testing.assert_array_equal(out[96:, 64:], right)
    assert composite_t_layout(np.zeros((480, 640, 3), np.uint8), head, head).shape == (720, 640, 3)
    assert composite_t_layout(np.zeros((240, 320, 3), np.uint8), head, head).shape == (360, 320, 3)
    odd = composite_t_layout(np.zeros((31, 127, 3), np.uint8), left, right)  # Motus would fail to hstack here
    assert odd.shape == (46, 127, 3) and (odd[31:, 63:] == 120).all()
    with pytest.raises(ValueError, match="left frame must be"):
        composite_t_layout(head, left[..., 0], right)


# ------------------------------------------------------------------------------------------------ bad inputs


def test_malformed_episodes_are_quarantined_with_reasons_and_the_rest_ingests(trees):
    v3, v2 = trees / "samples" / "v3" / REPO, trees / "samples" / "v2" / REPO
    eps3, eps2 = truth("v3"), truth("v2")
    # v3: the head camera's concatenated mp4 cut off inside the last episode
    head = v3 / "videos" / HEAD / "chunk-000" / "file-000.mp4"
    with open(head, "r+b") as f:
        f.truncate(int(head.stat().st_size * 0.9))
    # v3: episode 1's video window says it ends 5 frames early (its length disagrees with its video)
    meta = v3 / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(meta)
    col = f"videos/{HEAD}/to_timestamp"
    to = table.column(col).to_pylist()
    to[1] -= 5 / 30
    pq.write_table(table.set_column(table.schema.get_field_index(col), col, pa.array(to)), meta)
    # v2.1: a missing data parquet, a video with 4 frames fewer than its episode, a truncated mp4
    (v2 / "data" / "chunk-000" / "episode_000000.parquet").unlink()
    short = eps2[1].frames[HEAD][:-4]
    encode_h264(v2 / "videos" / "chunk-000" / HEAD / "episode_000001.mp4", short)
    cut = v2 / "videos" / "chunk-000" / HEAD / "episode_000003.mp4"
    with open(cut, "r+b") as f:
        f.truncate(cut.stat().st_size // 2)

    v3_src = source(trees, "v3", repo_name="v3set")
    v2_src = source(trees, "v2", repo_name="v2set")
    report, items, state = run(trees, v3_src, v2_src)
    reasons = {k: v["reason"] for k, v in state.items() if v["status"] == "quarantined"}
    assert set(items) == {"lerobot/v3set/episode_000000", "lerobot/v2set/episode_000002"}
    assert set(reasons) == {"lerobot/v3set/episode_000001", "lerobot/v3set/episode_000002",
                            "lerobot/v2set/episode_000000", "lerobot/v2set/episode_000001",
                            "lerobot/v2set/episode_000003"}
    w1 = reasons["lerobot/v3set/episode_000001"]
    assert f"holds {eps3[1].length - 5} decodable frames in the episode window" in w1
    assert f"the episode has {eps3[1].length} frames" in w1 and f"videos/{HEAD}/chunk-000/file-000.mp4" in w1
    assert "truncated" in reasons["lerobot/v3set/episode_000002"]
    assert reasons["lerobot/v2set/episode_000000"] == "missing data file data/chunk-000/episode_000000.parquet"
    assert (f"holds {eps2[1].length - 4} decodable frames in the episode window (whole file), "
            f"the episode has {eps2[1].length} frames") in reasons["lerobot/v2set/episode_000001"]
    assert "episode_000003.mp4" in reasons["lerobot/v2set/episode_000003"]
    assert "truncated or corrupt" in reasons["lerobot/v2set/episode_000003"]
    assert report.stage.counts == Counter({"done": 2, "quarantined": 5})
    # the good episode of the damaged v3 file still reads right
    np.testing.assert_array_equal(LeRobotSource.load_actions(items["lerobot/v3set/episode_000000"]),
                                  eps3[0].action.astype(np.float64))

    report2, items2, _ = run(trees, v3_src, v2_src)  # nothing changed: nothing is redone
    assert report2.stage.processed == 0 and report2.stage.skipped == 7 and items2 == items


def test_unknown_codebase_version_is_a_clear_source_error(trees):
    info_path = trees / "samples" / "v2" / REPO / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["codebase_version"] = "v1.6"
    info_path.write_text(json.dumps(info))
    with pytest.raises(SourceError, match=r"codebase_version 'v1\.6'.*v2\.0/v2\.1.*v3\.0"):
        LeRobotSource(info_path.parent.parent)
    report, items, _ = run(trees, source(trees, "v2"), source(trees, "v3"))
    (label, error), = report.source_errors.items()
    assert label.startswith("lerobot:") and "'v1.6'" in error
    assert len(items) == N_V3  # the other dataset still ingests
    with pytest.raises(SourceError, match="meta/info.json is missing"):
        LeRobotSource(trees)


def test_load_actions_refuses_rows_that_disagree_with_the_file(trees):
    _, items, _ = run(trees, source(trees, "v2"))
    row = dict(items[item_id(2)])
    row["frame_count"] += 3
    from pipelines.stages import BadInput

    with pytest.raises(BadInput, match="action rows for episode 2"):
        LeRobotSource.load_actions(row)


def test_demux_only_check_gives_the_same_rows_and_still_catches_a_short_window(trees):
    from pipelines.stages import BadInput

    for version in ("v3", "v2"):
        root = trees / "samples" / version / REPO
        full, fast = LeRobotSource(root), LeRobotSource(root, check_decode=False)
        for ref in full.discover():
            assert fast.probe(ref).row() == full.probe(ref).row()
    root = trees / "samples" / "v3" / REPO
    meta = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(meta)
    col = f"videos/{WRISTS[0]}/from_timestamp"
    starts = table.column(col).to_pylist()
    starts[2] += 2 / 30  # the wrist window of episode 2 starts two frames late
    pq.write_table(table.set_column(table.schema.get_field_index(col), col, pa.array(starts)), meta)
    fast = LeRobotSource(root, check_decode=False)
    ref = [r for r in fast.discover() if r.item_id == item_id(2)][0]
    n = truth("v3")[2].length
    with pytest.raises(BadInput, match=f"{WRISTS[0]}/chunk-000/file-000.mp4 holds {n - 2} decodable frames"):
        fast.probe(ref).row()


def test_language_falls_back_to_the_task_table_when_episodes_carry_no_tasks(trees):
    v2 = trees / "samples" / "v2" / REPO
    lines = [json.loads(line) for line in (v2 / "meta" / "episodes.jsonl").read_text().splitlines()]
    (v2 / "meta" / "episodes.jsonl").write_text("".join(json.dumps({k: v for k, v in e.items() if k != "tasks"}) + "\n"
                                                        for e in lines))
    v3 = trees / "samples" / "v3" / REPO
    meta = v3 / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    pq.write_table(pq.read_table(meta).drop_columns(["tasks"]), meta)
    for root, eps in ((v2, truth("v2")), (v3, truth("v3"))):
        adapter = LeRobotSource(root)
        assert [adapter.probe(r).row()["language"] for r in adapter.discover()] == [[e.task] for e in eps]
