"""An audit of a dataset on disk, without the pipeline: `pyramid audit --source KIND:PATH` (README.md, "Audits"):
no ingest, no catalog; LeRobot read from its tables, other kinds probed by their adapter in this process."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from audit.config import AuditConfig
from audit.context import AuditContext
from audit.lerobot_tables import Tables, dataset_tables, read_tables
from audit.registry import Outcome, all_checks
from audit.run import JSON_FORMAT, AuditResult, CheckResult, audit_table, run_check, write_outputs
from common.errors import BadInput
from common.progress import make_console
from pipelines.config import PipelineConfig, SourceConfig, load_config

KIND_ALIASES = {"rlds": "oxe"}
METADATA_CHECKS = {"media_readable", "stream_matches_metadata", "actions_match_frames", "finite_values",
                   "values_in_bounds", "missing_fields", "duplicate_item_ids", "quarantined_other", "duration",
                   "language_empty", "language_template", "language_single_instruction"}
METADATA_CATEGORIES = {"dataset", "motion"}  # every check of these reads files and actions only
DECODE_CHECKS = {"black_frames", "frozen_frames", "frame_stutter", "concealed_errors"}  # and media_readable
# decodes every item's frames


class _NotDecoded(dict):
    """`frames` of an audit that does not decode: every item reads as not looked at (None), never as a failure."""

    def __missing__(self, item_id: str) -> None:
        return None


def parse_source(spec: str) -> tuple[str, Path]:
    """`KIND:PATH` → (adapter kind, existing root). `rlds` names the OXE/RLDS adapter."""
    from sources import SOURCES

    kind, sep, path = spec.partition(":")
    kind = KIND_ALIASES.get(kind.strip().lower(), kind.strip().lower())
    if not sep or not path:
        raise ValueError(f"--source takes KIND:PATH (for example lerobot:/data/aloha), not {spec!r}")
    if kind not in SOURCES:
        raise ValueError(f"--source kind {kind!r} is not one of {', '.join(sorted([*SOURCES, *KIND_ALIASES]))}")
    root = Path(path).expanduser()
    if not root.exists():
        raise ValueError(f"--source path {root} does not exist")
    return kind, root.resolve()


class DiskContext(AuditContext):
    """The audit context over rows held in memory: no catalog, no flow, labels or shards."""

    def __init__(self, cfg: PipelineConfig, settings: AuditConfig, rows: list[dict[str, Any]],
                 quarantine: list[dict[str, Any]], actions: dict[str, np.ndarray | str] | None, decode: bool,
                 label: str, runner: Any = None):
        super().__init__(cfg, None, settings, runner)
        self.label, self.decode = label, decode
        given = {"items": rows, "quarantine": quarantine, "flow_stats": {}, "latent_paths": {}, "latents": {},
                 "shards": [], "seen": {r["item_id"] for r in rows} | {r["item_id"] for r in quarantine}}
        if actions is not None:
            given["actions"] = actions
        if not decode:  # media_readable then reports missing files and the reader's refusals, decoding nothing
            given["media"] = given["frames"] = given["decoded"] = _NotDecoded()
        self.__dict__.update(given)  # fills the cached properties, so nothing asks the catalog


def _episode_language(t: Tables, rows: np.ndarray, episode: dict[str, Any]) -> list[str]:
    """The episode's task texts by its task_index values; the episodes metadata's `tasks` when none resolves."""
    ti = t.columns.get("task_index")
    texts = []
    if ti is not None and len(rows):
        for v in dict.fromkeys(ti[rows].tolist()):
            if np.isfinite(v) and int(v) in t.tasks:
                texts.append(t.tasks[int(v)])
    return texts or [str(x) for x in episode.get("tasks") or []]


def lerobot_rows(kind: str, root: Path, options: dict[str, Any]) -> tuple[Tables, list[dict], dict[str, np.ndarray]]:
    """One item row per listed episode of a LeRobot dataset, and its actions, from the tables alone."""
    from sources import make_source

    adapter = make_source(kind, str(root), **options)  # what the dims mean, the embodiment: as ingest reads them
    t = read_tables(root, f"lerobot/{adapter.repo_name}")
    rows, actions = [], {}
    by_episode = t.rows()
    size = next((adapter.declared_sizes[k] for k in adapter.camera_keys if adapter.declared_sizes.get(k)), None)
    width, height = size or (None, None)  # what info.json declares (nothing is decoded)
    for index, ep in sorted(t.episodes.items()):
        rows_of = by_episode.get(index, np.zeros(0, np.int64))
        length = int(ep.get("length") or len(rows_of))
        item_id = t.item_id(index)
        rows.append({
            "item_id": item_id, "source": adapter.name, "native_id": f"{adapter.repo_name}/episode_{index:06d}",
            "tier": adapter.tier, "input_uri": str(root / ep["data_file"]) if ep.get("data_file") else str(root),
            "group_id": item_id, "split": "—", "fps": t.fps, "frame_count": length,
            "duration_s": length / t.fps if t.fps else None, "width": width, "height": height,
            "media_uris": [str(root / v["file"]) for v in (ep.get("videos") or {}).values() if v.get("file")],
            "cameras": list(t.cameras), "embodiment": adapter.embodiment, "action_dim": adapter.action_dim,
            "action_names": list(adapter.action_names), "action_semantics": list(adapter.action_semantics),
            "action_timing": adapter.action_timing if adapter.action_key else None,
            "has_actions": t.action is not None, "language": _episode_language(t, rows_of, ep), "extras": None})
        if t.action is not None and len(rows_of):
            actions[item_id] = t.action[rows_of]
    return t, rows, actions


def probed_rows(cfg: PipelineConfig, console: Console) -> tuple[list[dict], list[dict]]:
    """Every item the source's adapter lists, probed in this process: (rows, quarantine records)."""
    from pipelines.ingest import discover_tasks, probe_item  # the row only: nothing is written

    errors: dict[str, str] = {}
    tasks = list(discover_tasks(cfg, console, errors=errors))  # one dataset: its task list is small
    if errors:
        raise ValueError("; ".join(f"{k}: {v}" for k, v in errors.items()))
    rows, quarantine = [], []
    for task in tasks:
        try:
            row = probe_item(task, None)
            rows.append({**row, "split": row["split"] or "—"})
        except Exception as e:  # noqa: BLE001 - as ingest: one bad item is a record, never a stopped audit
            bad = isinstance(e, BadInput)
            status, reason = ("quarantined", str(e)) if bad else ("failed", f"{type(e).__name__}: {e}")
            quarantine.append({"item_id": task["item_id"], "stage": "ingest", "status": status, "reason": reason,
                               "input_uri": task["input_uri"]})
    return rows, quarantine


