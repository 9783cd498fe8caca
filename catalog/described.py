"""What the catalog says about itself: a comment on every table and column (`COMMENT ON`, read back with
`duckdb_tables()` / `duckdb_columns()` in any DuckDB client), the `item_status` view, the renames of columns
that older catalogs carry under their old names, and the reading views that resolve stored paths."""

from __future__ import annotations

from pathlib import Path

import duckdb

from catalog import paths
from manifests.schemas import RENAMED_COLUMNS, SCHEMAS

TABLE_COMMENTS = {
    "items": "One row per ingested item (a clip or an episode), keyed by item_id = <source>/<native_id>. Items "
             "quarantined at ingest have no row here: see the item_status view.",
    "item_stages": "Per-item stage state: the last outcome of each (item, stage) — done, quarantined (bad input, "
                   "with the reason) or failed (an unexpected error, retried on the next run).",
    "artifacts": "Files a stage wrote for an item (actions at ingest, flow, latent actions, samples) or a run wrote (VAE checkpoints).",
    "runs": "One row per job run (ingest, flow, vae, label, shard, audit, ...): config, code version, status, counts.",
    "flow_stats": "Motion statistics of each item's optical flow (the flow stage's output) and the motion filter's verdict.",
    "evaluations": "Evaluation results in long form: one row per (run, scope, metric).",
    "shards": "The registered WebDataset shards: a shard not listed here is not part of its set.",
    "audit_results": "The audit's verdicts: one row per (audit run, check, thing checked).",
}

