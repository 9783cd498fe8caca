"""The flow stage end to end on generated items: artifacts, statistics, reruns, bad media, backends."""

from pathlib import Path

import numpy as np
import pytest

from catalog import Catalog
from flow_extraction.artifacts import read_flow_artifact
from pipelines.config import load_config
from pipelines.flow import run_flow
from pipelines.ingest import ingest
from pipelines.runners import make_runner
from samples import defects
from samples.sim_task_agnostic import DEFAULT_CAMERAS

MAIN_MP4 = f"rgb_{DEFAULT_CAMERAS[0]}.mp4"  # the task-agnostic main view


def setup_catalog(workdir, **flow):
    overrides = {f"flow.{k}": v for k, v in flow.items()}
    cfg = load_config(None, workdir=str(workdir), **{"runner.engine": "local", **overrides})
    with Catalog(cfg.catalog_path) as cat:
        ingest(cfg, cat, make_runner("local"), progress=False)
    return cfg


def flow_run(cfg, engine="local", **kw):
    with Catalog(cfg.catalog_path) as cat:
        report = run_flow(cfg, cat, make_runner(engine), progress=False, **kw)
        stats = {r["item_id"]: r for r in cat.sql("SELECT * FROM flow_stats").to_pylist()}
        items = {r["item_id"]: r for r in cat.items().to_pylist()}
        arts = cat.sql("SELECT item_id, path, bytes FROM artifacts WHERE stage = 'flow'").to_pylist()
    return report, stats, items, arts


def test_dis_flow_for_every_item_with_stats_and_artifacts(workdir):
    cfg = setup_catalog(workdir, store_size=[48, 40])
    report, stats, items, arts = flow_run(cfg)
    assert report.stage.counts["done"] == len(items) == 5 and len(arts) == 5
    for item_id, row in items.items():
        art = read_flow_artifact(stats[item_id]["artifact_path"])
        dframes = max(1, round(0.2 * row["fps"]))
        assert art.meta["delta_frames"] == dframes and art.meta["backend"] == "dis"
        assert art.flow.shape == (row["frame_count"] - dframes, 2, 48, 40) and art.flow.dtype == np.float16
        assert (art.pairs[:, 1] - art.pairs[:, 0] == dframes).all() and art.pairs[0, 0] == 0
        assert art.meta["working_size"] == [384, 320] and art.meta["canvas"]["offset_y"] == 72
        assert not art.valid[:, :8].any() and art.valid[:, 20].all()  # padding rows are invalid
        assert np.abs(art.flow[:, :, :8]).max() == 0  # ... and store zero flow
        assert stats[item_id]["n_pairs"] == len(art.pairs)
    ta = [s for k, s in stats.items() if k.startswith("task_agnostic")]
    assert all(s["p99_px"] > 1.0 and not s["is_static"] for s in ta)  # the arms move visibly


def test_flow_rerun_skips_and_setting_change_redoes(workdir):
    cfg = setup_catalog(workdir, store_size=[48, 40])
    flow_run(cfg)
    again, *_ = flow_run(cfg)
    assert again.stage.processed == 0 and again.stage.skipped == 5
    cfg.flow.grid = "delta"
    changed, stats, items, arts = flow_run(cfg)
    assert changed.stage.processed == 5 and len(arts) == 5  # artifacts replaced, not duplicated
    ta = next(k for k in items if k.startswith("task_agnostic"))
    assert stats[ta]["grid"] == "delta" and stats[ta]["n_pairs"] == len(range(0, 20 - 5, 5))


def test_a_deleted_flow_artifact_is_rebuilt_on_rerun(workdir):
    """Done means the output still exists: an item whose flow file was deleted is redone, not skipped."""
    cfg = setup_catalog(workdir, store_size=[48, 40])
    _, stats, _, _ = flow_run(cfg)
    gone = next(k for k in stats if k.startswith("task_agnostic"))
    path = stats[gone]["artifact_path"]
    before = read_flow_artifact(path).flow.copy()
    Path(path).unlink()
    again, *_ = flow_run(cfg)
    assert again.stage.processed == again.stage.counts["done"] == 1 and again.stage.skipped == 4
    assert np.array_equal(read_flow_artifact(path).flow, before)  # the same flow, written again


def test_media_damaged_after_ingest_is_quarantined_by_flow(workdir):
    cfg = setup_catalog(workdir)
    ep = workdir / "samples" / "task_agnostic" / "aloha_random" / "episodes" / "episode_000000"
    defects.truncate_file(ep / MAIN_MP4, 0.5)
    report, stats, items, _ = flow_run(cfg)
    assert report.stage.counts["quarantined"] == 1 and report.stage.counts["done"] == 4
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        reason = cat.sql("SELECT reason FROM item_stages WHERE stage='flow' AND status='quarantined'").column(0)[0].as_py()
    assert MAIN_MP4 in reason


