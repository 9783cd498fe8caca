"""`pyramid export motus|lerobot`: shards to the layouts other trainers read."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.markup import escape

from jobs.cli.shared import ConfigOpt, WorkdirOpt, _config, console, err

export_app = typer.Typer(no_args_is_help=True, help="Export shards to other training layouts.")


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
    from pipelines.export import DEFAULT_CAPTION, export_motus

    report = _export(config, workdir, shards, out, lambda root, local: export_motus(
        root, local, tuple(split) if split else ("train",), caption=caption or DEFAULT_CAPTION,
        allow_text_width=allow_text_width))
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
    from pipelines.export import DEFAULT_CAPTION
    from pipelines.export_lerobot import LATENT, export_lerobot

    report = _export(config, workdir, shards, out, lambda root, local: export_lerobot(
        root, local, tuple(split) if split else ("train",), caption=caption or DEFAULT_CAPTION))
    for name, g in report.datasets.items():
        action = f"action [{g.action_dim}]" if g.action_dim else "no real actions"
        console.print(f"{storage.join(storage.redact(out), name)}: {len(g.item_ids)} episodes, {g.frames} frames, {g.fps} fps, {action}, "
                      f"{LATENT} [{g.latent_dim}]", highlight=False)


def _export(config, workdir, shards: Optional[str], out: str, run: Callable[[str, Path], Any]):
    """The shard root (--shards or the config's), `run(root, local folder)` into OUT (a bucket URL: staged locally,
    uploaded once complete), or exit 2 with the reason, credentials redacted."""
    from common import storage
    from pipelines.export import export_target

    cfg = _config(config, workdir)
    root = shards or cfg.path(cfg.shards.output)
    try:
        with export_target(out) as local:
            return run(root, local)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        err.print(f"[red]export:[/red] {escape(storage.redact(str(e)))}", highlight=False)
        raise typer.Exit(2)
