"""Ingest over real files in their official layouts: catalog rows, manifests, splits, quarantine, reruns."""

import json
import shutil

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from catalog import Catalog
from manifests import ITEMS, read_manifest
from pipelines.config import load_config
from pipelines.ingest import ingest
from pipelines.runners import make_runner
from samples import defects
from samples.sim_task_agnostic import DEFAULT_CAMERAS

MAIN_MP4 = f"rgb_{DEFAULT_CAMERAS[0]}.mp4"  # the task-agnostic main view


def run_ingest(workdir, engine="local", **overrides):
    cfg = load_config(None, workdir=str(workdir), **{"runner.engine": engine, **overrides})
    runner = make_runner(engine)
    with Catalog(cfg.catalog_path) as cat:
        report = ingest(cfg, cat, runner, progress=False)
        items = cat.items().to_pylist()
        state = cat.sql("SELECT * FROM item_stages ORDER BY item_id").to_pylist()
    return cfg, report, items, state


def test_ingest_fills_catalog_and_manifest_from_both_layouts(workdir):
    cfg, report, items, state = run_ingest(workdir)
    by_source = {}
    for it in items:
        by_source.setdefault(it["source"], []).append(it)
    assert len(by_source["robotwin"]) == 2 and len(by_source["task_agnostic"]) == 3
    rt = by_source["robotwin"][0]
    assert rt["tier"] == 3 and rt["item_id"].startswith("robotwin/transfer_cube/")
    assert rt["action_dim"] == 12 and len(rt["action_names"]) == 12 and rt["has_actions"]
    assert rt["fps"] == pytest.approx(50 / 3, rel=1e-3)  # the real control rate, not the mp4's 30 fps
    assert rt["language"] and all(isinstance(s, str) for s in rt["language"])
    assert rt["cameras"][0] == "head_camera" and (rt["height"], rt["width"]) == (240, 320)
    ta = by_source["task_agnostic"][0]
    assert ta["tier"] == 4 and ta["frame_count"] == 20 and ta["action_dim"] == 14 and ta["embodiment"]
    assert ta["duration_s"] == pytest.approx(20 / ta["fps"])
    assert all(len(it["input_blake2b"]) == 32 and it["split"] in ("train", "val", "test") for it in items)
    assert {s["status"] for s in state} == {"done"}
    manifest = read_manifest(cfg.manifests_dir / "items.parquet", ITEMS)
    assert sorted(manifest.column("item_id").to_pylist()) == sorted(it["item_id"] for it in items)
    run_manifest = cfg.manifests_dir / "runs" / report.run_id / "items.parquet"
    assert pq.read_table(run_manifest).num_rows == 5


def test_no_group_straddles_splits_in_the_catalog(workdir):
    from samples.real_clips import write_ego4d, write_ssv2

    write_ssv2(workdir / "samples" / "ssv2", 6, seed=3)
    write_ego4d(workdir / "samples" / "ego4d", 3, seed=3)
    cfg, _, items, _ = run_ingest(workdir)
    assert {it["source"] for it in items} == {"ssv2", "ego4d", "robotwin", "task_agnostic"}
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        straddling = cat.sql("SELECT group_id FROM items GROUP BY 1 HAVING count(DISTINCT split) > 1").num_rows
        ego_groups = cat.sql("SELECT count(DISTINCT group_id) AS g, count(*) AS n FROM items WHERE source = 'ego4d'").to_pylist()[0]
    assert straddling == 0
    assert ego_groups["n"] > ego_groups["g"] == 3  # several narration clips per video, one group each


def test_changing_a_source_setting_redoes_its_items(workdir):
    run_ingest(workdir)
    cfg, report, items, _ = run_ingest(workdir, **{"splits.salt": "another"})
    assert report.stage.processed == 5  # the split rule changed: every row is rewritten


def test_item_that_goes_bad_leaves_the_items_table(workdir):
    run_ingest(workdir)
    ep = workdir / "samples" / "task_agnostic" / "aloha_random" / "episodes" / "episode_000000"
    defects.truncate_file(ep / MAIN_MP4, 0.5)
    _, _, items, state = run_ingest(workdir)
    assert not any(i["item_id"].endswith("episode_000000") for i in items) and len(items) == 4


