"""One model over a stream of flow-pair batches → per-pair numpy outputs (μ, σ², KL, EPEs beside zero flow, the
mean field and the frame-only decode, pooled flow, targets), and the model-free baselines fitted on train pairs.
`evaluate.py` scores what this collects."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from latent_action_vae.baselines import MOVING_PX, PCA, POOL_GRID, MeanFields, per_pair_epe_px, pooled_flow
from latent_action_vae.losses import kl_per_dim
from latent_action_vae.picture import Example

UNKNOWN = "unknown"


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
    # the train PCA-k of the 8×8-pooled flow, reconstructed and upsampled: the linear decoder to beat; NaN without it
    pca_epe_px: np.ndarray = field(default_factory=lambda: np.zeros(0))
    pca_moving_epe_px: np.ndarray = field(default_factory=lambda: np.zeros(0))

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
            pca_epe_px=self.pca_epe_px[idx], pca_moving_epe_px=self.pca_moving_epe_px[idx],
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
               mean_fields: MeanFields | None, reverse: bool, pca: PCA | None = None) -> dict[str, Any]:
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
    if decode and getattr(model, "needs_frame", False):
        frame = model.prepare_frame(batch["frame"].to(device) if batch.get("frame") is not None else None)
        recon, prior = model.decode(mu, frame), model.decode(torch.zeros_like(mu), frame)
    elif decode:
        recon = model.decode(mu)
    field = mean_fields.predict(target, sources) if mean_fields is not None else None
    pooled = pooled_flow(batch["flow"], batch["valid"])
    linear = None
    if pca is not None:  # PCA-k's reconstruction of the pooled flow, bilinearly upsampled, in network units
        coarse = torch.from_numpy(pca.reconstruct(pooled) / scale).to(target).view(len(ids), 2, *POOL_GRID)
        linear = F.interpolate(coarse, size=target.shape[-2:], mode="bilinear", align_corners=False)
    epe = {name: (per_pair_epe_px(pred, target, mask, scale, moving) if pred is not None else nan)
           for name, pred, moving in (("epe", recon, None), ("moving", recon, MOVING_PX), ("zero", zero, None),
                                      ("zero_moving", zero, MOVING_PX), ("field", field, None),
                                      ("field_moving", field, MOVING_PX), ("prior", prior, None),
                                      ("prior_moving", prior, MOVING_PX), ("pca", linear, None),
                                      ("pca_moving", linear, MOVING_PX))}
    mu_rev = None
    if reverse:
        x_rev, _, _ = model.prepare(-batch["flow"].to(device), batch["valid"].to(device))
        mu_rev = model.encode(x_rev)[0]
    as_np = lambda t: t.double().cpu().numpy()  # noqa: E731
    out = {k: as_np(v) for k, v in epe.items()}
    out.update({"mu": as_np(mu), "kl": as_np(kl_per_dim(mu, logvar)), "var": as_np(logvar.exp()),
                "pooled": pooled,
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
            reverse: bool = False, pca: PCA | None = None) -> Collected:
    """Run `model` (a LatentActionVAE) in eval mode over `batches` and gather per-pair μ, σ², KL, EPEs, pooled
    flow and targets.

    `rows` (flow-manifest dicts or a pyarrow Table) give each pair's embodiment and source by item_id, unless
    batches carry `embodiment` / `source` lists themselves; one of the two is required. `decode=False` skips
    the decoder (EPE is then NaN): probes on the train split only need μ. `mean_fields` adds the per-source
    mean-field EPEs, `pca` those of its reconstruction of the pooled flow (upsampled); `reverse` also encodes the
    negated flow (for S-PCFC). `keep_examples` > 0 keeps, for that
    many distinct items, the pair with the most motion, for the picture. The model's train/eval mode is
    restored afterwards.
    """
    lookup = _row_lookup(rows)
    keys = ("mu", "kl", "var", "pooled", "frames", "epe", "moving", "zero", "zero_moving", "field", "field_moving",
            "prior", "prior_moving", "pca", "pca_moving",
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
                out = _run_batch(model, batch, decode, batch_sources, mean_fields, reverse, pca)
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
                     prior_epe_px=cat("prior"), prior_moving_epe_px=cat("prior_moving"),
                     pca_epe_px=cat("pca"), pca_moving_epe_px=cat("pca_moving"))


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
