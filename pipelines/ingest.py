"""The ingest job: discover every configured source, probe each item in workers, fill the catalog and the
items manifest, and quarantine unreadable items with a reason."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from rich.console import Console
from rich.markup import escape

from common import storage
from common.progress import make_console

from catalog import Catalog
from manifests import ITEMS, SplitRatios, assign_split, validate_rows
from manifests.action_files import SUFFIX as ACTION_SUFFIX, write_action_file
from manifests.io import ManifestWriter
from flow_extraction.artifacts import artifact_path
from common.fingerprint import fingerprint
from pipelines.config import PipelineConfig, SourceConfig
from pipelines.driver import ItemStage, Manifest, StageReport, run_item_stage
from sources import ItemRef, SourceAdapter, SourceError, make_source
from pipelines.stages import BadInput, Outcome, Resources, Stage, failure_reason


def probe_item(task: Mapping[str, Any], _context: Any) -> dict[str, Any]:
    """Stage function: the adapter probes its item; its catalog row comes back (split assigned later). An item
    whose input or media files resolve outside the source root (a symlink out of it) is quarantined; its input
    file is checked before the adapter opens it."""
    adapter: SourceAdapter = task["adapter"]
    ref: ItemRef = task["ref"]
    if task.get("duplicate_of"):
        raise BadInput(f"duplicate item id: {ref.input_uri} and {task['duplicate_of']} map to {ref.item_id}")
    if why := adapter.outside_root(ref.input_uri):
        raise BadInput(why)
    row = adapter.probe(ref).row()
    for uri in [row.get("input_uri"), *(row.get("media_uris") or [])]:  # what later stages will read
        if why := adapter.outside_root(uri):
            raise BadInput(why)
    try:  # a row that does not fit the contract fails this item here, not the whole run in the driver's sink
        validate_rows(ITEMS, [{**row, "split": row["split"] or "train"}])
    except ValueError as e:
        raise BadInput(f"adapter row does not fit the items schema: {e}") from e
    return row


def ingest_item(task: Mapping[str, Any], _context: Any) -> dict[str, Any]:
    """Stage function: the item's catalog row (`probe_item`) and, for a labelled item, its actions read from the
    source once and written to `task["actions_path"]`, the action file later stages read (docs/formats.md)."""
    row = probe_item(task, _context)
    out: dict[str, Any] = {"row": row}
    if row["has_actions"] and task.get("actions_path"):
        actions = np.asarray(task["adapter"].load_actions(row), np.float64)
        if actions.ndim != 2 or actions.shape[1] != row["action_dim"]:
            raise BadInput(f"actions have shape {actions.shape}, the item says {row['action_dim']} dims a frame")
        if not np.isfinite(actions).all():  # adapters check too; this guards one that forgets
            raise BadInput("non-finite values in actions")
        size, checksum = write_action_file(task["actions_path"], row["item_id"], actions, row["action_names"])
        out.update(path=task["actions_path"], bytes=size, checksum=checksum)
    elif task.get("actions_path"):  # an item redone without actions leaves no file of its old ones behind
        Path(task["actions_path"]).unlink(missing_ok=True)
    return out


INGEST = Stage("ingest", ingest_item, resources=Resources(num_cpus=1, batch_size=4))


@dataclass
class IngestReport:
    run_id: str
    stage: StageReport
    source_errors: dict[str, str] = field(default_factory=dict)
    discovered: Counter = field(default_factory=Counter)
    manifest_path: str = ""
    source_notes: dict[str, list[str]] = field(default_factory=dict)


def action_path(cfg: PipelineConfig, item_id: str) -> Path:
    """Where ingest writes an item's action file: <artifacts>/actions/<item id>.actions.parquet."""
    return artifact_path(cfg.artifacts_dir / "actions", item_id, ACTION_SUFFIX)


def item_fingerprint(ref: ItemRef, sc: SourceConfig, cfg: PipelineConfig) -> str:
    """The item's input (as its adapter fingerprints it) and the settings that change its row: a changed tier,
    source option or split rule redoes the item. (Items ingested before action files keep theirs: later stages
    read their actions from the source until `pyramid ingest --force`, then `pyramid flow` for the VAE's manifest.)"""
    return fingerprint(str(ref.fingerprint), [sc.tier, sc.options, dataclasses.asdict(cfg.splits)])


class SeenIds:
    """Which item ids discovery has handed out, as sorted 64-bit hashes (8 bytes an item, no Python object per
    item), and the source entry each came from. A hash collision (p ≈ n²/2⁶⁵) would quarantine an item as a
    duplicate; the reason names both entries."""

    def __init__(self) -> None:
        self.hashes = np.empty(0, np.uint64)
        self.sources = np.empty(0, np.uint16)

    @staticmethod
    def hash(item_id: str) -> int:
        return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "little")

    def first_of(self, hashes: np.ndarray) -> np.ndarray:
        """Per hash, the source index that handed it out before, or -1."""
        if not len(self.hashes):
            return np.full(len(hashes), -1, np.int64)
        pos = np.minimum(np.searchsorted(self.hashes, hashes), len(self.hashes) - 1)
        return np.where(self.hashes[pos] == hashes, self.sources[pos].astype(np.int64), np.int64(-1))

    def add(self, hashes: np.ndarray, source: int) -> None:
        new = np.sort(hashes)
        at = np.searchsorted(self.hashes, new)
        self.hashes = np.insert(self.hashes, at, new)
        self.sources = np.insert(self.sources, at, np.uint16(source))


