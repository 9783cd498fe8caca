"""Audit checks on small constructed cases: each check fires on the bad case and stays silent on the good one."""

import hashlib
import io
import json
import shutil
import tarfile

import av
import numpy as np
import pytest

from audit import AuditConfig, BoundRule
from audit.context import AuditContext
from audit.registry import CHECKS, all_checks
from catalog import Catalog
from pipelines.config import load_config
from pipelines.flow import run_flow
from pipelines.ingest import ingest
from pipelines.runners import make_runner
from samples import defects
from samples.files import write_h264
from samples.sim_task_agnostic import DEFAULT_CAMERAS

TA = "task_agnostic/aloha_random"
MAIN_MP4 = f"rgb_{DEFAULT_CAMERAS[0]}.mp4"  # the main view: what flow and the picture checks read


def ingested(workdir, kinds=("task_agnostic", "robotwin")):
    cfg = load_config(None, workdir=str(workdir), **{"runner.engine": "local"})
    cfg.sources = [s for s in cfg.sources if s.kind in kinds]
    with Catalog(cfg.catalog_path) as cat:
        ingest(cfg, cat, make_runner("local"), progress=False)
    return cfg


def run_checks(cfg, *names, **settings):
    """{check name: Outcome} of the named checks over the catalog, with AuditConfig overrides."""
    with Catalog(cfg.catalog_path) as cat:
        ctx = AuditContext(cfg, cat, AuditConfig(**settings))
        return {name: CHECKS[name].run(ctx) for name in names}


def episode(workdir, name):
    return workdir / "samples" / "task_agnostic" / "aloha_random" / "episodes" / name


