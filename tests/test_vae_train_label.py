"""VAE training, resume, losses and labelling on real generated items (ingest → flow → VAE → labels)."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from catalog import Catalog
from flow_extraction.frames import resampled_count
from latent_action_vae.losses import vae_loss
from pipelines.config import load_config
from pipelines.flow import run_flow
from pipelines.ingest import ingest
from pipelines.label import densify, read_latents, run_label
from pipelines.runners import make_runner
from jobs.vae import run_vae_train

TINY_VAE = {"vae.image_size": 32, "vae.widths": [8, 16, 32, 64, 128], "vae.latent_channels": 64, "vae.hidden": 64,
            "vae.batch_size": 8, "vae.steps": 4, "vae.log_every": 1, "vae.checkpoint_every": 2, "vae.threads": 1}


def prepared(workdir, **overrides):
    cfg = load_config(None, workdir=str(workdir), **{"runner.engine": "local", "flow.store_size": [32, 32],
                                                     **TINY_VAE, **overrides})
    cfg.sources = [s for s in cfg.sources if s.kind in ("robotwin", "task_agnostic")]
    with Catalog(cfg.catalog_path) as cat:
        ingest(cfg, cat, make_runner("local"), progress=False)
        run_flow(cfg, cat, make_runner("local"), progress=False)
    return cfg


def metrics(cfg):
    with open(cfg.path("vae") / "metrics.csv") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


def test_a_run_killed_after_a_checkpoint_resumes_to_the_same_checkpoint(workdir, monkeypatch):
    """Killed past its step-2 checkpoint and resumed, a run ends with the very checkpoint (tensors and file bytes)
    and losses of one that never stopped (torch at 1 thread), so labels name it alike."""
    import latent_action_vae.train as vae_train
    from latent_action_vae.train import checkpoint_identity, read_vae_checkpoint

    cfg = prepared(workdir)
    ckpt = cfg.path("vae") / "checkpoints" / "last.pt"
    with Catalog(cfg.catalog_path) as cat:
        full = run_vae_train(cfg, cat, progress=False)
    straight, straight_bytes = metrics(cfg), ckpt.read_bytes()
    assert full.steps == 4 and sorted(straight) == [0, 1, 2, 3]
    assert all(np.isfinite(v) for v in straight.values())
    # start over; the run dies in step 3, after its step-2 checkpoint; then resume to step 4
    real_step = vae_train.train_step

    def dies_at_step_3(*args, **kwargs):
        if args[4] == 3:
            raise KeyboardInterrupt("killed")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(vae_train, "train_step", dies_at_step_3)
    with Catalog(cfg.catalog_path) as cat, pytest.raises(KeyboardInterrupt):
        run_vae_train(cfg, cat, resume=False, progress=False)
    assert read_vae_checkpoint(ckpt)["step"] == 2
    monkeypatch.setattr(vae_train, "train_step", real_step)
    half = ckpt.parent / ".last.pt.0123abcd.tmp"  # as a kill during a checkpoint write leaves it
    half.write_bytes(b"half a checkpoint")
    with Catalog(cfg.catalog_path) as cat:
        resumed = run_vae_train(cfg, cat, resume=True, progress=False)
    assert not half.exists()
    assert resumed.resumed_from == 2
    again = metrics(cfg)
    assert sorted(again) == [0, 1, 2, 3]  # no step logged twice
    assert again == straight  # exactly: the same batches, noise and optimiser state
    a, b = read_vae_checkpoint_bytes(straight_bytes), read_vae_checkpoint(ckpt)
    for part in ("model", "optimiser"):
        flat_a, flat_b = flatten(a[part]), flatten(b[part])
        assert flat_a.keys() == flat_b.keys()
        differ = [k for k in flat_a if not same(flat_a[k], flat_b[k])]
        assert not differ, f"{part} tensors differ after resume: {differ[:5]}"
    assert checkpoint_identity(a) == checkpoint_identity(b)
    assert ckpt.read_bytes() == straight_bytes  # even the pickle bytes
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        runs = cat.sql("SELECT status FROM runs WHERE job = 'vae-train' ORDER BY started_at").column(0).to_pylist()
    assert runs == ["ok", "failed", "ok"]


def read_vae_checkpoint_bytes(data: bytes) -> dict:
    import io

    from manifests.checkpoints import load_checkpoint

    return load_checkpoint(io.BytesIO(data))


def same(a, b) -> bool:
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    return type(a) is type(b) and a == b


def flatten(tree, prefix: str = "") -> dict:
    """name → leaf (tensor or plain value) of nested dicts and lists."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flatten(sub, f"{prefix}{key}/").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, sub in enumerate(tree) for k, v in flatten(sub, f"{prefix}{i}/").items()}
    return {prefix: tree}


