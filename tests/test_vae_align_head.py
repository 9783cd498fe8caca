"""Linear alignment heads (`vae.align_head: linear`): one head μ → action change per embodiment, on constructed
cases with known answers, and through real training, checkpoint and resume."""

import pytest
import torch

from latent_action_vae.config import VAEConfig
from latent_action_vae.losses import alignment, vae_loss
from latent_action_vae.model import LatentActionVAE
from pipelines.config import ConfigError, load_config

SMALL = {"image_size": 32, "widths": [8, 16, 32, 64, 128], "latent_channels": 64, "hidden": 64}


def test_each_embodiment_head_recovers_its_own_linear_map_from_mu():
    """Two embodiments with different action dims (3 and 7) and different maps: trained on the alignment loss
    alone, each head finds its map on its real dims; its padded dims get no pull; identity alignment cannot fit."""
    torch.manual_seed(0)
    model = LatentActionVAE(VAEConfig(align_head="linear", **SMALL), align_heads=["arm3", "arm7"])
    start = model.align_weight.detach().clone()
    n, d = 512, 14
    mu = torch.randn(n, d)
    maps = {name: (torch.randn(k, d) * 0.3, torch.randn(k) * 0.2) for name, k in (("arm3", 3), ("arm7", 7))}
    embodiments = ["arm3" if i % 2 == 0 else "arm7" for i in range(n)]
    action, action_mask = torch.zeros(n, d), torch.zeros(n, d, dtype=torch.bool)
    for i, emb in enumerate(embodiments):
        a, b = maps[emb]
        action[i, : len(b)] = a @ mu[i] + b
        action_mask[i, : len(b)] = True
    labelled = torch.ones(n, dtype=torch.bool)
    assert alignment(mu, action, action_mask, labelled).item() > 0.5  # μ itself is not the action change
    opt = torch.optim.Adam([model.align_weight, model.align_bias], lr=0.03)
    for _ in range(400):
        loss = alignment(model.predict_action(mu, embodiments, labelled), action, action_mask, labelled)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1e-4
    for h, (name, (a, b)) in enumerate(maps.items()):
        k = len(b)
        assert model.align_heads[h] == name
        assert torch.allclose(model.align_weight[h, :k], a, atol=0.01)
        assert torch.allclose(model.align_bias[h, :k], b, atol=0.01)
        assert torch.equal(model.align_weight[h, k:], start[h, k:])  # padded dims: no gradient, unchanged


def test_the_head_trains_the_encoder_and_unlabelled_samples_need_no_head():
    torch.manual_seed(0)
    model = LatentActionVAE(VAEConfig(align_head="linear", coarse_skip=True, **SMALL), align_heads=["aloha"])
    flow = torch.randn(3, 2, 32, 32) * 0.2
    out = model(flow)
    labelled = torch.tensor([True, False, False])
    pred = model.predict_action(out["mu"], ["aloha", None, "human"], labelled)  # no head for unlabelled rows
    assert pred.shape == (3, 14) and torch.equal(pred[1:], torch.zeros(2, 14))
    action, action_mask = torch.ones(3, 14), torch.ones(3, 14, dtype=torch.bool)
    losses = vae_loss(out, flow, torch.ones(3, 32, 32, dtype=torch.bool), action, action_mask, labelled,
                      beta=0.0, lambda_align=1.0, align_pred=pred)
    assert losses["align"].item() == pytest.approx(alignment(pred, action, action_mask, labelled).item())
    encoder = model.to_posterior[-1].weight
    grad = torch.autograd.grad(losses["align"], [encoder, model.align_weight, model.skip.weight])
    assert all(g.abs().sum() > 0 for g in grad)  # into the heads, the DC-AE path and the skip path
    with pytest.raises(ValueError, match="no alignment head for embodiment 'human'"):
        model.predict_action(out["mu"], ["human", None, None], labelled)
    identity = LatentActionVAE(VAEConfig(**SMALL), align_heads=["aloha"])  # identity alignment: no heads at all
    assert identity.align_heads == [] and not any("align" in k for k in identity.state_dict())


