"""The funnel per configured source entry (`kind:root`, catalog/entries.py): items in → quarantined (by stage, with reasons) → static (filtered) → labelled →
sharded. Each item is counted once, at the furthest point it reached."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from audit.checks.integrity import claiming_check
from audit.context import AuditContext
from catalog.entries import item_entries

COLUMNS = ("in", "quarantined", "static", "not labelled", "labelled", "sharded")


def funnel(ctx: AuditContext) -> list[dict[str, Any]]:
    """One row per source entry (`source` the kind, `entry` its `kind:root` label): counts per COLUMNS (`sharded` ⊆ `labelled`; `not labelled` = neither quarantined nor
    static, but without latent actions yet), the tier, and the quarantine reasons [{stage, check, reason, items}]."""
    return ctx.memo("funnel", lambda: _funnel(ctx))


def _funnel(ctx: AuditContext) -> list[dict[str, Any]]:
    if ctx.catalog is not None:
        entries = item_entries(ctx.catalog)
    else:  # an audit on disk: one entry, its kind:path
        entries = {i: ctx.label for i in ctx.seen}
    sources: dict[str, set[str]] = defaultdict(set)
    for item_id in ctx.seen:
        sources[entries.get(item_id, item_id.split("/", 1)[0])].add(item_id)
    sharded = {i for row in ctx.shards for i in row["item_ids"]}
    quarantined = defaultdict(list)
    for record in ctx.quarantine:
        quarantined[record["item_id"]].append(record)
    tiers = {entries.get(r["item_id"], r["source"]): r["tier"] for r in ctx.items}
    rows = []
    for entry, ids in sorted(sources.items()):
        counts: Counter = Counter({"in": len(ids)})
        reasons: Counter = Counter()
        for item_id in ids:
            if quarantined[item_id]:
                counts["quarantined"] += 1
                for r in quarantined[item_id]:
                    reasons[(r["stage"], claiming_check(r["reason"]), r["reason"])] += 1
            elif ctx.flow_stats.get(item_id, {}).get("is_static"):
                counts["static"] += 1
            elif item_id in ctx.latent_paths:
                counts["labelled"] += 1
                counts["sharded"] += item_id in sharded
            else:
                counts["not labelled"] += 1
        rows.append({"source": entry.split(":", 1)[0], "entry": entry, "tier": tiers.get(entry),
                     **{c: counts[c] for c in COLUMNS},
                     "reasons": [{"stage": s, "check": c, "reason": r, "items": n}
                                 for (s, c, r), n in sorted(reasons.items())]})
    return rows