def test_the_next_run_of_a_stage_removes_the_temp_files_a_killed_run_left(workdir):
    base = load_config(None, workdir=str(workdir))
    planted = [base.manifests_dir / ".items.parquet.89abcdef.tmp", base.manifests_dir / ".flow.parquet.0a1b2c3d.tmp",
               base.artifacts_dir / "flow" / "robotwin" / ".ep0.flow.npz.deadbeef.tmp"]
    kept = [base.manifests_dir / "notes.tmp", base.artifacts_dir / "flow" / ".hidden.tmp"]  # not our temp names
    for path in planted + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    cfg = prepared(workdir)  # ingest, then flow
    assert [p for p in planted if p.exists()] == []
    assert all(p.exists() for p in kept)
    assert (cfg.manifests_dir / "flow.parquet").exists()


def test_resume_refuses_a_checkpoint_from_another_config(workdir):
    cfg = prepared(workdir)
    with Catalog(cfg.catalog_path) as cat:
        run_vae_train(cfg, cat, steps=2, progress=False)
        cfg.vae.beta = 0.5
        with pytest.raises(ValueError, match=r"other VAE settings \['beta'\]"):
            run_vae_train(cfg, cat, steps=3, progress=False)
        cfg.vae.beta = TINY_BETA
        cfg.vae.log_every = 5  # run-only settings may change on resume
        assert run_vae_train(cfg, cat, steps=3, progress=False).resumed_from == 2


TINY_BETA = load_config(None).vae.beta


def test_flow_rerun_that_changes_nothing_keeps_the_vae_resumable(workdir):
    cfg = prepared(workdir)
    with Catalog(cfg.catalog_path) as cat:
        run_vae_train(cfg, cat, steps=2, progress=False)
        run_flow(cfg, cat, make_runner("local"), progress=False)  # rewrites flow.parquet, same content
        assert run_vae_train(cfg, cat, steps=3, progress=False).resumed_from == 2


def test_labels_have_one_row_per_frame_transition_for_every_item(workdir):
    cfg = prepared(workdir)
    with Catalog(cfg.catalog_path) as cat:
        run_vae_train(cfg, cat, steps=2, progress=False)
        report = run_label(cfg, cat, make_runner("local"), progress=False)
        items = {r["item_id"]: r for r in cat.items().to_pylist()}
        arts = cat.sql("SELECT item_id, path FROM artifacts WHERE stage = 'label'").to_pylist()
    assert report.stage.counts["done"] == len(items) == len(arts) == 5
    lengths = set()
    for a in arts:
        latents, meta = read_latents(a["path"])
        row = items[a["item_id"]]
        assert latents.dtype == np.float32 and latents.shape == (row["frame_count"] - 1, 14)
        assert np.isfinite(latents).all() and meta["fps"] == pytest.approx(row["fps"])
        lengths.add((row["frame_count"], round(row["fps"], 1)))
    assert len(lengths) >= 2  # items of different lengths and rates (16.7 Hz RoboTwin, 25 fps task-agnostic)
    assert set(report.stats["per_source"]) == {"robotwin", "task_agnostic"}
    corpus = report.stats["corpus"]
    assert corpus["rows"] == sum(r["frame_count"] - 1 for r in items.values())
    assert len(corpus["q01"]) == 14 and all(lo <= hi for lo, hi in zip(corpus["q01"], corpus["q99"]))
    every = np.concatenate([read_latents(a["path"])[0] for a in arts]).astype(np.float64)  # streamed stats = exact ones
    np.testing.assert_allclose(corpus["mean"], every.mean(0), rtol=1e-6, atol=1e-9)
    bin_width = (every.max(0) - every.min(0)) / 4096  # q99 lies between the two rows np.quantile interpolates
    rank, ordered = 0.99 * (len(every) - 1), np.sort(every, axis=0)
    lo, hi = ordered[int(np.floor(rank))] - bin_width, ordered[int(np.ceil(rank))] + bin_width
    assert ((lo - 1e-9 <= np.array(corpus["q99"])) & (np.array(corpus["q99"]) <= hi + 1e-9)).all()
    with Catalog(cfg.catalog_path) as cat:  # a rerun with the same checkpoint does nothing
        again = run_label(cfg, cat, make_runner("local"), progress=False)
    assert again.stage.processed == 0
    deleted = arts[0]["path"]  # ... but a deleted latent file is written again (done means the output exists)
    latents = read_latents(deleted)[0]
    Path(deleted).unlink()
    with Catalog(cfg.catalog_path) as cat:
        third = run_label(cfg, cat, make_runner("local"), progress=False)
    assert third.stage.processed == third.stage.counts["done"] == 1 and third.stage.skipped == 4
    assert np.array_equal(read_latents(deleted)[0], latents)


