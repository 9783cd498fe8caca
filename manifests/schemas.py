"""Arrow schemas for every table the pipeline writes: declared once, used by the catalog and the manifests.

The catalog (DuckDB) derives its tables from these schemas, and Parquet manifests are written with them, so a
column added here shows up everywhere at once.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import pyarrow as pa

# The six tiers of the Motus data pyramid.
TIERS: dict[int, str] = {
    1: "web video",
    2: "egocentric human video",
    3: "simulation",
    4: "task-agnostic robot motion",
    5: "multi-robot trajectories",
    6: "target-robot demonstrations",
}

_STR_LIST = pa.list_(pa.string())

# One row per item (a clip or an episode). `item_id` = "<source>/<native_id>", stable across runs.
ITEMS = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("native_id", pa.string(), nullable=False),
        pa.field("tier", pa.int8(), nullable=False),
        pa.field("group_id", pa.string(), nullable=False),  # source video/episode: the unit of splitting
        pa.field("split", pa.string(), nullable=False),
        pa.field("media_uris", _STR_LIST),  # one per camera, same order as `cameras`
        pa.field("cameras", _STR_LIST),
        pa.field("fps", pa.float32()),  # the real sample rate (probed), not what a container claims
        pa.field("frame_count", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("duration_s", pa.float32()),
        pa.field("start_s", pa.float64()),  # clip window inside the media (0 for whole episodes); float64: hours-long files
        pa.field("embodiment", pa.string()),  # robot name, "human" or "unknown"
        pa.field("action_dim", pa.int16()),
        pa.field("action_names", _STR_LIST),
        # per action dim, `<kind>:<part>` (absolute | delta | velocity; manifests/actions.py), and whether row t
        # acts after frame t or is what frame t shows: what "the action over a flow pair" is derived from
        pa.field("action_semantics", _STR_LIST),
        pa.field("action_timing", pa.string()),
        pa.field("state_dim", pa.int16()),
        pa.field("state_names", _STR_LIST),
        pa.field("has_actions", pa.bool_(), nullable=False),
        pa.field("language", _STR_LIST),  # instruction / narration lines
        pa.field("licence", pa.string()),
        pa.field("input_uri", pa.string(), nullable=False),  # the file (or folder) the item was read from
        pa.field("input_blake2b", pa.string()),  # blake2b-128 (hex) of the input bytes
        pa.field("input_bytes", pa.int64()),
        pa.field("extras", pa.string()),  # JSON: source-specific details (layout version, paths of sim extras, ...)
    ]
)

# Per-item stage state: done / failed / quarantined, with the reason and the input that caused it.
ITEM_STAGES = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # done | failed | quarantined
        pa.field("reason", pa.string()),
        pa.field("input_uri", pa.string()),
        pa.field("input_fingerprint", pa.string()),  # size+mtime at the time of the run: a changed input is redone
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("attempts", pa.int32(), nullable=False),
        pa.field("duration_s", pa.float32()),
        pa.field("updated_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

# Files a stage produced for an item (flow, latents, ...), or a run produced (shards, checkpoints).
ARTIFACTS = pa.schema(
    [
        pa.field("item_id", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("blake2b", pa.string(), nullable=False),  # blake2b-128 (hex) of the file
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

RUNS = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("job", pa.string(), nullable=False),
        pa.field("config", pa.string()),  # JSON of the full resolved config
        pa.field("code_version", pa.string()),
        pa.field("engine", pa.string()),
        pa.field("started_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("ended_at", pa.timestamp("us", tz="UTC")),
        pa.field("status", pa.string(), nullable=False),  # running | ok | failed | killed
        pa.field("counts", pa.string()),  # JSON {"done": n, "skipped": n, "quarantined": n, "failed": n}
        pa.field("pid", pa.int64()),  # the driver process, so a later writer can tell a killed run
        pa.field("host", pa.string()),
    ]
)

# Output of the flow stage: motion statistics per item (for audits and the motion filter) and what made them.
FLOW_STATS = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("backend", pa.string(), nullable=False),  # dis | dpflow | sim
        pa.field("checkpoint", pa.string()),  # dpflow weights / dis preset
        pa.field("delta_s", pa.float32(), nullable=False),
        pa.field("delta_frames", pa.int32(), nullable=False),
        pa.field("grid", pa.string(), nullable=False),  # native | delta
        pa.field("n_pairs", pa.int32(), nullable=False),
        pa.field("mean_px", pa.float32()),  # flow magnitude in pixels of the working size, over valid pixels
        pa.field("p50_px", pa.float32()),
        pa.field("p90_px", pa.float32()),
        pa.field("p99_px", pa.float32()),
        pa.field("patch_min_px", pa.float32()),  # min over patches of the per-pixel temporal mean magnitude
        pa.field("static_pair_fraction", pa.float32()),  # pairs whose mean magnitude is near zero
        pa.field("jitter_px", pa.float32()),  # median |second difference| of the per-pair mean flow vector
        pa.field("valid_fraction", pa.float32()),  # share of canvas pixels with a valid flow value
        pa.field("is_static", pa.bool_(), nullable=False),  # the motion filter's verdict (items are marked, not deleted)
        pa.field("static_reason", pa.string()),
        pa.field("artifact_path", pa.string(), nullable=False),
    ]
)

# Evaluation results in long form: one row per (run, scope, metric), e.g. (vae-eval run, "robotwin", "probe_r2").
EVALUATIONS = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("scope", pa.string(), nullable=False),  # overall | a source | an embodiment
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

# The registered WebDataset shards (the shard stage's commit point: a shard not listed here is not part of the set).
SHARDS = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),  # absolute path of the .tar
        pa.field("shard_set", pa.string(), nullable=False),  # the shard root (one set per root, replaced whole)
        pa.field("split", pa.string(), nullable=False),
        pa.field("tier", pa.int8()),  # set when shards are split per tier, else null
        pa.field("index", pa.int32(), nullable=False),  # NNNNNN in the file name, within (split, tier)
        pa.field("n_samples", pa.int32(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("item_ids", _STR_LIST, nullable=False),  # in tar order
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

# One row per (audit run, check, thing checked): the audit's verdicts, queryable next to the items they judge.
AUDIT_RESULTS = pa.schema(
    [
        pa.field("audit_run_id", pa.string(), nullable=False),  # the `runs` row of the audit
        pa.field("check_name", pa.string(), nullable=False),  # "check" is an SQL keyword
        pa.field("item_id", pa.string(), nullable=False),  # the item, or what else was checked (a shard path, ...)
        pa.field("severity", pa.string(), nullable=False),  # error | warning | info
        pa.field("passed", pa.bool_(), nullable=False),
        pa.field("detail", pa.string()),  # why it failed, in words
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

# Columns renamed since catalogs were first written (table -> old name -> new name): checksum columns name their
# algorithm. The catalog renames them in an older file on its next write; rows built with an old name still validate.
RENAMED_COLUMNS: dict[str, dict[str, str]] = {
    "items": {"input_checksum": "input_blake2b"},
    "artifacts": {"checksum": "blake2b"},
}

SCHEMAS: dict[str, pa.Schema] = {
    "items": ITEMS,
    "item_stages": ITEM_STAGES,
    "artifacts": ARTIFACTS,
    "runs": RUNS,
    "flow_stats": FLOW_STATS,
    "evaluations": EVALUATIONS,
    "shards": SHARDS,
    "audit_results": AUDIT_RESULTS,
}


def validate_rows(schema: pa.Schema, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Build a table from dict rows, failing with the row and column named when a value does not fit.

    Unknown keys are an error (a typo must not silently drop data); missing nullable keys become null.
    """
    names = set(schema.names)
    legacy = {old: new for renamed in RENAMED_COLUMNS.values() for old, new in renamed.items()
              if new in names and old not in names}
    rows = [{legacy.get(k, k): v for k, v in row.items()} for row in rows] if legacy else list(rows)
    for i, row in enumerate(rows):
        unknown = set(row) - names
        if unknown:
            raise ValueError(f"row {i} ({row.get('item_id', '?')}): unknown columns {sorted(unknown)}")
        for field in schema:
            if not field.nullable and row.get(field.name) is None:
                raise ValueError(f"row {i} ({row.get('item_id', '?')}): column '{field.name}' must not be null")
    try:
        return pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as e:
        # find the offending row/column for a readable message
        for i, row in enumerate(rows):
            for field in schema:
                try:
                    pa.array([row.get(field.name)], type=field.type)
                except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as cell_err:
                    raise ValueError(
                        f"row {i} ({row.get('item_id', '?')}): column '{field.name}' ({field.type}): {cell_err}"
                    ) from e
        raise
