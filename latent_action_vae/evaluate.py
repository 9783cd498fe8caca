"""Evaluating the latent-action VAE on held-out groups: does μ carry the real action, next to baselines that cannot
flatter it? Figures, scopes and per-embodiment probes: docs/vae.md#evaluate."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from manifests.io import atomic_write, atomic_write_text
from latent_action_vae.baselines import MOVING_PX, PCA, POOL_GRID, consecutive_pairs, information_bits, s_pcfc
from latent_action_vae.collect import (UNKNOWN, Collected, FlowBaselines, _row_lookup, collect,  # noqa: F401
                                       fit_flow_baselines)
from latent_action_vae.picture import Example, draw_reconstructions, encode_png, pick_examples, picture_size  # noqa: F401
PICTURE_NAME = "reconstructions.png"
JSON_NAME = "eval.json"
META = "meta"  # the JSON's one top-level key that is not a scope


def _fit_ridge(x: np.ndarray, y: np.ndarray, ridge: float) -> Callable[[np.ndarray], np.ndarray]:
    """Closed-form ridge regression with an unpenalised bias; returns the predictor.

    Features are standardised by their train mean/std first, so `ridge` means the same for a trained latent
    (μ of order 1) and a random-init one (μ possibly of order 1e-3): otherwise the penalty would handicap the
    baseline and flatter the trained model.
    """
    x_mean, y_mean = x.mean(0), y.mean(0)
    if x.shape[1] == 0:  # no features: the mean predictor
        return lambda q: np.broadcast_to(y_mean, (len(q), y.shape[1])).copy()
    x_std = x.std(0)
    # a feature (nearly) constant in train must not be blown up by standardising: held-out pairs that do vary
    # there (a pooled-flow cell that never moved in train) would be extrapolated without bound
    floor = 1e-2 * float(x_std.mean()) if x_std.size else 0.0
    x_std = np.where(x_std > max(floor, 1e-12), x_std, max(floor, 1.0) if floor <= 1e-12 else floor)
    xs = (x - x_mean) / x_std
    n = len(x)
    gram = xs.T @ xs / n + ridge * np.eye(x.shape[1])
    w = np.linalg.solve(gram, xs.T @ (y - y_mean) / n)
    return lambda q: ((q - x_mean) / x_std) @ w + y_mean


@dataclass
class _Scores:
    """Sums for one embodiment (or the pool of all): per target dim, over held-out masked-in entries."""

    sse: np.ndarray
    sst: np.ndarray
    count: np.ndarray  # masked-in entries per dim
    n_train: int = 0
    n_test: int = 0

    @classmethod
    def empty(cls, dims: int) -> _Scores:
        return cls(np.zeros(dims), np.zeros(dims), np.zeros(dims, dtype=np.int64))

    def r2(self) -> float | None:
        sst = self.sst.sum()
        return float(1 - self.sse.sum() / sst) if sst > 1e-12 else None

    def mse(self) -> float | None:
        n = self.count.sum()
        return float(self.sse.sum() / n) if n else None

    def per_dim_r2(self) -> list[float | None]:
        return [float(1 - e / t) if t > 1e-12 else None for e, t in zip(self.sse, self.sst)]


def _score_group(train_x, train_y, train_mask, test_x, test_y, test_mask, ridge: float) -> _Scores:
    """Fit one ridge per target dim on the train rows where that dim is real, score on the held-out ones.

    Per-dim fits let padded dims (and anything stored in them) stay out of both fitting and scoring.
    """
    dims = train_y.shape[1]
    s = _Scores.empty(dims)
    s.n_train, s.n_test = int(train_mask.any(1).sum()), int(test_mask.any(1).sum())
    # dims real on the same rows share one multi-output fit (the same numbers as one fit per dim, once)
    by_rows: dict[tuple[bytes, bytes], list[int]] = {}
    for d in range(dims):
        tr, te = train_mask[:, d], test_mask[:, d]
        if tr.any() and te.any():
            by_rows.setdefault((np.packbits(tr).tobytes(), np.packbits(te).tobytes()), []).append(d)
    for ds in by_rows.values():
        tr, te = train_mask[:, ds[0]], test_mask[:, ds[0]]
        predict = _fit_ridge(train_x[tr], train_y[tr][:, ds], ridge)
        y = test_y[te][:, ds]
        s.sse[ds] = ((predict(test_x[te]) - y) ** 2).sum(0)
        s.sst[ds] = ((y - y.mean(0)) ** 2).sum(0)  # held-out mean: a perfect mean guess scores 0
        s.count[ds] = int(te.sum())
    return s


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, train_mask: np.ndarray, test_x: np.ndarray,
                 test_y: np.ndarray, test_mask: np.ndarray, ridge: float = 1e-3,
                 train_groups: list[str] | np.ndarray | None = None,
                 test_groups: list[str] | np.ndarray | None = None) -> dict[str, Any]:
    """Ridge probe x → y, fitted and scored per group (embodiment), on masked-in dims only.

    R² = 1 − SSE/SST over an embodiment's held-out real dims, SST about the held-out mean; `r2` and `mse` are
    pair-weighted means over embodiments. `per_dim_r2[d]` pools dim d's SSE and SST over embodiments (None
    where dim d never varies). Embodiments with no train pairs cannot be probed: they are listed in `skipped`.
    A feature matrix with 0 columns gives the mean predictor (per-embodiment train mean).
    """
    train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
    train_mask, test_mask = np.asarray(train_mask, bool), np.asarray(test_mask, bool)
    # padded dims may hold anything (NaN included): zero them so they cannot leak through any arithmetic
    train_y = np.where(train_mask, np.asarray(train_y, np.float64), 0.0)
    test_y = np.where(test_mask, np.asarray(test_y, np.float64), 0.0)
    train_g = np.asarray(train_groups if train_groups is not None else ["all"] * len(train_x), dtype=object)
    test_g = np.asarray(test_groups if test_groups is not None else ["all"] * len(test_x), dtype=object)
    dims = train_y.shape[1]

    pooled = _Scores.empty(dims)
    per_group: dict[str, dict[str, Any]] = {}
    skipped: dict[str, int] = {}
    weighted = {"r2": [0.0, 0], "mse": [0.0, 0]}  # [weighted sum, weight]
    for g in sorted(set(test_g.tolist())):
        tr, te = train_g == g, test_g == g
        tr &= train_mask.any(1)
        te &= test_mask.any(1)
        if not te.any():
            continue
        if not tr.any():
            skipped[g] = int(te.sum())
            continue
        s = _score_group(train_x[tr], train_y[tr], train_mask[tr], test_x[te], test_y[te], test_mask[te], ridge)
        per_group[g] = {"r2": s.r2(), "mse": s.mse(), "per_dim_r2": s.per_dim_r2(),
                        "n_train": s.n_train, "n_test": s.n_test}
        for key in weighted:
            value = per_group[g][key]
            if value is not None:
                weighted[key][0] += value * s.n_test
                weighted[key][1] += s.n_test
        pooled.sse += s.sse
        pooled.sst += s.sst
        pooled.count += s.count
        pooled.n_train += s.n_train
        pooled.n_test += s.n_test

    def mean(key: str) -> float | None:
        total, weight = weighted[key]
        return total / weight if weight else None

    return {"r2": mean("r2"), "mse": mean("mse"), "per_dim_r2": pooled.per_dim_r2(),
            "n_train": pooled.n_train, "n_test": pooled.n_test, "per_embodiment": per_group, "skipped": skipped}


def kl_summary(kl: np.ndarray, active_threshold: float = 0.01) -> dict[str, Any]:
    """Mean KL per dim over pairs [N, D] → per-dim means, total, and how many dims exceed the threshold (nats)."""
    per_dim = kl.mean(0) if len(kl) else np.full(kl.shape[1], np.nan)
    return {"per_dim": per_dim.tolist(), "total": float(per_dim.sum()),
            "active_dims": int((per_dim > active_threshold).sum()), "threshold_nats": active_threshold}


def _epe_summary(epe: np.ndarray) -> dict[str, Any]:
    finite = epe[np.isfinite(epe)]
    if not len(finite):
        return {"mean": None, "median": None, "n": 0}
    return {"mean": float(finite.mean()), "median": float(np.median(finite)), "n": int(len(finite))}


# ================================================================================================ evaluating
def _scope_masks(c: Collected, scopes: list[str]) -> dict[str, np.ndarray]:
    sources = np.asarray(c.sources, dtype=object)
    return {s: (np.ones(len(c), bool) if s == "overall" else sources == s) for s in scopes}


RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3)
CV_FOLDS = 3


def _item_folds(item_ids: list[str], folds: int) -> np.ndarray:
    """A stable fold per item (never per pair: neighbouring pairs of one clip would leak across folds)."""
    import zlib

    return np.array([zlib.crc32(i.encode()) % folds for i in item_ids], np.int64)


def select_ridge(x: np.ndarray, y: np.ndarray, mask: np.ndarray, groups: list[str], item_ids: list[str],
                 grid: tuple[float, ...] = RIDGE_GRID, folds: int = CV_FOLDS) -> float:
    """The ridge with the best item-grouped cross-validated R² on TRAIN pairs (the held-out pairs never choose)."""
    fold = _item_folds(item_ids, folds)
    if len(set(fold.tolist())) < 2 or x.shape[1] == 0:
        return grid[0]
    best, best_score = grid[0], -np.inf
    for ridge in grid:
        sse = sst = 0.0
        for f in sorted(set(fold.tolist())):
            tr, te = fold != f, fold == f
            r = linear_probe(x[tr], y[tr], mask[tr], x[te], y[te], mask[te], ridge=ridge,
                             train_groups=[g for g, k in zip(groups, tr) if k],
                             test_groups=[g for g, k in zip(groups, te) if k])
            for e in r["per_embodiment"].values():
                if e["r2"] is not None:
                    sse += (1 - e["r2"]) * e["n_test"]
                    sst += e["n_test"]
        score = 1 - sse / sst if sst else -np.inf
        if score > best_score:
            best, best_score = ridge, score
    return best


PROBE_FEATURES = ("mu", "pca", "pooled", "mean")


def _features(c: Collected, features: str, pca: PCA | None) -> np.ndarray:
    if features == "mean":
        return np.zeros((len(c), 0))
    if features == "pca":
        return pca.transform(c.pooled)
    return c.pooled if features == "pooled" else c.mu


def _probe(train: Collected, test: Collected, features: str, pca: PCA | None = None,
           ridge: float | None = None) -> dict[str, Any]:
    """One probe; `ridge` None picks it by cross-validation on train (every probe the same way: fair baselines)."""
    tr, te = train.probe_ready, test.probe_ready
    train_x, test_x = _features(train, features, pca)[tr], _features(test, features, pca)[te]
    train_groups = [e for e, k in zip(train.embodiments, tr) if k]
    if ridge is None:
        ridge = select_ridge(train_x, train.action[tr], train.action_mask[tr], train_groups,
                             [i for i, k in zip(train.item_ids, tr) if k])
    result = linear_probe(train_x, train.action[tr], train.action_mask[tr], test_x, test.action[te],
                          test.action_mask[te], ridge=ridge, train_groups=train_groups,
                          test_groups=[e for e, k in zip(test.embodiments, te) if k])
    return {**result, "ridge": ridge, "features": int(train_x.shape[1])}


def information_summary(mu: np.ndarray, var: np.ndarray, min_bits: float = 0.5) -> dict[str, Any]:
    bits = information_bits(mu, var) if len(mu) else np.full(mu.shape[1], np.nan)
    finite = bits[np.isfinite(bits)]
    return {"per_dim_bits": bits.tolist(), "total_bits": float(finite.sum()) if len(finite) else None,
            "dims_over_min": int((finite >= min_bits).sum()), "min_bits": min_bits}


def _spcfc(held: Collected) -> dict[str, Any]:
    """S-PCFC over held-out frames t with both (t−Δ → t) and (t → t+Δ) pairs: past→now is μ of the first pair,
    future→now is μ of the second pair's negated flow (the reverse motion, a first-order stand-in for the
    backward flow t+Δ → t)."""
    if not len(held.mu_reverse):
        return {"value": None, "n": 0}
    p, q = consecutive_pairs(held.item_ids, held.frames)
    return {"value": s_pcfc(held.mu[p], held.mu_reverse[q]) if len(p) else None, "n": int(len(p))}


def _scope_report(train: Collected, rnd_train: Collected, held: Collected, rnd_held: Collected,
                  ridge: float | None, active_threshold: float, pca: PCA | None = None) -> dict[str, Any]:
    probe = {"trained": _probe(train, held, "mu", ridge=ridge),
             "random_init": _probe(rnd_train, rnd_held, "mu", ridge=ridge),
             "mean": _probe(train, held, "mean", ridge=ridge)}
    if pca is not None:
        probe["pca_k"] = _probe(train, held, "pca", pca, ridge=ridge)
        probe["pooled_flow"] = _probe(train, held, "pooled", ridge=ridge)
    return {
        "n_train_labelled": int(train.probe_ready.sum()),
        "n_heldout_pairs": len(held),
        "n_heldout_labelled": int(held.probe_ready.sum()),
        "n_heldout_items": len(set(held.item_ids)),
        "n_heldout_labelled_items": len({i for i, k in zip(held.item_ids, held.probe_ready) if k}),
        "probe": probe,
        "epe_px": {"trained": _epe_summary(held.epe_px), "random_init": _epe_summary(rnd_held.epe_px),
                   "zero_flow": _epe_summary(held.zero_epe_px), "mean_field": _epe_summary(held.meanfield_epe_px),
                   "frame_only": _epe_summary(held.prior_epe_px), "pca_k": _epe_summary(held.pca_epe_px)},
        "moving_epe_px": {"trained": _epe_summary(held.moving_epe_px),
                          "zero_flow": _epe_summary(held.zero_moving_epe_px),
                          "mean_field": _epe_summary(held.meanfield_moving_epe_px),
                          "frame_only": _epe_summary(held.prior_moving_epe_px),
                          "pca_k": _epe_summary(held.pca_moving_epe_px), "threshold_px": MOVING_PX},
        "information": information_summary(held.mu, held.var),
        "s_pcfc": _spcfc(held),
        "kl": kl_summary(held.kl, active_threshold),
    }


def evaluate(model: torch.nn.Module, random_model: torch.nn.Module, train_batches_fn: Callable[[], Iterable],
             heldout_batches_fn: Callable[[], Iterable], out_dir: str | os.PathLike, flow_scale_px: float,
             active_threshold: float = 0.01, *, rows: Any = None, train_all_batches_fn: Callable[[], Iterable] | None = None,
             ridge: float | None = None, n_pictures: int = 6, excluded: Mapping[str, str] | None = None,
             checkpoint: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Probes, EPEs, information, S-PCFC, KL and picture for `model` vs `random_model` (same config, random init)
    and the flow baselines; writes `out_dir/eval.json` and `out_dir/reconstructions.png`, returns the JSON's dict.

    `train_batches_fn` / `heldout_batches_fn` return fresh iterables of PairSampler batches; each is passed over
    once per model, so they should yield the same pairs every call (a seeded sampler). Only labelled pairs of the
    train stream matter (probe fitting); every held-out pair counts for EPE and information, labelled ones for the
    probes. `train_all_batches_fn` (default: the train stream) yields the train pairs of every source that the
    mean fields and the PCA are fitted on. `ridge` None picks each probe's ridge by item-grouped CV on train.
    `rows` are the flow-manifest rows naming each item's source and embodiment (required unless the batches
    carry `embodiment` and `source` lists). `excluded` (item id → reason) is reported in `meta`. The JSON's
    top-level keys are the scopes (`overall`, then one per source of the held-out pairs) plus `meta`. `checkpoint`
    (path, identity) goes into `meta.checkpoint`, so a reader (the audit) knows which model the numbers are of.
    """
    rows = list(_row_lookup(rows).values()) if rows is not None else None  # read a generator / Table once
    out_dir = Path(out_dir)
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        timings[name] = round(time.perf_counter() - t0, 3)
        return result

    fit = timed("flow_baselines", lambda: fit_flow_baselines(model, (train_all_batches_fn or train_batches_fn)(), rows))
    train = timed("trained_train", lambda: collect(model, train_batches_fn(), rows, decode=False))
    held = timed("trained_heldout", lambda: collect(model, heldout_batches_fn(), rows, keep_examples=4 * n_pictures,
                                                    mean_fields=fit.mean_fields, reverse=True, pca=fit.pca))
    rnd_train = timed("random_train", lambda: collect(random_model, train_batches_fn(), rows, decode=False))
    rnd_held = timed("random_heldout", lambda: collect(random_model, heldout_batches_fn(), rows))
    if not len(held):
        raise ValueError("evaluation: the held-out stream yielded no pairs")

    scopes = ["overall"] + sorted(set(held.sources))
    if META in scopes:
        raise ValueError(f"a source named {META!r} would collide with the JSON's metadata key")
    collected = (train, rnd_train, held, rnd_held)  # the order _scope_report takes them in
    masks = [_scope_masks(c, scopes) for c in collected]
    report: dict[str, Any] = {
        name: timed(f"scope_{name}", lambda name=name: _scope_report(
            *(c.select(m[name]) for c, m in zip(collected, masks)), ridge, active_threshold, fit.pca))
        for name in scopes}
    examples = pick_examples(held.examples, n_pictures)
    png = encode_png(draw_reconstructions(examples, flow_scale_px))
    atomic_write(out_dir / PICTURE_NAME, lambda f: f.write(png))
    report[META] = {
        "scopes": scopes,
        "counts": {"train_pairs": len(train), "train_labelled": int(train.probe_ready.sum()),
                   "baseline_fit_pairs": fit.n_pairs,
                   "heldout_pairs": len(held), "heldout_labelled": int(held.probe_ready.sum()),
                   "heldout_items": len(set(held.item_ids))},
        "excluded": dict(sorted((excluded or {}).items())),
        "checkpoint": dict(checkpoint or {}),
        "settings": {"ridge": "cross-validated per probe" if ridge is None else ridge, "ridge_grid": list(RIDGE_GRID),
                     "active_threshold_nats": active_threshold, "flow_scale_px": flow_scale_px,
                     "latent_dim": int(model.cfg.latent_dim), "image_size": int(model.cfg.image_size),
                     "pool_grid": list(POOL_GRID), "pca_explained": fit.pca.explained.tolist(),
                     "probe": "ridge on standardised features, per embodiment, masked-in dims; R2 about held-out "
                              "mean; features: trained mu, random-init mu, PCA-k of pooled flow, pooled flow, none",
                     "epe": "vs the model's input flow at image_size^2, valid (or moving) pixels, working-canvas px",
                     "information": "0.5*log2(1 + Var[mu]/E[sigma^2]) bits per dim, held-out pairs",
                     "s_pcfc": "mean cos(mu(t-D->t), mu(-flow(t->t+D))) over held-out frames; 1 = collapse"},
        "timings_s": timings,
        "picture": {"path": PICTURE_NAME, "pairs": [{"item_id": e.item_id, "pair_index": e.pair_index,
                                                     "source": e.source, "epe_px": e.epe_px} for e in examples]},
    }
    report = _json_safe(report)
    atomic_write_text(out_dir / JSON_NAME, json.dumps(report, indent=2) + "\n")
    return report


def _json_safe(obj: Any) -> Any:
    """NaN/inf are not JSON: they become null (the same as 'undefined' for R² with no variance)."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
