"""The driver: owns a per-item stage's lifecycle, so a stage declares only its domain parts (`ItemStage`).

Semantics (at-least-once execution + idempotent sinks): an item whose stage state is `done` (or `quarantined`)
with an unchanged input fingerprint, and whose output file still exists, is skipped; failed items, items whose
input changed and items whose output was deleted are redone. Outcomes are written to the catalog in small
batches as they arrive, so a killed run keeps what it finished. See docs/stages.md.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import pyarrow as pa

from catalog import Catalog
from common.progress import StageProgress, make_console
from manifests import write_manifest
from manifests.io import atomic_write_text, remove_stale_temps
from pipelines.stages import Outcome, Stage

SKIP_STATUSES = ("done", "quarantined")
PLAN_CHUNK = 4096  # tasks planned (skip/redo decided against the catalog) at a time
PROGRESS_DIR = "progress"  # <workdir>/progress/<stage>.json: what a running stage has done (readable while it runs)


@dataclass
class StageReport:
    stage: str
    total: int
    skipped: int = 0
    counts: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)  # quarantine/failure reasons (first line, truncated)
    nodes: Counter = field(default_factory=Counter)  # items per cluster node (Ray runs; empty in-process)
    wall_s: float = 0.0

    @property
    def processed(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return {"total": self.total, "skipped": self.skipped, **{k: self.counts.get(k, 0) for k in ("done", "quarantined", "failed")}}


def remove_leftovers(stage: str, folders: Sequence[Any], console: Any) -> int:
    """Delete the temp files an interrupted run of `stage` left in its output folders (the caller holds the
    catalog's writer lock, so no other run is writing there); say so for each."""
    removed = remove_stale_temps(*folders)
    for path in removed:
        console.print(f"[{stage}] removed {path.name}, left by an interrupted run", highlight=False, markup=False)
    return len(removed)


def plan(catalog: Catalog, stage: str, tasks: Sequence[Mapping[str, Any]], force: bool = False):
    """Split one chunk of tasks into (to do, skipped) by the catalog's stage state of those items, each task's input
    fingerprint and whether its output is still there: the file a task names (`out_path`), or else every file the
    stage registered for the item (a stage whose items may or may not write one, e.g. ingest's action files)."""
    if force:
        return list(tasks), []
    state = catalog.stage_state(stage, [t["item_id"] for t in tasks])
    registered = catalog.registered_files(stage, [t["item_id"] for t in tasks if not t.get("out_path")
                                                  and state.get(t["item_id"], ("",))[0] == "done"])
    todo, skipped = [], []
    for t in tasks:
        prev = state.get(t["item_id"])
        outputs = [t["out_path"]] if t.get("out_path") else registered.get(t["item_id"], [])
        if (prev and prev[0] in SKIP_STATUSES and prev[1] == t.get("input_fingerprint")
                and not (prev[0] == "done" and not all(Path(p).exists() for p in outputs))):
            skipped.append(t)
        else:
            todo.append(t)
    return todo, skipped


def run_stage(
    stage: Stage,
    tasks: Iterable[Mapping[str, Any]],
    catalog: Catalog,
    runner: Any,
    run_id: str,
    on_done: Callable[[list[Outcome]], None] | None = None,
    force: bool = False,
    progress: bool = True,
    flush_every: int = 64,
    flush_every_s: float = 2.0,
    plan_chunk: int = PLAN_CHUNK,
) -> StageReport:
    """Run `tasks` (a list or a stream) through `runner`: planned `plan_chunk` at a time as the runner asks for
    more, outcomes recorded in batches. The driver holds one chunk, the tasks in flight and one batch of outcomes,
    never the whole corpus."""
    report = StageReport(stage.name, total=0)
    bar = StageProgress(stage.name, total=None, enabled=progress)
    in_flight: dict[str, tuple[Any, Any]] = {}  # item_id -> (input_uri, input_fingerprint) until recorded
    pending: list[Outcome] = []
    t0 = last_flush = time.perf_counter()

    write_progress(catalog.root, report, run_id, "running", t0)  # started: planning

    def planned() -> Iterator[Mapping[str, Any]]:
        it = iter(tasks)
        while chunk := list(itertools.islice(it, plan_chunk)):
            todo, skipped = plan(catalog, stage.name, chunk, force)
            del chunk
            report.total += len(todo) + len(skipped)
            report.skipped += len(skipped)
            bar.planned(len(todo), len(skipped))
            for t in todo:
                in_flight[t["item_id"]] = (t.get("input_uri"), t.get("input_fingerprint"))
            yield from todo

    def flush() -> None:
        if not pending:
            return
        done = [o for o in pending if o.status == "done"]
        if done and on_done:
            on_done(done)  # the stage's sink first: state says done only once the output is recorded
        rows = []
        for o in pending:
            uri, fp = in_flight.pop(o.item_id, (None, None))
            rows.append({"item_id": o.item_id, "stage": stage.name, "status": o.status, "reason": o.reason,
                         "input_uri": uri, "input_fingerprint": fp, "run_id": run_id, "duration_s": o.duration_s})
        catalog.record_stage_results(rows)
        pending.clear()
        write_progress(catalog.root, report, run_id, "running", t0)

    try:
        for outcome in runner.map(stage, planned()):
            report.counts[outcome.status] += 1
            if outcome.node:
                report.nodes[outcome.node] += 1
            if outcome.reason:
                report.reasons[outcome.reason.splitlines()[0][:160]] += 1
            pending.append(outcome)
            bar.update(outcome.status)
            if len(pending) >= flush_every or time.perf_counter() - last_flush >= flush_every_s:
                flush()
                last_flush = time.perf_counter()
    finally:
        flush()  # even when the run is interrupted: what finished stays recorded
        bar.close()
        write_progress(catalog.root, report, run_id, "ended", t0)
        if progress and len(report.nodes) > 1:
            spread = ", ".join(f"{node} {n}" for node, n in report.nodes.most_common())
            bar.console.print(f"[{stage.name}] items per node: {spread}", highlight=False, markup=False)
    report.wall_s = time.perf_counter() - t0
    return report


def write_progress(workdir: Path, report: StageReport, run_id: str, state: str, t0: float) -> None:
    """`<workdir>/progress/<stage>.json`, replaced atomically at every flush: the one thing a reader can open
    while the driver holds the catalog (DuckDB allows one writing process and no readers beside it)."""
    elapsed = time.perf_counter() - t0
    done = report.processed
    atomic_write_text(Path(workdir) / PROGRESS_DIR / f"{report.stage}.json", json.dumps({
        "stage": report.stage, "run_id": run_id, "state": state, "pid": os.getpid(),
        "updated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **report.as_dict(),
        "items_per_s": round(done / elapsed, 3) if elapsed > 0 else 0.0, "elapsed_s": round(elapsed, 1)}) + "\n")


def read_progress(workdir: Path) -> list[dict[str, Any]]:
    """The progress files of a workdir's stages (newest first); a running one whose driver is gone says so."""
    out = []
    for f in sorted((Path(workdir) / PROGRESS_DIR).glob("*.json")):
        try:
            p = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if p.get("state") == "running" and not _alive(int(p.get("pid", 0))):
            p["state"] = "killed (its driver is gone)"
        out.append(p)
    return sorted(out, key=lambda p: p.get("updated_at", ""), reverse=True)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- the lifecycle ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Manifest:
    """A Parquet manifest the driver (re)writes at the end of every run, from the catalog."""

    path: Path
    kind: str
    rows: Callable[[Catalog], pa.Table]
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class ItemStage:
    """What a per-item stage declares; `run_item_stage` does the rest.

    `plan(catalog)` yields the tasks (a generator: the driver draws them in chunks): dicts with `item_id`,
    `input_uri`, `input_fingerprint` (from `common.fingerprint`) and, when the stage writes a file per item,
    `out_path`. `stage` runs the pure `process(task, context)` on the runner. A done result's file (`path`,
    `bytes`, `checksum`) is registered as an artifact of `artifact_kind`; `record` adds the stage's own rows;
    `after(catalog, run_id)` is the stage's global step once the items are through (its return value comes back
    in `StageRun.after`)."""

    stage: Stage
    plan: Callable[[Catalog], Iterable[dict[str, Any]]]  # a stream (generator) or a list
    config: Mapping[str, Any]  # what the run record stores
    folders: Sequence[Path] = ()  # where the stage writes: temp files a killed run left there are removed first
    artifact_kind: str | None = None
    record: Callable[[Catalog, list[Outcome], str], None] | None = None
    after: Callable[[Catalog, str], Any] | None = None
    manifest: Manifest | None = None
    run_counts: Callable[[], Mapping[str, Any]] | None = None  # more for the run record's counts when it ends ok

    @property
    def name(self) -> str:
        return self.stage.name


@dataclass
class StageRun:
    run_id: str
    report: StageReport
    after: Any = None
    manifest_path: Path | None = None


def run_item_stage(decl: ItemStage, catalog: Catalog, runner: Any, force: bool = False, progress: bool = True,
                   console: Any = None) -> StageRun:
    """Run one per-item stage: leftovers removed, a run record (failed unless everything below ends well), tasks
    planned, skip/redo decided, outcomes and artifacts recorded, the stage's global step, the manifest."""
    console = console or make_console(stderr=True)
    remove_leftovers(decl.name, [*decl.folders, *([decl.manifest.path.parent] if decl.manifest else [])], console)
    run_id = catalog.start_run(decl.name, dict(decl.config), engine=getattr(runner, "name", "?"))
    status, report, counts = "failed", None, {}
    try:
        tasks = decl.plan(catalog)

        def on_done(outcomes: list[Outcome]) -> None:
            if decl.artifact_kind:  # what an item wrote this time replaces what it had registered (ingest of an
                # item without actions writes no file, and then has none)
                catalog.replace_item_files(decl.name, [o.item_id for o in outcomes], [
                    {"item_id": o.item_id, "stage": decl.name, "kind": decl.artifact_kind, "path": o.result["path"],
                     "bytes": o.result["bytes"], "blake2b": o.result["checksum"], "run_id": run_id}
                    for o in outcomes if o.result.get("path")])
            if decl.record:
                decl.record(catalog, outcomes, run_id)

        report = run_stage(decl.stage, tasks, catalog, runner, run_id, on_done=on_done, force=force,
                           progress=progress)
        after = decl.after(catalog, run_id) if decl.after else None
        manifest_path = None
        if decl.manifest:
            m = decl.manifest
            manifest_path = write_manifest(m.rows(catalog), m.path, {"run_id": run_id, "kind": m.kind, **m.meta})
        status = "ok"
        counts = dict(decl.run_counts() if decl.run_counts else {})
        return StageRun(run_id, report, after, manifest_path)
    finally:
        nodes = {"nodes": dict(report.nodes)} if report and report.nodes else {}
        catalog.finish_run(run_id, status, {**(report.as_dict() if report else {}), **nodes, **counts})
