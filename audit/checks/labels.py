"""Labels: the latent actions of every labelled item — well formed, and how each source's distribution compares
with the rest (statistics, drift, outlier items)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from audit.checks.integrity import from_quarantine
from audit.context import AuditContext
from audit.registry import Outcome, check

NO_LATENTS = "no latent actions (run `pyramid label`)"


def latents_by_source(ctx: AuditContext) -> dict[str, dict[str, np.ndarray]]:
    """source → {item id → latent actions [T−1, D]} over the well-formed latents."""

    def collect() -> dict[str, dict[str, np.ndarray]]:
        out: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
        for item_id, value in ctx.latents.items():
            if not isinstance(value, str) and value[0].ndim == 2 and len(value[0]) and np.isfinite(value[0]).all():
                out[item_id.split("/", 1)[0]][item_id] = value[0].astype(np.float64)
        return dict(sorted(out.items()))

    return ctx.memo("latents_by_source", collect)


def active_floor(corpus: np.ndarray) -> float:
    """A latent dim is active in a set of rows when its std exceeds this: 10% of the corpus' largest per-dim std."""
    return float(0.1 * corpus.std(0).max())


def describe(rows: np.ndarray) -> dict[str, list[float] | int]:
    return {"rows": int(len(rows)), "mean": rows.mean(0).tolist(), "std": rows.std(0).tolist(),
            "q01": np.quantile(rows, 0.01, axis=0).tolist(), "q99": np.quantile(rows, 0.99, axis=0).tolist()}


def standardised_mean_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per dim: (mean a − mean b) / pooled std."""
    pooled = np.sqrt((a.var(0) + b.var(0)) / 2)
    return (a.mean(0) - b.mean(0)) / np.maximum(pooled, 1e-6)


@check("latent_values", "labels", "error",
       "Latent actions must be finite, float [T−1, latent_dim] with T the item's frame count at the flow rate "
       "(row j = the motion starting at frame j).")
def latent_values(ctx: AuditContext) -> Outcome:
    out = from_quarantine(ctx, "latent_values", Outcome())
    if not ctx.latents and not out.failures:
        return Outcome.skipped(NO_LATENTS)
    dim = ctx.cfg.vae.latent_dim
    for item_id, value in ctx.latents.items():
        out.checked.append(item_id)
        if isinstance(value, str):
            out.fail(item_id, value)
            continue
        latents, meta = value
        expected = [int(meta.get("n_frames", 0)) - 1, dim]
        if list(latents.shape) != expected:
            out.fail(item_id, f"shape {list(latents.shape)}, expected {expected}")
        elif not np.isfinite(latents).all():
            out.fail(item_id, f"{int((~np.isfinite(latents)).sum())} NaN/Inf values")
    return out


@check("latent_drift", "labels", "info",
       "Per source: latent-action statistics (mean, std, q01, q99, active dims) and the standardised mean "
       "difference to all other sources on every dim. A source fails when it sits more than drift_smd pooled "
       "stds away on some dim: its latents live elsewhere, so the VAE may not have unified it with the rest.")
def latent_drift(ctx: AuditContext) -> Outcome:
    by_source = latents_by_source(ctx)
    if not by_source:
        return Outcome.skipped(NO_LATENTS)
    rows = {s: np.concatenate(list(items.values())) for s, items in by_source.items()}
    corpus = np.concatenate(list(rows.values()))
    floor = active_floor(corpus)
    out = Outcome()
    table = {}
    for source, x in rows.items():
        out.checked.append(source)
        stats = {"items": len(by_source[source]), **describe(x), "active_dims": int((x.std(0) > floor).sum())}
        others = [r for s, r in rows.items() if s != source]
        if others:
            smd = standardised_mean_difference(x, np.concatenate(others))
            worst = int(np.argmax(np.abs(smd)))
            stats.update(smd=smd.tolist(), max_abs_smd=float(abs(smd[worst])), max_smd_dim=worst)
            if abs(smd[worst]) > ctx.settings.drift_smd:
                out.fail(source, f"dim {worst} mean is {smd[worst]:+.1f} pooled stds from the other sources")
        table[source] = stats
    out.stats = {"per_source": table, "corpus": describe(corpus), "active_floor": floor}
    return out


@check("latent_outliers", "labels", "warning",
       "Items whose mean latent action sits more than outlier_z stds (of the rest of its source's rows) from the "
       "rest of its source on some dim. Judged in sources with at least min_items_for_outliers labelled items.")
def latent_outliers(ctx: AuditContext) -> Outcome:
    by_source = latents_by_source(ctx)
    if not by_source:
        return Outcome.skipped(NO_LATENTS)
    out = Outcome()
    for source, items in by_source.items():
        if len(items) < ctx.settings.min_items_for_outliers:
            continue
        for item_id, latents in items.items():
            out.checked.append(item_id)
            rest = np.concatenate([v for k, v in items.items() if k != item_id])
            z = (latents.mean(0) - rest.mean(0)) / np.maximum(rest.std(0), 1e-6)
            worst = int(np.argmax(np.abs(z)))
            if abs(z[worst]) > ctx.settings.outlier_z:
                out.fail(item_id, f"mean of dim {worst} is {z[worst]:+.1f} stds from the rest of {source}")
    if not out.checked:
        return Outcome.skipped(f"no source has {ctx.settings.min_items_for_outliers} labelled items")
    return out
