"""Tables for people: the funnel per source and stage, catalog query results, quarantine reasons."""

from __future__ import annotations

import json

import pyarrow as pa
from rich.table import Table

from catalog import Catalog
from manifests.actions import summary


def arrow_to_rich(table: pa.Table, title: str | None = None, max_rows: int = 200, max_width: int = 80) -> Table:
    out = Table(title=title, show_lines=False)
    for name in table.column_names:
        out.add_column(name, overflow="fold", max_width=max_width)
    for row in table.slice(0, max_rows).to_pylist():
        out.add_row(*["" if v is None else str(v) for v in row.values()])
    if table.num_rows > max_rows:
        out.caption = f"{table.num_rows - max_rows} more rows not shown"
    return out


def funnel_table(catalog: Catalog) -> Table:
    """Per configured source entry (`kind:root`; four LeRobot roots are four rows): items discovered by ingest,
    done, quarantined, failed, then one row per later stage."""
    from catalog.entries import EntryMap

    with EntryMap(catalog) as m:  # in DuckDB: no Python object per item
        funnel = catalog.funnel(m)
        kind = "split_part(s.item_id, '/', 1)"
        per_entry = catalog.con.execute(  # an items row holds the URI its entry is read from
            f"""SELECT {m.own(kind, 's.input_uri')} AS entry, min(s.tier), count(*) FILTER (WHERE s.split = 'train'),
                       count(*) FILTER (WHERE s.split = 'val'), count(*) FILTER (WHERE s.split = 'test')
                FROM items s LEFT JOIN _odd_entries odd USING (item_id) GROUP BY 1""").fetchall()
    tiers = {entry: tier for entry, tier, *_ in per_entry}
    splits = {entry: counts for entry, _, *counts in per_entry}
    table = Table(title="Funnel per source entry and stage")
    for col in ("source", "root", "tier", "stage", "seen", "done", "quarantined", "failed", "train/val/test"):
        table.add_column(col, justify="left" if col in ("source", "root", "stage") else "right", overflow="fold")
    for row in funnel.to_pylist():
        entry = row["entry"]
        root = entry.split(":", 1)[1] if ":" in entry else ""
        split_text = "/".join(str(n) for n in splits.get(entry, (0, 0, 0))) if row["stage"] == "ingest" else ""
        table.add_row(row["source"], root, str(tiers.get(entry, "")), row["stage"], str(row["seen"]), str(row["done"]),
                      str(row["quarantined"]), str(row["failed"]), split_text)
    return table


