"""LeRobot datasets as published: the quirks real v2.0/v2.1/v3.0 datasets have (issue 14), each in the real layout.

Datasets are written once per session (`write_lerobot`: v3.0 by lerobot's own writer, v2.1 as lerobot 0.3 wrote
it) and each test edits a private copy the way a real dataset differs (info.json names, a missing camera folder,
episode windows, an annotation task). Expected values come from what the writer was given (`sample_episodes`)
and from the files read here, never from the adapter.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catalog import Catalog
from pipelines.config import config_from_dict
from pipelines.ingest import ingest
from pipelines.runners import LocalRunner
from samples.lerobot_ds import HEAD, JOINT_NAMES, WRISTS, sample_episodes, write_lerobot

N_V2, V2_SEED, V3_SEED = 3, 4, 5
REPO = "quirks"


@pytest.fixture(scope="module", autouse=True)
def _offline():
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield
    if old is None:
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ["HF_HUB_OFFLINE"] = old


@pytest.fixture(scope="session")
def v2_tree(tmp_path_factory) -> Path:
    """v2.1 with a head and two wrist cameras, one mp4 per camera and episode."""
    return write_lerobot(tmp_path_factory.mktemp("lerobot_quirks") / REPO, N_V2, seed=V2_SEED, version="v2.1",
                         wrists=True)


@pytest.fixture
def v2(tmp_path, v2_tree) -> Path:
    shutil.copytree(v2_tree, tmp_path / REPO)
    return tmp_path / REPO


def edit_info(root: Path, edit) -> None:
    path = root / "meta" / "info.json"
    info = json.loads(path.read_text())
    edit(info)
    path.write_text(json.dumps(info, indent=4))


def run(workdir: Path, root: Path, **options):
    src = {"kind": "lerobot", "root": str(root), "options": options}
    cfg = config_from_dict({"workdir": str(workdir / "work"), "runner": {"engine": "local"}, "sources": [src]})
    with Catalog(cfg.catalog_path) as cat:
        report = ingest(cfg, cat, LocalRunner(), progress=False)
        items = {r["item_id"]: r for r in cat.items().to_pylist()}
        state = {r["item_id"]: r for r in cat.sql("SELECT * FROM item_stages").to_pylist()}
    return report, items, state


def item_id(index: int) -> str:
    return f"lerobot/{REPO}/episode_{index:06d}"


def test_nested_feature_names_are_read_as_names(tmp_path, v2):
    def nest(info):
        info["features"]["action"]["names"] = [JOINT_NAMES]  # a list of lists, as some converters write
        info["features"]["observation.state"]["names"] = {"left": JOINT_NAMES[:7], "right": [JOINT_NAMES[7:]]}
    edit_info(v2, nest)
    report, items, _ = run(tmp_path, v2)
    assert report.stage.counts == Counter({"done": N_V2})
    for it in items.values():
        assert it["action_dim"] == 14 and it["action_names"] == JOINT_NAMES
        assert it["state_dim"] == 14 and it["state_names"] == JOINT_NAMES


def test_a_declared_camera_without_files_is_left_out_unless_the_config_names_it(tmp_path, v2):
    left = WRISTS[0].split(".")[-1]
    shutil.rmtree(v2 / "videos" / "chunk-000" / WRISTS[0])  # the whole camera folder never downloaded
    for k in (HEAD, *WRISTS):  # episode 2 has no video at all
        (v2 / "videos" / "chunk-000" / k / "episode_000002.mp4").unlink(missing_ok=True)
    template = json.loads((v2 / "meta" / "info.json").read_text())["video_path"]

    def missing(cam: str, i: int) -> str:
        return (f"missing video file videos/chunk-000/{cam}/episode_{i:06d}.mp4 "
                f"(video_path {template!r} from info.json)")

    report, items, state = run(tmp_path / "a", v2)
    eps = sample_episodes(N_V2, V2_SEED, wrists=True)
    assert set(items) == {item_id(0), item_id(1)}
    for i in (0, 1):
        it = items[item_id(i)]
        assert it["cameras"] == ["cam_high", "cam_right_wrist"] and it["frame_count"] == eps[i].length
        assert Path(it["media_uris"][1]).parent.name == WRISTS[1]
        extras = json.loads(it["extras"])
        assert extras["cameras_missing"] == {left: missing(WRISTS[0], i)}
        assert extras["camera_keys"] == [HEAD, WRISTS[1]] and len(extras["camera_start_s"]) == 2
    assert state[item_id(2)]["status"] == "quarantined"
    assert state[item_id(2)]["reason"] == "no camera has files: " + "; ".join(
        missing(k, 2) for k in (HEAD, WRISTS[0], WRISTS[1]))

    # a camera the config asks for must be there
    _, items, state = run(tmp_path / "b", v2, cameras=["cam_high", left])
    assert not items
    assert state[item_id(0)]["reason"] == "a camera the config names has no file: " + missing(WRISTS[0], 0)


@pytest.fixture(scope="session")
def v3_tree(tmp_path_factory) -> Path:
    """v3.0 written by lerobot's own writer (one concatenated AV1 mp4 for the head camera)."""
    return write_lerobot(tmp_path_factory.mktemp("lerobot_quirks_v3") / REPO, 3, seed=V3_SEED, version="v3.0")


