"""The set-up several test modules share: a workdir whose sample RoboTwin and task-agnostic items are ingested,
given flow, a tiny VAE and latent-action labels (ingest → flow → VAE → label), ready for the shard stage."""

from __future__ import annotations

import shutil
from pathlib import Path

from catalog import Catalog
from pipelines.config import PipelineConfig, load_config
from pipelines.flow import run_flow
from pipelines.ingest import ingest
from pipelines.label import run_label
from pipelines.runners import make_runner
from jobs.vae import run_vae_train

TINY = {"runner.engine": "local", "flow.store_size": [32, 32], "vae.image_size": 32,
        "vae.widths": [8, 16, 32, 64, 128], "vae.latent_channels": 64, "vae.hidden": 64, "vae.batch_size": 8,
        "vae.steps": 2, "vae.threads": 1}


def labelled_workdir(root: Path, sim_samples: Path, sources_at: str | None = None, **overrides) -> PipelineConfig:
    """`root` as a labelled workdir of the `sim_samples` trees (conftest.py). With `sources_at` (a bucket URL that
    holds the trees under `samples/`), the sources are read from there instead of a local copy."""
    cfg = load_config(None, workdir=str(root), **{**TINY, **overrides})
    cfg.sources = [s for s in cfg.sources if s.kind in ("robotwin", "task_agnostic")]
    if sources_at:
        for s in cfg.sources:
            s.root = f"{sources_at.rstrip('/')}/{s.root}"
    else:
        shutil.copytree(sim_samples, root / "samples")
    runner = make_runner("local")
    with Catalog(cfg.catalog_path) as cat:
        ingest(cfg, cat, runner, progress=False)
        run_flow(cfg, cat, runner, progress=False)
        run_vae_train(cfg, cat, progress=False)
        run_label(cfg, cat, runner, progress=False)
    return cfg