def test_second_ingest_does_no_work_and_adds_no_rows(workdir):
    run_ingest(workdir)
    cfg, report, items, state = run_ingest(workdir)
    assert report.stage.processed == 0 and report.stage.skipped == 5
    assert len(items) == 5 and len(state) == 5
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        runs = cat.sql("SELECT status, counts FROM runs ORDER BY started_at").to_pylist()
    assert [r["status"] for r in runs] == ["ok", "ok"]
    assert json.loads(runs[1]["counts"])["skipped"] == 5


def test_bad_items_are_quarantined_with_reasons_and_the_run_completes(workdir):
    ta_root = workdir / "samples" / "task_agnostic" / "aloha_random"
    defects.add_task_agnostic_defects(ta_root)
    defects.add_robotwin_defects(workdir / "samples" / "robotwin")
    cfg, report, items, state = run_ingest(workdir)
    reasons = {s["item_id"].rsplit("/", 1)[-1]: s["reason"] for s in state if s["status"] == "quarantined"}
    assert set(reasons) == {"episode_900001", "episode_900002", "episode900"}
    assert "truncated" in reasons["episode_900001"] or "unreadable video" in reasons["episode_900001"]
    assert "non-finite values" in reasons["episode_900002"] and "actions.npy" in reasons["episode_900002"]
    assert reasons["episode900"] == "missing key joint_action/vector"
    assert len(items) == 5  # every good item still ingested; bad ones are not in the items table
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        q = cat.sql("SELECT input_uri FROM item_stages WHERE status = 'quarantined' AND item_id LIKE '%episode900'")
        assert q.column("input_uri")[0].as_py().endswith("episode900.hdf5")  # the reason is queryable with its input


def test_truncated_video_is_quarantined_not_fatal(workdir):
    ep = workdir / "samples" / "task_agnostic" / "aloha_random" / "episodes" / "episode_000001"
    defects.truncate_file(ep / MAIN_MP4, 0.6)
    _, report, items, state = run_ingest(workdir)
    bad = [s for s in state if s["item_id"].endswith("episode_000001")][0]
    assert bad["status"] == "quarantined" and MAIN_MP4 in bad["reason"]
    assert report.stage.counts["done"] == 4


def test_hdf5_with_wrong_layout_names_the_keys(workdir):
    f = sorted((workdir / "samples" / "robotwin").glob("*/*/data/episode1.hdf5"))[0]
    with h5py.File(f, "r+") as h5:
        h5.move("observation", "obs")
    _, _, _, state = run_ingest(workdir)
    reason = [s for s in state if s["item_id"].endswith("episode1")][0]["reason"]
    assert "not a RoboTwin 2.0 episode" in reason and "'obs'" in reason and "expected observation/" in reason
    with h5py.File(f, "r+") as h5:
        h5.move("obs", "observation")
        del h5["observation/head_camera/rgb"]
    _, _, _, state = run_ingest(workdir)
    reason = [s for s in state if s["item_id"].endswith("episode1")][0]["reason"]
    assert reason == "missing key observation/head_camera/rgb"


def test_fixed_input_is_redone_on_rerun(workdir):
    ep = workdir / "samples" / "task_agnostic" / "aloha_random" / "episodes" / "episode_000002"
    good = np.load(ep / "actions.npy")
    bad = good.copy()
    bad[3, 2] = np.inf
    np.save(ep / "actions.npy", bad)
    _, _, _, state = run_ingest(workdir)
    assert [s["status"] for s in state if s["item_id"].endswith("episode_000002")] == ["quarantined"]
    np.save(ep / "actions.npy", good)  # someone repairs the file: its fingerprint changes
    _, report, items, state = run_ingest(workdir)
    assert report.stage.processed == 1
    assert [s["status"] for s in state if s["item_id"].endswith("episode_000002")] == ["done"]
    assert len(items) == 5