def test_the_heads_learn_at_their_own_rate():
    from latent_action_vae.train import lr_at, make_optimiser, train_step

    vc = VAEConfig(align_head="linear", align_head_lr=10.0, batch_size=2, **SMALL)
    model = LatentActionVAE(vc, align_heads=["aloha"])
    opt = make_optimiser(model, vc)
    assert [len(g["params"]) for g in opt.param_groups] == [len(list(model.parameters())) - 2, 2]
    batch = {"flow": torch.randn(2, 2, 32, 32), "valid": torch.ones(2, 32, 32, dtype=torch.bool),
             "action": torch.zeros(2, 14), "action_mask": torch.ones(2, 14, dtype=torch.bool),
             "labelled": torch.tensor([True, False]), "item_ids": ["a", "b"], "embodiments": ["aloha", None]}
    train_step(model, opt, batch, vc, step=5)
    assert opt.param_groups[0]["lr"] == pytest.approx(lr_at(5, vc))
    assert opt.param_groups[1]["lr"] == pytest.approx(10 * lr_at(5, vc))
    one = make_optimiser(LatentActionVAE(VAEConfig(**SMALL)), VAEConfig(**SMALL))  # identity: one group, as before
    assert len(one.param_groups) == 1
    with pytest.raises(ValueError, match="'embodiments'"):
        train_step(model, opt, {k: v for k, v in batch.items() if k != "embodiments"}, vc, step=6)


def test_bad_align_head_names_the_key():
    with pytest.raises(ConfigError, match="vae.align_head"):
        load_config(None, **{"vae.align_head": "mlp"})
    with pytest.raises(ConfigError, match="vae.align_head_lr"):
        load_config(None, **{"vae.align_head_lr": 0})
    assert load_config(None).vae.align_head == "identity"  # the code's default: today's behaviour


def test_checkpoint_keeps_the_heads_with_their_names_and_resumes_exactly(workdir):
    from catalog import Catalog
    from latent_action_vae.train import ResumeMismatch, load_vae, read_vae_checkpoint
    from jobs.vae import run_vae_train
    from tests.test_vae_train_label import metrics, prepared

    cfg = prepared(workdir, **{"vae.align_head": "linear", "vae.lambda_align": 20.0, "vae.labelled_fraction": 0.5})
    ckpt = cfg.path("vae") / "checkpoints" / "last.pt"
    with Catalog(cfg.catalog_path) as cat:
        run_vae_train(cfg, cat, progress=False)
        straight, state = metrics(cfg), read_vae_checkpoint(ckpt)
        heads = state["align_heads"]
        assert heads == sorted(state["action_stats"]) and len(heads) == 2  # RoboTwin's and the task-agnostic arms
        model, _ = load_vae(ckpt)
        assert model.align_heads == heads
        assert torch.equal(model.align_weight, state["model"]["align_weight"])
        assert model.align_weight.shape == (2, 14, 14)
        # the heads moved from their start: they were trained
        fresh = LatentActionVAE(model.cfg, align_heads=heads)
        assert not torch.equal(fresh.align_weight, model.align_weight)
        # resumed from step 2, the run repeats the straight run's losses exactly
        run_vae_train(cfg, cat, resume=False, steps=2, progress=False)
        assert run_vae_train(cfg, cat, steps=4, progress=False).resumed_from == 2
        assert metrics(cfg) == straight
        assert torch.equal(read_vae_checkpoint(ckpt)["model"]["align_weight"], state["model"]["align_weight"])
        # a checkpoint whose heads name other embodiments is not resumed
        edited = read_vae_checkpoint(ckpt)
        edited["align_heads"] = list(reversed(heads))
        from manifests.checkpoints import save_checkpoint
        save_checkpoint(ckpt, edited)
        with pytest.raises(ResumeMismatch, match="alignment heads"):
            run_vae_train(cfg, cat, steps=5, progress=False)
