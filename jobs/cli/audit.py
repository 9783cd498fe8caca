"""`pyramid audit`: the checks over the pipeline's catalog, or over a dataset on disk with --source."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from jobs.cli.shared import ConfigOpt, WorkdirOpt, _config, _open_catalog, _runner, console, err


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
                                         "pipeline (lerobot:ROOT, rlds:BUILDER_DIR, robotwin:TREE, ...; ROOT may be "
                                         "s3://bucket/prefix, mirrored under <workdir>/cache/sources first); no "
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
    from sources.base import SourceError

    runner = _runner(cfg) if decode else None
    try:
        source, label = _mirrored(source, cfg, workdir)
        _, root = parse_source(source)
        return run_source_audit(source, out or (workdir or Path(".")) / "reports" / root.name, settings,
                                decode=decode, console=console, cfg=cfg, runner=runner, label=label)
    except (ValueError, OSError, SourceError) as e:
        err.print(f"[red]cannot audit {escape(source)}:[/red] {escape(str(e))}", highlight=False)
        raise typer.Exit(2)
    finally:
        if runner is not None:
            runner.close()


def _mirrored(source: str, cfg, workdir: Optional[Path]) -> tuple[str, Optional[str]]:
    """`KIND:s3://bucket/prefix` → (`KIND:<its local mirror>`, the label the report shows: the URL, redacted). The
    mirror is `<workdir or .>/cache/sources/...`, the folder ingest uses for the same URL, brought up to date the
    same way (only new or changed objects fetched; pipelines/source_cache.py). A local path passes unchanged."""
    import dataclasses

    from common import storage
    from pipelines.source_cache import mirror

    kind, sep, path = source.partition(":")
    if not sep or not storage.is_url(path.strip()):
        return source, None
    url = path.strip()
    local = dataclasses.replace(cfg, workdir=str(workdir or Path("."))).source_dir(url)
    report = mirror(url, local)
    console.print(f"source {escape(kind)}:{escape(report.summary())}", highlight=False)
    return f"{kind}:{report.local}", f"{kind}:{storage.redact(url)}"


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