def test_labels_follow_resampled_fps(workdir):
    cfg = prepared(workdir, **{"flow.fps": 10.0})
    with Catalog(cfg.catalog_path) as cat:
        run_vae_train(cfg, cat, steps=1, progress=False)
        run_label(cfg, cat, make_runner("local"), progress=False)
        arts = cat.sql("SELECT a.path, i.frame_count, i.fps FROM artifacts a JOIN items i USING (item_id) "
                       "WHERE a.stage = 'label'").to_pylist()
    assert arts
    for a in arts:
        latents, meta = read_latents(a["path"])
        n, fps = resampled_count(a["frame_count"], a["fps"], 10.0)
        assert meta["fps"] == pytest.approx(fps) == 10.0
        assert n == meta["n_frames"] and abs(n - a["frame_count"] * 10.0 / a["fps"]) <= 1
        assert latents.shape == (n - 1, 14)


def test_densify_rule_native_and_delta_grids():
    mu = np.arange(4, dtype=np.float32)[:, None].repeat(14, 1)
    native = densify(mu, np.array([0, 1, 2, 3]), n_frames=7)  # Δ = 3: pairs start at 0..3, frames 0..6
    assert native[:, 0].tolist() == [0, 1, 2, 3, 3, 3]  # the last Δ−1 rows repeat the last pair
    delta = densify(mu[:2], np.array([0, 3]), n_frames=7)
    assert delta[:, 0].tolist() == [0, 0, 0, 1, 1, 1]  # each pair holds for the Δ rows it starts


def batch_tensors(b=4):
    torch.manual_seed(0)
    out = {"mu": torch.randn(b, 14), "logvar": torch.randn(b, 14) * 0.1, "recon": torch.randn(b, 2, 8, 8)}
    target = torch.randn(b, 2, 8, 8)
    mask = torch.ones(b, 8, 8, dtype=torch.bool)
    action = torch.randn(b, 14)
    action_mask = torch.zeros(b, 14, dtype=torch.bool)
    action_mask[:, :12] = True
    labelled = torch.tensor([True, True, False, False])
    return out, target, mask, action, action_mask, labelled


def test_alignment_ignores_unlabelled_samples_and_masked_dims():
    out, target, mask, action, action_mask, labelled = batch_tensors()
    base = vae_loss(out, target, mask, action, action_mask, labelled, beta=0.1, lambda_align=1.0)
    changed = action.clone()
    changed[2:] += 100.0  # unlabelled rows
    changed[:, 12:] += 100.0  # padded dims of a 12-d embodiment
    again = vae_loss(out, target, mask, changed, action_mask, labelled, beta=0.1, lambda_align=1.0)
    assert again["align"].item() == pytest.approx(base["align"].item())
    changed[0, 0] += 1.0  # a real dim of a labelled row does count
    moved = vae_loss(out, target, mask, changed, action_mask, labelled, beta=0.1, lambda_align=1.0)
    assert moved["align"].item() > base["align"].item()


