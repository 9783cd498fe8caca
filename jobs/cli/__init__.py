"""`pyramid`: one command-line entry point, a subcommand per job. Each is a thin shell over a library function.
The shared options and openers are in `shared.py`; `export` and `audit` have their own files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from jobs.cli.audit import audit
from jobs.cli.export import export_app
from jobs.cli.shared import (ConfigOpt, EngineOpt, RayAddressOpt, WorkdirOpt, _config, _open_catalog, _runner,
                                  console, err)

app = typer.Typer(add_completion=False, no_args_is_help=True, help="motus-pyramid: the Motus data pyramid to labelled training shards.")
catalog_app = typer.Typer(no_args_is_help=True, help="Query the DuckDB catalog.")
app.add_typer(catalog_app, name="catalog")
vae_app = typer.Typer(no_args_is_help=True, help="Train and evaluate the latent-action VAE.")
app.add_typer(vae_app, name="vae")

@app.command()
def samples(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: <workdir>/samples)."),
    workdir: Optional[Path] = WorkdirOpt,
    scale: int = typer.Option(1, "--scale", help="Multiplies every tier's item count."),
    seed: int = typer.Option(0, "--seed"),
    defects: bool = typer.Option(True, "--defects/--no-defects", help="Add deliberately bad items."),
):
    """Generate the sample pyramid (all six-tier formats we can make offline) in official on-disk layouts."""
    from samples.pyramid import generate_sample_pyramid

    cfg = _config(None, workdir)
    target = out or cfg.path("samples")
    summary = generate_sample_pyramid(target, scale=scale, seed=seed, defects=defects, console=err)
    console.print(f"sample pyramid in {summary.root}: {summary.counts}, {len(summary.defects)} defects")


@app.command()
def ingest(
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[Path] = WorkdirOpt,
    engine: Optional[str] = EngineOpt,
    ray_address: Optional[str] = RayAddressOpt,
    force: bool = typer.Option(False, "--force", help="Redo items already done."),
):
    """Discover every configured source, probe each item, fill the catalog and the items manifest."""
    from pipelines.ingest import ingest as run_ingest
    from pipelines.report import funnel_table

    cfg = _config(config, workdir, **{"runner.engine": engine, "runner.ray_address": ray_address})
    err.print(cfg.to_yaml(), highlight=False)
    runner = _runner(cfg)
    with _open_catalog(cfg) as cat:
        try:
            report = run_ingest(cfg, cat, runner, force=force, console=err)
        finally:
            runner.close()
        console.print(funnel_table(cat))
    console.print(f"items manifest: {report.manifest_path}")
    if report.source_errors or report.stage.counts.get("failed"):
        raise typer.Exit(1)


@app.command()
def flow(
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[Path] = WorkdirOpt,
    engine: Optional[str] = EngineOpt,
    ray_address: Optional[str] = RayAddressOpt,
    backend: Optional[str] = typer.Option(None, "--backend", help="dis (CPU) or dpflow (ptlflow DPFlow)."),
    force: bool = typer.Option(False, "--force", help="Redo items already done."),
):
    """Compute optical flow pairs and motion statistics for every ingested item (one artifact per item)."""
    from flow_extraction.base import FlowConfigError
    from pipelines.flow import run_flow
    from pipelines.report import arrow_to_rich

    cfg = _config(config, workdir, **{"runner.engine": engine, "runner.ray_address": ray_address,
                                      "flow.backend": backend})
    err.print(cfg.to_yaml(), highlight=False)
    runner = _runner(cfg)
    with _open_catalog(cfg) as cat:
        try:
            report = run_flow(cfg, cat, runner, force=force, console=err)
        except FlowConfigError as e:
            err.print(f"[red]flow backend cannot start:[/red] {escape(str(e))}", highlight=False)
            raise typer.Exit(2)
        finally:
            runner.close()
        from pipelines.flow import flow_stats_by_source

        console.print(arrow_to_rich(flow_stats_by_source(cat), title="Flow statistics per source"))
    if report.stage.counts.get("failed"):
        raise typer.Exit(1)


@vae_app.command("train")
def vae_train(
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[Path] = WorkdirOpt,
    steps: Optional[int] = typer.Option(None, "--steps", help="Train up to this step (default: vae.steps)."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from the last checkpoint if present."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes on this machine (torchrun, gloo), each training on batches of its own."),
):
    """Train the DC-AE latent-action VAE on the flow manifest (90% reconstruction, 10% action alignment, KL)."""
    from jobs.vae import run_vae_train

    cfg = _config(config, workdir)
    err.print(cfg.to_yaml(), highlight=False)
    with _open_catalog(cfg) as cat:
        try:
            result = run_vae_train(cfg, cat, resume=resume, steps=steps, console=err, nproc=nproc)
        except (FileNotFoundError, ValueError, RuntimeError) as e:
            err.print(f"[red]vae train:[/red] {escape(str(e))}", highlight=False)
            raise typer.Exit(2)
    console.print(f"checkpoint {result.checkpoint} at step {result.steps}; metrics {result.metrics_path}; "
                  f"{result.samples_per_s:.1f} samples/s", highlight=False)


@vae_app.command("eval")
def vae_eval(
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[Path] = WorkdirOpt,
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Default: <workdir>/<vae.output>/checkpoints/last.pt"),
):
    """Evaluate on held-out groups: probe R²/MSE vs random-init and mean baselines, EPE, active dims."""
    from pipelines.report import evaluation_table
    from jobs.vae import run_vae_eval

    cfg = _config(config, workdir)
    with _open_catalog(cfg) as cat:
        try:
            results = run_vae_eval(cfg, cat, checkpoint=str(checkpoint) if checkpoint else None, console=err)
        except (FileNotFoundError, ValueError) as e:
            err.print(f"[red]vae eval:[/red] {escape(str(e))}", highlight=False)
            raise typer.Exit(2)
    console.print(evaluation_table(results))


@app.command()
def label(
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[Path] = WorkdirOpt,
    engine: Optional[str] = EngineOpt,
    ray_address: Optional[str] = RayAddressOpt,
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Default: <workdir>/<vae.output>/checkpoints/last.pt"),
    force: bool = typer.Option(False, "--force", help="Redo items already labelled with this checkpoint."),
):
    """Label every item with latent actions [T-1, 14] (row j = motion starting at frame j); print per-dim stats."""
    from pipelines.label import run_label
    from pipelines.report import latent_stats_table

    cfg = _config(config, workdir, **{"runner.engine": engine, "runner.ray_address": ray_address})
    runner = _runner(cfg)
    with _open_catalog(cfg) as cat:
        try:
            report = run_label(cfg, cat, runner, checkpoint=str(checkpoint) if checkpoint else None, force=force,
                               console=err)
        except (FileNotFoundError, ValueError) as e:
            err.print(f"[red]label:[/red] {escape(str(e))}", highlight=False)
            raise typer.Exit(2)
        finally:
            runner.close()
    console.print(latent_stats_table(report.stats))
    if report.stage.counts.get("failed"):
        raise typer.Exit(1)


@app.command()
def shard(
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[Path] = WorkdirOpt,
    engine: Optional[str] = EngineOpt,
    ray_address: Optional[str] = RayAddressOpt,
    force: bool = typer.Option(False, "--force", help="Rebuild every sample, not only changed ones."),
):
    """Write WebDataset shards per split from the labelled clips (one sample per clip), registered when complete."""
    from pipelines.report import shards_table
    from pipelines.shard import run_shard

    cfg = _config(config, workdir, **{"runner.engine": engine, "runner.ray_address": ray_address})
    runner = _runner(cfg)
    with _open_catalog(cfg) as cat:
        try:
            report = run_shard(cfg, cat, runner, force=force, console=err)
        except (FileNotFoundError, ValueError) as e:
            err.print(f"[red]shard:[/red] {escape(str(e))}", highlight=False)
            raise typer.Exit(2)
        finally:
            runner.close()
    console.print(shards_table(report))
    if report.stage.counts.get("failed"):
        raise typer.Exit(1)


@app.command()
def train(
    shards: str = typer.Option(..., "--shards", help="Shard root (the folder or bucket URL with index.json), e.g. "
                               "demo_run/shards or s3://bucket/sets/v1."),
    out: str = typer.Option(..., "--out", "-o", help="Run folder (local): metrics.csv, eval.json, checkpoints/."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Trainer YAML (configs/train_demo.yaml): model:, loader:, steps, lr, ..."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Train up to this step (default: the config's steps)."),
    nproc: int = typer.Option(1, "--nproc", help="Processes on this machine (torchrun, gloo); each gets its own shards."),
    num_workers: int = typer.Option(0, "--num-workers", help="Loader workers per training process: decoding threads, or processes with loader.worker_kind: process."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from <out>/checkpoints/last.pt if present."),
):
    """Train the compact Motus model from WebDataset shards; evaluates VLA and IDM action MSE on held-out
    windows (`eval_splits`, val + test by default) beside the zero and per-embodiment-mean baselines."""
    import subprocess
    import sys

    from common import storage

    if storage.is_url(out):
        err.print(f"[red]--out {escape(storage.redact(out))}: the run folder is local (checkpoints are written and "
                  "resumed in place); copy it to a bucket after the run. --shards may be a bucket URL.[/red]",
                  highlight=False)
        raise typer.Exit(2)
    args = ["--shards", str(shards), "--out", str(out), "--num-workers", str(num_workers)]
    args += ["--config", str(config)] if config else []
    args += ["--steps", str(steps)] if steps is not None else []
    args += [] if resume else ["--no-resume"]
    if nproc > 1:  # several processes: torchrun's launcher, one rank per process (several nodes: see docs/trainer.md)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "training_hooks.train", *args]
        raise typer.Exit(subprocess.run(cmd).returncode)
    from training_hooks.train import main as train_main

    raise typer.Exit(train_main(args))


@app.command()
def fetch(
    repo_id: str = typer.Argument(..., help="Hub dataset repo, e.g. lerobot/aloha_static_cups_open."),
    out: Path = typer.Option(..., "--out", "-o", help="Local folder to place the files in (links into the hub cache)."),
    include: Optional[list[str]] = typer.Option(None, "--include", help="allow-patterns, e.g. 'meta/*' 'data/chunk-000/*'."),
    revision: Optional[str] = typer.Option(None, "--revision"),
):
    """Download a dataset (or a subset) from the Hugging Face Hub into the local cache; works offline from it."""
    from pipelines.hub import HubError, fetch as hub_fetch

    try:
        path = hub_fetch(repo_id, out, allow_patterns=include, revision=revision)
    except HubError as e:
        err.print(f"[red]fetch:[/red] {escape(str(e))}", highlight=False)
        raise typer.Exit(2)
    console.print(f"{repo_id} → {path}; add it to `sources:` (kind lerobot / oxe / ...) and run `pyramid ingest`")


@app.command()
def push(
    shards: Path = typer.Argument(..., help="Folder of shards (or any dataset folder) to upload."),
    repo_id: str = typer.Argument(..., help="Target Hub dataset repo."),
    public: bool = typer.Option(False, "--public", help="Create the repo public (default private)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and the dataset card; upload nothing."),
):
    """Upload a folder to a Hub dataset repo with a generated dataset card (token from HF_TOKEN or the hf login)."""
    from pipelines.hub import HubError, push as hub_push

    try:
        plan = hub_push(shards, repo_id, private=not public, dry_run=dry_run)
    except HubError as e:
        err.print(f"[red]push:[/red] {escape(str(e))}", highlight=False)
        raise typer.Exit(2)
    console.print(f"{'would upload' if dry_run else 'uploaded'} {len(plan.files)} files ({plan.total_bytes} bytes) "
                  f"to {repo_id}" + (f": {plan.commit_url}" if plan.commit_url else ""))
    if dry_run:
        console.print(plan.card, markup=False, highlight=False)


@app.command()
def status(config: Optional[Path] = ConfigOpt, workdir: Optional[Path] = WorkdirOpt):
    """Print the inventory (items, frames, hours, labelled share per source and tier), embodiment and rate per
    source with where each came from, the action semantics per source, the funnel, what the latest ingest noted
    per source (e.g. partial downloads), quarantine reasons. While a job holds the catalog: its stages' progress
    files, then all that from a snapshot of the catalog."""
    from pipelines.report import (embodiment_table, funnel_table, inventory_table, notes_table, reasons_table,
                                  semantics_table)

    cfg = _config(config, workdir)
    with _open_catalog(cfg, read_only=True, snapshot=True) as cat:
        if cat.is_snapshot:  # a job holds the catalog: its stages' progress files are newer than the snapshot
            from pipelines.report import progress_table

            console.print("Stage progress of the running job (progress/<stage>.json):", highlight=False, markup=False)
            console.print(progress_table(Path(cfg.catalog_path).parent))
        console.print(inventory_table(cat))
        console.print(embodiment_table(cat))
        console.print(semantics_table(cat))
        console.print(funnel_table(cat))
        console.print(notes_table(cat))
        console.print(reasons_table(cat))


@catalog_app.command("sql")
def catalog_sql(
    query: str = typer.Argument(..., help="SQL over the tables items, item_stages, artifacts, runs."),
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[Path] = WorkdirOpt,
    max_rows: int = typer.Option(200, "--max-rows"),
):
    """Run a read-only SQL query on the catalog and print the result as a table (from a snapshot of the catalog
    while a job holds it)."""
    import duckdb

    from pipelines.report import arrow_to_rich

    cfg = _config(config, workdir)
    with _open_catalog(cfg, read_only=True, snapshot=True) as cat:
        try:
            result = cat.sql(query)
        except duckdb.Error as e:
            err.print(f"[red]query failed:[/red] {escape(str(e))}", highlight=False)
            raise typer.Exit(2)
    console.print(arrow_to_rich(result, max_rows=max_rows))


@app.command()
def demo(
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[Path] = typer.Option(None, "--workdir", "-w", help="Default: the config's workdir (demo_run)."),
    scale: Optional[int] = typer.Option(None, "--scale", help="Sample pyramid size multiplier (default: samples.scale)."),
    engine: Optional[str] = typer.Option(None, "--engine", help="ray (default), beam or local."),
):
    """The main job on built-in data: generate the sample pyramid, ingest it with Ray, print the funnel."""
    from jobs.demo import run_demo

    cfg = _config(config, workdir, **{"runner.engine": engine, "samples.scale": scale})
    run_demo(cfg, console=console, err=err)


app.add_typer(export_app, name="export")
app.command()(audit)


def main() -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    app()


if __name__ == "__main__":
    main()
