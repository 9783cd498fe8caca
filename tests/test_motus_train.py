"""The compact Motus trainer: the loss falls on a fixed synthetic set, checkpoints resume exactly, settings that
changed are refused, stage 3 starts from a stage-2 checkpoint, and two torchrun processes train in lockstep."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from training_hooks.motus import Motus
from training_hooks.motus_config import MODES, MotusConfig
from training_hooks.train import (CHECKPOINT_KIND, ActionMeans, SyntheticMotion, TrainConfig, build_model, evaluate,
                                  format_eval, load_motus, load_train_config, main, param_digest, train)

torch.set_num_threads(1)

IMAGE = (48, 40)
TINY_MODEL = dict(work_size=[24, 20], patch_size=4, n_layers=2, n_heads=4, head_dim=16, d_video=64, d_action=32,
                  d_und=32, text_dim=16, num_video_frames=4, action_dim=6)


def tiny_config(**overrides) -> TrainConfig:
    settings = dict(model=MotusConfig(**TINY_MODEL), steps=16, batch_size=4, lr=3e-3, warmup_steps=4, log_every=1,
                    checkpoint_every=4, eval_every=100, eval_windows=4, eval_steps=2)
    return TrainConfig(**{**settings, **overrides})


def data_for(cfg: TrainConfig, n: int = 8):
    train_set = SyntheticMotion(n, cfg.model, IMAGE, seed=0)
    val_set = SyntheticMotion(cfg.batch_size, cfg.model, IMAGE, seed=1)
    return train_set.train_batches(cfg.batch_size, cfg.seed), lambda: val_set.val_batches(cfg.batch_size)


def metric_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_loss_falls_on_a_fixed_synthetic_set(tmp_path):
    cfg = tiny_config(steps=100, batch_size=8, warmup_steps=10, checkpoint_every=50, eval_every=50, eval_windows=6)
    make_train, make_val = data_for(cfg)
    result = train(cfg, make_train, make_val, tmp_path, progress=False)
    losses = [float(r["loss"]) for r in metric_rows(tmp_path)]
    assert len(losses) == 100
    assert statistics.mean(losses[-10:]) < 0.7 * statistics.mean(losses[:10])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.pt", "step_000050.pt",
                                                                             "step_000100.pt"]
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["step"] == 100 and saved == {"step": 100, **result.eval}
    assert {"vla_action_mse", "idm_action_mse", "vla_mean_action_mse", "idm_mean_action_mse",
            "idm_swapped_action_mse", "zero_action_mse", "embodiment_mean_action_mse", "wm_video_mse"} <= set(saved)
    assert saved["samples"] == 6  # eval_windows of the 8 val windows
    # the realised share of each training mode is logged; by default 0.4 IDM, 0.2 joint / VLA / WM, no VGM
    rows = metric_rows(tmp_path)
    assert all(abs(sum(float(r[f"share_{m}"]) for m in MODES) - 1) < 1e-3 for r in rows)
    assert abs(result.mode_shares["idm"] - 0.4) < 0.06 and result.mode_shares["vgm"] == 0
    assert result.samples_per_s > 0
    model, state = load_motus(tmp_path / "checkpoints" / "last.pt")
    assert state["step"] == 100 and param_digest(model) == result.param_digest


def test_synthetic_actions_follow_the_video():
    """The square moves by the actions: the same actions give the same clip, different ones a different clip."""
    cfg = MotusConfig(**TINY_MODEL)
    data = SyntheticMotion(4, cfg, IMAGE, seed=0)
    a, b = data.sample(0), SyntheticMotion(4, cfg, IMAGE, seed=0).sample(0)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["video_frames"].shape == (4, 3, *IMAGE) and a["action_sequence"].shape == (4, 6)
    assert 0 <= a["video_frames"].min() and a["video_frames"].max() <= 1
    moved = (a["video_frames"][1:] - a["video_frames"][:-1]).abs().sum(dim=(1, 2, 3))
    assert (moved > 1).all()  # every frame shows motion
    assert a["language_mask"].sum() >= 3
    # each rank of a multi-process run draws its own batches
    make = data.train_batches(batch_size=4)
    rank0, rank1 = next(make(0, 0, 2)), next(make(0, 1, 2))
    assert not torch.equal(rank0["action_sequence"], rank1["action_sequence"])
    assert torch.equal(next(make(5, 1, 2))["action_sequence"], next(make(5, 1, 2))["action_sequence"])


def crash_at(make_train, crash_step: int):
    """A batch factory that dies when it reaches `crash_step`, as a killed run would."""
    def crashing(step_offset, rank=0, world_size=1):
        for step, batch in enumerate(make_train(step_offset, rank, world_size), start=step_offset):
            if step == crash_step:
                raise RuntimeError("simulated crash")
            yield batch
    return crashing


def test_resume_continues_exactly(tmp_path):
    cfg = tiny_config()
    make_train, make_val = data_for(cfg)
    straight = train(cfg, make_train, make_val, tmp_path / "straight", progress=False)

    crashing = crash_at(make_train, 10)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, crashing, make_val, tmp_path / "resumed", progress=False)
    assert torch.load(tmp_path / "resumed/checkpoints/last.pt", weights_only=True)["step"] == 8
    resumed = train(cfg, make_train, make_val, tmp_path / "resumed", progress=False)
    assert resumed.resumed_from == 8
    assert resumed.param_digest == straight.param_digest
    a, _ = load_motus(tmp_path / "straight/checkpoints/last.pt")
    b, _ = load_motus(tmp_path / "resumed/checkpoints/last.pt")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    steps = [int(r["step"]) for r in metric_rows(tmp_path / "resumed")]
    assert steps == list(range(16))  # the crashed run's rows after the checkpoint are not logged twice
    assert [r["loss"] for r in metric_rows(tmp_path / "resumed")] == [r["loss"] for r in metric_rows(
        tmp_path / "straight")]


def test_a_resumed_shard_run_continues_the_same_stream(tmp_path):
    """Batches after a resume are those an uninterrupted run takes at those steps, so a shard run killed after a
    checkpoint and resumed ends with the weights and checkpoint bytes of one that never stopped."""
    from samples.shard_sets import LANG_DIM, footage_clips, write_shard_set
    from training_hooks.train import shard_batches

    clips = footage_clips(6, size=IMAGE, prefix="tr") + footage_clips(2, size=IMAGE, seed=1, split="val", prefix="va")
    write_shard_set(tmp_path / "shards", clips, samples_per_shard=2)
    model = MotusConfig(**{**TINY_MODEL, "text_dim": LANG_DIM, "action_dim": 14})
    cfg = tiny_config(model=model, steps=6, batch_size=2, checkpoint_every=2, eval_windows=0)
    loader = {"height": IMAGE[0], "width": IMAGE[1], "video_step": 2, "max_text_len": 8, "shuffle_buffer": 4}
    make_train, _ = shard_batches(tmp_path / "shards", loader, cfg, num_workers=0)
    straight_batches = [b for _, b in zip(range(cfg.steps), make_train(0))]
    resumed_batches = [b for _, b in zip(range(cfg.steps - 3), make_train(3))]
    assert len(straight_batches) == cfg.steps  # past the end of an epoch: 6 clips, 3 batches of 2 per epoch
    for a, b in zip(straight_batches[3:], resumed_batches):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]) if torch.is_tensor(a[key]) else a[key] == b[key], key
    assert not all(torch.equal(straight_batches[0]["video_frames"], b["video_frames"]) for b in resumed_batches)
    straight = train(cfg, make_train, None, tmp_path / "straight", progress=False)

    crashing = crash_at(make_train, 3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, crashing, None, tmp_path / "resumed", progress=False)
    resumed = train(cfg, make_train, None, tmp_path / "resumed", progress=False)
    assert resumed.resumed_from == 2
    assert resumed.param_digest == straight.param_digest
    assert ((tmp_path / "resumed/checkpoints/last.pt").read_bytes()
            == (tmp_path / "straight/checkpoints/last.pt").read_bytes())


def test_resume_refuses_other_settings(tmp_path):
    cfg = tiny_config(steps=4)
    make_train, make_val = data_for(cfg)
    train(cfg, make_train, make_val, tmp_path, progress=False)
    other = tiny_config(steps=8, model=MotusConfig(**{**TINY_MODEL, "d_action": 16}), lr=1e-3)
    with pytest.raises(ValueError, match=r"model\.d_action: 32 -> 16.*lr: 0\.003 -> 0\.001"):
        train(other, make_train, make_val, tmp_path, progress=False)
    # more steps with the same settings is fine; without resume the run starts over
    assert train(tiny_config(steps=6), make_train, make_val, tmp_path, progress=False).resumed_from == 4
    assert train(other, make_train, make_val, tmp_path, resume=False, progress=False).resumed_from == 0


def test_a_checkpoint_from_before_a_new_model_key_resumes(tmp_path):
    """A checkpoint whose config lacks a model key added later (motion_input) resumes when the run keeps that
    key's default, and is refused, naming it, when the run changes it."""
    cfg = tiny_config(steps=4)
    make_train, make_val = data_for(cfg)
    train(cfg, make_train, make_val, tmp_path, progress=False)
    last = tmp_path / "checkpoints/last.pt"
    state = torch.load(last, weights_only=False)
    del state["config"]["model"]["motion_input"]
    torch.save(state, last)
    assert train(tiny_config(steps=6), make_train, make_val, tmp_path, progress=False).resumed_from == 4
    moving = tiny_config(steps=8, model=MotusConfig(**{**TINY_MODEL, "motion_input": True}))
    with pytest.raises(ValueError, match=r"model\.motion_input: False -> True"):
        train(moving, make_train, make_val, tmp_path, progress=False)


