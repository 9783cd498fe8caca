"""Tests for samples/real_clips.py: real footage in the SSv2 (L1) and Ego4D (L2) release layouts.

The trees are written once per module (the demo's sizes: 8 SSv2 clips, 2 Ego4D videos) and then checked
against the released formats by decoding every file with PyAV rather than trusting what the writer returns.
"""

from __future__ import annotations

import itertools
import json
import re
import uuid
from pathlib import Path

import av
import numpy as np
import pytest

from samples.real_clips import write_ego4d, write_ssv2

N_CLIPS, N_VIDEOS = 8, 2
SSV2_ENTRY_KEYS = {"id", "label", "template", "placeholders"}
EGO4D_META_KEYS = {
    "fps",
    "num_frames",
    "display_resolution_width",
    "display_resolution_height",
    "video_codec",
    "mp4_duration_sec",
    "video_start_sec",
    "video_duration_sec",
}


def decode(path: Path) -> dict:
    """Decode a video fully and report what the file itself says."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return {
            "format": container.format.name,
            "codec": stream.codec_context.name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "rate": float(stream.average_rate),
            "duration": container.duration / av.time_base,
            "frames": np.stack(frames),
        }


def load(path: Path):
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def ssv2(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssv2")
    videos = write_ssv2(root, N_CLIPS, seed=0)
    decoded = {p.stem: decode(p) for p in sorted((root / "20bn-something-something-v2").glob("*.webm"))}
    return root, videos, decoded


@pytest.fixture(scope="module")
def ego4d(tmp_path_factory):
    root = tmp_path_factory.mktemp("ego4d")
    videos = write_ego4d(root, N_VIDEOS, seed=0)
    decoded = {p.stem: decode(p) for p in sorted((root / "v2" / "full_scale").glob("*.mp4"))}
    return root / "v2", videos, decoded


# ------------------------------------------------------------------------------------------------ SSv2


def test_ssv2_layout(ssv2):
    root, videos, decoded = ssv2
    assert len(videos) == N_CLIPS
    assert all(p.parent == root / "20bn-something-something-v2" and p.suffix == ".webm" for p in videos)
    assert {p.stem for p in videos} == set(decoded)
    for name in ("labels.json", "train.json", "validation.json", "test.json"):
        assert (root / "labels" / name).is_file()
    # Atomic writes leave no hidden temp files behind.
    assert not [p for p in root.rglob(".*")]


def test_ssv2_webm_decodes_as_released(ssv2):
    _, _, decoded = ssv2
    for clip_id, d in decoded.items():
        assert "webm" in d["format"], clip_id
        assert d["codec"] == "vp9", clip_id
        assert d["rate"] == pytest.approx(12, abs=0.01), clip_id
        n, h, w, _ = d["frames"].shape
        assert h == 240 and w % 2 == 0, (clip_id, h, w)
        assert n == round(d["duration"] * 12), (clip_id, n, d["duration"])  # frame count matches duration
        assert 2.0 <= d["duration"] <= 4.0, (clip_id, d["duration"])


def test_ssv2_labels_json_fields(ssv2):
    root, _, _ = ssv2
    classes = load(root / "labels" / "labels.json")
    assert all(isinstance(k, str) and "[" not in k for k in classes)
    assert sorted(int(v) for v in classes.values()) == list(range(len(classes)))
    assert all(isinstance(v, str) for v in classes.values())  # class indices are strings, as released

    for split in ("train", "validation"):
        for entry in load(root / "labels" / f"{split}.json"):
            assert set(entry) == SSV2_ENTRY_KEYS, entry
            assert re.fullmatch(r"\d+", entry["id"]), entry
            holes = re.findall(r"\[.*?\]", entry["template"])
            assert len(holes) == len(entry["placeholders"]) >= 1, entry
            filled = entry["template"]
            for hole, word in zip(holes, entry["placeholders"]):
                filled = filled.replace(hole, word, 1)
            assert entry["label"] == filled.lower(), entry
            assert re.sub(r"\[(.*?)\]", r"\1", entry["template"]) in classes, entry

    for entry in load(root / "labels" / "test.json"):
        assert set(entry) == {"id"}, entry  # the test split is released without labels


def test_ssv2_splits_partition_the_videos(ssv2):
    root, _, decoded = ssv2
    splits = {s: [e["id"] for e in load(root / "labels" / f"{s}.json")] for s in ("train", "validation", "test")}
    assert all(splits.values()), {s: len(v) for s, v in splits.items()}
    assert len(splits["train"]) > len(splits["validation"]) + len(splits["test"])
    for a, b in itertools.combinations(splits, 2):
        assert not set(splits[a]) & set(splits[b]), (a, b)
    all_ids = [i for ids in splits.values() for i in ids]
    assert len(all_ids) == len(set(all_ids)) == N_CLIPS
    assert set(all_ids) == set(decoded)  # every listed id has a webm, and every webm is listed


def test_ssv2_windows_differ(ssv2):
    _, _, decoded = ssv2
    frames = {k: d["frames"].astype(np.float32) for k, d in decoded.items()}
    compared = 0
    for a, b in itertools.combinations(frames, 2):
        if frames[a].shape[1:] == frames[b].shape[1:]:  # same source
            # Both the mean frame and the first frame: clips of different lengths from the same start would
            # still have different means, but not different first frames.
            assert np.abs(frames[a].mean(axis=0) - frames[b].mean(axis=0)).mean() > 1.0, (a, b)
            assert np.abs(frames[a][0] - frames[b][0]).mean() > 2.0, (a, b)
            compared += 1
    assert compared >= 2 * 3  # 4 clips per source -> 6 same-source pairs


def test_ssv2_small_counts_and_determinism(tmp_path):
    one = write_ssv2(tmp_path / "a", 1, seed=3)
    assert len(load(tmp_path / "a" / "labels" / "train.json")) == 1
    assert load(tmp_path / "a" / "labels" / "test.json") == []

    write_ssv2(tmp_path / "b", 3, seed=3)
    write_ssv2(tmp_path / "c", 3, seed=3)
    for name in ("labels.json", "train.json", "validation.json", "test.json"):
        assert (tmp_path / "b" / "labels" / name).read_text() == (tmp_path / "c" / "labels" / name).read_text()
    assert len(load(tmp_path / "b" / "labels" / "validation.json")) == 1
    assert len(load(tmp_path / "b" / "labels" / "test.json")) == 1
    other = write_ssv2(tmp_path / "d", 1, seed=4)
    assert one[0].name != other[0].name  # ids depend on the seed


# ------------------------------------------------------------------------------------------------ Ego4D


def test_ego4d_layout_and_metadata(ego4d):
    root, videos, decoded = ego4d
    meta = load(root / "ego4d.json")
    assert {"date", "version", "videos", "clips"} <= set(meta) and meta["version"] == "v2"
    assert len(videos) == N_VIDEOS and all(p.parent == root / "full_scale" for p in videos)
    uids = [v["video_uid"] for v in meta["videos"]]
    assert sorted(uids) == sorted(decoded) == sorted(p.stem for p in videos)
    for entry in meta["videos"]:
        assert uuid.UUID(entry["video_uid"]).version == 4
        vm = entry["video_metadata"]
        assert EGO4D_META_KEYS <= set(vm), set(vm)
        d = decoded[entry["video_uid"]]
        _, h, w, _ = d["frames"].shape
        assert (vm["display_resolution_width"], vm["display_resolution_height"]) == (w, h)
        assert vm["fps"] == 30 and vm["video_codec"] == "h264"
        assert vm["mp4_duration_sec"] == pytest.approx(d["duration"], abs=1e-3)
        assert entry["duration_sec"] == pytest.approx(vm["num_frames"] / vm["fps"], abs=1e-3)
    assert set(load(root / "annotations" / "narration.json")) == set(uids)
    assert not [p for p in root.rglob(".*")]


def test_ego4d_mp4_streams(ego4d):
    _, _, decoded = ego4d
    for uid, d in decoded.items():
        assert d["codec"] == "h264" and d["pix_fmt"] == "yuv420p", uid
        assert d["rate"] == pytest.approx(30, abs=0.01), uid
        n = len(d["frames"])
        assert 6 * 30 <= n <= 10 * 30, (uid, n)
        assert n == round(d["duration"] * 30), (uid, n, d["duration"])


def test_ego4d_narrations_inside_videos(ego4d):
    root, _, decoded = ego4d
    narration = load(root / "annotations" / "narration.json")
    for uid, d in decoded.items():
        n = len(d["frames"])
        assert narration[uid]["status"] == "complete"
        for pass_name in ("narration_pass_1", "narration_pass_2"):
            block = narration[uid][pass_name]
            items = block["narrations"]
            assert 3 <= len(items) <= 5, (uid, pass_name)
            times = [x["timestamp_sec"] for x in items]
            assert times == sorted(times)
            for x in items:
                assert 0.0 <= x["timestamp_sec"] < n / 30, (uid, x)
                assert 0 <= x["timestamp_frame"] < n and x["timestamp_frame"] == round(x["timestamp_sec"] * 30)
                assert x["narration_text"].startswith(("#C", "#O")), x
                assert x["annotation_uid"]
            for s in block["summaries"]:
                assert s["summary_text"].startswith("#Summary")
                assert 0.0 <= s["start_sec"] < s["end_sec"] < n / 30


def test_ego4d_exactly_one_video_overstates_num_frames(ego4d):
    root, _, decoded = ego4d
    meta = load(root / "ego4d.json")
    diffs = [v["video_metadata"]["num_frames"] - len(decoded[v["video_uid"]]["frames"]) for v in meta["videos"]]
    wrong = [x for x in diffs if x != 0]
    assert len(wrong) == 1, diffs
    assert 0 < wrong[0] <= 5, diffs  # larger than the real stream, by a few frames


def test_ego4d_windows_differ_and_single_video_is_honest(ego4d, tmp_path):
    _, _, decoded = ego4d
    means = [d["frames"].astype(np.float32).mean(axis=0) for d in decoded.values()]
    assert means[0].shape != means[1].shape or np.abs(means[0] - means[1]).mean() > 0.5

    # With a single video there is nothing to disagree with, so its metadata is exact; uids follow the seed.
    (path,) = write_ego4d(tmp_path, 1, seed=5, version="v1")
    meta = load(tmp_path / "v1" / "ego4d.json")
    assert meta["version"] == "v1" and meta["videos"][0]["video_uid"] == path.stem
    assert meta["videos"][0]["video_metadata"]["num_frames"] == len(decode(path)["frames"])
    assert write_ego4d(tmp_path / "again", 1, seed=5, version="v1")[0].name == path.name
