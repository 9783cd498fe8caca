"""`run_audit`: run every check, record per-item verdicts in the catalog, write audit.json and audit.html."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from audit.config import AuditConfig
from audit.context import AuditContext
from audit.funnel import funnel
from audit.registry import Check, Outcome, all_checks, severity_rank
from catalog import Catalog
from manifests.io import atomic_write_text
from pipelines.config import PipelineConfig
from common.progress import make_console

JSON_FORMAT = "motus-pyramid/audit/v1"
CSV_NAME = "audit_failures.csv"  # every failing (check, item) with its reason; the HTML shows the top of each check
CSV_COLUMNS = ("check", "category", "severity", "item_id", "reason")
FAIL_ON = ("error", "warning", "never")


@dataclass
class CheckResult:
    check: Check
    outcome: Outcome
    seconds: float
    crashed: str | None = None  # the traceback when the check itself raised

    @property
    def status(self) -> str:
        if self.crashed:
            return "crashed"
        if self.outcome.not_run:
            return "not run"
        return "fail" if self.outcome.failures else "pass"

    def to_json(self) -> dict[str, Any]:
        c, o = self.check, self.outcome
        return {"name": c.name, "category": c.category, "severity": c.severity, "status": self.status,
                "n_checked": len(o.checked), "n_failed": len(o.failures), "failing_item_ids": sorted(o.failures),
                "reasons": dict(sorted(o.failures.items())), "sets": o.sets, "explanation": c.explanation,
                "not_run": o.not_run, "crashed": self.crashed, "stats": o.stats, "seconds": round(self.seconds, 3)}


@dataclass
class AuditResult:
    run_id: str
    results: list[CheckResult]
    report_path: Path
    json_path: Path
    seconds: float
    csv_path: Path | None = None

    def failed(self, severity: str = "error") -> list[CheckResult]:
        """Checks that failed at `severity` or above (a crashed check counts as failed at any severity)."""
        rank = severity_rank(severity)
        return [r for r in self.results
                if r.status == "crashed" or (r.status == "fail" and severity_rank(r.check.severity) >= rank)]

    def gate(self, fail_on: str) -> bool:
        """True when the audit passes the gate: nothing at or above `fail_on` failed ('never' always passes)."""
        if fail_on not in FAIL_ON:
            raise ValueError(f"fail_on {fail_on!r} is not one of {', '.join(FAIL_ON)}")
        return fail_on == "never" or not self.failed(fail_on)

    def result(self, name: str) -> CheckResult:
        return next(r for r in self.results if r.check.name == name)


def run_check(check: Check, ctx: AuditContext) -> CheckResult:
    t0 = time.perf_counter()
    try:
        outcome = check.run(ctx)
        crashed = None
    except Exception:  # a broken check must not hide the others' findings; it fails the gate instead
        outcome, crashed = Outcome(not_run="the check crashed"), traceback.format_exc()
    return CheckResult(check, outcome, time.perf_counter() - t0, crashed)


def _store(catalog: Catalog, run_id: str, results: list[CheckResult]) -> int:
    now = dt.datetime.now(dt.timezone.utc)
    rows = [{"audit_run_id": run_id, "check_name": r.check.name, "item_id": subject, "severity": r.check.severity,
             "passed": subject not in r.outcome.failures, "detail": r.outcome.failures.get(subject),
             "created_at": now}
            for r in results for subject in dict.fromkeys(r.outcome.checked)]
    return catalog.upsert("audit_results", rows)


def write_failures_csv(path: Path, results: list[CheckResult]) -> int:
    """All failing (check, item) pairs with their reasons, one row each, check by check (temp file, then rename).
    Returns the rows written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    n = 0
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in results:
            c = r.check
            for subject, reason in sorted(r.outcome.failures.items()):
                writer.writerow((c.name, c.category, c.severity, subject, reason))
                n += 1
    os.replace(tmp, path)
    return n


def write_outputs(result: AuditResult, summary: dict[str, Any], ctx: AuditContext) -> None:
    """audit.json, the failures CSV and audit.html of one audit."""
    from audit.report import render_html

    result.csv_path = result.json_path.with_name(CSV_NAME)
    summary["failures_csv"] = result.csv_path.name
    atomic_write_text(result.json_path, json.dumps(summary, indent=1, default=str) + "\n")
    write_failures_csv(result.csv_path, result.results)
    atomic_write_text(result.report_path, render_html(result, ctx))


def audit_table(result: AuditResult) -> Table:
    """The compact console summary: one row per check."""
    colour = {"error": "red", "warning": "yellow", "info": "cyan"}
    table = Table(title=f"Audit {result.run_id}")
    for col in ("check", "category", "severity", "checked", "failed", "status"):
        table.add_column(col, justify="right" if col in ("checked", "failed") else "left")
    for r in result.results:
        status = r.status if r.status != "not run" else f"not run: {r.outcome.not_run}"
        style = colour[r.check.severity] if r.status in ("fail", "crashed") else ("dim" if r.status == "not run" else "")
        table.add_row(r.check.name, r.check.category, r.check.severity, str(len(r.outcome.checked)),
                      str(len(r.outcome.failures)), status, style=style)
    return table


def run_audit(cfg: PipelineConfig, catalog: Catalog, out_dir: str | Path | None = None,
              console: Console | None = None, settings: AuditConfig | None = None, runner: Any = None) -> AuditResult:
    """Run all checks over the catalog, its artifacts and shards; store the verdicts in `audit_results`; write
    `audit.json` and a self-contained `audit.html` to `out_dir` (default `<workdir>/reports`). `runner` (a Ray or
    Beam runner from `pipelines.runners`) runs the media pass, every item's frames decoded once, on its workers;
    None decodes the items one after another in this process."""
    console = console or make_console(stderr=True)
    settings = settings or AuditConfig()
    out = Path(out_dir) if out_dir else cfg.path("reports")
    t0 = time.perf_counter()
    run_id = catalog.start_run("audit", {"pipeline": cfg.to_dict(), "audit": settings.to_dict()})
    status, results = "failed", []
    try:
        ctx = AuditContext(cfg, catalog, settings, runner)
        results = [run_check(check, ctx) for check in all_checks()]
        _store(catalog, run_id, results)
        result = AuditResult(run_id, results, out / "audit.html", out / "audit.json", time.perf_counter() - t0)
        summary = {"format": JSON_FORMAT, "audit_run_id": run_id,
                   "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                   "workdir": str(Path(cfg.workdir).resolve()), "catalog": str(cfg.catalog_path),
                   "report": result.report_path.name, "settings": settings.to_dict(),
                   "funnel": funnel(ctx), "checks": [r.to_json() for r in results]}
        if catalog.is_snapshot:  # a job held the catalog: its state as of the copy
            summary["catalog_snapshot_taken_at"] = catalog.snapshot_taken_at.isoformat(timespec="seconds")
        write_outputs(result, summary, ctx)
        result.seconds = time.perf_counter() - t0
        status = "ok"
    finally:
        catalog.finish_run(run_id, status, {
            "checks": len(results), "failed": sum(r.status == "fail" for r in results),
            "crashed": sum(r.status == "crashed" for r in results)})
    console.print(audit_table(result))
    console.print(f"audit of {len(ctx.items)} items in {result.seconds:.1f}s; report {result.report_path}; "
                  f"summary {result.json_path}", highlight=False, markup=False)
    return result
