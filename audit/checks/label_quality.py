"""Label quality and provenance: do a source's latent actions carry motion (collapse), do they say what the real
actions say (probe R² of `pyramid vae eval`), and were a shard set's labels made alike (one flow backend, the VAE
checkpoint its samples name)?

The collapse and agreement numbers come from `<workdir>/<vae.output>/eval/eval.json`, computed there by
`latent_action_vae.baselines` (`information_bits`, `s_pcfc`) and the ridge probes on held-out groups; the audit
reads them per source and judges them with its own thresholds. An eval.json of another checkpoint than the labels'
is not used."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from audit.checks.labels import NO_LATENTS, active_floor, latents_by_source
from audit.checks.shards import NO_SHARDS, shards_by_set, tar_sample_meta
from audit.context import AuditContext
from audit.registry import Outcome, check


def _short(identity: Any) -> str:
    return str(identity)[:12]


def label_checkpoints(ctx: AuditContext) -> dict[str, str]:
    """item id → the identity of the VAE checkpoint its stored labels name (labels that name none are left out)."""
    out = {}
    for item_id, value in ctx.latents.items():
        if not isinstance(value, str):
            named = value[1].get("checkpoint_blake2b") or value[1].get("checkpoint_sha")
            if named:
                out[item_id] = str(named)
    return out


def evaluation(ctx: AuditContext) -> tuple[dict[str, Any] | None, str]:
    """(eval.json, where it is) or (None, why it cannot be used)."""

    def load() -> tuple[dict[str, Any] | None, str]:
        path = ctx.cfg.path(ctx.cfg.vae.output) / "eval" / "eval.json"
        if not path.exists():
            return None, f"no {path.name} at {path} (run `pyramid vae eval`)"
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            return None, f"unreadable {path}: {e}"
        if not isinstance(report, dict) or not isinstance(report.get("meta"), dict):
            return None, f"{path} is not an evaluation report (no meta)"
        evaluated = (report["meta"].get("checkpoint") or {}).get("identity")
        labelled = set(label_checkpoints(ctx).values())
        if evaluated and labelled and evaluated not in labelled:
            return None, (f"{path.name} evaluates checkpoint {_short(evaluated)}, the labels were computed by "
                          f"{', '.join(sorted(_short(x) for x in labelled))} (rerun `pyramid vae eval`)")
        return report, str(path)

    return ctx.memo("evaluation", load)


def eval_sources(report: dict[str, Any]) -> list[str]:
    scopes = report["meta"].get("scopes", [])
    return [s for s in scopes if s not in ("overall", "meta") and isinstance(report.get(s), dict)]


def collapse_reasons(scope: dict[str, Any], s) -> tuple[list[str], dict[str, Any]]:
    """Reasons an eval.json scope shows collapse (S-PCFC, informative dims), and the numbers."""
    reasons = []
    spcfc = (scope.get("s_pcfc") or {}).get("value")
    bits = np.array([b for b in (scope.get("information") or {}).get("per_dim_bits") or [] if b is not None], float)
    bits = bits[np.isfinite(bits)]
    informative = int((bits >= s.information_min_bits).sum())
    if spcfc is not None and spcfc > s.max_s_pcfc:
        reasons.append(f"S-PCFC {spcfc:.2f} above {s.max_s_pcfc:g}: past→now and future→now latents point the same "
                       "way (the latent ignores the direction of motion)")
    if len(bits) and informative < s.min_informative_dims:
        reasons.append(f"{informative} of {len(bits)} dims carry ≥ {s.information_min_bits:g} bits on held-out pairs "
                       f"(all dims together {bits.sum():.2f} bits)")
    return reasons, {"s_pcfc": spcfc, "informative_dims": informative if len(bits) else None,
                     "total_bits": float(bits.sum()) if len(bits) else None}


@check("latent_collapse", "labels", "warning",
       "Per source: the latents carry motion. Fails when fewer than min_active_dims dims of the stored labels vary "
       "(std above 10% of the corpus' largest), or, from `pyramid vae eval` (eval.json, held-out pairs of the "
       "source): S-PCFC above max_s_pcfc (mean cosine of the past→now and future→now latents; 1 = the latent "
       "ignores which way things move) or fewer than min_informative_dims dims carrying information_min_bits "
       "(½·log2(1 + Var[μ]/E[σ²]) per dim). A small or briefly trained VAE fails this honestly.")
def latent_collapse(ctx: AuditContext) -> Outcome:
    by_source = latents_by_source(ctx)
    report, where = evaluation(ctx)
    if not by_source and report is None:
        return Outcome.skipped(NO_LATENTS)
    s, out, table = ctx.settings, Outcome(), {}
    rows = {src: np.concatenate(list(items.values())) for src, items in by_source.items()}
    floor = active_floor(np.concatenate(list(rows.values()))) if rows else 0.0
    scopes = eval_sources(report) if report else []
    for source in sorted(set(rows) | set(scopes)):
        out.checked.append(source)
        reasons, stats = [], {}
        if source in rows:
            active = int((rows[source].std(0) > floor).sum())
            stats["active_dims"] = active
            if active < s.min_active_dims:
                reasons.append(f"{active} of {rows[source].shape[1]} latent dims vary in its stored labels")
        if source in scopes:
            found, numbers = collapse_reasons(report[source], s)
            reasons += found
            stats.update(numbers)
        table[source] = stats
        for reason in reasons:
            out.fail(source, reason)
    out.stats = {"per_source": table, "eval": where if report else None, "eval_not_used": None if report else where,
                 "active_floor": floor}
    return out


def _probe_r2(scope: dict[str, Any], name: str) -> float | None:
    return ((scope.get("probe") or {}).get(name) or {}).get("r2")


@check("latent_action_agreement", "labels", "warning",
       "Per source with real actions: a ridge probe from the latent to the actions (`pyramid vae eval`, fitted on "
       "train groups, scored per embodiment on held-out ones) must reach min_probe_r2; R² 0 is what predicting "
       "the held-out mean scores. The random-init and PCA-of-flow probes are shown beside it.")
def latent_action_agreement(ctx: AuditContext) -> Outcome:
    report, where = evaluation(ctx)
    if report is None:
        return Outcome.skipped(where)
    out, table = Outcome(), {}
    for source in eval_sources(report):
        scope = report[source]
        r2 = _probe_r2(scope, "trained")
        if r2 is None:
            continue  # no held-out pairs with actions: a video-only source
        out.checked.append(source)
        table[source] = {"r2": r2, **{f"r2_{k}": _probe_r2(scope, k) for k in ("random_init", "pca_k", "pooled_flow")},
                         "n_test": ((scope.get("probe") or {}).get("trained") or {}).get("n_test")}
        if r2 < ctx.settings.min_probe_r2:
            rnd = table[source]["r2_random_init"]
            out.fail(source, f"latent→action probe R² {r2:.2f} below {ctx.settings.min_probe_r2:g}"
                             + (f" (random-init latents {rnd:.2f})" if rnd is not None else ""))
    if not out.checked:
        return Outcome.skipped(f"no source in {where} has held-out pairs with actions")
    out.stats = {"per_source": table, "eval": where}
    return out


def shard_samples(ctx: AuditContext) -> dict[str, list[dict]]:
    """shard set → the `<key>.json` of every sample in its readable tars (shard_files reports the others)."""

    def read() -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for shard_set, rows in shards_by_set(ctx).items():
            metas = out.setdefault(shard_set, [])
            for row in rows:
                try:
                    metas += tar_sample_meta(row["path"])
                except Exception:  # noqa: BLE001 - a missing or broken tar is shard_files' finding
                    continue
        return out

    return ctx.memo("shard_samples", read)


def _minority(ctx: AuditContext, key: str, what: str, exempt: frozenset[str] = frozenset()) -> Outcome:
    """Fail the samples of a shard set whose `key` differs from the set's most common value (values in `exempt`
    are checked but neither counted nor failed)."""
    out = Outcome()
    for shard_set, metas in shard_samples(ctx).items():
        values = Counter(str(m.get(key) or "unrecorded") for m in metas)
        common, n = (Counter({v: c for v, c in values.items() if v not in exempt}).most_common(1) or [("", 0)])[0]
        for m in metas:
            out.checked.append(m["item_id"])
            value = str(m.get(key) or "unrecorded")
            if value != common and value not in exempt:
                out.fail(m["item_id"], f"{what} {_short(value)}; {n} of the {len(metas)} samples of "
                                       f"{Path(shard_set).name} have {_short(common)}")
        out.stats[shard_set] = dict(values)
    return out


@check("flow_backend_mixing", "shards", "warning",
       "One shard set whose samples' latents come from flows of different estimators (dis, dpflow): each "
       "estimator sees motion differently, so the same motion gets different latents. The samples of all but the "
       "most common estimator fail. Exact simulator flow (sim) is the motion itself, not an estimate, and is "
       "not counted.")
def flow_backend_mixing(ctx: AuditContext) -> Outcome:
    if not ctx.shards:
        return Outcome.skipped(NO_SHARDS)
    return _minority(ctx, "flow_backend", "flow by", exempt=frozenset({"sim"}))


@check("label_checkpoint", "labels", "error",
       "The VAE checkpoint a shard sample names (vae_checkpoint_blake2b, an identity of weights, settings and action "
       "stats) must be the one that computed the item's stored labels, and one shard set names one checkpoint: "
       "otherwise the item was relabelled after sharding, or the set mixes latents of different models.")
def label_checkpoint(ctx: AuditContext) -> Outcome:
    if not ctx.shards:
        return Outcome.skipped(NO_SHARDS)
    out = _minority(ctx, "vae_checkpoint_blake2b", "names checkpoint")
    labelled = label_checkpoints(ctx)
    for metas in shard_samples(ctx).values():
        for m in metas:
            named, computed = m.get("vae_checkpoint_blake2b"), labelled.get(m["item_id"])
            if named and computed and named != computed:
                out.fail(m["item_id"], f"its shard sample names checkpoint {_short(named)}, its stored labels were "
                                       f"computed by {_short(computed)} (relabelled after sharding: rerun the shard "
                                       "stage)")
    return out