def test_too_short_items_are_quarantined_with_reason(workdir):
    cfg = setup_catalog(workdir, delta_s=2.0)  # Δ longer than the 20-frame task-agnostic episodes
    report, stats, items, _ = flow_run(cfg)
    assert report.stage.counts["quarantined"] == 3
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        reasons = cat.sql("SELECT reason FROM item_stages WHERE stage='flow' AND status='quarantined'").column(0).to_pylist()
    assert all("too short for flow" in r for r in reasons)


def test_ray_flow_matches_local(workdir, ray_session):
    cfg = setup_catalog(workdir, store_size=[48, 40])
    _, local_stats, *_ = flow_run(cfg)
    _, ray_stats, *_ = flow_run(cfg, engine="ray", force=True)
    for k in local_stats:
        assert ray_stats[k]["mean_px"] == pytest.approx(local_stats[k]["mean_px"], rel=1e-5)


def test_dpflow_backend_runs_in_the_stage_with_random_weights(workdir):
    cfg = setup_catalog(workdir, backend="dpflow", dpflow_random_init=True,
                        working_size=[64, 80], store_size=[32, 40], grid="delta", batch_size=4)
    cfg.flow.dpflow_checkpoint = None  # random weights only because the test asks for them explicitly  # task-agnostic items only, to keep the CPU forward passes few
    with Catalog(cfg.catalog_path) as cat:
        cat.con.execute(f"DELETE FROM {cat.table('items')} WHERE source = 'robotwin'")
    report, stats, items, _ = flow_run(cfg)
    assert report.stage.counts["done"] == 3
    art = read_flow_artifact(next(iter(stats.values()))["artifact_path"])
    assert art.meta["backend"] == "dpflow" and art.meta["checkpoint"] == "random"
    assert art.flow.shape[1:] == (2, 32, 40) and np.isfinite(art.flow.astype(np.float32)).all()


def test_dpflow_without_weights_fails_before_any_work(workdir):
    from flow_extraction.base import FlowConfigError

    cfg = setup_catalog(workdir, backend="dpflow", dpflow_checkpoint="things")
    with pytest.raises(FlowConfigError, match="dpflow-things-2012b5d6.ckpt"):
        flow_run(cfg)


def test_artifacts_store_each_pairs_first_frame_from_pixels_and_from_exact_sim_flow(workdir):
    """The frame-conditioned VAE decoder reads frame t1 of every pair from the artifact: the canvas frame at the
    store size, the same whether the flow came from pixels (DIS) or from the simulator's exact flow."""
    import cv2

    from flow_extraction.frames import iter_frames

    cfg = setup_catalog(workdir, store_size=[48, 40])
    _, stats, items, _ = flow_run(cfg)
    ta = next(k for k in items if k.startswith("task_agnostic"))
    art = read_flow_artifact(stats[ta]["artifact_path"])
    assert art.frames is not None and art.frames.dtype == np.uint8
    assert art.frames.shape == (len(art.pairs), 3, 48, 40)
    canvas = {i: f for i, f, _ in iter_frames(items[ta], (384, 320))}
    for k in (0, len(art.pairs) - 1):
        expected = cv2.resize(canvas[int(art.pairs[k, 0])], (40, 48), interpolation=cv2.INTER_AREA).transpose(2, 0, 1)
        assert np.array_equal(art.frames[k], expected)
    assert not np.array_equal(art.frames[0], art.frames[-1])  # the arm moved between the first and last pair

    cfg.flow.sim_for_sim_tiers = True
    _, sim_stats, _, _ = flow_run(cfg)
    sim_art = read_flow_artifact(sim_stats[ta]["artifact_path"])
    assert sim_art.meta["backend"] != "dis" and np.array_equal(sim_art.frames, art.frames)

    cfg.flow.store_frames = False  # a setting that shapes the artifact: items are redone, without frames
    _, plain, _, _ = flow_run(cfg)
    assert read_flow_artifact(plain[ta]["artifact_path"]).frames is None