def inventory_table(catalog: Catalog) -> Table:
    """Per source and tier: items, frames, hours, share with real actions, share labelled with latent actions."""
    rows = catalog.sql(
        """
        SELECT i.source, i.tier, count(*) AS items, sum(i.frame_count) AS frames,
               sum(i.duration_s) / 3600.0 AS hours, avg(i.has_actions::INT) AS with_actions,
               avg((s.status = 'done')::INT) AS latent_labelled
        FROM items i LEFT JOIN item_stages s ON s.item_id = i.item_id AND s.stage = 'label'
        GROUP BY ALL ORDER BY i.tier, i.source
        """
    ).to_pylist()
    table = Table(title="Inventory per source and tier")
    for col in ("source", "tier", "items", "frames", "hours", "with actions", "latent-labelled"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for r in rows:
        table.add_row(r["source"], f"L{r['tier']}", str(r["items"]), str(r["frames"] or 0), f"{r['hours'] or 0:.3f}",
                      f"{(r['with_actions'] or 0):.0%}", f"{(r['latent_labelled'] or 0):.0%}")
    return table


def semantics_table(catalog: Catalog) -> Table:
    """Per source and embodiment with actions: what the action dims mean, their timing, and where that came from."""
    have = {r["column_name"] for r in catalog.sql(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'items'").to_pylist()}
    # a catalog written before semantics were recorded, opened read-only, cannot gain the columns: say so per source
    cols = ("action_semantics, action_timing" if "action_semantics" in have
            else "NULL::VARCHAR[] AS action_semantics, NULL::VARCHAR AS action_timing")
    rows = catalog.sql(
        f"""
        SELECT source, embodiment, {cols},
               regexp_extract(coalesce(extras, ''), '"action_semantics_source": "([^"]*)"', 1) AS came_from,
               count(*) AS items
        FROM items WHERE has_actions GROUP BY ALL ORDER BY source, embodiment, items DESC
        """
    ).to_pylist()
    table = Table(title="Action semantics per source (manifests/actions.py)")
    for col in ("source", "embodiment", "items", "per-dim semantics", "timing", "from"):
        table.add_column(col, justify="right" if col == "items" else "left")
    for r in rows:
        table.add_row(r["source"], r["embodiment"] or "", str(r["items"]), summary(r["action_semantics"]),
                      r["action_timing"] or "—", r["came_from"] or "—")
    return table


def embodiment_table(catalog: Catalog) -> Table:
    """Per source (and OXE dataset): embodiment and rate, and where each came from (table, OXE overview, option,
    info.json ...; "unknown"/"assumed" only when nothing says), so a guessed rate is never silent."""
    rows = catalog.sql(
        r"""
        SELECT source, regexp_extract(coalesce(extras, ''), '"dataset": "([^"]*)"', 1) AS dataset, embodiment,
               min(fps) AS fps_min, max(fps) AS fps_max,
               regexp_extract(coalesce(extras, ''), '"fps_source": "([^"]*)"', 1) AS fps_from,
               regexp_extract(coalesce(extras, ''), '"embodiment_source": "([^"]*)"', 1) AS embodiment_from,
               count(*) AS items
        FROM items GROUP BY ALL ORDER BY source, dataset, embodiment
        """
    ).to_pylist()
    table = Table(title="Embodiment and rate per source")
    for col in ("source", "dataset", "embodiment", "from", "fps", "fps from", "items"):
        table.add_column(col, justify="right" if col in ("fps", "items") else "left")
    for r in rows:
        fps = f"{r['fps_min']:g}" if r["fps_min"] == r["fps_max"] else f"{r['fps_min']:g}-{r['fps_max']:g}"
        table.add_row(r["source"], r["dataset"] or "", r["embodiment"] or "", r["embodiment_from"] or "—", fps,
                      r["fps_from"] or "—", str(r["items"]))
    return table


def notes_table(catalog: Catalog) -> Table:
    """Per source, what the latest ingest's discovery said about the source as a whole (e.g. a partial download:
    "N listed clips are not on disk"): one line per finding, never one row per item."""
    rows = catalog.sql("SELECT counts FROM runs WHERE job = 'ingest' AND status = 'ok' "
                       "ORDER BY ended_at DESC LIMIT 1").to_pylist()
    notes = json.loads(rows[0]["counts"] or "{}").get("source_notes", {}) if rows else {}
    table = Table(title="Source notes (latest ingest)")
    for col in ("source", "note"):
        table.add_column(col, overflow="fold")
    for source, lines in sorted(notes.items()):
        for line in lines:
            table.add_row(source, line)
    if not notes:
        table.caption = "none"
    return table


def reasons_table(catalog: Catalog, max_rows: int = 200) -> Table:
    """The first `max_rows` quarantined and failed items with their reasons, and how many more there are."""
    q = catalog.quarantine(limit=max_rows)
    out = arrow_to_rich(q.select(["item_id", "stage", "status", "reason"]), title="Quarantined and failed items")
    total = catalog.con.execute(
        "SELECT count(*) FROM item_stages WHERE status IN ('quarantined', 'failed')").fetchall()[0][0]
    if total > q.num_rows:
        out.caption = f"{total - q.num_rows} more rows not shown"
    return out


def latent_stats_table(stats: dict) -> Table:
    """Rows and per-dim mean / std (first dims) of the latent actions, for the corpus and per source."""
    table = Table(title="Latent actions per source (per-dim mean ± std, dims 0-3)")
    for col in ("scope", "items", "rows", "mean ± std (d0..d3)", "q01..q99 (d0)"):
        table.add_column(col)
    scopes = ([("corpus", stats["corpus"])] if stats else []) + sorted(stats.get("per_source", {}).items())
    for name, s in scopes:
        dims = ", ".join(f"{m:+.2f}±{d:.2f}" for m, d in zip(s["mean"][:4], s["std"][:4]))
        table.add_row(name, str(s["items"]), str(s["rows"]), dims, f"{s['q01'][0]:+.2f}..{s['q99'][0]:+.2f}")
    return table


def evaluation_table(results: dict) -> Table:
    """Per scope of a VAE evaluation: probe R² of μ beside its baselines, EPE beside zero flow, the mean field and
    PCA-k's reconstruction (upsampled), information and collapse — the figures that cannot flatter (research `latent_actions.md`)."""
    table = Table(title="Latent-action VAE on held-out groups (probe R²: μ vs baselines; EPE in px)")
    # a frame-conditioned decoder also reports what the first frame alone predicts (z = 0)
    frame_only = any((r.get("epe_px", {}).get("frame_only") or {}).get("mean") is not None
                     for k, r in results.items() if k != "meta")
    epe_cols = ("trained", "zero_flow", "mean_field", "pca_k") + (("frame_only",) if frame_only else ())
    columns = ("scope", "pairs / items", "R² μ", "PCA-k", "pooled flow", "random μ", "EPE", "zero", "mean field",
               "PCA-k", *(("frame only",) if frame_only else ()), "moving EPE", "zero", "PCA-k", "bits (dims ≥ ½)",
               "S-PCFC")
    for col in columns:
        table.add_column(col, justify="left" if col == "scope" else "right")

    def num(x, fmt="{:.3f}"):
        return "—" if x is None else fmt.format(x)

    for scope, r in results.items():
        if scope == "meta":
            continue
        probe, epe, moving = r.get("probe", {}), r.get("epe_px", {}), r.get("moving_epe_px", {})
        info = r.get("information", {})
        table.add_row(scope, f"{r.get('n_heldout_pairs', '')} / {r.get('n_heldout_items', '')}",
                      *(num(probe.get(m, {}).get("r2")) for m in ("trained", "pca_k", "pooled_flow", "random_init")),
                      *(num((epe.get(m) or {}).get("mean"), "{:.2f}") for m in epe_cols),
                      *(num((moving.get(m) or {}).get("mean"), "{:.2f}") for m in ("trained", "zero_flow", "pca_k")),
                      f"{num(info.get('total_bits'), '{:.1f}')} ({info.get('dims_over_min', '—')})",
                      num(r.get("s_pcfc", {}).get("value")))
    excluded = results.get("meta", {}).get("excluded") or {}
    if excluded:
        table.caption = f"left out (audit-flagged): {len(excluded)} items — " + "; ".join(
            f"{k}: {v}" for k, v in list(excluded.items())[:3]) + (" ..." if len(excluded) > 3 else "")
    return table


def shards_table(report) -> Table:
    """Shards, samples and size per split of a shard run (a `pipelines.shard.ShardReport`)."""
    table = Table(title=f"Shards in {report.root}" + (" (unchanged)" if report.unchanged else ""))
    for col in ("split", "shards", "samples", "MB", "MB per shard"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for split, d in sorted(report.per_split().items()):
        table.add_row(split, str(d["shards"]), str(d["samples"]), f"{d['bytes'] / 1e6:.1f}",
                      f"{d['bytes'] / 1e6 / max(d['shards'], 1):.1f}")
    return table


def progress_table(workdir) -> Table | str:
    """What each stage of a running job has done, from its `progress/<stage>.json` (readable while the job holds
    the catalog)."""
    from pipelines.driver import read_progress

    rows = read_progress(workdir)
    if not rows:
        return "no stage has written progress yet"
    table = Table("stage", "state", "done", "quarantined", "failed", "skipped", "planned", "items/s", "updated", "run")
    for p in rows:
        table.add_row(p["stage"], p["state"], *(str(p.get(k, "")) for k in (
            "done", "quarantined", "failed", "skipped", "total", "items_per_s", "updated_at", "run_id")))
    return table