def test_stage3_starts_from_a_stage2_checkpoint(tmp_path):
    stage2 = tiny_config(steps=2, checkpoint_every=2)
    make_train, make_val = data_for(stage2)
    train(stage2, make_train, make_val, tmp_path / "stage2", progress=False)
    # stage 3 also brings its own training settings (here: VLA-heavy mode shares); the weights stay stage 2's
    stage3_model = MotusConfig(**{**TINY_MODEL, "action_dim": 5, "state_dim": 2, "n_registers": 4, "action_ratio": 2,
                                  "mode_shares": {"vla": 0.7, "idm": 0.3}})
    stage3 = tiny_config(steps=2, stage=3, model=stage3_model, init_from=str(tmp_path / "stage2/checkpoints/last.pt"))
    before, _ = load_motus(stage3.init_from)
    model = build_model(stage3)
    old, new = before.state_dict(), model.state_dict()
    shared = [k for k in old if not k.startswith(("action_encoder.", "action_decoder."))]
    assert shared and all(torch.equal(old[k], new[k]) for k in shared)
    assert model.cfg == stage3_model
    make_train, make_val = data_for(stage3)
    result = train(stage3, make_train, make_val, tmp_path / "stage3", progress=False)
    assert result.eval["samples"] == stage3.batch_size
    with pytest.raises(ValueError, match="model.d_und"):
        build_model(dataclasses.replace(stage3, model=MotusConfig(**{**TINY_MODEL, "d_und": 16, "state_dim": 2})))


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="model.state_dim must be 0 in stage 2"):
        TrainConfig(model=MotusConfig(state_dim=3))
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainConfig(warmup_steps=-1)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"model": {"d_vidoe": 64}, "loader": {"anything": 1}}))
    with pytest.raises(ValueError, match="d_vidoe"):
        load_train_config(path)
    path.write_text(yaml.safe_dump({"model": {"n_layers": 2}, "steps": 5, "loader": {"max_text_len": 8}}))
    cfg, loader = load_train_config(path, steps=7)
    assert (cfg.model.n_layers, cfg.steps, loader) == (2, 7, {"max_text_len": 8})
    with pytest.raises(SystemExit):
        main(["--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path), "--synthetic", "4"])


def test_mode_shares_schedule_switches_modes_at_its_steps(tmp_path):
    """A curriculum from the YAML config: the IDM setting alone for the first steps, then VLA alone; the realised
    shares in metrics.csv switch at the configured step, the video loss only counts once video is generated, and a
    resume with another schedule is refused. Bad schedules are errors naming the key."""
    path = tmp_path / "cfg.yaml"
    settings = {"model": TINY_MODEL, "steps": 10, "batch_size": 4, "lr": 3e-3, "warmup_steps": 2, "log_every": 1,
                "checkpoint_every": 5, "eval_every": 100, "eval_windows": 0, "mode_shares_schedule": {0: {"idm": 1}, 6: {"vla": 1}}}
    path.write_text(yaml.safe_dump(settings))
    cfg, _ = load_train_config(path)
    assert cfg.mode_shares_at(5) == {"idm": 1} and cfg.mode_shares_at(6) == {"vla": 1}
    make_train, make_val = data_for(cfg)
    result = train(cfg, make_train, make_val, tmp_path / "run", progress=False)
    rows = metric_rows(tmp_path / "run")
    assert [float(r["share_idm"]) for r in rows] == [1.0] * 6 + [0.0] * 4
    assert [float(r["share_vla"]) for r in rows] == [0.0] * 6 + [1.0] * 4
    assert all(float(r["loss_video"]) == 0 for r in rows[:6]) and all(float(r["loss_video"]) > 0 for r in rows[6:])
    assert result.mode_shares["idm"] == 0.6 and result.mode_shares["vla"] == 0.4
    # before the first entry, and with no schedule, the model's shares hold
    late = dataclasses.replace(cfg, mode_shares_schedule={4: {"wm": 1}})
    assert late.mode_shares_at(3) == cfg.model.mode_shares and tiny_config().mode_shares_at(7) == cfg.model.mode_shares
    other = dataclasses.replace(cfg, steps=12, mode_shares_schedule={0: {"idm": 1}, 8: {"vla": 1}})
    with pytest.raises(ValueError, match="mode_shares_schedule"):
        train(other, make_train, make_val, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match=r"mode_shares_schedule: each key .* \[0, steps=10\), got 10"):
        tiny_config(steps=10, mode_shares_schedule={0: {"idm": 1}, 10: {"vla": 1}})
    with pytest.raises(ValueError, match=r"mode_shares_schedule\[3\]: unknown mode\(s\) \['ibm'\]"):
        tiny_config(mode_shares_schedule={3: {"ibm": 1}})
    with pytest.raises(ValueError, match=r"mode_shares_schedule\[0\] must be >= 0 with a positive sum"):
        tiny_config(mode_shares_schedule={0: {"idm": 0}})


def test_two_processes_train_in_lockstep(tmp_path):
    config = tmp_path / "tiny.yaml"
    settings = dataclasses.asdict(tiny_config(checkpoint_every=100, eval_every=100))
    config.write_text(yaml.safe_dump(settings))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training_hooks.train", "--config", str(config), "--out", str(tmp_path / "run"),
           "--synthetic", "8", "--image-size", *map(str, IMAGE), "--steps", "3", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["rank"] for r in reports) == [0, 1]
    assert reports[0]["param_digest"] == reports[1]["param_digest"]
    assert reports[0]["loss"] == reports[1]["loss"]  # the logged loss is averaged over both ranks
    model, state = load_motus(tmp_path / "run/checkpoints/last.pt")
    assert state["step"] == 3 and state["world_size"] == 2
    assert param_digest(model) == reports[0]["param_digest"]
    assert [int(r["step"]) for r in metric_rows(tmp_path / "run")] == [0, 1, 2]  # rank 0 alone writes


def test_evaluate_reports_baselines_per_tier_and_embodiment():
    cfg = MotusConfig(**TINY_MODEL)
    torch.manual_seed(0)
    model = Motus(cfg)
    data = SyntheticMotion(12, cfg, IMAGE, seed=3)
    batches = data.val_batches(4)
    for k, b in enumerate(batches):  # shard batches carry the tier and an item id `source/native_id`
        b["tier"] = torch.tensor([3, 3, 4, 4])
        b["item_id"] = [f"{'robotwin' if t == 3 else 'task_agnostic'}/clip{k}_{i}" for i, t in enumerate(b["tier"])]
    means = ActionMeans()
    means.add({"action_sequence": torch.ones(2, 4, 6), "item_id": ["robotwin/a", "robotwin/b"]})
    result = evaluate(model, batches, num_steps=2, action_means=means.means(), max_windows=10)
    assert result["samples"] == 10  # the third batch is cut to the windows asked for
    assert result["by_tier"]["3"]["samples"] == 6 and result["by_tier"]["4"]["samples"] == 4
    assert set(result["by_embodiment"]) == {"robotwin", "task_agnostic"}
    actions = torch.cat([b["action_sequence"] for b in batches])[:10]
    torch.testing.assert_close(result["zero_action_mse"], (actions ** 2).mean().item())
    # robotwin windows are scored against the robotwin training mean (ones); task_agnostic ones, never seen in
    # training, against the mean over all training windows (ones as well)
    torch.testing.assert_close(result["embodiment_mean_action_mse"], ((actions - 1) ** 2).mean().item())
    # a fresh model predicts zero velocity, so every sample is its starting noise: the posterior mean of 8 samples
    # is off by noise of variance 1/8, the one-step estimate by the noise itself (variance 1)
    zero = result["zero_action_mse"]
    assert zero + 0.08 < result["vla_mean_action_mse"] < zero + 0.17
    one_step = evaluate(model, batches, num_steps=2, action_means=means.means(), max_windows=10, mean_samples=1)
    assert one_step["vla_mean_action_mse"] > zero + 0.5
    text = format_eval(result)
    assert "tier 3" in text and "task_agnostic" in text and "emb mean" in text and "IDM swap" in text
    # without training means, the baseline is the mean of the evaluated windows per embodiment
    own = evaluate(model, batches, num_steps=2, max_windows=10)
    assert own["embodiment_mean_action_mse"] < own["zero_action_mse"]


def test_evaluate_holds_the_state_as_a_baseline_where_actions_are_as_wide():
    cfg = MotusConfig(**{**TINY_MODEL, "state_dim": TINY_MODEL["action_dim"]})
    torch.manual_seed(0)
    batches = SyntheticMotion(8, cfg, IMAGE, seed=3).val_batches(4)
    result = evaluate(Motus(cfg), batches, num_steps=2, max_windows=8)
    actions = torch.cat([b["action_sequence"] for b in batches])[:8].float()
    state = torch.cat([b["initial_state"] for b in batches])[:8].float()
    torch.testing.assert_close(result["hold_state_action_mse"], ((actions - state[:, None]) ** 2).mean().item())
    assert result["hold_state_action_mse"] != result["zero_action_mse"]
    assert "hold state" in format_eval(result)
    narrow = MotusConfig(**{**TINY_MODEL, "state_dim": 2})  # a state of another width: no such baseline
    result = evaluate(Motus(narrow), SyntheticMotion(8, narrow, IMAGE, seed=3).val_batches(4), num_steps=2)
    assert "hold_state_action_mse" not in result and "hold state" not in format_eval(result)


def test_older_checkpoints_are_refused_clearly(tmp_path):
    cfg = tiny_config(steps=2, checkpoint_every=2)
    make_train, make_val = data_for(cfg)
    train(cfg, make_train, make_val, tmp_path, progress=False)
    path = tmp_path / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    assert state["kind"] == CHECKPOINT_KIND
    state["kind"] = "motus-pyramid/motus/v1"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"motus/v1 checkpoint, from before this version.*train again"):
        load_motus(path)
    with pytest.raises(ValueError, match=r"motus/v1 checkpoint"):
        train(tiny_config(steps=4), make_train, make_val, tmp_path, progress=False)
    torch.save({"weights": 1}, path)
    with pytest.raises(ValueError, match="not a compact-Motus checkpoint"):
        load_motus(path)


