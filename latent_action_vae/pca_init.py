"""Start the VAE where PCA already is: μ = the whitened top-k principal components of the pooled input flow.

With `coarse_skip_init: pca` the coarse skip (pooled flow → μ, linear) is set to the principal components of the
train pairs' pooled flow, each divided by its standard deviation (so every dim of μ starts with unit spread, the
prior's), and the DC-AE path's contribution to μ starts at zero; with a coarse head (`coarse_weight` > 0) that head
starts as PCA's inverse. At step 0, then, μ is a PCA-k code of the motion and z → coarse flow its reconstruction:
training can add to it what the nonlinear path finds, rather than first having to rediscover the linear code
(which a random-init skip reaches no better than a random projection does: docs/latent_quality.md).
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

from latent_action_vae.baselines import PCA

PCA_INIT_PAIRS = 4000  # train pairs the init's PCA is fitted on, spread evenly over every item's pairs (fixed: it
#   decides the starting weights, so it is not a run-only setting)


def skip_features(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """What the coarse skip reads from a batch (`LatentActionVAE.skip_input` of the prepared input)."""
    return model.skip_input(model.prepare(batch["flow"], batch["valid"])[0])


@torch.no_grad()
def init_from_pca(model: Any, batches: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Fit PCA-k (k = latent dim) on the skip's features of `batches` and set the skip (and coarse head) from it.
    Returns what was fitted (pairs, share of variance kept) for the training log."""
    if model.skip is None:
        raise ValueError("coarse_skip_init: pca needs the coarse skip (vae.coarse_skip: true)")
    feats = np.concatenate([skip_features(model, b).double().numpy() for b in batches])
    k = model.cfg.latent_dim
    if len(feats) <= k:
        raise ValueError(f"coarse_skip_init: pca needs more than {k} train pairs, got {len(feats)}")
    pca = PCA.fit(feats, k)
    std = np.sqrt(pca.transform(feats).var(0))  # each component's spread, in px
    # a component with (next to) no variance is not blown up into unit-spread noise
    std = np.maximum(std, max(float(std[0]) * 1e-3, 1e-6))
    kept = len(pca.components)
    weight = np.zeros((k, feats.shape[1]))
    weight[:kept] = pca.components / std[:, None]
    model.skip.weight.copy_(torch.from_numpy(weight))
    model.skip.bias.copy_(torch.from_numpy(-weight @ pca.mean))
    last = model.to_posterior[-1]  # its first k outputs are the DC-AE path's share of μ
    last.weight[:k].zero_()
    last.bias[:k].zero_()
    if model.coarse_head is not None:
        # z → pooled flow in network units: mean + Σ z_i·std_i·component_i, over flow_scale_px
        inverse = np.zeros((feats.shape[1], k))
        inverse[:, :kept] = (pca.components * std[:, None]).T
        model.coarse_head.weight.copy_(torch.from_numpy(inverse / model.cfg.flow_scale_px))
        model.coarse_head.bias.copy_(torch.from_numpy(pca.mean / model.cfg.flow_scale_px))
    return {"pairs": int(len(feats)), "explained": float(pca.explained.sum()), "components": kept}
