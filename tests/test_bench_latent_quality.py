"""The latent-quality bench's variants are real demo configs, and a longer run's lr anneals over its own steps."""

from bench.bench_latent_quality import CONFIG, VARIANTS, variant_overrides
from pipelines.config import load_config


def test_every_variant_loads_on_the_demo_config(tmp_path):
    for variant in VARIANTS:
        cfg = load_config(CONFIG, workdir=str(tmp_path), **variant_overrides(variant, seed=1, steps=600))
        assert cfg.vae.steps == 600 and cfg.vae.seed == 1 and cfg.vae.output == f"vae_{variant}_s1"


def test_the_cosine_decay_follows_the_steps(tmp_path):
    cfg = load_config(CONFIG, workdir=str(tmp_path),
                      **variant_overrides("coarse_skip_pca_res_mask_lr1e3", seed=0, steps=1200))
    assert (cfg.vae.steps, cfg.vae.lr_decay_steps, cfg.vae.lr) == (1200, 1200, 1e-3)
    assert cfg.vae.coarse_mask == "frame"
    shipped = load_config(CONFIG, workdir=str(tmp_path), **variant_overrides("default", seed=0, steps=600))
    assert (shipped.vae.lr_decay_steps, shipped.vae.lr) == (600, load_config(CONFIG).vae.lr)
    before = load_config(CONFIG, workdir=str(tmp_path), **variant_overrides("before", seed=0, steps=1200))
    assert before.vae.lr_decay_steps == 0  # its constant lr stays constant


def test_the_earlier_rounds_keep_their_learning_rate(tmp_path):
    mask = load_config(CONFIG, workdir=str(tmp_path), **variant_overrides("coarse_skip_pca_res_mask", seed=0, steps=600))
    assert mask.vae.lr == 3e-4 and mask.vae.coarse_mask == "frame"