COLUMN_COMMENTS = {
    "items": {
        "item_id": "<source>/<native_id>, stable across runs",
        "source": "the source adapter's name (robotwin, task_agnostic, ssv2, ego4d, oxe, lerobot, ...)",
        "native_id": "the id inside the source (episode file, clip id, ...)",
        "tier": "the Motus data pyramid tier, 1 (web video) .. 6 (target-robot demonstrations)",
        "group_id": "the source video or episode; the unit of splitting (one group never straddles splits)",
        "split": "train | val | test, from a stable hash of group_id",
        "media_uris": "one media path or URI per camera, in the order of cameras",
        "cameras": "camera names; the first is the main view",
        "fps": "the real sample rate (probed), not what a container claims",
        "frame_count": "frames in the item's window",
        "width": "frame width in pixels (main camera)",
        "height": "frame height in pixels (main camera)",
        "duration_s": "window length in seconds",
        "start_s": "window start inside the media, seconds (0 for whole episodes)",
        "embodiment": "robot name, human or unknown",
        "action_dim": "number of action dims (0 without actions)",
        "action_names": "one name per action dim",
        "action_semantics": "one <kind>:<part> per action dim (absolute | delta | velocity; docs/formats.md)",
        "action_timing": "after: action row t is sent after frame t; at: frame t shows action row t",
        "state_dim": "number of state dims",
        "state_names": "one name per state dim",
        "has_actions": "the item has real actions",
        "language": "instruction / narration / label lines",
        "licence": "the licence of the source data",
        "input_uri": "the file (or folder) the item was read from",
        "input_blake2b": "blake2b-128 (hex) of the input bytes (was input_checksum)",
        "input_bytes": "size of the input in bytes",
        "extras": "JSON: source-specific details (layout version, sim extras, action semantics source, ...)",
    },
    "item_stages": {
        "item_id": "the item (items.item_id, or an id quarantined before it got an items row)",
        "stage": "ingest | flow | label | shard | ...",
        "status": "done | quarantined | failed",
        "reason": "why it was quarantined or failed, in words",
        "input_uri": "the input that caused the outcome",
        "input_fingerprint": "what the stage's output depends on; a changed fingerprint redoes the item",
        "run_id": "the run that recorded this outcome (runs.run_id)",
        "attempts": "how often the item went through the stage",
        "duration_s": "seconds the stage took for the item",
        "updated_at": "when this outcome was recorded (UTC)",
    },
    "artifacts": {
        "item_id": "the item the file belongs to (null for run-level files such as checkpoints)",
        "stage": "the stage that wrote the file",
        "kind": "actions | flow | latent_action | sample | checkpoint | ...",
        "path": "the file",
        "bytes": "file size in bytes",
        "blake2b": "blake2b-128 (hex) of the file's bytes (was checksum)",
        "run_id": "the run that wrote it (runs.run_id)",
        "created_at": "when it was recorded (UTC)",
    },
    "runs": {
        "run_id": "<UTC time>-<job>-<random>",
        "job": "ingest | flow | vae-train | label | shard | audit | ...",
        "config": "JSON of the full resolved config",
        "code_version": "git commit of the code (+dirty for local changes) or the package version",
        "engine": "ray | beam | local",
        "started_at": "start time (UTC)",
        "ended_at": "end time (UTC); null while running; for a killed run, when the next writer found it dead",
        "status": "running | ok | failed | killed (found running with its owner gone by the next writer)",
        "counts": "JSON of per-outcome counts (done, skipped, quarantined, failed)",
        "pid": "process id of the driver that ran it",
        "host": "host name of the driver that ran it",
    },
    "flow_stats": {
        "item_id": "the item (items.item_id)",
        "run_id": "the flow run (runs.run_id)",
        "backend": "dis | dpflow | sim",
        "checkpoint": "DPFlow weights or DIS preset",
        "delta_s": "seconds between the two frames of a flow pair",
        "delta_frames": "frames between the two frames of a flow pair",
        "grid": "native | delta: where flow pairs start",
        "n_pairs": "flow pairs computed",
        "mean_px": "mean flow magnitude over valid pixels, in pixels of the working canvas",
        "p50_px": "median flow magnitude, pixels",
        "p90_px": "90th percentile flow magnitude, pixels",
        "p99_px": "99th percentile flow magnitude, pixels",
        "patch_min_px": "min over patches of the per-pixel temporal mean magnitude, pixels",
        "static_pair_fraction": "share of pairs whose mean magnitude is near zero",
        "jitter_px": "median |second difference| of the per-pair mean flow vector, pixels",
        "valid_fraction": "share of canvas pixels with a valid flow value",
        "is_static": "the motion filter's verdict (static items are marked, not deleted)",
        "static_reason": "why the item counts as static",
        "artifact_path": "the flow artifact (artifacts.path)",
    },
    "evaluations": {
        "run_id": "the evaluating run (runs.run_id)",
        "scope": "overall, a source or an embodiment",
        "metric": "the metric's name (probe_r2, epe, ...)",
        "value": "the metric's value",
        "created_at": "when it was recorded (UTC)",
    },
    "shards": {
        "path": "the shard tar",
        "shard_set": "the shard root (one set per root, replaced whole)",
        "split": "train | val | test",
        "tier": "the tier when shards are split per tier, else null",
        "index": "NNNNNN in the file name, within (split, tier)",
        "n_samples": "samples (clips) in the tar",
        "bytes": "file size in bytes",
        "sha256": "SHA-256 (hex) of the tar",
        "item_ids": "the items in the tar, in tar order",
        "run_id": "the shard run that wrote it (runs.run_id)",
        "created_at": "when it was registered (UTC)",
    },
    "audit_results": {
        "audit_run_id": "the audit run (runs.run_id)",
        "check_name": "the check's name (audit/checks)",
        "item_id": "the item, or what else was checked (a shard path, ...)",
        "severity": "error | warning | info",
        "passed": "the check passed for this subject",
        "detail": "why it failed, in words",
        "created_at": "when it was recorded (UTC)",
    },
}

# Every item ever seen (ingested, or quarantined before it had an items row) with its last stage outcome.
ITEM_STATUS_VIEW = """
CREATE OR REPLACE {temp}VIEW item_status AS
WITH last AS (
    SELECT * FROM item_stages
    QUALIFY row_number() OVER (PARTITION BY item_id ORDER BY updated_at DESC, stage) = 1
), troubles AS (
    SELECT item_id, list(stage || ': ' || coalesce(reason, status) ORDER BY stage) AS problems
    FROM item_stages WHERE status IN ('quarantined', 'failed') GROUP BY item_id
), ids AS (
    SELECT item_id FROM items UNION SELECT item_id FROM item_stages
)
SELECT ids.item_id, split_part(ids.item_id, '/', 1) AS source, i.tier, i.split, i.embodiment,
       i.item_id IS NOT NULL AS ingested, last.stage AS last_stage, last.status AS last_status,
       last.reason AS last_reason, last.updated_at AS last_updated_at, last.run_id AS last_run_id,
       coalesce(troubles.problems, []) AS problems
FROM ids LEFT JOIN items i USING (item_id) LEFT JOIN last USING (item_id) LEFT JOIN troubles USING (item_id)
"""
# The items whose `stage` is done: what every later stage, manifest and audit reads (`JOIN done_items('flow')
# USING (item_id)`). Temporary, so a read-only catalog has it too and the file stays as other clients expect.
DONE_ITEMS_MACRO = """
CREATE OR REPLACE TEMP MACRO done_items(stage_name) AS TABLE
SELECT item_id FROM item_stages WHERE stage = stage_name AND status = 'done'
"""
VIEW_COMMENTS = {
    "item_status": "Every item ever seen — ingested or quarantined at ingest (then it has no items row) — with "
                   "the last stage outcome recorded for it and every quarantine/failure reason.",
}
VIEW_COLUMN_COMMENTS = {
    "item_status": {
        "item_id": "the item", "source": "the item id's prefix", "tier": "items.tier (null if never ingested)",
        "split": "items.split (null if never ingested)", "embodiment": "items.embodiment",
        "ingested": "the item has an items row", "last_stage": "the stage of its latest outcome",
        "last_status": "done | quarantined | failed", "last_reason": "why, when quarantined or failed",
        "last_updated_at": "when the latest outcome was recorded (UTC)", "last_run_id": "the run that recorded it",
        "problems": "every '<stage>: <reason>' of a quarantined or failed stage",
    },
}


