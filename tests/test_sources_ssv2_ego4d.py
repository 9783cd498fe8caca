"""SSv2 (L1) and Ego4D (L2) ingest over real footage in the released layouts: what a user sees in the catalog.

The trees are written once per session by the project's own generators (8 SSv2 clips, 3 Ego4D videos, one of
which claims more frames in ego4d.json than its stream holds, with narrations and FHO state changes); each test
damages a private copy. Expected values come from the label and annotation files and from decoding the videos with
PyAV here, never from the adapters.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from catalog import Catalog
from pipelines.config import config_from_dict
from pipelines.ingest import ingest
from pipelines.runners import LocalRunner
from samples.real_clips import SSV2_FPS, SSV2_HEIGHT, write_ego4d, write_ssv2
from samples.real_footage import VP9_OPTIONS, encode_video, resize_to_height
from sources import SOURCES, SourceError
from sources import ego4d as ego4d_module
from sources import ego4d_video
from sources.ego4d import Ego4DSource, clean_narration
from sources.ssv2 import SSv2Source

N_CLIPS, N_VIDEOS = 8, 3
SPLIT_FILES = {"train.json": "train", "validation.json": "val", "test.json": "test"}


# ------------------------------------------------------------------------------------------------ helpers


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def load(path: Path):
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def real_trees(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("real")
    write_ssv2(root / "ssv2", N_CLIPS, seed=0)
    write_ego4d(root / "ego4d", N_VIDEOS, seed=0)
    return root


@pytest.fixture
def trees(tmp_path, real_trees, monkeypatch) -> Path:
    """A private copy of both trees, and both adapters registered for this test only."""
    shutil.copytree(real_trees, tmp_path / "samples")
    monkeypatch.setitem(SOURCES, "ssv2", SSv2Source)
    monkeypatch.setitem(SOURCES, "ego4d", Ego4DSource)
    ego4d_module.clear_video_cache()  # each test starts like a fresh worker
    return tmp_path


@pytest.fixture(scope="session")
def ego_truth(real_trees) -> dict:
    """Per video, from the files themselves: decoded frame count, the fps and what ego4d.json claims."""
    base = real_trees / "ego4d" / "v2"
    truth = {}
    for v in load(base / "ego4d.json")["videos"]:
        path = base / "full_scale" / f"{v['video_uid']}.mp4"
        with av.open(str(path)) as c:
            fps = float(c.streams.video[0].average_rate)
        truth[v["video_uid"]] = {"frames": decoded_frames(path), "fps": fps, "claimed": v["video_metadata"]["num_frames"]}
    return truth


def run(workdir: Path, *sources: dict) -> tuple:
    cfg = config_from_dict({"workdir": str(workdir), "runner": {"engine": "local"}, "sources": list(sources)})
    with Catalog(cfg.catalog_path) as cat:
        report = ingest(cfg, cat, LocalRunner(), progress=False)
        items = cat.items().to_pylist()
        state = {r["item_id"]: r for r in cat.sql("SELECT * FROM item_stages").to_pylist()}
        status = cat.sql(f"SELECT status FROM runs WHERE run_id = '{report.run_id}'").column("status")[0].as_py()
    return report, items, state, status


def ssv2(workdir: Path, **options) -> dict:
    return {"kind": "ssv2", "root": str(workdir / "samples" / "ssv2"), "options": options}


def ego(workdir: Path, **options) -> dict:
    return {"kind": "ego4d", "root": str(workdir / "samples" / "ego4d"), "options": options}


def fho_actions(base: Path) -> dict[str, list[dict]]:
    """Per video, the accepted FHO state changes (critical frames present, not rejected, valid)."""
    out: dict[str, list[dict]] = {}
    for v in load(base / "annotations" / "fho_main.json")["videos"]:
        for interval in v["annotated_intervals"]:
            for a in interval["narrated_actions"]:
                if a["critical_frames"] and not a["is_rejected"] and a["is_valid_action"]:
                    out.setdefault(v["video_uid"], []).append(a)
    return out


def pass_narrations(base: Path, p: int = 1) -> dict[str, list[dict]]:
    data = load(base / "annotations" / "narration.json")
    return {uid: v[f"narration_pass_{p}"]["narrations"] for uid, v in data.items()}


# ------------------------------------------------------------------------------------------------ SSv2


def test_ssv2_items_follow_the_official_label_files_and_probed_streams(trees):
    report, items, state, status = run(trees, ssv2(trees))
    labels = trees / "samples" / "ssv2" / "labels"
    expected = {str(e["id"]): (SPLIT_FILES[f], e) for f in SPLIT_FILES for e in load(labels / f)}
    assert status == "ok" and report.stage.counts["done"] == N_CLIPS
    assert Counter(it["split"] for it in items) == Counter(s for s, _ in expected.values())
    assert {it["native_id"] for it in items} == set(expected)
    for it in items:
        split, entry = expected[it["native_id"]]
        assert it["split"] == split and it["tier"] == 1 and it["group_id"] == it["item_id"]
        assert it["embodiment"] == "human" and not it["has_actions"] and it["action_dim"] == 0
        assert it["fps"] == pytest.approx(SSV2_FPS) and it["height"] == SSV2_HEIGHT
        webm = Path(it["media_uris"][0])
        assert webm.name == f"{it['native_id']}.webm"
        assert it["frame_count"] == decoded_frames(webm)
        assert it["duration_s"] == pytest.approx(it["frame_count"] / SSV2_FPS, rel=1e-5)
        extras = json.loads(it["extras"])
        if split == "test":  # test.json releases ids only
            assert it["language"] == [] and extras["template"] is None
        else:
            assert it["language"] == [entry["label"]]
            assert extras["template"] == entry["template"] and extras["placeholders"] == entry["placeholders"]
    # widths vary with the source footage: probed, not assumed
    assert len({it["width"] for it in items}) > 1


def test_ssv2_without_labels_is_a_readable_source_error_and_other_sources_still_ingest(trees):
    shutil.rmtree(trees / "samples" / "ssv2" / "labels")
    report, items, _, status = run(trees, ssv2(trees), ego(trees))
    (label, error), = report.source_errors.items()
    assert label.startswith("ssv2:") and "labels folder" in error and "missing" in error
    assert status == "ok" and items and {it["source"] for it in items} == {"ego4d"}


# ------------------------------------------------------------------------------------------------ Ego4D


def test_ego4d_clips_are_narration_windows_inside_the_real_stream(trees, ego_truth):
    report, items, state, status = run(trees, ego(trees))
    base = trees / "samples" / "ego4d" / "v2"
    narrations = pass_narrations(base)
    assert status == "ok" and len(items) == sum(len(n) for n in narrations.values())
    assert report.stage.counts == Counter({"done": len(items)})
    by_video: dict[str, list[dict]] = {}
    for it in items:
        by_video.setdefault(it["group_id"], []).append(it)
        uid = it["native_id"].split("/")[0]
        truth = ego_truth[uid]
        extras = json.loads(it["extras"])
        t = extras["narration_time_s"]
        assert it["tier"] == 2 and it["group_id"] == f"ego4d/{uid}" and it["embodiment"] == "human"
        assert it["media_uris"] == [str(base / "full_scale" / f"{uid}.mp4")]
        assert it["fps"] == pytest.approx(truth["fps"])
        # the window lies inside the real stream, holds the narration moment and is at most before + after long
        stream_end = truth["frames"] / truth["fps"]
        assert 0 <= it["start_s"] <= t <= it["start_s"] + it["duration_s"] <= stream_end + 1e-6
        assert it["start_s"] >= t - 1.0 - 1e-6 and it["duration_s"] <= 4.0 + 1e-6
        assert it["frame_count"] == round(it["duration_s"] * it["fps"]) >= 2
        assert round(it["start_s"] * it["fps"]) + it["frame_count"] <= truth["frames"]
    # every clip of one video is in one split, and every narrated video is there
    assert set(by_video) == {f"ego4d/{uid}" for uid in narrations}
    assert all(len({it["split"] for it in clips}) == 1 for clips in by_video.values())


def test_ego4d_records_the_metadata_vs_stream_frame_mismatch(trees, ego_truth):
    _, items, _, _ = run(trees, ego(trees))
    liars = {uid for uid, t in ego_truth.items() if t["claimed"] != t["frames"]}
    assert len(liars) == 1  # the generator's deliberate defect
    for it in items:
        uid = it["native_id"].split("/")[0]
        extras = json.loads(it["extras"])
        if uid in liars:
            assert extras["metadata_frames"] == ego_truth[uid]["claimed"]
            assert extras["stream_frames"] == ego_truth[uid]["frames"]
        else:
            assert "metadata_frames" not in extras and "stream_frames" not in extras


def test_ego4d_narration_text_is_rewritten_as_an_instruction(trees):
    _, items, _, _ = run(trees, ego(trees))
    raw = {n["annotation_uid"]: n["narration_text"]
           for ns in pass_narrations(trees / "samples" / "ego4d" / "v2").values() for n in ns}
    for it in items:
        (text,) = it["language"]
        source = raw[it["native_id"].split("/")[1]]
        assert "#" not in text and text[0].isupper()
        if source.startswith("#C C "):
            assert text == "The person " + source[len("#C C "):]
    assert clean_narration("#C C picks a bag #unsure ") == "The person picks a bag"
    assert clean_narration("#O talks to C") == "Someone talks to the person"
    assert clean_narration("#O a man rides a bicycle past C") == "A man rides a bicycle past the person"


def test_ego4d_second_narration_pass_and_window_options(trees):
    base = trees / "samples" / "ego4d" / "v2"
    _, items, _, _ = run(trees, ego(trees, narration_passes=[1, 2], before_s=0.5, after_s=0.5))
    expected = sum(len(n) for p in (1, 2) for n in pass_narrations(base, p).values())
    assert len(items) == expected
    assert {json.loads(it["extras"])["narration_pass"] for it in items} == {1, 2}
    assert max(it["duration_s"] for it in items) == pytest.approx(1.0, abs=1 / 30 + 1e-6)


def test_ego4d_probes_each_video_once_per_worker(trees, monkeypatch):
    calls = Counter()
    real_probe = ego4d_video.probe_video

    def counting_probe(path, *args, **kwargs):
        calls[Path(path).name] += 1
        return real_probe(path, *args, **kwargs)

    monkeypatch.setattr(ego4d_video, "probe_video", counting_probe)
    _, items, _, _ = run(trees, ego(trees))
    assert len(items) > N_VIDEOS
    assert calls == Counter({f"{uid}.mp4": 1 for uid in pass_narrations(trees / "samples" / "ego4d" / "v2")})


def test_ego4d_clip_files_are_grouped_with_their_parent_video(trees, ego_truth):
    base = trees / "samples" / "ego4d" / "v2"
    uid = sorted(ego_truth)[0]
    known, orphan = str(uuid.UUID(int=1)), str(uuid.UUID(int=2))
    (base / "clips").mkdir()
    for clip in (known, orphan):
        shutil.copy(base / "full_scale" / f"{uid}.mp4", base / "clips" / f"{clip}.mp4")
    meta = load(base / "ego4d.json")
    meta["clips"] = [{"clip_uid": known, "video_uid": uid, "video_start_sec": 0.0, "video_end_sec": 100.0}]
    (base / "ego4d.json").write_text(json.dumps(meta))
    _, items, _, _ = run(trees, ego(trees, use_clips=True))
    by_clip = {it["native_id"]: it for it in items}
    assert set(by_clip) == {f"clips/{known}", f"clips/{orphan}"}
    assert by_clip[f"clips/{known}"]["group_id"] == f"ego4d/{uid}"
    assert by_clip[f"clips/{orphan}"]["group_id"] == f"ego4d/clips/{orphan}"
    assert all(it["frame_count"] == ego_truth[uid]["frames"] and it["start_s"] == 0 for it in items)
    assert len(by_clip[f"clips/{known}"]["language"]) == len(pass_narrations(base)[uid])
    assert by_clip[f"clips/{orphan}"]["language"] == []


def test_ego4d_picks_the_newest_version_and_needs_narrations(trees):
    root = trees / "samples" / "ego4d"
    shutil.copytree(root / "v2", root / "v1", ignore=shutil.ignore_patterns("*.mp4"))
    assert Ego4DSource(root).version == "v2"
    assert Ego4DSource(root, version="v1").version == "v1"
    (root / "v1" / "annotations" / "narration.json").unlink()
    with pytest.raises(SourceError, match="narration.json is missing"):
        Ego4DSource(root, version="v1")


# ------------------------------------------------------------------------------------------------ Ego4D FHO


def test_ego4d_fho_clips_are_pre_to_post_state_change_windows(trees, ego_truth):
    report, items, _, status = run(trees, ego(trees, clips="fho"))
    base = trees / "samples" / "ego4d" / "v2"
    actions = fho_actions(base)
    everything = [a for v in load(base / "annotations" / "fho_main.json")["videos"]
                  for i in v["annotated_intervals"] for a in i["narrated_actions"]]
    # the sample also holds narrated actions without critical frames and a rejected one: neither is an item
    assert any(a["critical_frames"] is None for a in everything) and any(a["is_rejected"] for a in everything)
    expected = {f"{uid}/fho/{a['uid']}": a for uid, acts in actions.items() for a in acts}
    assert status == "ok" and report.stage.counts == Counter({"done": len(expected)})
    assert {it["native_id"] for it in items} == set(expected) and len(items) == 2 * N_VIDEOS
    for it in items:
        a = expected[it["native_id"]]
        uid = it["native_id"].split("/")[0]
        fps = ego_truth[uid]["fps"]
        pre, post = a["critical_frames"]["pre_frame"], a["critical_frames"]["post_frame"]
        # from pre_frame through post_frame, both included, at the video's 30 fps
        assert it["start_s"] == pytest.approx(pre / fps)
        assert it["frame_count"] == post - pre + 1
        assert it["duration_s"] == pytest.approx((post - pre + 1) / fps)
        assert round(it["start_s"] * fps) + it["frame_count"] <= ego_truth[uid]["frames"]
        assert it["group_id"] == f"ego4d/{uid}" and it["tier"] == 2 and it["fps"] == pytest.approx(fps)
        assert it["media_uris"] == [str(base / "full_scale" / f"{uid}.mp4")]
        assert it["language"] == [clean_narration(a["narration_text"])]
        text = a["narration_text"]
        if text.startswith("#C C "):
            assert it["language"] == ["The person " + text[len("#C C "):]]
        extras = json.loads(it["extras"])
        assert extras["clips"] == "fho" and extras["window_frames"] == {"pre_frame": pre, "post_frame": post}
        assert extras["structured_verb"] == a["structured_verb"] and extras["start_frame"] == pre
    # every clip of one video shares its split with the others
    splits: dict[str, set] = {}
    for it in items:
        splits.setdefault(it["group_id"], set()).add(it["split"])
    assert all(len(s) == 1 for s in splits.values())


def test_ego4d_fho_padding_window_and_other_critical_frames(trees, ego_truth):
    base = trees / "samples" / "ego4d" / "v2"
    actions = {a["uid"]: a for acts in fho_actions(base).values() for a in acts}
    _, padded, _, _ = run(trees, ego(trees, clips="fho", fho_pad_s=0.5))
    assert len(padded) == len(actions)
    for it in padded:
        a, fps = actions[it["native_id"].rsplit("/", 1)[1]], 30.0
        pre, post = a["critical_frames"]["pre_frame"], a["critical_frames"]["post_frame"]
        last = min(post + 15, ego_truth[it["native_id"].split("/")[0]]["frames"] - 1)  # cut to the real stream
        assert it["start_s"] == pytest.approx(pre / fps - 0.5)  # 15 frames of context on each side
        assert it["frame_count"] == last - (pre - 15) + 1
    # changing the window options redoes the same items with the new windows
    _, fixed, _, _ = run(trees, ego(trees, clips="fho", fho_window_s=1.0, fho_center="pnr_frame"))
    for it in fixed:
        pnr = actions[it["native_id"].rsplit("/", 1)[1]]["critical_frames"]["pnr_frame"]
        assert it["start_s"] == pytest.approx(pnr / 30.0 - 0.5) and it["frame_count"] == 30
    _, early, _, _ = run(trees, ego(trees, clips="fho", fho_interval=["pre_45", "pnr_frame"]))
    for it in early:
        cf = actions[it["native_id"].rsplit("/", 1)[1]]["critical_frames"]
        assert it["start_s"] == pytest.approx(cf["pre_45"] / 30.0)
        assert it["frame_count"] == cf["pnr_frame"] - cf["pre_45"] + 1
    root = trees / "samples" / "ego4d"
    with pytest.raises(SourceError, match="fho_interval"):
        Ego4DSource(root, clips="fho", fho_interval=["post_frame", "pre_frame"])
    with pytest.raises(SourceError, match="clips must be one of"):
        Ego4DSource(root, clips="moments")
    (base / "annotations" / "fho_main.json").unlink()
    with pytest.raises(SourceError, match="fho_main.json is missing"):
        Ego4DSource(root, clips="fho")
    Ego4DSource(root)  # narration clips do not need it


def test_ego4d_fho_actions_are_probed_against_the_real_stream(trees, ego_truth):
    base = trees / "samples" / "ego4d" / "v2"
    liar = next(uid for uid, t in ego_truth.items() if t["claimed"] != t["frames"])
    fho = load(base / "annotations" / "fho_main.json")
    video = next(v for v in fho["videos"] if v["video_uid"] == liar)
    frames = ego_truth[liar]["frames"]
    template = next(a for a in video["annotated_intervals"][0]["narrated_actions"] if a["critical_frames"])
    beyond = dict(template, uid="beyond-end",
                  critical_frames=dict(template["critical_frames"], pre_frame=frames + 1, post_frame=frames + 20))
    no_post = dict(template, uid="no-post", critical_frames=dict(template["critical_frames"], post_frame=None))
    video["annotated_intervals"][0]["narrated_actions"] += [beyond, no_post]
    (base / "annotations" / "fho_main.json").write_text(json.dumps(fho))
    _, items, state, status = run(trees, ego(trees, clips="fho"))
    reasons = {k.rsplit("/", 1)[1]: v["reason"] for k, v in state.items() if v["status"] == "quarantined"}
    assert status == "ok" and set(reasons) == {"beyond-end", "no-post"}
    assert "beyond the real stream end" in reasons["beyond-end"]
    assert f"{frames} frames at 30 fps" in reasons["beyond-end"]
    assert f"ego4d.json claims {ego_truth[liar]['claimed']} frames" in reasons["beyond-end"]
    assert reasons["no-post"].startswith("FHO action no-post: critical frame post_frame is missing")
    assert len(items) == sum(len(a) for a in fho_actions(base).values()) - 2  # the two new ones are not in


# ------------------------------------------------------------------------------------------------ both


def test_missing_and_broken_inputs_are_quarantined_with_reasons_and_rerun_does_no_work(trees, ego_truth):
    ssv2_root, base = trees / "samples" / "ssv2", trees / "samples" / "ego4d" / "v2"
    train = load(ssv2_root / "labels" / "train.json")
    gone_id, garbled_id = train[0]["id"], train[1]["id"]
    (ssv2_root / "20bn-something-something-v2" / f"{gone_id}.webm").unlink()
    (ssv2_root / "20bn-something-something-v2" / f"{garbled_id}.webm").write_bytes(b"\x1a\x45\xdf\xa3 not a webm" * 50)
    # A webm no label file names: kept, hash-split, no instruction. It is 15 fps and 200 px high, unlike the
    # release, so its row shows that fps and size are probed and not assumed.
    unlisted = "999999999"
    with av.open(str(ssv2_root / "20bn-something-something-v2" / f"{train[2]['id']}.webm")) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    encode_video(ssv2_root / "20bn-something-something-v2" / f"{unlisted}.webm", resize_to_height(frames, 200),
                 15, "libvpx-vp9", "webm", VP9_OPTIONS)

    gone_uid, short_uid = sorted(ego_truth)[:2]
    (base / "full_scale" / f"{gone_uid}.mp4").unlink()
    narrations = load(base / "annotations" / "narration.json")
    end = ego_truth[short_uid]["frames"] / ego_truth[short_uid]["fps"]
    narrations[short_uid]["narration_pass_1"]["narrations"].append(
        {"timestamp_sec": end + 1.5, "narration_text": "#C C drops the phone", "annotation_uid": "beyond-end"})
    (base / "annotations" / "narration.json").write_text(json.dumps(narrations))

    # missing_clips / missing_videos: quarantine lists each absent clip (the default is one summary line per
    # source, tests/test_sources_partial_downloads.py)
    sources = (ssv2(trees, missing_clips="quarantine"), ego(trees, missing_videos="quarantine"))
    report, items, state, status = run(trees, *sources)
    assert status == "ok"
    reasons = {k: v["reason"] for k, v in state.items() if v["status"] == "quarantined"}
    assert reasons[f"ssv2/{gone_id}"] == f"missing video file 20bn-something-something-v2/{gone_id}.webm (listed in train.json)"
    assert "unreadable video" in reasons[f"ssv2/{garbled_id}"] or "no frame" in reasons[f"ssv2/{garbled_id}"]
    gone_clips = {f"ego4d/{gone_uid}/{n['annotation_uid']}" for n in narrations[gone_uid]["narration_pass_1"]["narrations"]}
    for clip in gone_clips:
        assert reasons[clip] == f"missing video file v2/full_scale/{gone_uid}.mp4 (listed in ego4d.json)"
    beyond = reasons[f"ego4d/{short_uid}/beyond-end"]
    assert "beyond the real stream end" in beyond and f"{ego_truth[short_uid]['frames']} frames" in beyond
    assert set(reasons) == {f"ssv2/{gone_id}", f"ssv2/{garbled_id}", f"ego4d/{short_uid}/beyond-end"} | gone_clips

    done = {it["item_id"]: it for it in items}
    assert len(done) == N_CLIPS - 2 + 1 + sum(len(n) for n in pass_narrations(base).values()) - len(gone_clips) - 1
    odd = done[f"ssv2/{unlisted}"]
    assert odd["language"] == [] and odd["split"] in ("train", "val", "test")
    assert odd["fps"] == pytest.approx(15) and odd["height"] == 200 and odd["frame_count"] == len(frames)
    assert report.stage.counts == Counter({"done": len(done), "quarantined": len(reasons)})

    report2, items2, _, status2 = run(trees, *sources)
    assert status2 == "ok" and report2.stage.processed == 0 and report2.stage.skipped == len(done) + len(reasons)
    assert items2 == items
