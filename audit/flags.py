"""Items the audit would flag before any label exists — static clips and all but one copy of each exact or near
duplicate set (cross-split leaks included) — so VAE training and evaluation can leave them out."""

from __future__ import annotations

from audit.checks.duplicates import connected_sets, exact_pairs, keeper, near_pairs
from audit.config import AuditConfig
from audit.context import AuditContext
from catalog import Catalog
from pipelines.config import PipelineConfig


def flagged_items(cfg: PipelineConfig, catalog: Catalog, settings: AuditConfig | None = None) -> dict[str, str]:
    """item id → why it stays out of VAE training and evaluation (the same rules as the audit's checks)."""
    ctx = AuditContext(cfg, catalog, settings or AuditConfig())
    out: dict[str, str] = {}
    for what, pairs in (("exact copy", exact_pairs(ctx)), ("near-duplicate", near_pairs(ctx))):
        for members in connected_sets(pairs):
            keep = keeper(ctx, members)
            for m in members:
                if m != keep:
                    out.setdefault(m, f"{what} of {keep}")
    for item_id, fs in ctx.flow_stats.items():
        if fs["is_static"]:
            out.setdefault(item_id, f"static ({fs.get('static_reason') or 'motion filter'})")
    return dict(sorted(out.items()))


__all__ = ["flagged_items"]
