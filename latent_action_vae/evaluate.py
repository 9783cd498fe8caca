"""Evaluating the latent-action VAE on held-out groups: does μ carry the real action, next to baselines that
cannot flatter it (research `latent_actions.md` §2–4)?

- linear-probe R² and MSE of 14-d μ → normalised action change, fitted on TRAIN labelled pairs and scored on
  HELD-OUT ones, beside the same probe on PCA-k of 8×8-pooled flow (k = latent dim, PCA fitted on train pairs),
  on the pooled flow itself (the linear ceiling), on a random-init model's μ, and a mean predictor; every probe
  picks its ridge by item-grouped cross-validation on train only;
- flow end-point error (pixels) of decode(μ) over all valid pixels and over moving ones (|flow| > 0.5 px),
  against zero flow, a per-source mean field (from train pairs) and the random model;
- information per latent dim (½·log2(1 + Var μ / E σ²), bits), S-PCFC (CoMo's collapse measure) and KL per dim;
- a picture of input flow vs reconstruction for a few held-out pairs (`picture.py`).

Results are grouped by scope: `overall` and one entry per source, because the note reports task-agnostic and
sim groups separately. Probes are fitted per embodiment inside every scope: the same action dim means different
things on different robots, so one pooled linear map would under-rate a latent that is right for each.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latent_action_vae.baselines import (MOVING_PX, PCA, POOL_GRID, MeanFields, consecutive_pairs, information_bits,
                                         per_pair_epe_px, pooled_flow, s_pcfc)
from latent_action_vae.losses import kl_per_dim
from latent_action_vae.picture import Example, draw_reconstructions, encode_png, pick_examples, picture_size  # noqa: F401

UNKNOWN = "unknown"
PICTURE_NAME = "reconstructions.png"
JSON_NAME = "eval.json"
META = "meta"  # the JSON's one top-level key that is not a scope


# ================================================================================================ collecting
@dataclass
class Collected:
    """Per-pair outputs of one model over one stream of batches (numpy, row i = pair i)."""

    mu: np.ndarray  # [N, D] float64
    kl: np.ndarray  # [N, D] KL(q(z|x) ‖ N(0, I)) per dim, nats
    epe_px: np.ndarray  # [N] EPE of decode(μ) over valid pixels; NaN when not decoded or no valid pixel
    zero_epe_px: np.ndarray  # [N] EPE of predicting zero flow (= mean flow magnitude): a trivial baseline
    var: np.ndarray  # [N, D] posterior variance σ²
    pooled: np.ndarray  # [N, 128] 8×8-pooled input flow (canvas px): the baselines' features
    frames: np.ndarray  # [N, 2] (t1, t2) of each pair at the artifact's fps
    mu_reverse: np.ndarray  # [N, D] μ of the negated flow (the reverse motion), for S-PCFC; empty when not run
    moving_epe_px: np.ndarray  # [N] EPE of decode(μ) over moving pixels (|true flow| > MOVING_PX)
    zero_moving_epe_px: np.ndarray  # [N] zero flow over moving pixels
    meanfield_epe_px: np.ndarray  # [N] the source's train mean field, all valid pixels (NaN without fields)
    meanfield_moving_epe_px: np.ndarray  # [N] ... over moving pixels
    action: np.ndarray  # [N, A] normalised action change
    action_mask: np.ndarray  # [N, A] bool, real dims of the embodiment
    labelled: np.ndarray  # [N] bool
    item_ids: list[str]
    pair_index: np.ndarray  # [N] int64
    embodiments: list[str]
    sources: list[str]
    examples: list[Example] = field(default_factory=list)
    # a frame-conditioned decoder given z = 0 (the prior mean): what the first frame alone predicts; NaN otherwise
    prior_epe_px: np.ndarray = field(default_factory=lambda: np.zeros(0))
    prior_moving_epe_px: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __len__(self) -> int:
        return len(self.item_ids)

    def select(self, keep: np.ndarray) -> Collected:
        """The pairs where boolean `keep` is true (examples are filtered by item)."""
        idx = np.flatnonzero(keep)
        kept_items = {self.item_ids[i] for i in idx}
        return replace(
            self,
            mu=self.mu[idx], kl=self.kl[idx], epe_px=self.epe_px[idx], zero_epe_px=self.zero_epe_px[idx],
            var=self.var[idx], pooled=self.pooled[idx], frames=self.frames[idx],
            mu_reverse=self.mu_reverse[idx] if len(self.mu_reverse) else self.mu_reverse,
            moving_epe_px=self.moving_epe_px[idx], zero_moving_epe_px=self.zero_moving_epe_px[idx],
            meanfield_epe_px=self.meanfield_epe_px[idx], meanfield_moving_epe_px=self.meanfield_moving_epe_px[idx],
            action=self.action[idx], action_mask=self.action_mask[idx], labelled=self.labelled[idx],
            item_ids=[self.item_ids[i] for i in idx], pair_index=self.pair_index[idx],
            embodiments=[self.embodiments[i] for i in idx], sources=[self.sources[i] for i in idx],
            examples=[e for e in self.examples if e.item_id in kept_items],
            prior_epe_px=self.prior_epe_px[idx], prior_moving_epe_px=self.prior_moving_epe_px[idx],
        )

    @property
    def probe_ready(self) -> np.ndarray:
        """Pairs a probe can use: labelled and with at least one real action dim."""
        return self.labelled & self.action_mask.any(1)


def _row_lookup(rows: Any) -> dict[str, Mapping[str, Any]] | None:
    """item_id → manifest row, from a list of dicts or a pyarrow Table (None stays None)."""
    if rows is None:
        return None
    if hasattr(rows, "to_pylist"):
        rows = rows.to_pylist()
    return {str(r["item_id"]): r for r in rows}


def _provenance(batch: Mapping[str, Any], lookup: dict[str, Mapping[str, Any]] | None, key: str) -> list[str]:
    """Per-pair `key` (embodiment or source): from the batch if it carries it, else from the manifest rows.

    With neither this is an error, not a silent 'unknown': a probe pooled over robots and a report without
    per-source scopes would look like results while measuring something else.
    """
    ids = [str(i) for i in batch["item_ids"]]
    if key in batch:
        return [str(v) for v in batch[key]]
    if lookup is None:
        raise ValueError(f"evaluation needs each pair's {key}: pass the flow-manifest rows (rows=...) "
                         f"or batches with a {key!r} list")
    missing = sorted({i for i in ids if i not in lookup})
    if missing:
        raise KeyError(f"items not in the manifest rows given to evaluation: {missing[:5]}")
    return [str(lookup[i].get(key) or UNKNOWN) for i in ids]


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _run_batch(model: torch.nn.Module, batch: Mapping[str, Any], decode: bool, sources: list[str],
               mean_fields: MeanFields | None, reverse: bool) -> dict[str, Any]:
    """One batch through the model: per-pair numpy outputs, plus the tensors the picture needs."""
    ids = [str(i) for i in batch["item_ids"]]
    device = _model_device(model)
    scale = float(model.cfg.flow_scale_px)
    x, target, mask = model.prepare(batch["flow"].to(device), batch["valid"].to(device))
    mu, logvar = model.encode(x)
    bad = ~torch.isfinite(mu).all(1)
    if bad.any():  # a NaN μ would silently poison every probe; name the culprits instead
        raise ValueError(f"non-finite latent for items {[ids[i] for i in bad.nonzero()[:, 0].tolist()][:5]}")
    zero = torch.zeros_like(target)
    nan = torch.full((len(ids),), float("nan"), device=target.device)
    recon = prior = None
    if decode and getattr(model, "frame_conditioned", False):
        frame = model.prepare_frame(batch["frame"].to(device) if batch.get("frame") is not None else None)
        recon, prior = model.decode(mu, frame), model.decode(torch.zeros_like(mu), frame)
    elif decode:
        recon = model.decode(mu)
    field = mean_fields.predict(target, sources) if mean_fields is not None else None
    epe = {name: (per_pair_epe_px(pred, target, mask, scale, moving) if pred is not None else nan)
           for name, pred, moving in (("epe", recon, None), ("moving", recon, MOVING_PX), ("zero", zero, None),
                                      ("zero_moving", zero, MOVING_PX), ("field", field, None),
                                      ("field_moving", field, MOVING_PX), ("prior", prior, None),
                                      ("prior_moving", prior, MOVING_PX))}
    mu_rev = None
    if reverse:
        x_rev, _, _ = model.prepare(-batch["flow"].to(device), batch["valid"].to(device))
        mu_rev = model.encode(x_rev)[0]
    as_np = lambda t: t.double().cpu().numpy()  # noqa: E731
    out = {k: as_np(v) for k, v in epe.items()}
    out.update({"mu": as_np(mu), "kl": as_np(kl_per_dim(mu, logvar)), "var": as_np(logvar.exp()),
                "pooled": pooled_flow(batch["flow"], batch["valid"]),
                "frames": np.asarray(batch["pair_frames"], dtype=np.int64).reshape(-1, 2),
                "action": as_np(batch["action"]), "amask": batch["action_mask"].bool().cpu().numpy(),
                "labelled": batch["labelled"].bool().cpu().numpy(),
                "pair": np.asarray(batch["pair_index"], dtype=np.int64).reshape(-1),
                "ids": ids, "picture": (target * scale, None if recon is None else recon * scale, mask)})
    if mu_rev is not None:
        out["mu_rev"] = as_np(mu_rev)
    return out


def collect(model: torch.nn.Module, batches: Iterable[Mapping[str, Any]], rows: Any = None,
            decode: bool = True, keep_examples: int = 0, mean_fields: MeanFields | None = None,
            reverse: bool = False) -> Collected:
    """Run `model` (a LatentActionVAE) in eval mode over `batches` and gather per-pair μ, σ², KL, EPEs, pooled
    flow and targets.

    `rows` (flow-manifest dicts or a pyarrow Table) give each pair's embodiment and source by item_id, unless
    batches carry `embodiment` / `source` lists themselves; one of the two is required. `decode=False` skips
    the decoder (EPE is then NaN): probes on the train split only need μ. `mean_fields` adds the per-source
    mean-field EPEs; `reverse` also encodes the negated flow (for S-PCFC). `keep_examples` > 0 keeps, for that
    many distinct items, the pair with the most motion, for the picture. The model's train/eval mode is
    restored afterwards.
    """
    lookup = _row_lookup(rows)
    keys = ("mu", "kl", "var", "pooled", "frames", "epe", "moving", "zero", "zero_moving", "field", "field_moving",
            "prior", "prior_moving",
            "action", "amask", "labelled", "pair") + (("mu_rev",) if reverse else ())
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    item_ids: list[str] = []
    embodiments: list[str] = []
    sources: list[str] = []
    examples: dict[str, Example] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in batches:
                batch_sources = _provenance(batch, lookup, "source")
                out = _run_batch(model, batch, decode, batch_sources, mean_fields, reverse)
                for k in keys:
                    parts[k].append(out[k])
                item_ids += out["ids"]
                embodiments += _provenance(batch, lookup, "embodiment")
                sources += batch_sources
                if decode and keep_examples > 0:
                    _keep_examples(examples, keep_examples, out, batch_sources)
    finally:
        model.train(was_training)

    def cat(key: str, width: int | None = None, dtype: Any = np.float64) -> np.ndarray:
        if parts.get(key):
            return np.concatenate(parts[key])
        return np.zeros((0, width) if width is not None else (0,), dtype=dtype)

    d = int(model.cfg.latent_dim)
    return Collected(mu=cat("mu", d), kl=cat("kl", d), epe_px=cat("epe"), zero_epe_px=cat("zero"), var=cat("var", d),
                     pooled=cat("pooled", 2 * POOL_GRID[0] * POOL_GRID[1]), frames=cat("frames", 2, np.int64), mu_reverse=cat("mu_rev", d),
                     moving_epe_px=cat("moving"), zero_moving_epe_px=cat("zero_moving"),
                     meanfield_epe_px=cat("field"), meanfield_moving_epe_px=cat("field_moving"),
                     action=cat("action", d), action_mask=cat("amask", d, bool), labelled=cat("labelled", dtype=bool),
                     item_ids=item_ids, pair_index=cat("pair", dtype=np.int64), embodiments=embodiments,
                     sources=sources, examples=list(examples.values()),
                     prior_epe_px=cat("prior"), prior_moving_epe_px=cat("prior_moving"))


@dataclass
class FlowBaselines:
    """What the model-free baselines learn from train pairs: per-source mean fields and the PCA of pooled flow."""

    mean_fields: MeanFields
    pca: PCA
    n_pairs: int


def fit_flow_baselines(model: torch.nn.Module, batches: Iterable[Mapping[str, Any]], rows: Any = None) -> FlowBaselines:
    """Mean fields (at the model's input size, in its target units) and PCA-k of pooled flow (k = latent dim)
    from train pairs of every source: the same corpus the VAE learns from, labelled or not."""
    lookup = _row_lookup(rows)
    fields, pooled = MeanFields(), []
    device = _model_device(model)
    with torch.inference_mode():
        for batch in batches:
            _, target, mask = model.prepare(batch["flow"].to(device), batch["valid"].to(device))
            fields.add(target, mask, _provenance(batch, lookup, "source"))
            pooled.append(pooled_flow(batch["flow"], batch["valid"]))
    if not pooled:
        raise ValueError("evaluation: the train stream yielded no pairs to fit the flow baselines on")
    x = np.concatenate(pooled)
    return FlowBaselines(fields, PCA.fit(x, int(model.cfg.latent_dim)), len(x))


def _keep_examples(examples: dict[str, Example], limit: int, out: dict[str, Any], sources: list[str]) -> None:
    """Keep, per item (the first `limit` items seen), the pair that moves most: a static pair shows nothing."""
    flow_px, recon_px, mask = out["picture"]
    for i, item in enumerate(out["ids"]):
        motion = float(out["zero"][i])  # EPE of a zero guess = mean flow magnitude over valid pixels
        if not math.isfinite(motion) or recon_px is None:
            continue
        if item not in examples and len(examples) >= limit:
            continue
        if item in examples and examples[item].motion_px >= motion:
            continue
        examples[item] = Example(item_id=item, pair_index=int(out["pair"][i]), source=sources[i],
                                 flow_px=flow_px[i].float().cpu().numpy(), recon_px=recon_px[i].float().cpu().numpy(),
                                 valid=mask[i].cpu().numpy(), epe_px=float(out["epe"][i]), motion_px=motion)


# ================================================================================================ probing
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
                   "frame_only": _epe_summary(held.prior_epe_px)},
        "moving_epe_px": {"trained": _epe_summary(held.moving_epe_px),
                          "zero_flow": _epe_summary(held.zero_moving_epe_px),
                          "mean_field": _epe_summary(held.meanfield_moving_epe_px),
                          "frame_only": _epe_summary(held.prior_moving_epe_px), "threshold_px": MOVING_PX},
        "information": information_summary(held.mu, held.var),
        "s_pcfc": _spcfc(held),
        "kl": kl_summary(held.kl, active_threshold),
    }


def evaluate(model: torch.nn.Module, random_model: torch.nn.Module, train_batches_fn: Callable[[], Iterable],
             heldout_batches_fn: Callable[[], Iterable], out_dir: str | os.PathLike, flow_scale_px: float,
             active_threshold: float = 0.01, *, rows: Any = None, train_all_batches_fn: Callable[[], Iterable] | None = None,
             ridge: float | None = None, n_pictures: int = 6, excluded: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Probes, EPEs, information, S-PCFC, KL and picture for `model` vs `random_model` (same config, random init)
    and the flow baselines; writes `out_dir/eval.json` and `out_dir/reconstructions.png`, returns the JSON's dict.

    `train_batches_fn` / `heldout_batches_fn` return fresh iterables of PairSampler batches; each is passed over
    once per model, so they should yield the same pairs every call (a seeded sampler). Only labelled pairs of the
    train stream matter (probe fitting); every held-out pair counts for EPE and information, labelled ones for the
    probes. `train_all_batches_fn` (default: the train stream) yields the train pairs of every source that the
    mean fields and the PCA are fitted on. `ridge` None picks each probe's ridge by item-grouped CV on train.
    `rows` are the flow-manifest rows naming each item's source and embodiment (required unless the batches
    carry `embodiment` and `source` lists). `excluded` (item id → reason) is reported in `meta`. The JSON's
    top-level keys are the scopes (`overall`, then one per source of the held-out pairs) plus `meta`.
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
                                                    mean_fields=fit.mean_fields, reverse=True))
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
    write_bytes_atomic(out_dir / PICTURE_NAME, encode_png(draw_reconstructions(examples, flow_scale_px)))
    report[META] = {
        "scopes": scopes,
        "counts": {"train_pairs": len(train), "train_labelled": int(train.probe_ready.sum()),
                   "baseline_fit_pairs": fit.n_pairs,
                   "heldout_pairs": len(held), "heldout_labelled": int(held.probe_ready.sum()),
                   "heldout_items": len(set(held.item_ids))},
        "excluded": dict(sorted((excluded or {}).items())),
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
    write_bytes_atomic(out_dir / JSON_NAME, (json.dumps(report, indent=2) + "\n").encode())
    return report


# ================================================================================================ output
def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary sibling + rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