def source_root(cfg: PipelineConfig, sc: SourceConfig, console: Console | None = None) -> Path:
    """The local folder the adapter reads: the root itself, or for a bucket URL (`s3://...`) its mirror in the
    workdir's source cache, brought up to date first (pipelines/source_cache.py)."""
    root = cfg.path(sc.root)
    if not storage.is_url(root):
        return root
    from pipelines.source_cache import mirror

    try:
        report = mirror(root, cfg.source_dir(sc.root))
    except (OSError, ValueError) as e:
        raise SourceError(storage.redact(str(e))) from None
    if console:
        console.print(f"source {escape(storage.redact(sc.kind + ':' + sc.root))}: {escape(report.summary())}",
                      highlight=False)
    return report.local


def discover_tasks(cfg: PipelineConfig, console: Console | None = None, notes: dict[str, list[str]] | None = None,
                   errors: dict[str, str] | None = None, counts: Counter | None = None,
                   chunk: int = 4096) -> Iterator[dict[str, Any]]:
    """Stream every item of every configured source, `chunk` refs at a time (nothing per item is kept). A source
    that cannot be read goes into `errors`, not raised; what a source's discovery says about the source as a whole
    (its `notes`) goes into `notes` and is printed; `counts` gets the items discovered per source. A second item
    with an id already handed out is a task that names it a duplicate (quarantined)."""
    errors = {} if errors is None else errors
    notes = {} if notes is None else notes
    counts = Counter() if counts is None else counts
    seen = SeenIds()
    labels: list[str] = []
    for sc in cfg.sources:
        label = f"{sc.kind}:{sc.root}"
        labels.append(label)
        try:
            adapter = make_source(sc.kind, str(source_root(cfg, sc, console)), tier=sc.tier, **sc.options)
            refs = iter(adapter.discover())  # a list works too
            while block := list(itertools.islice(refs, chunk)):
                hashes = np.array([seen.hash(ref.item_id) for ref in block], np.uint64)
                before = seen.first_of(hashes)
                fresh: dict[int, str] = {}  # duplicates inside the block
                for ref, h, first in zip(block, hashes.tolist(), before.tolist()):
                    task = {"item_id": ref.item_id, "input_uri": ref.input_uri,
                            "input_fingerprint": item_fingerprint(ref, sc, cfg), "adapter": adapter, "ref": ref,
                            "actions_path": str(action_path(cfg, ref.item_id))}
                    if first >= 0 or h in fresh:
                        task["duplicate_of"] = fresh.get(h) or f"an item of {labels[first]} discovered before it"
                        task["item_id"] = f"{ref.item_id}#dup{counts[label]}"  # keep it visible in the catalog
                    else:
                        fresh[h] = ref.input_uri
                    counts[label] += 1
                    yield task
                seen.add(np.array(list(fresh), np.uint64), len(labels) - 1)
            if adapter.notes:
                notes[label] = list(adapter.notes)
                for line in adapter.notes:
                    if console:
                        console.print(f"[yellow]source {escape(label)}:[/yellow] {escape(line)}", highlight=False)
        except Exception as e:  # noqa: BLE001 - one unreadable source never stops the others
            # a SourceError says what is wrong; anything else is an adapter meeting input it did not expect
            # (damaged metadata of a kind no check names yet): the source is skipped with the error and where
            errors[label] = str(e) if isinstance(e, SourceError) else f"unexpected {failure_reason(e)}"
            if console:
                console.print(f"[red]source {escape(label)} skipped:[/red] {escape(errors[label])}", highlight=False)


def ingest(cfg: PipelineConfig, catalog: Catalog, runner: Any, force: bool = False, progress: bool = True,
           console: Console | None = None) -> IngestReport:
    console = console or make_console(stderr=True)
    ratios = SplitRatios(cfg.splits.train, cfg.splits.val, cfg.splits.test, cfg.splits.salt)
    notes: dict[str, list[str]] = {}
    errors: dict[str, str] = {}
    discovered: Counter = Counter()
    run_rows: list[ManifestWriter] = []  # this run's rows, written to its items manifest as they are recorded

    def plan(catalog: Catalog) -> Iterator[dict[str, Any]]:
        return discover_tasks(cfg, console, notes, errors, discovered)

    def record(catalog: Catalog, outcomes: list[Outcome], run_id: str) -> None:
        # an adapter may return the publisher's official split (e.g. SSv2's train/validation/test files)
        rows = validate_rows(ITEMS, [{**o.result["row"], "split": o.result["row"]["split"]
                                      or assign_split(o.result["row"]["group_id"], ratios)} for o in outcomes])
        catalog.upsert_items(rows)
        if not run_rows:
            run_rows.append(ManifestWriter(cfg.manifests_dir / "runs" / run_id / "items.parquet",
                                           {"run_id": run_id, "kind": "items"}))
        run_rows[0].write(rows)

    def after(catalog: Catalog, run_id: str) -> None:
        catalog.drop_items_not_done("ingest")
        if run_rows:
            run_rows[0].close()

    try:
        run = run_item_stage(ItemStage(
            INGEST, plan, cfg.to_dict(), folders=[cfg.artifacts_dir / "actions"], artifact_kind="actions",
            record=record, after=after,
            manifest=Manifest(cfg.manifests_dir / "items.parquet", "items-snapshot",
                              lambda c: c.reader("SELECT * FROM items ORDER BY item_id")),
            # what `pyramid status` shows per source, from the latest ingest
            run_counts=lambda: {"source_notes": notes} if notes else {},
        ), catalog, runner, force=force, progress=progress, console=console)
    finally:
        for writer in run_rows:
            writer.abort()  # a run that failed leaves no half manifest (a no-op once closed)
    return IngestReport(run.run_id, run.report, errors, discovered, str(run.manifest_path), notes)