def test_missing_source_root_is_reported_and_other_sources_still_ingest(workdir):
    shutil.rmtree(workdir / "samples" / "robotwin")
    _, report, items, _ = run_ingest(workdir)
    assert any("robotwin" in k for k in report.source_errors)
    assert len(items) == 3


@pytest.mark.parametrize("engine", ["ray", "beam"])
def test_ray_beam_and_local_ingest_agree(workdir, engine, request, tmp_path_factory):
    if engine == "ray":
        request.getfixturevalue("ray_session")
    second = tmp_path_factory.mktemp("second")
    shutil.copytree(workdir / "samples", second / "samples")
    _, _, local_items, local_state = run_ingest(workdir, "local")
    _, report, items, state = run_ingest(second, engine)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("input_uri", "media_uris")} for r in rows]
    assert len(items) > 0 and strip(local_items) == strip(items)
    status = lambda rows: sorted((r["item_id"], r["status"], r["reason"]) for r in rows)
    assert status(local_state) == status(state)  # the same quarantines, with the same reasons
    files = []
    for root in (workdir, second):  # the same action files, byte for byte
        with Catalog(root / "catalog.duckdb", read_only=True) as cat:
            files.append(sorted((r["item_id"], r["kind"], r["blake2b"]) for r in cat.done("ingest").to_pylist()))
    assert len(files[0]) == 5 and files[0] == files[1]


def _ssv2_labels_only(root, ids):
    """An SSv2 release whose label files list `ids` and whose video folder is empty (a partial download)."""
    (root / "20bn-something-something-v2").mkdir(parents=True)
    (root / "labels").mkdir()
    entries = [{"id": i, "label": f"pushing cup {i}", "template": "Pushing [something]", "placeholders": ["cup"]}
               for i in ids]
    (root / "labels" / "train.json").write_text(json.dumps(entries, indent=1))


def test_discovery_streams_and_quarantines_ids_a_source_before_already_gave(tmp_path):
    """Discovery is a stream, deduplicated across chunks: the same release configured twice gives every id
    once, and the second copy's items are quarantined as duplicates naming the first entry."""
    from pipelines.config import config_from_dict
    from pipelines.ingest import discover_tasks

    ids = [str(i) for i in range(100, 107)]
    for name in ("a", "b"):
        _ssv2_labels_only(tmp_path / name, ids)
    opts = {"missing_clips": "quarantine"}
    cfg = config_from_dict({"workdir": str(tmp_path), "runner": {"engine": "local"}, "sources": [
        {"kind": "ssv2", "root": "a", "options": opts}, {"kind": "ssv2", "root": "b", "options": opts}]})
    stream = discover_tasks(cfg, chunk=3)
    first = next(stream)  # nothing is listed up front
    assert first["item_id"] == "ssv2/100" and "duplicate_of" not in first
    tasks = [first, *stream]
    dups = [t for t in tasks if "duplicate_of" in t]
    assert len(tasks) == 14 and [t["item_id"] for t in dups][:2] == ["ssv2/100#dup0", "ssv2/101#dup1"]
    assert len(dups) == 7 and all(t["duplicate_of"] == "an item of ssv2:a discovered before it" for t in dups)
    with Catalog(cfg.catalog_path) as cat:
        report = ingest(cfg, cat, make_runner("local"), progress=False)
        reasons = [r["reason"] for r in cat.quarantine().to_pylist()]
    assert report.stage.as_dict() == {"total": 14, "skipped": 0, "done": 0, "quarantined": 14, "failed": 0}
    assert sum(r.startswith("duplicate item id: ") for r in reasons) == 7
    assert sum(r.startswith("missing video file") for r in reasons) == 7