def test_shard_evaluation_reads_every_held_out_split_until_it_has_its_windows(tmp_path):
    """The evaluation takes windows from the val and test shards (a small val split can miss whole tiers), reads
    them again for other windows until it has eval_windows, and groups them by tier and by source."""
    from samples.shard_sets import LANG_DIM, footage_clips, write_shard_set
    from training_hooks.train import shard_batches

    clips = (footage_clips(4, size=IMAGE, prefix="tr") + footage_clips(2, size=IMAGE, seed=1, split="val", prefix="va")
             + footage_clips(2, size=IMAGE, seed=2, split="test", prefix="te"))
    write_shard_set(tmp_path / "shards", clips, samples_per_shard=2)
    model = MotusConfig(**{**TINY_MODEL, "text_dim": LANG_DIM, "action_dim": 14})  # the shards' 14-d latents
    cfg = tiny_config(model=model, steps=2, batch_size=2, eval_windows=10)
    loader = {"height": IMAGE[0], "width": IMAGE[1], "video_step": 2, "max_text_len": 8}
    make_train, make_val = shard_batches(tmp_path / "shards", loader, cfg, num_workers=0)
    result = train(cfg, make_train, make_val, tmp_path / "run", progress=False)
    assert result.eval["samples"] == 10  # 4 held-out clips, one window each per pass
    assert set(result.eval["by_embodiment"]) == {"va", "te"}
    assert set(result.eval["by_tier"]) == {str(c.tier) for c in clips if c.split != "train"}
    assert result.eval["embodiment_mean_action_mse"] != result.eval["zero_action_mse"]
    with pytest.raises(ValueError, match="eval_splits"):
        tiny_config(eval_splits=["train"])
