"""What every `pyramid` command shares: the consoles, the common options, the config and catalog openers."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from common.progress import make_console


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