def test_label_files_stream_record_by_record_whatever_the_read_size(tmp_path):
    from sources import SourceError
    from sources.ssv2 import iter_json_array

    path = tmp_path / "train.json"
    records = [{"id": str(i), "label": "pushing \"cup\" ]", "template": "t", "placeholders": ["a", "b"]}
               for i in range(50)]
    path.write_text(json.dumps(records, indent=2) + "\n")
    for chunk in (1, 7, 1 << 20):
        assert list(iter_json_array(path, chunk=chunk)) == records
    path.write_text("[1, 22, 333]")
    assert list(iter_json_array(path, chunk=2)) == [1, 22, 333]  # a number cut by a read is read on
    for bad, says in (('{"id": "1"}', "must be a list"), ("[1, 2", "not valid JSON"), ("[1] x", "not valid JSON")):
        path.write_text(bad)
        with pytest.raises(SourceError, match=says):
            list(iter_json_array(path, chunk=3))


def test_labelled_items_get_one_action_file_that_later_stages_read(workdir):
    import duckdb

    from common.errors import BadInput
    from sources import SOURCES, item_actions

    cfg, _, items, _ = run_ingest(workdir)
    with Catalog(cfg.catalog_path) as cat:
        files = {r["item_id"]: r["path"] for r in cat.done("ingest").to_pylist() if r["kind"] == "actions"}
    assert sorted(files) == sorted(it["item_id"] for it in items if it["has_actions"]) and len(files) == 5
    for it in items:  # a table any Parquet reader opens: one row per native frame, the action as a fixed-size list
        frames, dims = duckdb.sql(f"SELECT count(*), max(len(action)) FROM '{files[it['item_id']]}'").fetchall()[0]
        assert (frames, dims) == (it["frame_count"], it["action_dim"])
        np.testing.assert_array_equal(item_actions({**it, "actions_path": files[it["item_id"]]}),
                                      SOURCES[it["source"]].load_actions(it))

    ta = next(it for it in items if it["source"] == "task_agnostic")
    want = SOURCES["task_agnostic"].load_actions(ta)
    np.save(workdir / "actions_backup.npy", want)
    source_file = next(p for p in (workdir / "samples").rglob("actions.npy") if p.parent.name in ta["input_uri"])
    source_file.write_bytes(b"not numpy")  # later stages read the file ingest wrote, not the source again
    np.testing.assert_array_equal(item_actions({**ta, "actions_path": files[ta["item_id"]]}), want)
    with pytest.raises(BadInput):
        SOURCES["task_agnostic"].load_actions(ta)
    other = next(i for i in files if i != ta["item_id"])  # a file read for the wrong item is refused, not used
    with pytest.raises(BadInput, match="holds the actions of"):
        item_actions({**ta, "actions_path": files[other]})


def test_a_deleted_action_file_is_rewritten_by_the_next_ingest(workdir):
    from common.errors import BadInput
    from sources import item_actions

    cfg, _, items, _ = run_ingest(workdir)
    with Catalog(cfg.catalog_path) as cat:
        files = {r["item_id"]: r["path"] for r in cat.done("ingest").to_pylist()}
    gone = sorted(files)[0]
    before = item_actions({"item_id": gone, "actions_path": files[gone]})
    (workdir / files[gone]).unlink()
    with pytest.raises(BadInput, match="pyramid ingest"):
        item_actions({"item_id": gone, "actions_path": files[gone]})
    _, report, _, _ = run_ingest(workdir)
    assert (report.stage.counts["done"], report.stage.skipped) == (1, len(files) - 1)  # that item only
    np.testing.assert_array_equal(item_actions({"item_id": gone, "actions_path": files[gone]}), before)


def test_a_misspelt_source_option_stops_that_source_with_the_option_named(workdir):
    cfg = load_config(None, workdir=str(workdir), **{"runner.engine": "local"})
    cfg.sources = [s for s in cfg.sources if s.kind in ("task_agnostic", "robotwin")]
    robotwin = next(s for s in cfg.sources if s.kind == "robotwin")
    robotwin.options = {"licence": "MIT", "sim_hzz": 50}
    with Catalog(cfg.catalog_path) as cat:
        report = ingest(cfg, cat, make_runner("local"), progress=False)
        sources = {r["source"] for r in cat.items().to_pylist()}
    (label, error), = report.source_errors.items()
    assert label.startswith("robotwin:") and "unknown source option 'sim_hzz' (did you mean 'sim_hz'?)" in error
    assert sources == {"task_agnostic"}  # the other source still ingests
