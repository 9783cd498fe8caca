"""The dataset, language and state checks on LeRobot datasets on disk (v2.1 written here the way lerobot 0.3 did,
v3.0 by lerobot's own writer): clean datasets pass every rule, the planted sample defects are named exactly, and
the defects the samples do not plant (zero-byte files, cameras of other lengths or rates, stale stats.json, one
instruction for every episode) are made here."""

import json
import shutil
from fractions import Fraction

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audit.checks import dataset as D
from audit.checks import language as L
from audit.checks import state as S
from audit.config import AuditConfig
from audit.lerobot_tables import read_tables
from samples import defects
from samples.lerobot_ds import HEAD, WRISTS, write_lerobot

RULES = {"timestamps_monotonic": D.monotonic, "timestamp_spacing": D.spacing, "timestamp_drift": D.drift,
         "frame_indices": D.frame_indices, "global_index": D.global_index, "task_index_valid": D.task_indices,
         "info_matches_data": D.info_matches, "orphan_rows": D.orphans, "stale_stats": D.stale_stats,
         "media_files": D.bad_files, "camera_lengths": D.camera_lengths, "camera_rates": D.camera_rates,
         "language_single_instruction": L.single_instruction, "dead_joints": S.dead,
         "action_delay": lambda t, s: S.delays(t, s)[0], "pts_drift": D.pts_drift}


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("lerobot")
    return {v: write_lerobot(root / f"clean_{v}", 5, seed=2, version=v, size=(32, 48), wrists=True)
            for v in ("v2.1", "v3.0")}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = write_lerobot(tmp_path_factory.mktemp("lerobot") / "aloha_demo_v21", 17, seed=1, version="v2.1",
                         size=(32, 48), damage=defects.LEROBOT_ACTION_DEFECTS["aloha_demo_v21"])
    defects.damage_lerobot_files(root, defects.LEROBOT_FILE_DEFECTS["aloha_demo_v21"])
    return read_tables(root)


def copy(root, tmp_path):
    return shutil.copytree(root, tmp_path / root.name)


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
@pytest.mark.parametrize("name", sorted(RULES))
def test_clean_datasets_pass_every_rule(clean, version, name):
    t = read_tables(clean[version])
    assert t.problems == [] and len(t.episodes) == 5 and t.action.shape[1] == 14
    assert RULES[name](t, AuditConfig()) == {}


@pytest.mark.parametrize("name", sorted(RULES))
def test_each_planted_defect_is_named_and_nothing_else(planted, name):
    expected = {k for k, d in defects.DEFECTS.items() if name in d.checks and k.startswith("lerobot/aloha_demo_v21")}
    assert set(RULES[name](planted, AuditConfig())) == expected


def test_the_reasons_say_what_is_wrong(planted):
    s, ep = AuditConfig(), "lerobot/aloha_demo_v21/episode_0000"
    assert "does not increase" in D.monotonic(planted, s)[ep + "04"]
    assert "+1.0 frames" in D.drift(planted, s)[ep + "05"]
    assert "cam_high: 4 of 26 frames sit off their timestamps" in D.pts_drift(planted, s)[ep + "16"]
    assert "(+13.3 ms)" in D.pts_drift(planted, s)[ep + "16"]
    assert "git-lfs pointer" in D.bad_files(planted, s)[ep + "07"]
    assert "action max[0] is" in D.stale_stats(planted, s)[ep + "08"]
    assert "task_index [99]" in D.task_indices(planted, s)[ep + "09"]
    assert "left_arm_2" in S.dead(planted, s)[ep + "13"]
    failures, stats = S.delays(planted, s)
    assert "by 6 steps" in failures[ep + "12"] and stats["median_delay_steps"] == 1
    assert "belong to episodes the metadata does not list: [99]" in D.orphans(planted, s)["lerobot/aloha_demo_v21"]
    assert "total_videos 19" in D.info_matches(planted, s)["lerobot/aloha_demo_v21"]


def test_zero_byte_files_are_named_with_their_episode(clean, tmp_path):
    root = copy(clean["v2.1"], tmp_path)
    (root / "videos/chunk-000" / WRISTS[0] / "episode_000003.mp4").write_bytes(b"")
    (root / "data/chunk-000/episode_000001.parquet").write_bytes(b"")
    t = read_tables(root)
    found = D.bad_files(t, AuditConfig())
    assert sorted(found) == [t.item_id(1), t.item_id(3)]
    assert "zero bytes" in found[t.item_id(3)] and WRISTS[0] in found[t.item_id(3)]
    assert any("not a parquet file" in p for p in t.problems)