def test_v3_to_timestamp_at_the_last_frame_is_tolerated_by_one_frame_period(tmp_path, v3_tree):
    from sources.lerobot import LeRobotSource
    from tests.test_sources_lerobot import decoded_window, means

    root = tmp_path / REPO
    shutil.copytree(v3_tree, root)
    eps = sample_episodes(3, V3_SEED)
    fps = json.loads((root / "meta" / "info.json").read_text())["fps"]
    meta = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(meta)
    col = f"videos/{HEAD}/to_timestamp"
    starts, ends = table.column(f"videos/{HEAD}/from_timestamp").to_pylist(), table.column(col).to_pylist()
    assert ends[0] == pytest.approx(starts[0] + eps[0].length / fps)  # what lerobot writes: one period past the end
    ends[0] = starts[0] + (eps[0].length - 1) / fps  # the quirk: the last frame's own timestamp
    ends[1] = starts[1] + (eps[1].length - 2) / fps  # two frames short: not the quirk, still rejected
    pq.write_table(table.set_column(table.schema.get_field_index(col), col, pa.array(ends)), meta)

    report, items, state = run(tmp_path, root)
    assert set(items) == {item_id(0), item_id(2)}
    it = items[item_id(0)]
    assert it["frame_count"] == eps[0].length and json.loads(it["extras"])["window_end_is_last_frame"] == ["cam_high"]
    # checked against decoded frames: the window holds exactly the episode's frames, the last one included
    got, want = means(decoded_window(it)), means(eps[0].frames[HEAD])
    assert got.shape == want.shape and np.abs(got - want).mean() < 2.5
    assert "window_end_is_last_frame" not in json.loads(items[item_id(2)]["extras"])
    assert (f"holds {eps[1].length - 2} decodable frames in the episode window"
            in state[item_id(1)]["reason"])
    # the demux-only check agrees
    fast = LeRobotSource(root, check_decode=False)
    assert fast.probe(next(r for r in fast.discover() if r.item_id == item_id(0))).row()["frame_count"] == eps[0].length