def rewrite_video(ep, edit):
    with av.open(str(ep / MAIN_MP4)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    write_h264(ep / MAIN_MP4, edit(frames), 25)


def test_every_check_is_registered_with_a_known_severity_and_an_explanation():
    checks = all_checks()
    assert len(checks) == len(CHECKS) >= 20
    assert {c.category for c in checks} == {"integrity", "dataset", "content", "motion", "duplicates", "splits", "labels",
                                            "shards"}
    assert len(checks) >= 45
    assert all(c.severity in ("error", "warning", "info") and len(c.explanation) > 30 for c in checks)


def test_clean_items_pass_every_integrity_content_and_duplicate_check(workdir):
    cfg = ingested(workdir)
    names = [c.name for c in all_checks() if c.category in ("integrity", "content", "duplicates", "splits")]
    outcomes = run_checks(cfg, *names)
    failed = {n: o.failures for n, o in outcomes.items() if o.failures}
    assert failed == {}
    assert len(outcomes["media_readable"].checked) == 5 and len(outcomes["values_in_bounds"].checked) == 5
    assert outcomes["static_clip"].not_run and outcomes["normalisation_from_train"].not_run  # no flow, no VAE yet


def test_quarantined_items_are_reported_by_the_check_their_reason_belongs_to(workdir):
    defects.add_task_agnostic_defects(workdir / "samples" / "task_agnostic" / "aloha_random")
    defects.add_robotwin_defects(workdir / "samples" / "robotwin")
    cfg = ingested(workdir)
    with Catalog(cfg.catalog_path) as cat:  # a reason no check knows still gets reported
        cat.record_stage_results([{"item_id": f"{TA}/episode_000002", "stage": "flow", "status": "failed",
                                   "reason": "worker lost", "run_id": "r"}])
    out = run_checks(cfg, "media_readable", "finite_values", "missing_fields", "quarantined_other")
    assert list(out["media_readable"].failures) == [f"{TA}/episode_900001"]
    assert MAIN_MP4 in out["media_readable"].failures[f"{TA}/episode_900001"]
    assert list(out["finite_values"].failures) == [f"{TA}/episode_900002"]
    assert [i.rsplit("/", 1)[1] for i in out["missing_fields"].failures] == ["episode900"]
    assert out["quarantined_other"].failures == {f"{TA}/episode_000002": "failed at flow: worker lost"}


def test_items_without_action_semantics_or_with_bad_ones_are_named(workdir):
    cfg = ingested(workdir)
    with Catalog(cfg.catalog_path) as cat:  # as an older version left it, and a hand edit with one dim too few
        cat.con.execute(f"UPDATE {cat.table('items')} SET action_semantics = NULL WHERE item_id = '{TA}/episode_000000'")
        cat.con.execute(f"UPDATE {cat.table('items')} SET action_semantics = action_semantics[2:] WHERE item_id = '{TA}/episode_000001'")
    out = run_checks(cfg, "missing_fields")["missing_fields"].failures
    assert "action semantics not recorded" in out[f"{TA}/episode_000000"]
    assert "13 entries for 14 action dims" in out[f"{TA}/episode_000001"]
    assert len(out) == 2


def test_media_changed_after_ingest_is_found_by_decoding_again(workdir):
    cfg = ingested(workdir)
    defects.truncate_file(episode(workdir, "episode_000001") / MAIN_MP4, 0.4)
    (episode(workdir, "episode_000002") / MAIN_MP4).unlink()
    failures = run_checks(cfg, "media_readable")["media_readable"].failures
    assert sorted(failures) == [f"{TA}/episode_000001", f"{TA}/episode_000002"]
    assert f"missing media file {MAIN_MP4}" in failures[f"{TA}/episode_000002"]


def test_actions_out_of_bounds_or_of_the_wrong_length(workdir):
    from manifests.action_files import read_action_file, write_action_file

    ep1 = episode(workdir, "episode_000001")
    actions = np.load(ep1 / "actions.npy")
    actions[5, 1] = 5.0  # left_arm_shoulder beyond 4 rad: finite, so ingest lets it through
    np.save(ep1 / "actions.npy", actions)
    cfg = ingested(workdir)
    with Catalog(cfg.catalog_path) as cat:
        files = {r["item_id"]: r["path"] for r in cat.done("ingest").to_pylist()}
    # the checks judge the action files the stages read: one whose rows do not match the frames (as an adapter
    # that does not compare them would write it) is caught
    short = files[f"{TA}/episode_000002"]
    write_action_file(short, f"{TA}/episode_000002", read_action_file(short)[:-3])
    out = run_checks(cfg, "values_in_bounds", "actions_match_frames")
    assert list(out["values_in_bounds"].failures) == [f"{TA}/episode_000001"]
    assert "left_arm_shoulder spans" in out["values_in_bounds"].failures[f"{TA}/episode_000001"]
    assert list(out["actions_match_frames"].failures) == [f"{TA}/episode_000002"]
    assert "[17, 14]" in out["actions_match_frames"].failures[f"{TA}/episode_000002"]
    # a stricter table flags the clean grippers too: the rules decide, first match wins
    strict = run_checks(cfg, "values_in_bounds", action_bounds=[BoundRule("aloha*", "gripper", 0.0, 0.01)])
    assert len(strict["values_in_bounds"].failures) == 3


def test_frozen_black_and_static_clips(workdir):
    rewrite_video(episode(workdir, "episode_000001"), lambda f: np.repeat(f[:1], len(f), 0))
    rewrite_video(episode(workdir, "episode_000002"), lambda f: np.zeros_like(f) + 3)
    cfg = ingested(workdir, kinds=("task_agnostic",))
    with Catalog(cfg.catalog_path) as cat:
        run_flow(cfg, cat, make_runner("local"), progress=False)
    out = run_checks(cfg, "frozen_frames", "black_frames", "static_clip", "jitter")
    assert sorted(out["frozen_frames"].failures) == [f"{TA}/episode_000001", f"{TA}/episode_000002"]
    assert list(out["black_frames"].failures) == [f"{TA}/episode_000002"]
    assert sorted(out["static_clip"].failures) == [f"{TA}/episode_000001", f"{TA}/episode_000002"]
    assert out["jitter"].failures == {} and len(out["jitter"].checked) == 3
    shaky = run_checks(cfg, "jitter", max_jitter_px=0.0)["jitter"]
    assert f"{TA}/episode_000000" in shaky.failures


def test_duration_bounds(workdir):
    cfg = ingested(workdir)  # task-agnostic episodes: 20 frames at 25 fps = 0.8 s
    assert run_checks(cfg, "duration")["duration"].failures == {}
    failures = run_checks(cfg, "duration", min_duration_s=1.0)["duration"].failures
    assert sorted(failures) == [f"{TA}/episode_00000{i}" for i in range(3)]
    assert "0.80 s is shorter than 1 s" in failures[f"{TA}/episode_000000"]


def test_exact_and_near_duplicates_as_sets_and_the_cross_split_leak(workdir):
    defects.add_duplicate_defects(workdir / "samples" / "task_agnostic" / "aloha_random")
    cfg = ingested(workdir)
    out = run_checks(cfg, "exact_duplicates", "near_duplicates", "cross_split_duplicates")
    original, exact, near = (f"{TA}/{n}" for n in ("episode_000000", defects.EXACT_COPY, defects.NEAR_COPY))
    assert out["exact_duplicates"].sets == [sorted([original, exact])]
    assert list(out["exact_duplicates"].failures) == [exact]
    assert out["near_duplicates"].sets == [sorted([original, near])]  # the exact copy was deduplicated first
    assert list(out["near_duplicates"].failures) == [near] and "dHash" in out["near_duplicates"].failures[near]
    assert list(out["cross_split_duplicates"].failures) == [near]  # the exact copy shares the original's split
    assert "in val, but a duplicate" in out["cross_split_duplicates"].failures[near]


def test_similar_robot_episodes_with_different_actions_are_not_near_duplicates(workdir):
    ep = episode(workdir, "episode_000001")
    shutil.copytree(episode(workdir, "episode_000000"), ep, dirs_exist_ok=True)
    rewrite_video(ep, lambda f: f + 5)  # pictures alike (not the same bytes) ...
    cfg = ingested(workdir)
    assert list(run_checks(cfg, "near_duplicates")["near_duplicates"].failures) == [f"{TA}/episode_000001"]
    np.save(ep / "actions.npy", np.load(ep / "actions.npy")[::-1].copy())  # ... but another motion in the labels
    cfg = ingested(workdir)
    out = run_checks(cfg, "near_duplicates", "exact_duplicates")
    assert out["near_duplicates"].failures == {} and out["exact_duplicates"].failures == {}


def test_group_in_two_splits_and_colliding_item_ids(workdir):
    cfg = ingested(workdir)
    with Catalog(cfg.catalog_path) as cat:
        row = cat.items(f"item_id = '{TA}/episode_000000'").to_pylist()[0]
        cat.upsert_items([{**row, "item_id": f"{TA}/episode:000000", "native_id": "x", "split": "test"}])
    out = run_checks(cfg, "group_split_leak", "duplicate_item_ids")
    assert sorted(out["group_split_leak"].failures) == [f"{TA}/episode:000000", f"{TA}/episode_000000"]
    assert "spans test, train" in out["group_split_leak"].failures[f"{TA}/episode_000000"]
    assert list(out["duplicate_item_ids"].failures) == [f"{TA}/episode_000000"]  # ':' becomes '_' in file names


def test_source_metadata_that_disagrees_with_the_stream(workdir):
    cfg = ingested(workdir)
    with Catalog(cfg.catalog_path) as cat:
        cat.con.execute(f"UPDATE {cat.table('items')} SET extras = ? WHERE item_id = ?",
                        [json.dumps({"metadata_frames": 24, "stream_frames": 20}), f"{TA}/episode_000001"])
    failures = run_checks(cfg, "stream_matches_metadata")["stream_matches_metadata"].failures
    assert failures == {f"{TA}/episode_000001": "metadata says 24 frames, the stream has 20"}


# --- labels -------------------------------------------------------------------------------------------------------

def write_latents(cfg, latents_by_item):
    with Catalog(cfg.catalog_path) as cat:
        for item_id, latents in latents_by_item.items():
            path = cfg.artifacts_dir / "latents" / f"{item_id.replace('/', '_')}.latent.npz"
            path.parent.mkdir(parents=True, exist_ok=True)
            n_frames = cat.items("item_id = ?", [item_id]).to_pylist()[0]["frame_count"]
            np.savez(path, latent_action=latents, meta=np.array(json.dumps({"n_frames": n_frames})))
            cat.add_artifacts([{"item_id": item_id, "stage": "label", "kind": "latent_action", "path": str(path),
                                "bytes": path.stat().st_size, "blake2b": "x", "run_id": "r"}])
            cat.record_stage_results([{"item_id": item_id, "stage": "label", "status": "done", "run_id": "r"}])


def test_latent_values_outliers_and_drift(workdir):
    cfg = ingested(workdir)
    rng = np.random.default_rng(0)
    ids = [f"{TA}/episode_00000{i}" for i in range(3)]
    latents = {i: rng.normal(0, 1, (19, 14)).astype(np.float32) for i in ids}
    write_latents(cfg, latents)
    good = run_checks(cfg, "latent_values", "latent_outliers", "latent_drift", min_items_for_outliers=3)
    assert all(not o.failures for o in good.values())
    stats = good["latent_drift"].stats["per_source"]["task_agnostic"]
    assert stats["items"] == 3 and stats["rows"] == 57 and len(stats["q99"]) == 14 and stats["active_dims"] == 14

    latents[ids[1]] = latents[ids[1]] + np.eye(14, dtype=np.float32)[3] * 10  # dim 3 far off
    write_latents(cfg, latents)
    outliers = run_checks(cfg, "latent_outliers", min_items_for_outliers=3)["latent_outliers"].failures
    assert list(outliers) == [ids[1]] and "dim 3" in outliers[ids[1]]

    latents[ids[2]] = np.full((10, 14), np.nan, np.float32)
    latents[ids[0]][4, 2] = np.inf
    write_latents(cfg, latents)
    assert run_checks(cfg, "latent_values")["latent_values"].failures == {
        ids[0]: "1 NaN/Inf values", ids[2]: "shape [10, 14], expected [19, 14]"}


def test_latent_checks_do_not_run_without_latents(workdir):
    cfg = ingested(workdir)
    out = run_checks(cfg, "latent_values", "latent_drift", "latent_outliers")
    assert all(o.not_run and "pyramid label" in o.not_run for o in out.values())


# --- normalisation statistics -------------------------------------------------------------------------------------

def test_normalisation_statistics_from_train_only(workdir):
    import torch

    cfg = ingested(workdir)
    with Catalog(cfg.catalog_path) as cat:  # as if the flow stage had run
        items = cat.items().to_pylist()
        cat.record_stage_results([{"item_id": r["item_id"], "stage": "flow", "status": "done", "run_id": "r"}
                                  for r in items])
        cat.upsert("flow_stats", [{"item_id": r["item_id"], "run_id": "r", "backend": "dis", "delta_s": 0.2,
                                   "delta_frames": 5, "grid": "native", "n_pairs": 15, "is_static": False,
                                   "artifact_path": "x"} for r in items])
    train = sum(r["split"] == "train" and r["embodiment"] == "aloha_viperx_bimanual" for r in items)
    ckpt = cfg.path(cfg.vae.output) / "checkpoints" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    for n_items, failed in ((train, False), (3, True)):
        torch.save({"action_stats": {"aloha_viperx_bimanual": {"n_items": n_items}}}, ckpt)
        out = run_checks(cfg, "normalisation_from_train")["normalisation_from_train"]
        assert out.checked == ["vae checkpoint: aloha_viperx_bimanual"] and bool(out.failures) == failed
    ckpt.unlink()
    assert run_checks(cfg, "normalisation_from_train")["normalisation_from_train"].not_run


# --- shards -------------------------------------------------------------------------------------------------------

def make_tar(path, item_ids):
    with tarfile.open(path, "w") as tar:
        for item_id in item_ids:
            key = item_id.replace(".", "_")
            for suffix, data in (("json", json.dumps({"item_id": item_id}).encode()), ("la14.npy", b"\0" * 16384)):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    data = path.read_bytes()
    return {"path": str(path), "n_samples": len(item_ids), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "item_ids": list(item_ids), "run_id": "r"}


def register_shards(cfg, plan, stats=None):
    """plan: [(split, [item ids])] → tars in <workdir>/shards, an index.json, rows in the catalog."""
    root = cfg.path("shards")
    root.mkdir(exist_ok=True)
    rows = []
    for i, (split, ids) in enumerate(plan):
        rows.append({**make_tar(root / f"{split}-{i:06d}.tar", ids), "split": split, "tier": None, "index": i})
    index = {"format": "motus-pyramid/shards/v1", "stats": stats or {},
             "shards": [{**r, "path": f"{r['split']}-{r['index']:06d}.tar"} for r in rows]}
    (root / "index.json").write_text(json.dumps(index))
    with Catalog(cfg.catalog_path) as cat:
        cat.replace_shard_set(str(root), rows)
    return root, rows


def test_shard_checks_do_not_run_without_shards(workdir):
    cfg = ingested(workdir)
    out = run_checks(cfg, "shard_files", "shard_membership", "shard_sizes")
    assert all(o.not_run == "no shards registered in the catalog (run the shard stage)" for o in out.values())


def test_good_shards_pass_and_damaged_ones_fail(workdir):
    cfg = ingested(workdir)
    with Catalog(cfg.catalog_path) as cat:
        split = {r["item_id"]: r["split"] for r in cat.items().to_pylist()}
    by_split = {}
    for item_id, s in sorted(split.items()):
        by_split.setdefault(s, []).append(item_id)
    root, rows = register_shards(cfg, sorted(by_split.items()), stats={"split": "train"})
    good = run_checks(cfg, "shard_files", "shard_membership", "shard_sizes", "normalisation_from_train")
    assert all(not o.failures for o in good.values()), {n: o.failures for n, o in good.items()}
    assert len(good["shard_files"].checked) == len(rows) + 1  # the tars and index.json
    assert good["normalisation_from_train"].checked == [f"{root / 'index.json'}: stats.split"]

    tar = root / f"{rows[0]['split']}-000000.tar"
    tar.write_bytes(tar.read_bytes()[:-512] + b"x" * 512)
    files = run_checks(cfg, "shard_files")["shard_files"].failures
    assert list(files) == [str(tar)] and "sha256" in files[str(tar)]


def test_items_in_two_shards_in_the_wrong_split_and_uneven_sizes(workdir):
    cfg = ingested(workdir)
    with Catalog(cfg.catalog_path) as cat:
        items = cat.items().to_pylist()
    train = [r["item_id"] for r in items if r["split"] == "train"]
    other = next(r for r in items if r["split"] != "train")["item_id"]
    register_shards(cfg, [("train", train * 4), ("train", train[:1]), ("train", train * 4 + [other])],
                    stats={"computed_from": ["train", "val"]})
    out = run_checks(cfg, "shard_membership", "shard_sizes", "normalisation_from_train")
    assert out["shard_membership"].failures[train[0]] == (
        "9 times in the set: train-000000.tar ×4, train-000001.tar, train-000002.tar ×4")
    assert "but the item is in" in out["shard_membership"].failures[other]
    assert [p.rsplit("/", 1)[1] for p in out["shard_sizes"].failures] == ["train-000001.tar"]
    assert list(out["normalisation_from_train"].failures.values()) == ["computed from train, val"]


def test_latent_stats_covering_more_clips_than_the_train_shards_fail(workdir):
    cfg = ingested(workdir)
    with Catalog(cfg.catalog_path) as cat:
        items = cat.items().to_pylist()
    train = [r["item_id"] for r in items if r["split"] == "train"]
    others = [r["item_id"] for r in items if r["split"] != "train"]
    plan = [("train", train)] + ([("val", others)] if others else [])
    register_shards(cfg, plan, stats={"split": "train", "latent_action": {"items": len(train)}})
    assert not run_checks(cfg, "normalisation_from_train")["normalisation_from_train"].failures
    register_shards(cfg, plan, stats={"split": "train", "latent_action": {"items": len(items)}})  # all splits
    failures = run_checks(cfg, "normalisation_from_train")["normalisation_from_train"].failures
    assert list(failures.values()) == [f"latent-action stats cover {len(items)} clips; the train shards hold {len(train)}"]


def test_audit_config_rejects_bad_values(tmp_path):
    from audit import load_audit_config
    from pipelines.config import ConfigError

    path = tmp_path / "audit.yaml"
    path.write_text("max_jitter_px: 3\naction_bounds:\n  - {embodiment: '*', match: '.*', min: -1, max: 1}\n")
    ac = load_audit_config(path)
    assert ac.max_jitter_px == 3.0 and ac.bound_for("x", "anything").max == 1.0
    path.write_text("max_jiter_px: 3\n")
    with pytest.raises(ConfigError, match="max_jiter_px"):
        load_audit_config(path)
    path.write_text("action_bounds:\n  - {embodiment: '*', match: '(', min: 0, max: 1}\n")
    with pytest.raises(ConfigError, match="not a regex"):
        load_audit_config(path)
    path.write_text("outlier_z: -2\n")
    with pytest.raises(ConfigError, match="outlier_z must be >= 0"):
        load_audit_config(path)