def selected(name: str, category: str, decode: bool) -> str | None:
    """None when the check runs on a dataset on disk, else why it does not."""
    if name in METADATA_CHECKS or category in METADATA_CATEGORIES:
        return None
    if name in DECODE_CHECKS:
        return None if decode else "decodes frames: pass --decode"
    return "needs the pipeline's output (flow, labels, shards or splits): not run on a dataset on disk"


def run_source_audit(spec: str, out_dir: str | Path, settings: AuditConfig | None = None, decode: bool = False,
                     console: Console | None = None, options: dict[str, Any] | None = None,
                     cfg: PipelineConfig | None = None, runner: Any = None, label: str | None = None) -> AuditResult:
    """Audit the dataset `spec` (KIND:PATH) on disk; write audit.json and audit.html to `out_dir`. `cfg` (default:
    the built-in defaults) gives the camera the media pass decodes and everything else the source's reader takes;
    its sources and workdir are replaced by `spec` and `out_dir`. `runner` runs the media pass (`--decode`) on
    workers; None decodes in this process. `label` names the dataset in the report (default `spec`'s KIND:ROOT;
    the CLI passes the bucket URL of a mirrored root)."""
    from audit.funnel import funnel

    console = console or make_console(stderr=True)
    settings = settings or AuditConfig()
    kind, root = parse_source(spec)
    out = Path(out_dir)
    t0 = time.perf_counter()
    base = cfg if cfg is not None else load_config(None, **{"runner.engine": "local"})
    cfg = dataclasses.replace(base, workdir=str(out),
                              sources=[SourceConfig(kind=kind, root=str(root), options=dict(options or {}))])
    label = label or f"{kind}:{root}"
    if kind == "lerobot" and not decode:
        table, rows, actions = lerobot_rows(kind, root, dict(options or {}))
        quarantine = []
    else:
        rows, quarantine = probed_rows(cfg, console)
        actions, table = None, None
    ctx = DiskContext(cfg, settings, rows, quarantine, actions, decode, label, runner)
    if table is not None:
        ctx.memo("lerobot_tables", lambda: [table])  # the tables just read: every dataset check shares them
    else:
        dataset_tables(ctx)
    results = []
    for check in all_checks():
        why = selected(check.name, check.category, decode)
        results.append(run_check(check, ctx) if why is None else CheckResult(check, Outcome.skipped(why), 0.0))
    run_id = f"disk-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    result = AuditResult(run_id, results, out / "audit.html", out / "audit.json", time.perf_counter() - t0)
    summary = {"format": JSON_FORMAT, "audit_run_id": run_id,
               "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "source": label,
               "decode": decode, "report": result.report_path.name, "settings": settings.to_dict(),
               "funnel": funnel(ctx), "checks": [r.to_json() for r in results]}
    write_outputs(result, summary, ctx)
    result.seconds = time.perf_counter() - t0
    console.print(audit_table(result))
    console.print(f"audit of {len(rows)} items of {label} ({len(quarantine)} refused by its reader) in "
                  f"{result.seconds:.1f}s; report {result.report_path}; summary {result.json_path}",
                  highlight=False, markup=False)
    return result
