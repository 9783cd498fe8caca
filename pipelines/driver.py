"""The driver side of a per-item stage: skip what is done, hand the rest to a runner, record every outcome.

Semantics (at-least-once execution + idempotent sinks): an item whose stage state is `done` (or `quarantined`)
with an unchanged input fingerprint is skipped; failed items and items whose input changed are redone. Outcomes
are written to the catalog in small batches as they arrive, so a killed run keeps what it finished.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from catalog import Catalog
from common.progress import StageProgress
from manifests.io import remove_stale_temps
from pipelines.stages import Outcome, Stage

SKIP_STATUSES = ("done", "quarantined")


@dataclass
class StageReport:
    stage: str
    total: int
    skipped: int = 0
    counts: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)  # quarantine/failure reasons (first line, truncated)
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
    """Split tasks into (to do, skipped) by the catalog's stage state and each task's input fingerprint."""
    if force:
        return list(tasks), []
    state = catalog.stage_state(stage)
    todo, skipped = [], []
    for t in tasks:
        prev = state.get(t["item_id"])
        if prev and prev[0] in SKIP_STATUSES and prev[1] == t.get("input_fingerprint"):
            skipped.append(t)
        else:
            todo.append(t)
    return todo, skipped


def run_stage(
    stage: Stage,
    tasks: Sequence[Mapping[str, Any]],
    catalog: Catalog,
    runner: Any,
    run_id: str,
    on_done: Callable[[list[Outcome]], None] | None = None,
    force: bool = False,
    progress: bool = True,
    flush_every: int = 64,
    flush_every_s: float = 2.0,
) -> StageReport:
    todo, skipped = plan(catalog, stage.name, tasks, force)
    report = StageReport(stage.name, total=len(tasks), skipped=len(skipped))
    by_id = {t["item_id"]: t for t in todo}
    bar = StageProgress(stage.name, total=len(todo), skipped=len(skipped), enabled=progress)
    pending: list[Outcome] = []
    t0 = last_flush = time.perf_counter()

    def flush() -> None:
        if not pending:
            return
        done = [o for o in pending if o.status == "done"]
        if done and on_done:
            on_done(done)  # the stage's sink first: state says done only once the output is recorded
        catalog.record_stage_results(
            {
                "item_id": o.item_id, "stage": stage.name, "status": o.status, "reason": o.reason,
                "input_uri": by_id[o.item_id].get("input_uri"),
                "input_fingerprint": by_id[o.item_id].get("input_fingerprint"),
                "run_id": run_id, "duration_s": o.duration_s,
            }
            for o in pending
        )
        pending.clear()

    try:
        for outcome in runner.map(stage, todo):
            report.counts[outcome.status] += 1
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
    report.wall_s = time.perf_counter() - t0
    return report