_OURS = "database_name = current_database() AND schema_name = 'main'"


def rename_legacy_columns(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Rename columns an older catalog holds under their old names; returns 'table.old -> new' for each."""
    done = []
    for table, renamed in RENAMED_COLUMNS.items():
        have = _columns(con, table)
        for old, new in renamed.items():
            if old in have and new not in have:
                con.execute(f'ALTER TABLE {table} RENAME COLUMN "{old}" TO "{new}"')
                done.append(f"{table}.{old} -> {new}")
    return done


def reading_views(con: duckdb.DuckDBPyConnection, root: Path) -> list[str]:
    """Temporary views named like the tables that resolve stored paths against `root` (catalog/paths.py) and,
    in an older catalog opened read-only, show old column names under their new ones; item_status too when the
    file has none; and the `done_items(stage)` table macro. Returns the tables given a view."""
    db = con.execute("SELECT current_database()").fetchall()[0][0]
    made = []
    for table in SCHEMAS:
        sql = paths.reading_view(db, table, _columns(con, table), root, RENAMED_COLUMNS.get(table, {}))
        if sql:
            con.execute(sql)
            made.append(table)
    tables = set(_names(con, "duckdb_tables()", "table_name"))
    if {"items", "item_stages"} <= tables and "item_status" not in _names(con, "duckdb_views()", "view_name"):
        _create_view(con, temp=True)  # a catalog written before the view existed
    if "item_stages" in tables:
        con.execute(DONE_ITEMS_MACRO)
    return made


def describe(con: duckdb.DuckDBPyConnection) -> None:
    """(Re)create the item_status view and set every table, view and column comment that differs."""
    have_view = _create_view(con, temp=False)
    tables = dict(con.execute(f"SELECT table_name, comment FROM duckdb_tables() WHERE {_OURS}").fetchall())
    tables.update(con.execute(f"SELECT view_name, comment FROM duckdb_views() WHERE {_OURS}").fetchall())
    columns = {(t, c): comment for t, c, comment in con.execute(
        f"SELECT table_name, column_name, comment FROM duckdb_columns() WHERE {_OURS}").fetchall()}
    for kind, comments, column_comments in (("TABLE", TABLE_COMMENTS, COLUMN_COMMENTS),
                                            ("VIEW", VIEW_COMMENTS if have_view else {}, VIEW_COLUMN_COMMENTS)):
        for name, text in comments.items():
            if tables.get(name) != text:
                con.execute(f"COMMENT ON {kind} {name} IS {_literal(text)}")
        for name, cols in column_comments.items():
            for col, text in cols.items():
                if (name, col) in columns and columns[(name, col)] != text:
                    con.execute(f'COMMENT ON COLUMN {name}."{col}" IS {_literal(text)}')


def _create_view(con: duckdb.DuckDBPyConnection, temp: bool) -> bool:
    """Create item_status; False for a catalog so old that it lacks a column the view reads (its tables still
    read, and the view comes once a job has written the missing columns)."""
    try:
        con.execute(ITEM_STATUS_VIEW.format(temp="TEMP " if temp else ""))
    except duckdb.BinderException:
        return False
    return True


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    return {r[0] for r in con.execute(f"SELECT column_name FROM duckdb_columns() WHERE {_OURS} AND table_name = ?",
                                      [table]).fetchall()}


def _names(con: duckdb.DuckDBPyConnection, relation: str, column: str) -> list[str]:
    return [r[0] for r in con.execute(f"SELECT {column} FROM {relation} WHERE {_OURS}").fetchall()]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"

