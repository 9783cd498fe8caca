"""The controlled case: a square whose displacement between frames is the action, with no language prior. After a
short CPU training the IDM reads the actions from the video (well below the VLA, which can only guess), and
giving it another clip's future frames makes it much worse."""

from __future__ import annotations

import torch

from training_hooks.motus_config import MotusConfig
from training_hooks.train import SyntheticMotion, TrainConfig, evaluate, load_motus, train

torch.set_num_threads(1)

# 32x32 frames, 4 video frames; the model's defaults otherwise (rotary clock, position scale, mode shares)
MODEL = dict(work_size=[32, 32], patch_size=8, n_layers=2, n_heads=4, head_dim=16, d_video=64, d_action=64, d_und=32,
             text_dim=16, num_video_frames=4, action_dim=2, rope_dims=8)


def square_clips(cfg: MotusConfig, n: int, seed: int) -> SyntheticMotion:
    return SyntheticMotion(n, cfg, (32, 32), seed=seed, language_prior=False, travel=0.06)


def test_idm_reads_the_video_and_beats_the_vla(tmp_path):
    model_cfg = MotusConfig(**MODEL)
    cfg = TrainConfig(model=model_cfg, steps=600, batch_size=16, lr=2e-3, min_lr=2e-4, warmup_steps=20,
                      log_every=100, checkpoint_every=500, eval_every=10 ** 6, eval_windows=0)
    train(cfg, square_clips(model_cfg, 4096, seed=0).train_batches(16), None, tmp_path, progress=False)
    model, _ = load_motus(tmp_path / "checkpoints" / "last.pt")
    held_out = square_clips(model_cfg, 64, seed=1).val_batches(32)
    result = evaluate(model, held_out, num_steps=10, seed=0)
    idm, vla = result["idm_mean_action_mse"], result["vla_mean_action_mse"]
    swapped = result["idm_swapped_action_mse"]
    assert result["samples"] == 64
    # no language and no heading: the VLA's best guess is the mean, about the zero predictor
    assert vla > 0.8 * result["zero_action_mse"]
    assert idm <= 0.5 * vla, result
    assert swapped >= 2 * idm, result
    assert idm < 0.6 * result["embodiment_mean_action_mse"], result