def test_zero_weights_switch_terms_off():
    out, target, mask, action, action_mask, labelled = batch_tensors()
    full = vae_loss(out, target, mask, action, action_mask, labelled, beta=0.3, lambda_align=2.0)
    assert full["loss"].item() == pytest.approx((full["recon"] + 0.3 * full["kl"] + 2.0 * full["align"]).item())
    no_align = vae_loss(out, target, mask, action, action_mask, labelled, beta=0.3, lambda_align=0.0)
    assert no_align["loss"].item() == pytest.approx((full["recon"] + 0.3 * full["kl"]).item())
    no_kl = vae_loss(out, target, mask, action, action_mask, labelled, beta=0.0, lambda_align=2.0)
    assert no_kl["loss"].item() == pytest.approx((full["recon"] + 2.0 * full["align"]).item())
    out = {k: v.clone().requires_grad_(True) for k, v in out.items()}
    only_recon = vae_loss(out, target, mask, action, action_mask, labelled, beta=0.0, lambda_align=0.0)
    grad_mu, grad_recon = torch.autograd.grad(only_recon["loss"], [out["mu"], out["recon"]], allow_unused=True)
    assert grad_mu is None and grad_recon is not None  # with both off, only reconstruction trains the model


def test_align_embodiments_limits_which_actions_align_latents(workdir):
    from latent_action_vae.train import build, flow_manifest_rows

    cfg = prepared(workdir, **{"vae.align_embodiments": ["so100_bimanual"]})
    rows, _ = flow_manifest_rows(cfg.manifests_dir, cfg.path("."))
    _, _, sampler, stats, _ = build(cfg.vae, rows)
    assert set(stats) == {"so100_bimanual"}
    batch = sampler.batch(0)
    labelled = [i for i, lab in zip(batch["item_ids"], batch["labelled"].tolist()) if lab]
    assert labelled and all(i.startswith("robotwin/") for i in labelled)


