"""Integrity: can every item be read, and do its parts agree (frames, actions, ids, values)?

Items that ingest or flow quarantined never reach the items table, so these checks start from the quarantine
records: each reason is claimed by the first check whose pattern matches it (`QUARANTINE_RULES`), and
`quarantined_other` reports any reason no check claims, so nothing quarantined goes unreported. The checks then
look at the catalogued items themselves.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from audit.context import AuditContext
from audit.registry import Outcome, check
from flow_extraction.artifacts import artifact_path
from manifests.actions import validate as validate_semantics

QUARANTINE_RULES: list[tuple[str, re.Pattern]] = [
    ("frame_indices", re.compile(r"frame_index is not")),
    ("duplicate_item_ids", re.compile(r"duplicate item id")),
    ("latent_values", re.compile(r"latent rows|non-finite flow")),
    ("finite_values", re.compile(r"non-finite")),
    ("actions_match_frames",
     re.compile(r"\d+ (action )?rows|\d+ steps|values, expected|does not match \d+ frames|frames but|has \d+ frames, ")),
    ("duration", re.compile(r"too short")),
    ("missing_fields", re.compile(r"missing (key|column|data file)|missing \S+\.(npy|json|parquet)\b|"
                                  r"no (action|image) feature|no joint-space keys|without (a|any) |has no (action|episode_index)")),
    ("media_readable", re.compile(r"video|media|decode|HDF5|TFRecord|shard|\.mp4|\.webm|frames?\b|image|missing")),
]


def claiming_check(reason: str | None) -> str:
    """The check that reports a quarantine reason: the first rule that matches, else 'quarantined_other'."""
    return next((name for name, pattern in QUARANTINE_RULES if pattern.search(reason or "")), "quarantined_other")


def quarantine_claims(ctx: AuditContext) -> dict[str, list[dict]]:
    """check name → the quarantine records it reports."""

    def classify() -> dict[str, list[dict]]:
        claims: dict[str, list[dict]] = defaultdict(list)
        for record in ctx.quarantine:
            claims[claiming_check(record["reason"])].append(record)
        return claims

    return ctx.memo("quarantine_claims", classify)


def from_quarantine(ctx: AuditContext, name: str, out: Outcome) -> Outcome:
    for record in quarantine_claims(ctx).get(name, []):
        out.fail(record["item_id"], f"{record['status']} at {record['stage']}: {record['reason']}")
    return out


def _ids(rows) -> list[str]:
    return [r["item_id"] for r in rows]


@check("media_readable", "integrity", "error",
       "Media that is missing, truncated or does not decode: the media reasons of the ingest/flow quarantine, every "
       "catalogued media file (all cameras) still there, and a few frames of every item decoded again.")
def media_readable(ctx: AuditContext) -> Outcome:
    out = from_quarantine(ctx, "media_readable", Outcome(checked=_ids(ctx.items)))
    for row in ctx.items:
        missing = [u for u in row["media_uris"] or [] if not Path(u.split("#", 1)[0]).exists()]
        if missing:
            out.fail(row["item_id"], "missing media file " + ", ".join(Path(u.split("#", 1)[0]).name for u in missing))
        facts = ctx.frames[row["item_id"]]
        if isinstance(facts, str):
            out.fail(row["item_id"], facts)
    return out


@check("stream_matches_metadata", "integrity", "warning",
       "The source's own metadata (e.g. ego4d.json num_frames, fps, LeRobot info.json totals) disagrees with the "
       "stream or dataset it describes. Ingest trusted the stream, so the item is usable, but the metadata is wrong "
       "and other tools may trust it.")
def stream_matches_metadata(ctx: AuditContext) -> Outcome:
    out = Outcome(checked=_ids(ctx.items))
    for row in ctx.items:
        extras = json.loads(row["extras"] or "{}")
        for what in ("frames", "fps"):
            claimed, real = extras.get(f"metadata_{what}"), extras.get(f"stream_{what}")
            if claimed is not None and real is not None and claimed != real:
                out.fail(row["item_id"], f"metadata says {claimed:g} {what}, the stream has {real:g}")
        # dataset totals (LeRobot info.json total_frames / total_episodes) against what the dataset holds
        for key, (claimed, counted) in sorted((extras.get("metadata_totals") or {}).items()):
            out.fail(row["item_id"], f"info.json says {key} {claimed}, the dataset holds {counted}")
    return out


@check("actions_match_frames", "integrity", "error",
       "Actions (and states, where ingest compares them) must be readable, have one row per frame and as many "
       "columns as the catalog's action_dim.")
def actions_match_frames(ctx: AuditContext) -> Outcome:
    out = from_quarantine(ctx, "actions_match_frames", Outcome())
    for item_id, actions in ctx.actions.items():
        row = ctx.items_by_id[item_id]
        out.checked.append(item_id)
        if isinstance(actions, str):
            if "non-finite" not in actions:  # finite_values reports those
                out.fail(item_id, f"actions unreadable: {actions}")
        elif actions.ndim != 2 or len(actions) != row["frame_count"] or actions.shape[1] != row["action_dim"]:
            out.fail(item_id, f"actions have shape {list(actions.shape)}, the catalog says "
                              f"[{row['frame_count']} frames, {row['action_dim']} dims]")
    return out


@check("finite_values", "integrity", "error",
       "Actions hold NaN or Inf: from the ingest quarantine, and in the actions of every catalogued item, read again.")
def finite_values(ctx: AuditContext) -> Outcome:
    out = from_quarantine(ctx, "finite_values", Outcome())
    for item_id, actions in ctx.actions.items():
        out.checked.append(item_id)
        if isinstance(actions, str):
            if "non-finite" in actions:
                out.fail(item_id, actions)
            continue
        bad = ~np.isfinite(actions)
        if bad.any():
            rows = np.unique(np.nonzero(bad)[0])
            out.fail(item_id, f"{int(bad.sum())} NaN/Inf values in actions, first at rows {rows[:5].tolist()}")
    return out


@check("values_in_bounds", "integrity", "error",
       "Action values outside the bounds of their embodiment (the audit's action_bounds table: RoboTwin joints "
       "|x| <= 4 rad and grippers in [0, 1], normalised grippers in [-1, 1], joint angles |x| <= 4 rad, anything "
       "else |x| <= 100).")
def values_in_bounds(ctx: AuditContext) -> Outcome:
    out = Outcome()
    for item_id, actions in ctx.actions.items():
        if isinstance(actions, str) or actions.ndim != 2:
            continue  # actions_match_frames reports it
        row = ctx.items_by_id[item_id]
        out.checked.append(item_id)
        names = list(row["action_names"] or [])
        problems = []
        for d in range(actions.shape[1]):
            name = names[d] if d < len(names) else f"dim{d}"
            rule = ctx.settings.bound_for(row["embodiment"], name)
            values = actions[:, d][np.isfinite(actions[:, d])]
            if rule is None or not len(values):
                continue
            lo, hi = float(values.min()), float(values.max())
            if lo < rule.min or hi > rule.max:
                problems.append(f"{name} spans [{lo:.3g}, {hi:.3g}], bounds [{rule.min:g}, {rule.max:g}]")
        if problems:
            more = f" (+{len(problems) - 3} more dims)" if len(problems) > 3 else ""
            out.fail(item_id, f"{row['embodiment']}: " + "; ".join(problems[:3]) + more)
    return out


@check("missing_fields", "integrity", "error",
       "Required keys, columns or files are absent (an HDF5 without its action group, a LeRobot table without its "
       "action column), or the catalog row lacks what its flags promise (actions without names or without their "
       "per-dim semantics, no media).")
def missing_fields(ctx: AuditContext) -> Outcome:
    out = from_quarantine(ctx, "missing_fields", Outcome(checked=_ids(ctx.items)))
    for row in ctx.items:
        if not row["media_uris"]:
            out.fail(row["item_id"], "no media")
        if row["has_actions"] and (not row["action_dim"] or len(row["action_names"] or []) != row["action_dim"]):
            out.fail(row["item_id"], f"has_actions but action_dim {row['action_dim']} and "
                                     f"{len(row['action_names'] or [])} action names")
        if row["has_actions"] and row.get("action_semantics") is None:
            out.fail(row["item_id"], "action semantics not recorded (ingested by an older version; ingest again): "
                                     "alignment and probes read its actions as absolute positions")
        elif row["has_actions"]:
            try:
                validate_semantics(row["action_semantics"], int(row["action_dim"] or 0), row.get("action_timing"))
            except ValueError as e:
                out.fail(row["item_id"], str(e))
    return out


@check("duplicate_item_ids", "integrity", "error",
       "Two inputs with the same item id (ingest keeps the first, quarantines the rest), ids listed twice in the "
       "items manifest, or ids that map to the same artifact file (after unsafe characters become '_' and case is "
       "folded), so one item's flow or latents would overwrite the other's.")
def duplicate_item_ids(ctx: AuditContext) -> Outcome:
    out = from_quarantine(ctx, "duplicate_item_ids", Outcome(checked=_ids(ctx.items)))
    by_file: dict[str, list[str]] = defaultdict(list)
    for item_id in out.checked:
        by_file[str(artifact_path(".", item_id)).lower()].append(item_id)
    for ids in by_file.values():
        for item_id in ids[1:]:
            out.fail(item_id, f"shares its artifact file name with {ids[0]}")
    manifest = ctx.cfg.manifests_dir / "items.parquet"
    if manifest.exists():
        ids = pq.read_table(manifest, columns=["item_id"]).column("item_id").to_pylist()
        seen: set[str] = set()
        for item_id in ids:
            if item_id in seen:
                out.fail(item_id, f"listed more than once in {manifest.name}")
            seen.add(item_id)
    return out


@check("quarantined_other", "integrity", "error",
       "Items quarantined or failed in any stage for a reason no other check covers (read the reason).")
def quarantined_other(ctx: AuditContext) -> Outcome:
    return from_quarantine(ctx, "quarantined_other", Outcome(checked=sorted({r["item_id"] for r in ctx.quarantine})))


@check("concealed_errors", "integrity", "error",
       "Video frames FFmpeg decoded only by concealing errors (macroblocks it could not parse filled in from their "
       "neighbours; FFmpeg marks such frames corrupt): bytes flipped or overwritten inside the video data, which "
       "still 'decodes' with every frame present and passes media_readable. More than max_concealed_frames such "
       "frames fail the item. A flipped bit that leaves the bitstream valid cannot be seen: H.264 and mp4 carry no "
       "checksum of the picture data.")
def concealed_errors(ctx: AuditContext) -> Outcome:
    from audit.media import MediaFacts

    judged = {k: v for k, v in ctx.media.items() if isinstance(v, MediaFacts) and v.corrupt_frames is not None}
    out = Outcome(checked=list(judged))
    limit = ctx.settings.max_concealed_frames
    for item_id, facts in judged.items():
        if facts.corrupt_frames > limit:
            out.fail(item_id, f"{facts.corrupt_frames} of {facts.decoded} frames decoded with error concealment "
                              f"(damaged video data)")
    return out