def _reencode(path, keep: int, rate: int) -> None:
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)][:keep]
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(rate))
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, rate)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def test_cameras_of_other_lengths_or_rates_within_an_episode(clean, tmp_path):
    root = copy(clean["v2.1"], tmp_path)
    _reencode(root / "videos/chunk-000" / WRISTS[1] / "episode_000002.mp4", keep=10, rate=30)
    _reencode(root / "videos/chunk-000" / WRISTS[0] / "episode_000004.mp4", keep=10 ** 6, rate=15)
    t = read_tables(root)
    lengths = D.camera_lengths(t, AuditConfig())
    assert list(lengths) == [t.item_id(2)] and "cam_right_wrist 10" in lengths[t.item_id(2)]
    rates = D.camera_rates(t, AuditConfig())
    assert list(rates) == [t.item_id(4)] and "plays at 15 fps" in rates[t.item_id(4)]
    info = json.loads((root / "meta/info.json").read_text())
    info["features"][HEAD]["info"]["video.fps"] = 25.0
    (root / "meta/info.json").write_text(json.dumps(info))
    assert "video.fps 25" in D.camera_rates(read_tables(root), AuditConfig())[t.name]


def test_v3_windows_of_other_lengths(clean, tmp_path):
    root = copy(clean["v3.0"], tmp_path)
    f = next((root / "meta/episodes").glob("chunk-*/file-*.parquet"))
    table = pq.read_table(f)
    col = f"videos/{WRISTS[0]}/to_timestamp"
    to = table.column(col).to_numpy().copy()
    to[1] -= 3 / 30
    pq.write_table(table.set_column(table.column_names.index(col), col, pa.array(to)), f)
    t = read_tables(root)
    assert list(D.camera_lengths(t, AuditConfig())) == [t.item_id(1)]


def test_a_stale_stats_json_is_a_dataset_finding(tmp_path):
    root = write_lerobot(tmp_path / "v20", 3, seed=0, version="v2.0", size=(32, 48))
    t = read_tables(root)
    assert D.stale_stats(t, AuditConfig()) == {}
    stats = json.loads((root / "meta/stats.json").read_text())
    stats["observation.state"]["mean"][5] += 0.2
    (root / "meta/stats.json").write_text(json.dumps(stats))
    found = D.stale_stats(read_tables(root), AuditConfig())
    assert list(found) == [t.name] and "observation.state mean[5]" in found[t.name]


def test_one_instruction_for_every_episode_of_a_many_task_dataset(tmp_path):
    root = write_lerobot(tmp_path / "many", 10, seed=0, version="v2.1", size=(32, 48))
    t = read_tables(root)
    assert len(t.tasks) == 3 and L.single_instruction(t, AuditConfig()) == {}
    for f in (root / "data").rglob("*.parquet"):
        table = pq.read_table(f)
        i = table.column_names.index("task_index")
        pq.write_table(table.set_column(i, "task_index", pa.array(np.zeros(table.num_rows, np.int64))), f)
    found = L.single_instruction(read_tables(root), AuditConfig())
    assert list(found) == [t.name] and "all 10 episodes carry the instruction" in found[t.name]
    assert L.single_instruction(read_tables(root), AuditConfig(min_episodes_for_language=11)) == {}


def test_language_rules_on_catalog_rows():
    rows = [{"item_id": f"lerobot/ds/episode_{i:06d}", "language": [text], "has_actions": True}
            for i, text in enumerate(["fold the towel", "  ", "pick up [something]", "place it at <top center>",
                                      "stack {A} on {B}", "n/a", "open the drawer"])]
    rows.append({"item_id": "lerobot/ds/episode_000007", "language": [], "has_actions": True})
    rows += [{"item_id": f"ssv2/{i}", "language": [] if i == 0 else ["holding a cup"], "has_actions": False}
             for i in range(3)]  # a clip without a label (SSv2's test set) is not judged
    assert sorted(L.empty(rows)) == ["lerobot/ds/episode_000001", "lerobot/ds/episode_000007"]
    assert sorted(L.template(rows)) == [f"lerobot/ds/episode_00000{i}" for i in (2, 3, 4, 5)]
    assert "'<top center>'" in L.template(rows)["lerobot/ds/episode_000003"]