def test_flow_size_computes_at_the_reduced_size_and_a_change_redoes_only_frame_flow_items(workdir):
    """flow.flow_size: DIS runs at 96×80 here (twice the 48×40 store), stored vectors stay in canvas pixels (the motion statistics agree
    with the full-size run's), and changing it redoes items whose flow comes from pixels, not exact sim flow."""
    from pipelines.config import ConfigError, validate

    cfg = setup_catalog(workdir, store_size=[48, 40], flow_size=[384, 320])
    _, full, items, _ = flow_run(cfg)
    cfg.flow.flow_size = None  # the default: twice the store size
    report, reduced, _, _ = flow_run(cfg)
    assert report.stage.processed == len(items) == 5
    for item_id, row in full.items():
        art = read_flow_artifact(reduced[item_id]["artifact_path"])
        assert art.meta["flow_size"] == [96, 80] and art.flow.shape[2:] == (48, 40)
        assert not art.valid[:, :8].any() and art.valid[:, 20].all()  # the padding is still invalid
        if item_id.startswith("task_agnostic"):  # the arms move: a units slip (×4) would show here
            assert reduced[item_id]["mean_px"] == pytest.approx(row["mean_px"], rel=0.35)
            assert reduced[item_id]["p99_px"] == pytest.approx(row["p99_px"], rel=0.35)

    cfg.flow.sim_for_sim_tiers = True
    flow_run(cfg)  # items with sim extras switch to exact flow, made at the canvas
    cfg.flow.flow_size = [384, 320]
    again, sim, _, _ = flow_run(cfg)
    exact = [k for k in items if read_flow_artifact(sim[k]["artifact_path"]).meta["backend"] == "sim"]
    assert exact and again.stage.skipped == len(exact) and again.stage.processed == 5 - len(exact)
    assert all(read_flow_artifact(sim[k]["artifact_path"]).meta["flow_size"] == [384, 320] for k in exact)

    cfg.flow.flow_size = [400, 320]
    with pytest.raises(ConfigError, match="flow.flow_size"):
        validate(cfg)


def test_dis_knobs_redo_frame_flow_items_and_bad_values_stop_the_config(workdir):
    """flow.dis_*: a knob set over the preset reaches every frame-flow item (recorded in its checkpoint, the
    items redone, the flow changed); back to null (the preset's) they are redone once more, then skipped; a bad
    value stops the config with the knob's name."""
    from pipelines.config import ConfigError, validate

    cfg = setup_catalog(workdir, store_size=[48, 40])
    _, before, items, _ = flow_run(cfg)
    ta = next(k for k in items if k.startswith("task_agnostic"))
    old = read_flow_artifact(before[ta]["artifact_path"])  # read now: the rerun writes the same path
    cfg.flow.dis_gradient_descent_iterations = 12
    report, tuned, _, _ = flow_run(cfg)
    assert report.stage.processed == len(items) == 5
    new = read_flow_artifact(tuned[ta]["artifact_path"])
    assert "+gd12" in new.meta["checkpoint"] and "gd" not in old.meta["checkpoint"]
    assert not np.array_equal(old.flow, new.flow)
    cfg.flow.dis_gradient_descent_iterations = None
    assert flow_run(cfg)[0].stage.processed == 5  # the preset's own settings again: redone
    assert flow_run(cfg)[0].stage.skipped == 5  # and then unchanged

    cfg.flow.dis_patch_stride = 12
    with pytest.raises(ConfigError, match="flow.dis_.*patch_stride 12 must not exceed the patch size 8"):
        validate(cfg)
    cfg.flow.dis_patch_stride, cfg.flow.dis_refinement_iterations = None, -2  # e.g. a typo for 2
    with pytest.raises(ConfigError, match="refinement_iterations must be an integer >= 0"):
        validate(cfg)


def test_a_new_backend_is_its_module_and_one_registry_line(workdir, monkeypatch):
    from flow_extraction.config import BACKENDS

    with pytest.raises(Exception, match="flow.backend: 'constant' is not one of dis, dpflow"):
        setup_catalog(workdir, backend="constant")
    monkeypatch.setitem(BACKENDS, "constant", "tests.constant_flow_backend")
    cfg = setup_catalog(workdir, backend="constant", store_size=[48, 40], flow_size=[96, 80])
    report, stats, items, arts = flow_run(cfg)
    assert report.stage.counts["done"] == len(items) == 5 and len(arts) == 5
    for item_id in items:
        art = read_flow_artifact(stats[item_id]["artifact_path"])
        assert art.meta["backend"] == "constant" and art.valid.any()
        flow = art.flow.astype(np.float32)
        # one pixel right at the 96x80 flow size is four canvas pixels (384 / 96); nothing moves down
        assert np.allclose(flow[:, 0][art.valid], 4.0) and np.allclose(flow[:, 1][art.valid], 0.0)