def test_audit_flagged_copies_stay_out_of_vae_training_and_evaluation(workdir):
    import shutil

    from jobs.vae import run_vae_eval

    episodes = workdir / "samples" / "task_agnostic" / "aloha_random" / "episodes"
    original = sorted(p.name for p in episodes.iterdir())[0]
    shutil.copytree(episodes / original, episodes / "episode_900004")  # a byte copy, as the sample defects plant
    cfg = prepared(workdir)
    with Catalog(cfg.catalog_path) as cat:
        ids = set(cat.items().column("item_id").to_pylist())
        copy_id = next(i for i in ids if i.endswith("episode_900004"))
        original_id = next(i for i in ids if i.endswith(original))
        run_vae_train(cfg, cat, steps=1, progress=False)
        results = run_vae_eval(cfg, cat)
    state = torch.load(cfg.path("vae") / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["excluded"] == {copy_id: f"exact copy of {original_id}"}
    assert results["meta"]["excluded"] == state["excluded"]
    assert copy_id not in {e["item_id"] for e in results["meta"]["picture"]["pairs"]}
    cfg.vae.exclude_flagged = False  # switched off, the copy is back in (and the checkpoint no longer resumes)
    with Catalog(cfg.catalog_path) as cat, pytest.raises(ValueError, match="exclude_flagged"):
        run_vae_train(cfg, cat, steps=2, progress=False)


def test_per_source_balance_gives_each_source_the_same_zero_flow_error():
    from latent_action_vae.losses import reconstruction
    from latent_action_vae.train import source_balance
    from latent_action_vae.config import VAEConfig

    vc = VAEConfig(recon_balance="per_source", flow_scale_px=10.0, recon_floor_px=0.05)
    rows = [{"item_id": "ego/a", "source": "ego4d", "mean_px": 4.0, "n_pairs": 10},
            {"item_id": "ego/b", "source": "ego4d", "mean_px": 2.0, "n_pairs": 30},  # pair-weighted mean: 2.5 px
            {"item_id": "rt/a", "source": "robotwin", "mean_px": 0.25, "n_pairs": 5},
            {"item_id": "st/a", "source": "static", "mean_px": 0.0, "n_pairs": 5}]  # floored at 0.05 px
    w = source_balance(rows, vc)
    assert w["ego/a"] == w["ego/b"] == pytest.approx((10 / 2.5) ** 2)
    assert w["rt/a"] == pytest.approx((10 / 0.25) ** 2) and w["st/a"] == pytest.approx((10 / 0.05) ** 2)
    assert set(source_balance(rows, VAEConfig(recon_balance="none")).values()) == {1.0}
    # uniform fields of each source's mean magnitude: with the weights, zero flow costs every source the same
    target = torch.zeros(2, 2, 4, 4)
    target[0, 0], target[1, 0] = 2.5 / 10, 0.25 / 10
    mask = torch.ones(2, 4, 4, dtype=torch.bool)
    weights = torch.tensor([w["ego/a"], w["rt/a"]])
    per_pair = [reconstruction(torch.zeros(1, 2, 4, 4), target[i:i + 1], mask[i:i + 1], weights[i:i + 1])
                for i in range(2)]
    assert per_pair[0].item() == pytest.approx(per_pair[1].item()) == pytest.approx(1.0)
    unweighted = [reconstruction(torch.zeros(1, 2, 4, 4), target[i:i + 1], mask[i:i + 1]) for i in range(2)]
    assert unweighted[0].item() == pytest.approx(100 * unweighted[1].item())  # what it was: robot motion ~ignored


def test_moving_pixels_weigh_more_and_the_schedule_decays():
    from latent_action_vae.losses import reconstruction
    from latent_action_vae.train import lr_at
    from latent_action_vae.config import VAEConfig

    target = torch.zeros(1, 2, 4, 4)
    target[0, 0, 0, :2] = 1.0  # 2 moving pixels of 16
    mask = torch.ones(1, 4, 4, dtype=torch.bool)
    zero = torch.zeros_like(target)
    plain = reconstruction(zero, target, mask).item()
    weighted = reconstruction(zero, target, mask, moving_weight=8.0, moving_threshold=0.05).item()
    assert plain == pytest.approx(2 / 16)
    assert weighted == pytest.approx(2 * 8 / (2 * 8 + 14))  # the moving pixels' share of the average rises
    flat, cosine = VAEConfig(lr=1e-3, lr_decay_steps=0), VAEConfig(lr=1e-3, lr_decay_steps=100)
    assert lr_at(50, flat) == lr_at(99, flat) == pytest.approx(1e-3)
    assert lr_at(100, cosine) == pytest.approx(1e-4) and lr_at(500, cosine) == pytest.approx(1e-4)
    assert lr_at(19, cosine) > lr_at(60, cosine) > lr_at(99, cosine)


def test_end_point_error_loss_is_the_mean_vector_norm_and_prefers_the_median():
    from latent_action_vae.losses import reconstruction
    from latent_action_vae.train import source_balance
    from pipelines.config import VAEConfig

    target = torch.zeros(1, 2, 4, 4)
    target[0, 0, 0, 0], target[0, 1, 0, 0] = 0.3, 0.4  # one pixel moves by 0.5 (a 3-4-5 vector), 15 are still
    mask = torch.ones(1, 4, 4, dtype=torch.bool)
    zero = torch.zeros_like(target)
    assert reconstruction(zero, target, mask, kind="epe").item() == pytest.approx(0.5 / 16, abs=1e-4)
    assert reconstruction(zero, target, mask).item() == pytest.approx(0.25 / 16)
    # under doubt about where the motion is, squared error prefers smearing the mean over every pixel; the
    # end-point error prefers painting no motion (the median), as flow is judged
    smear = target.mean((2, 3), keepdim=True).expand_as(target)
    assert reconstruction(smear, target, mask).item() < reconstruction(zero, target, mask).item()
    assert reconstruction(smear, target, mask, kind="epe").item() > reconstruction(zero, target, mask, kind="epe").item()
    # per-source weights follow the loss's power of the flow's size
    rows = [{"item_id": "rt/a", "source": "robotwin", "mean_px": 0.25, "n_pairs": 5}]
    assert source_balance(rows, VAEConfig(recon_loss="epe"))["rt/a"] == pytest.approx(10 / 0.25)
    with pytest.raises(ValueError, match="squared or epe"):
        reconstruction(zero, target, mask, kind="l1")


def test_coarse_head_reads_the_pooled_flow_from_z_and_only_exists_when_trained():
    from latent_action_vae.config import VAEConfig
    from latent_action_vae.losses import coarse_reconstruction, vae_loss
    from latent_action_vae.model import LatentActionVAE

    target = torch.zeros(1, 2, 8, 8)
    target[0, 0, :4, :4] = 1.0  # the top-left quarter moves right by 1 unit
    mask = torch.ones(1, 8, 8, dtype=torch.bool)
    pooled = torch.zeros(1, 2, 2, 2)
    pooled[0, 0, 0, 0] = 1.0
    assert coarse_reconstruction(pooled, target, mask).item() == pytest.approx(0.0)
    assert coarse_reconstruction(torch.zeros_like(pooled), target, mask).item() == pytest.approx(1 / 4)
    mask[0, 4:, 4:] = False  # an invalid cell does not count, and invalid pixels do not dilute a valid cell's mean
    mask[0, 0, 0] = False
    assert coarse_reconstruction(pooled, target, mask).item() == pytest.approx(0.0)
    assert coarse_reconstruction(torch.zeros_like(pooled), target, mask).item() == pytest.approx(1 / 3)
    # the head is built only when it is trained, so checkpoints written without it still load
    assert LatentActionVAE(VAEConfig()).coarse_head is None
    model = LatentActionVAE(VAEConfig(coarse_weight=2.0, coarse_cells=4))
    out = model(torch.zeros(3, 2, 64, 64))
    assert out["coarse"].shape == (3, 2, 4, 4)
    args = (torch.zeros(3, 2, 64, 64), torch.ones(3, 64, 64, dtype=torch.bool), torch.zeros(3, 14),
            torch.zeros(3, 14), torch.zeros(3, dtype=torch.bool), 0.0, 0.0)
    with_head, without = vae_loss(out, *args, coarse_weight=2.0), vae_loss(out, *args)
    assert with_head["loss"].item() == pytest.approx(without["loss"].item() + 2.0 * with_head["coarse"].item())
    # coarse_skip: μ gains a linear read of the pooled input flow in px, beside the DC-AE path
    skip = LatentActionVAE(VAEConfig(coarse_weight=1.0, coarse_skip=True, coarse_cells=2)).eval()
    torch.nn.init.zeros_(skip.to_posterior[-1].weight), torch.nn.init.zeros_(skip.to_posterior[-1].bias)
    with torch.no_grad():
        skip.skip.weight.zero_(), skip.skip.bias.zero_()
        skip.skip.weight[0, 0] = 1.0  # μ_0 = the x-flow of the top-left cell, in px
        flow = torch.zeros(1, 2, 64, 64)
        flow[0, 0, :32, :32] = 0.3  # network units: 3 px at flow_scale_px 10
        assert skip.encode(flow)[0][0, 0].item() == pytest.approx(3.0, rel=1e-5)
        assert skip.encode(2 * flow)[0][0, 0].item() == pytest.approx(6.0, rel=1e-5)


def test_bad_objective_settings_name_the_key():
    from pipelines.config import ConfigError

    with pytest.raises(ConfigError, match="vae.recon_balance"):
        load_config(None, **{"vae.recon_balance": "per_pixel"})
    with pytest.raises(ConfigError, match="vae.moving_weight"):
        load_config(None, **{"vae.moving_weight": 0.5})
    with pytest.raises(ConfigError, match="vae.recon_loss"):
        load_config(None, **{"vae.recon_loss": "l1"})
    with pytest.raises(ConfigError, match="vae.coarse_weight"):
        load_config(None, **{"vae.coarse_weight": -1})
    with pytest.raises(ConfigError, match="vae.coarse_skip"):
        load_config(None, **{"vae.coarse_skip": True, "vae.input": "colour"})