def test_annotation_pseudo_tasks_are_not_language(tmp_path, v2):
    """GR00T-style annotations: integer columns index tasks.jsonl, one with the task description, one with a
    validity flag whose "task" is the word "valid" (and episodes.jsonl lists both)."""
    eps = sample_episodes(N_V2, V2_SEED, wrists=True)
    tasks = [json.loads(line) for line in (v2 / "meta" / "tasks.jsonl").read_text().splitlines()]
    valid = len(tasks)
    tasks.append({"task_index": valid, "task": "valid"})
    (v2 / "meta" / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    lines = [json.loads(line) for line in (v2 / "meta" / "episodes.jsonl").read_text().splitlines()]
    (v2 / "meta" / "episodes.jsonl").write_text("".join(json.dumps({**e, "tasks": e["tasks"] + ["valid"]}) + "\n"
                                                        for e in lines))

    def annotate(info):
        for k in ("annotation.human.action.task_description", "annotation.human.validity"):
            info["features"][k] = {"dtype": "int64", "shape": [1], "names": None}
    edit_info(v2, annotate)
    for ep in eps:
        path = v2 / "data" / "chunk-000" / f"episode_{ep.index:06d}.parquet"
        table = pq.read_table(path)
        n = table.num_rows
        table = table.append_column("annotation.human.action.task_description", table.column("task_index"))
        table = table.append_column("annotation.human.validity", pa.array([valid] * n, pa.int64()))
        pq.write_table(table, path)

    report, items, _ = run(tmp_path, v2)
    assert report.stage.counts == Counter({"done": N_V2})
    for ep in eps:
        it = items[item_id(ep.index)]
        assert it["language"] == [ep.task]  # never "valid"
        assert json.loads(it["extras"])["tasks_not_language"] == ["valid"]


def test_videos_under_another_folder_name_both_paths_and_the_video_path_option_reads_them(tmp_path, v2):
    (v2 / "videos").rename(v2 / "video")
    template = json.loads((v2 / "meta" / "info.json").read_text())["video_path"]
    other = "video" + template[len("videos"):]
    _, items, state = run(tmp_path / "a", v2)
    assert not items
    reason = state[item_id(0)]["reason"]
    assert reason.startswith("no camera has files: missing video file "
                             f"videos/chunk-000/{HEAD}/episode_000000.mp4 (video_path {template!r} from info.json); "
                             f"video/chunk-000/{HEAD}/episode_000000.mp4 exists: set the source option video_path: "
                             f"{other!r}")
    report, items, _ = run(tmp_path / "b", v2, video_path=other)
    assert report.stage.counts == Counter({"done": N_V2})
    for it in items.values():
        assert all(Path(u).relative_to(v2).parts[0] == "video" for u in it["media_uris"])
        assert it["cameras"] == ["cam_high", "cam_left_wrist", "cam_right_wrist"]


def test_info_json_totals_that_disagree_with_the_data_are_reported_not_trusted(tmp_path, v2):
    from audit import AuditConfig
    from audit.context import AuditContext
    from audit.registry import CHECKS

    eps = sample_episodes(N_V2, V2_SEED, wrists=True)
    frames = sum(e.length for e in eps)

    def trimmed(info):  # written before the dataset was trimmed
        info["total_episodes"], info["total_frames"] = N_V2 + 2, frames + 57
    edit_info(v2, trimmed)
    report, items, _ = run(tmp_path, v2)
    assert report.stage.counts == Counter({"done": N_V2})  # the episodes that are there ingest
    (note,), = report.source_notes.values()
    assert note == (f"info.json disagrees with meta/episodes.jsonl: total_episodes {N_V2 + 2}, counted {N_V2}; "
                    f"total_frames {frames + 57}, counted {frames}")
    for it in items.values():
        assert json.loads(it["extras"])["metadata_totals"] == {"total_episodes": [N_V2 + 2, N_V2],
                                                              "total_frames": [frames + 57, frames]}
    cfg = config_from_dict({"workdir": str(tmp_path / "work")})
    with Catalog(cfg.catalog_path) as cat:
        out = CHECKS["stream_matches_metadata"].run(AuditContext(cfg, cat, AuditConfig()))
    assert out.failures[item_id(0)].startswith(f"info.json says total_episodes {N_V2 + 2}, the dataset holds {N_V2}")
