"""`pyramid`: one command-line entry point, a subcommand per job. Each is a thin shell over a library function."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from common.progress import make_console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="motus-pyramid: the Motus data pyramid to labelled training shards.")
catalog_app = typer.Typer(no_args_is_help=True, help="Query the DuckDB catalog.")
app.add_typer(catalog_app, name="catalog")
vae_app = typer.Typer(no_args_is_help=True, help="Train and evaluate the latent-action VAE.")
app.add_typer(vae_app, name="vae")
export_app = typer.Typer(no_args_is_help=True, help="Export shards to other training layouts.")
app.add_typer(export_app, name="export")

console = make_console()
err = make_console(stderr=True)

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config (default: built-in defaults, as configs/demo.yaml).")
WorkdirOpt = typer.Option(None, "--workdir", "-w", help="Where the catalog, manifests and samples live.")
EngineOpt = typer.Option(None, "--engine", help="ray (default), beam or local.")
RayAddressOpt = typer.Option(None, "--ray-address", help="Ray cluster address (default: a local Ray instance; RAY_ADDRESS also works).")


def _config(config: Optional[Path], workdir: Optional[Path], **overrides):
    from pipelines.config import ConfigError, load_config

    try:
        cfg = load_config(config, workdir=str(workdir) if workdir else None, **overrides)
    except ConfigError as e:
        err.print(f"[red]config error:[/red] {escape(str(e))}", highlight=False)
        raise typer.Exit(2)
    return cfg


def _open_catalog(cfg, read_only: bool = False, snapshot: bool = False):
    """The catalog, or exit 2 saying why not. With `snapshot`, a catalog that a running job holds is read from a
    copy taken now, and stderr says so."""
    from catalog import Catalog, CatalogLockedError

    try:
        catalog = Catalog(cfg.catalog_path, read_only=read_only, snapshot=snapshot)
    except (CatalogLockedError, FileNotFoundError) as e:
        err.print(f"[red]{escape(str(e))}[/red]", highlight=False)
        if isinstance(e, CatalogLockedError):
            err.print("`pyramid status`, `pyramid catalog sql` and `pyramid audit` read a snapshot of it meanwhile",
                      highlight=False, markup=False)
        raise typer.Exit(2)
    if catalog.is_snapshot:
        err.print(snapshot_note(catalog), highlight=False, markup=False)
    for run_id in catalog.killed_runs:
        err.print(f"run {run_id} was left running by a driver that is gone: marked killed", highlight=False,
                  markup=False)
    return catalog


def snapshot_note(catalog) -> str:
    """What a reader of a snapshot should know: which job holds the catalog and when the copy was taken."""
    jobs = ", ".join(f"{r['job']} (run {r['run_id']}, pid {r['pid']})" for r in catalog.running_runs())
    holder = f"a running job, {jobs}" if jobs else "another process (a job that has not recorded its run yet?)"
    return (f"catalog {catalog.path} is held by {holder}: this reads a snapshot taken at "
            f"{catalog.snapshot_taken_at:%Y-%m-%d %H:%M:%S} UTC; what the job records after that is not in it")


def _runner(cfg):
    from pipelines.runners import runner_from_config

    return runner_from_config(cfg.runner)


@app.command()
def samples(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: <workdir>/samples)."),
    workdir: Optional[Path] = WorkdirOpt,
    scale: int = typer.Option(1, "--scale", help="Multiplies every tier's item count."),
    seed: int = typer.Option(0, "--seed"),
    defects: bool = typer.Option(True, "--defects/--no-defects", help="Add deliberately bad items."),
):
    """Generate the sample pyramid (all six-tier formats we can make offline) in official on-disk layouts."""
    from pipelines.samples.pyramid import generate_sample_pyramid

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
    from pipelines.vae import run_vae_train

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
    from pipelines.vae import run_vae_eval

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


@export_app.command("motus")
def export_motus_cmd(
    out: str = typer.Argument(..., help="Folder to write <source>/{videos,metas,latent_action_dim14,umt5_wan,qpos}/ into "
                              "(or a bucket URL: staged locally, uploaded when complete)."),
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[Path] = WorkdirOpt,
    shards: Optional[str] = typer.Option(None, "--shards", help="Shard root, a folder or a bucket URL "
                                         "(s3://...; default: <workdir>/<shards.output>)."),
    split: Optional[list[str]] = typer.Option(None, "--split", help="Splits to export (repeatable; default: train — a Motus tree has no splits)."),
    caption: Optional[str] = typer.Option(None, "--caption", help="Instruction for clips without language; "
                                          "{embodiment}, {source}, {tier} are filled in (default: "
                                          "'{embodiment} robot: random joint exploration')."),
    allow_text_width: bool = typer.Option(False, "--allow-text-width", help="Export language embeddings that are not "
                                          "4096 wide (the released Motus's text layer takes UMT5-XXL's 4096)."),
):
    """Export the shards to the folder layout the released Motus stage-2 loader reads."""
    from common import storage
    from pipelines.export import DEFAULT_CAPTION, export_motus, export_target

    cfg = _config(config, workdir)
    root = shards or cfg.path(cfg.shards.output)
    try:
        with export_target(out) as local:  # a bucket URL: staged locally, uploaded once complete
            report = export_motus(root, local, tuple(split) if split else ("train",),
                                  caption=caption or DEFAULT_CAPTION, allow_text_width=allow_text_width)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        err.print(f"[red]export:[/red] {escape(storage.redact(str(e)))}", highlight=False)
        raise typer.Exit(2)
    counts = ", ".join(f"{s} {n}" for s, n in sorted(report.per_source.items()))
    console.print(f"exported {sum(report.per_source.values())} clips ({counts}) to {storage.redact(out)}; "
                  f"language {report.encoder or 'none'} E={report.embedding_dim}", highlight=False)
    if not report.motus_width:
        console.print(f"[yellow]note:[/yellow] E={report.embedding_dim} (--allow-text-width): the released Motus's text "
                      "layer takes 4096; change its text_embedding before training on this export", highlight=False)
    if report.short:
        from pipelines.export import MOTUS_WINDOW_FRAMES

        console.print(f"{len(report.short)} clips are shorter than Motus's default window ({MOTUS_WINDOW_FRAMES} "
                      f"frames: 8 video frames every 6) and will be skipped by its loader; listed in export.json "
                      f"(shorter_than_window): {', '.join(report.short[:5])}{' ...' if len(report.short) > 5 else ''}",
                      highlight=False)


@export_app.command("lerobot")
def export_lerobot_cmd(
    out: str = typer.Argument(..., help="Folder to write one LeRobot v3.0 dataset per embodiment, fps and action width "
                              "into (or a bucket URL: staged locally, uploaded when complete)."),
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[Path] = WorkdirOpt,
    shards: Optional[str] = typer.Option(None, "--shards", help="Shard root, a folder or a bucket URL "
                                         "(s3://...; default: <workdir>/<shards.output>)."),
    split: Optional[list[str]] = typer.Option(None, "--split", help="Splits to export (repeatable; default: train)."),
    caption: Optional[str] = typer.Option(None, "--caption", help="Task of clips without language; {embodiment}, "
                                          "{source}, {tier} are filled in (default: '{embodiment} robot: random joint exploration')."),
):
    """Export the shards as LeRobot v3.0 datasets (lerobot's writer): video, real actions, latent actions, tasks, stats."""
    from common import storage
    from pipelines.export import DEFAULT_CAPTION, export_target
    from pipelines.export_lerobot import LATENT, export_lerobot

    cfg = _config(config, workdir)
    root = shards or cfg.path(cfg.shards.output)
    try:
        with export_target(out) as local:  # a bucket URL: staged locally, uploaded once complete
            report = export_lerobot(root, local, tuple(split) if split else ("train",),
                                    caption=caption or DEFAULT_CAPTION)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        err.print(f"[red]export:[/red] {escape(storage.redact(str(e)))}", highlight=False)
        raise typer.Exit(2)
    for name, g in report.datasets.items():
        action = f"action [{g.action_dim}]" if g.action_dim else "no real actions"
        console.print(f"{storage.join(storage.redact(out), name)}: {len(g.item_ids)} episodes, {g.frames} frames, {g.fps} fps, {action}, "
                      f"{LATENT} [{g.latent_dim}]", highlight=False)


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
    from pipelines.demo import run_demo

    cfg = _config(config, workdir, **{"runner.engine": engine, "samples.scale": scale})
    run_demo(cfg, console=console, err=err)


@app.command()
def audit(
    config: Optional[Path] = ConfigOpt,
    workdir: Optional[Path] = WorkdirOpt,
    fail_on: str = typer.Option("error", "--fail-on", help="Exit 1 when a check at this severity or above fails: "
                                "error, warning or never."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for audit.html and audit.json "
                                       "(default: <workdir>/reports)."),
    audit_config: Optional[Path] = typer.Option(None, "--audit-config", help="YAML overriding audit thresholds "
                                                "(fields of audit.config.AuditConfig)."),
    source: Optional[str] = typer.Option(None, "--source", help="KIND:PATH: audit a dataset on disk without the "
                                         "pipeline (lerobot:ROOT, rlds:BUILDER_DIR, robotwin:TREE, ...); no "
                                         "catalog, --out defaults to reports/<dataset folder>."),
    decode: bool = typer.Option(False, "--decode", help="With --source: also decode frames (readable media, black "
                                "and frozen cameras, stutter, concealed decode errors)."),
    engine: Optional[str] = typer.Option(None, "--engine", help="Runs the media pass (every item's frames decoded "
                                         "once): ray, beam or local. Default: the config's engine; with --source and "
                                         "no --config, local."),
):
    """Audit dataset quality (integrity, content, duplicates, splits, labels, shards): a table of checks, a
    self-contained HTML report and audit.json; a non-zero exit when a check at --fail-on or above fails. With
    --source, --config gives the engine, the camera and the readers' settings (its sources are replaced by the one
    named) and --workdir the default --out (<workdir>/reports/<dataset folder>)."""
    from audit import load_audit_config
    from audit.run import FAIL_ON
    from pipelines.config import ConfigError

    if fail_on not in FAIL_ON:
        err.print(f"[red]--fail-on must be one of {', '.join(FAIL_ON)}, not {escape(fail_on)!r}[/red]", highlight=False)
        raise typer.Exit(2)
    try:
        settings = load_audit_config(audit_config)
    except ConfigError as e:
        err.print(f"[red]audit config error:[/red] {escape(str(e))}", highlight=False)
        raise typer.Exit(2)
    if source is not None:
        cfg = _config(config, None, **{"runner.engine": engine or (None if config else "local")})
        result = _audit_on_disk(source, out, settings, decode, cfg, workdir)
    else:
        if decode:
            err.print("[red]--decode goes with --source (the pipeline's audit always decodes)[/red]", highlight=False)
            raise typer.Exit(2)
        result = _audit_catalog(_config(config, workdir, **{"runner.engine": engine}), out, settings)
    if not result.gate(fail_on):
        names = ", ".join(f"{r.check.name} ({r.check.severity})" for r in result.failed(fail_on))
        err.print(f"[red]audit gate failed at --fail-on {fail_on}:[/red] {escape(names)}", highlight=False)
        raise typer.Exit(1)


def _audit_on_disk(source: str, out: Optional[Path], settings, decode: bool, cfg, workdir: Optional[Path]):
    from audit.on_disk import parse_source, run_source_audit
    from pipelines.sources.base import SourceError

    runner = _runner(cfg) if decode else None
    try:
        _, root = parse_source(source)
        return run_source_audit(source, out or (workdir or Path(".")) / "reports" / root.name, settings,
                                decode=decode, console=console, cfg=cfg, runner=runner)
    except (ValueError, SourceError) as e:
        err.print(f"[red]cannot audit {escape(source)}:[/red] {escape(str(e))}", highlight=False)
        raise typer.Exit(2)
    finally:
        if runner is not None:
            runner.close()


def _audit_catalog(cfg, out: Optional[Path], settings):
    from audit import run_audit

    if not cfg.catalog_path.exists():
        err.print(f"[red]no catalog at {escape(str(cfg.catalog_path))} (run `pyramid ingest` or `pyramid demo` "
                  "first)[/red]", highlight=False)
        raise typer.Exit(2)
    runner = _runner(cfg)
    try:
        with _open_catalog(cfg, snapshot=True) as cat:
            if cat.is_snapshot:
                err.print("the audit's verdicts go to audit.json and audit.html only: the catalog's audit_results "
                          "are written by an audit run while no job holds it", highlight=False, markup=False)
            return run_audit(cfg, cat, out_dir=out, console=console, settings=settings, runner=runner)
    finally:
        runner.close()


def main() -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    app()


if __name__ == "__main__":
    main()
