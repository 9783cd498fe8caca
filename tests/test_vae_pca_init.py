"""`vae.coarse_skip_init: pca`: μ starts as the whitened PCA-k code of the pooled flow, and the coarse head as its
inverse; checked on flows with a known low-rank structure, through the config and a real training run."""

import numpy as np
import pytest
import torch

from latent_action_vae.baselines import PCA
from latent_action_vae.config import VAEConfig
from latent_action_vae.model import LatentActionVAE
from latent_action_vae.pca_init import init_from_pca, skip_features
from pipelines.config import ConfigError, load_config

SMALL = {"image_size": 32, "widths": [8, 16, 32, 64, 128], "latent_channels": 64, "hidden": 64, "coarse_cells": 4}


def low_rank_batches(n_batches=8, batch=32, rank=3, seed=0):
    """Flows (canvas px) made of `rank` fixed smooth fields with random per-pair amplitudes of different sizes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, 32), np.linspace(-1, 1, 32), indexing="ij")
    fields = np.stack([np.stack([np.ones_like(xx), np.zeros_like(xx)]), np.stack([yy, xx]),
                       np.stack([np.sin(np.pi * xx), np.cos(np.pi * yy)])])[:rank]
    scales = np.array([3.0, 1.5, 0.5])[:rank]
    out = []
    for _ in range(n_batches):
        amp = rng.normal(size=(batch, rank)) * scales
        flow = np.einsum("br,rchw->bchw", amp, fields) + 0.2  # a constant drift: the mean PCA must remove
        out.append({"flow": torch.from_numpy(flow).float(), "valid": torch.ones(batch, 32, 32, dtype=torch.bool)})
    return out


def test_mu_starts_as_the_whitened_pca_code_and_the_coarse_head_inverts_it():
    torch.manual_seed(0)
    model = LatentActionVAE(VAEConfig(coarse_skip=True, coarse_weight=1.0, coarse_skip_init="pca", **SMALL)).eval()
    batches = low_rank_batches()
    fitted = init_from_pca(model, batches)
    assert fitted["pairs"] == 256 and fitted["components"] == 14
    assert fitted["explained"] == pytest.approx(1.0, abs=1e-4)  # rank 3: three components hold it all

    feats = np.concatenate([skip_features(model, b).double().numpy() for b in batches])
    scores = PCA.fit(feats, 3).transform(feats)
    with torch.no_grad():
        outs = [model(model.prepare(b["flow"], b["valid"])[0], sample=False) for b in batches]
    mu = torch.cat([o["mu"] for o in outs]).double().numpy()
    # the first three dims are the principal scores (up to sign), scaled to unit spread, centred
    for i in range(3):
        assert abs(np.corrcoef(mu[:, i], scores[:, i])[0, 1]) > 0.9999
        assert mu[:, i].std() == pytest.approx(1.0, rel=1e-3)
        assert abs(mu[:, i].mean()) < 1e-3
    # components past the rank carry nothing, and are not whitened into unit-spread noise
    assert np.abs(mu[:, 3:]).max() < 1e-3
    # z = μ → the coarse head gives back the pooled flow (network units), as PCA-3 reconstructs it exactly here
    coarse = torch.cat([o["coarse"] for o in outs]).flatten(1).double().numpy()
    np.testing.assert_allclose(coarse * model.cfg.flow_scale_px, feats, atol=1e-3)


def test_a_random_skip_does_not_start_as_pca():
    """The control: the default init gives a μ whose top dim is far from the first principal score."""
    torch.manual_seed(0)
    model = LatentActionVAE(VAEConfig(coarse_skip=True, **SMALL)).eval()
    batches = low_rank_batches()
    feats = np.concatenate([skip_features(model, b).double().numpy() for b in batches])
    scores = PCA.fit(feats, 1).transform(feats)[:, 0]
    with torch.no_grad():
        mu = torch.cat([model(model.prepare(b["flow"], b["valid"])[0], sample=False)["mu"] for b in batches]).numpy()
    assert max(abs(np.corrcoef(mu[:, i], scores)[0, 1]) for i in range(14)) < 0.999


def test_config_names_the_key():
    with pytest.raises(ConfigError, match="coarse_skip_init"):
        load_config(None, **{"vae.coarse_skip_init": "svd"})
    with pytest.raises(ConfigError, match="needs vae.coarse_skip: true"):
        load_config(None, **{"vae.coarse_skip_init": "pca", "vae.coarse_skip": False})
    with pytest.raises(ValueError, match="needs the coarse skip"):
        init_from_pca(LatentActionVAE(VAEConfig(**SMALL)), low_rank_batches(1))


def test_training_starts_from_pca_logs_it_and_resumes_exactly(workdir, capsys):
    from catalog import Catalog
    from latent_action_vae.train import read_vae_checkpoint
    from jobs.vae import run_vae_train
    from tests.test_vae_train_label import metrics, prepared

    cfg = prepared(workdir, **{"vae.coarse_skip": True, "vae.coarse_weight": 10.0, "vae.coarse_skip_init": "pca"})
    ckpt = cfg.path("vae") / "checkpoints" / "last.pt"
    with Catalog(cfg.catalog_path) as cat:
        run_vae_train(cfg, cat, progress=False)
        assert "μ starts as PCA-14 of the pooled flow" in capsys.readouterr().err
        straight, state = metrics(cfg), read_vae_checkpoint(ckpt)
        # a resumed run takes the checkpoint's weights (no second PCA fit) and repeats the straight run exactly
        run_vae_train(cfg, cat, resume=False, steps=2, progress=False)
        capsys.readouterr()
        assert run_vae_train(cfg, cat, steps=4, progress=False).resumed_from == 2
        assert "μ starts as PCA" not in capsys.readouterr().err
        assert metrics(cfg) == straight
        assert torch.equal(read_vae_checkpoint(ckpt)["model"]["skip.weight"], state["model"]["skip.weight"])


def test_coarse_residual_decoder_starts_as_the_upsampled_pca_reconstruction_and_learns_its_gate():
    torch.manual_seed(0)
    model = LatentActionVAE(VAEConfig(coarse_skip=True, coarse_weight=1.0, coarse_skip_init="pca",
                                      coarse_residual=True, **SMALL))
    batches = low_rank_batches()
    init_from_pca(model, batches)
    x, target, mask = model.prepare(batches[0]["flow"], batches[0]["valid"])
    out = model(x, sample=False)
    # with the gate at 0 the DC-AE adds nothing: the flow is the coarse head's, bilinearly upsampled
    expected = torch.nn.functional.interpolate(out["coarse"], size=(32, 32), mode="bilinear", align_corners=False)
    assert out["recon"].shape == target.shape == (32, 2, 32, 32)
    torch.testing.assert_close(out["recon"], expected)
    # ... which here (smooth rank-3 fields) is already close to the target, far closer than zero flow
    err = (out["recon"] - target).norm(dim=1).mean().item()
    assert err < 0.2 * target.norm(dim=1).mean().item()
    # the gate gets a gradient, so the DC-AE path can join in
    (out["recon"] - target).pow(2).mean().backward()
    assert model.decoder_gate.grad is not None and model.decoder_gate.grad.abs().item() > 0


def test_coarse_residual_config_needs_the_coarse_head():
    with pytest.raises(ConfigError, match="coarse_residual"):
        load_config(None, **{"vae.coarse_residual": True, "vae.coarse_weight": 0.0})
    with pytest.raises(ValueError, match="coarse_residual"):
        LatentActionVAE(VAEConfig(coarse_residual=True, **SMALL))


def test_coarse_mask_starts_at_one_then_learns_to_zero_still_background():
    """`vae.coarse_mask: frame`: at step 0 the decode equals the unmasked coarse residual's; trained on a case
    where only a square that the frame shows moves, the mask learns to keep the coarse flow off the background."""
    torch.manual_seed(0)
    kw = dict(coarse_skip=True, coarse_weight=1.0, coarse_skip_init="pca", coarse_residual=True, **SMALL)
    plain, masked = LatentActionVAE(VAEConfig(**kw)), LatentActionVAE(VAEConfig(coarse_mask="frame", **kw))
    b, rng = 32, np.random.default_rng(0)
    frames = np.zeros((b, 3, 32, 32), np.uint8)
    flow = np.zeros((b, 2, 32, 32), np.float32)
    for i in range(b):  # a bright 6×6 square at a random place moves by a random vector; the rest is still
        r, c = rng.integers(0, 26, 2)
        frames[i, :, r:r + 6, c:c + 6] = 255
        flow[i, :, r:r + 6, c:c + 6] = rng.normal(size=(2, 1, 1)) * 4
    init_from_pca(plain, [{"flow": torch.from_numpy(flow), "valid": torch.ones(b, 32, 32, dtype=torch.bool)}])
    masked.load_state_dict(plain.state_dict(), strict=False)  # the same PCA start; the mask net is extra
    frame = masked.prepare_frame(torch.from_numpy(frames))
    x, target, valid = masked.prepare(torch.from_numpy(flow), torch.ones(b, 32, 32, dtype=torch.bool))
    with torch.no_grad():
        z = masked.encode(x)[0]
        torch.testing.assert_close(masked.decode(z, frame), plain.decode(z))
    with pytest.raises(ValueError, match="store_frames"):
        masked.prepare_frame(None)

    still = target.norm(dim=1) == 0
    def background_error():
        with torch.no_grad():
            return masked.decode(masked.encode(x)[0], frame).norm(dim=1)[still].mean().item()
    before = background_error()
    opt = torch.optim.Adam(masked.parameters(), lr=3e-3)
    for _ in range(30):
        opt.zero_grad()
        out = masked(x, sample=False, frame=frame)
        (out["recon"] - target).pow(2).sum(1).mean().backward()
        opt.step()
    assert before > 0.005 and background_error() < 0.3 * before


def test_coarse_mask_config_errors():
    with pytest.raises(ConfigError, match="coarse_mask"):
        load_config(None, **{"vae.coarse_mask": "edges"})
    with pytest.raises(ConfigError, match="needs vae.coarse_residual"):
        load_config(None, **{"vae.coarse_mask": "frame", "vae.coarse_weight": 10.0})
    with pytest.raises(ConfigError, match="store_frames"):
        load_config(None, **{"vae.coarse_mask": "frame", "vae.coarse_weight": 10.0, "vae.coarse_residual": True,
                             "flow.store_frames": False})
    with pytest.raises(ValueError, match="coarse_residual"):
        LatentActionVAE(VAEConfig(coarse_mask="frame", coarse_weight=1.0, **SMALL))
