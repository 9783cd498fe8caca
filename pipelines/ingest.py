"""The ingest job: discover every configured source, probe each item in workers, fill the catalog and the
items manifest, and quarantine unreadable items with a reason."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping

from rich.console import Console
from rich.markup import escape

from common.progress import make_console

from catalog import Catalog
from manifests import ITEMS, SplitRatios, assign_split, validate_rows, write_manifest
from common.fingerprint import fingerprint
from pipelines.config import PipelineConfig, SourceConfig
from pipelines.driver import ItemStage, Manifest, StageReport, run_item_stage
from pipelines.sources import ItemRef, SourceAdapter, SourceError, make_source
from pipelines.stages import BadInput, Outcome, Resources, Stage


def probe_item(task: Mapping[str, Any], _context: Any) -> dict[str, Any]:
    """Stage function: the adapter probes its item and returns the catalog row (split assigned later)."""
    adapter: SourceAdapter = task["adapter"]
    ref: ItemRef = task["ref"]
    if task.get("duplicate_of"):
        raise BadInput(f"duplicate item id: {ref.input_uri} and {task['duplicate_of']} map to {ref.item_id}")
    row = adapter.probe(ref)
    try:  # a row that does not fit the contract fails this item here, not the whole run in the driver's sink
        validate_rows(ITEMS, [{"split": "train", **row}])
    except ValueError as e:
        raise BadInput(f"adapter row does not fit the items schema: {e}") from e
    return row


INGEST = Stage("ingest", probe_item, resources=Resources(num_cpus=1, batch_size=4))


@dataclass
class IngestReport:
    run_id: str
    stage: StageReport
    source_errors: dict[str, str] = field(default_factory=dict)
    discovered: Counter = field(default_factory=Counter)
    manifest_path: str = ""
    source_notes: dict[str, list[str]] = field(default_factory=dict)


def item_fingerprint(ref: ItemRef, sc: SourceConfig, cfg: PipelineConfig) -> str:
    """The item's input (as its adapter fingerprints it) and the settings that change its row: a changed tier,
    source option or split rule redoes the item."""
    return fingerprint(str(ref.fingerprint), [sc.tier, sc.options, dataclasses.asdict(cfg.splits)])


def discover_tasks(cfg: PipelineConfig, console: Console | None = None,
                   notes: dict[str, list[str]] | None = None) -> tuple[list[dict[str, Any]], dict[str, str], Counter]:
    """List every item of every configured source. A source that cannot be read is reported, not fatal; what a
    source's discovery says about the source as a whole (its `notes`) goes into `notes` and is printed."""
    tasks: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    notes = {} if notes is None else notes
    counts: Counter = Counter()
    first_uri: dict[str, str] = {}
    for sc in cfg.sources:
        label = f"{sc.kind}:{sc.root}"
        try:
            adapter = make_source(sc.kind, str(cfg.path(sc.root)), tier=sc.tier, **sc.options)
            for ref in adapter.discover():
                task = {"item_id": ref.item_id, "input_uri": ref.input_uri,
                        "input_fingerprint": item_fingerprint(ref, sc, cfg),
                        "adapter": adapter, "ref": ref}
                if ref.item_id in first_uri:
                    task["duplicate_of"] = first_uri[ref.item_id]
                    task["item_id"] = f"{ref.item_id}#dup{counts[label]}"  # keep it visible in the catalog
                else:
                    first_uri[ref.item_id] = ref.input_uri
                tasks.append(task)
                counts[label] += 1
            if adapter.notes:
                notes[label] = list(adapter.notes)
                for line in adapter.notes:
                    if console:
                        console.print(f"[yellow]source {escape(label)}:[/yellow] {escape(line)}", highlight=False)
        except SourceError as e:
            errors[label] = str(e)
            if console:
                console.print(f"[red]source {escape(label)} skipped:[/red] {escape(str(e))}", highlight=False)
    return tasks, errors, counts


def ingest(cfg: PipelineConfig, catalog: Catalog, runner: Any, force: bool = False, progress: bool = True,
           console: Console | None = None) -> IngestReport:
    console = console or make_console(stderr=True)
    ratios = SplitRatios(cfg.splits.train, cfg.splits.val, cfg.splits.test, cfg.splits.salt)
    notes: dict[str, list[str]] = {}
    errors: dict[str, str] = {}
    discovered: Counter = Counter()
    ingested: list[dict[str, Any]] = []

    def plan(catalog: Catalog) -> list[dict[str, Any]]:
        tasks, source_errors, counts = discover_tasks(cfg, console, notes)
        errors.update(source_errors)
        discovered.update(counts)
        return tasks

    def record(catalog: Catalog, outcomes: list[Outcome], run_id: str) -> None:
        # an adapter may return the publisher's official split (e.g. SSv2's train/validation/test files)
        rows = [{**o.result, "split": o.result.get("split") or assign_split(o.result["group_id"], ratios)}
                for o in outcomes]
        catalog.upsert_items(rows)
        ingested.extend(rows)

    def after(catalog: Catalog, run_id: str, tasks: list[dict[str, Any]]) -> None:
        catalog.drop_items_not_done("ingest")
        if ingested:
            write_manifest(validate_rows(ITEMS, ingested), cfg.manifests_dir / "runs" / run_id / "items.parquet",
                           {"run_id": run_id, "kind": "items"})

    run = run_item_stage(ItemStage(
        INGEST, plan, cfg.to_dict(), record=record, after=after,
        manifest=Manifest(cfg.manifests_dir / "items.parquet", "items-snapshot", lambda c: c.items()),
        # what `pyramid status` shows per source, from the latest ingest
        run_counts=lambda: {"source_notes": notes} if notes else {},
    ), catalog, runner, force=force, progress=progress, console=console)
    return IngestReport(run.run_id, run.report, errors, discovered, str(run.manifest_path), notes)
