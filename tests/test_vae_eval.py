"""VAE evaluation: the ridge probe's R² on known cases, KL active-dim counting, and `evaluate` end to end on a
small on-disk corpus (real flow artifacts + RoboTwin/task-agnostic action files) read by the real PairSampler."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from flow_extraction.artifacts import write_flow_artifact
from latent_action_vae.data import PairSampler, compute_action_stats
from latent_action_vae.baselines import PCA, consecutive_pairs, information_bits, s_pcfc
from latent_action_vae.evaluate import (collect, evaluate, information_summary, kl_summary, linear_probe,
                                        picture_size, select_ridge)
from latent_action_vae.losses import kl_per_dim
from latent_action_vae.model import LatentActionVAE
from latent_action_vae.config import VAEConfig

D = 14


def _probe_data(n: int, seed: int, noise: float = 0.01):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(D, D))
    x = rng.normal(size=(n, D))
    y = 0.1 * x @ a + noise * rng.normal(size=(n, D))  # linear in x, plus a little noise
    return x, y, np.ones((n, D), bool)


def _split(arrays, n_train):
    return [v[:n_train] for v in arrays], [v[n_train:] for v in arrays]


# ---------------------------------------------------------------------------------------------------- probe
def test_probe_on_a_latent_that_encodes_the_target_scores_near_one():
    (x, y, m), (tx, ty, tm) = _split(_probe_data(600, 0), 400)
    out = linear_probe(x, y, m, tx, ty, tm)
    assert out["r2"] > 0.99
    assert out["mse"] < 1e-3
    assert out["n_train"] == 400 and out["n_test"] == 200
    assert all(r > 0.99 for r in out["per_dim_r2"])


def test_probe_on_noise_scores_about_zero_or_below():
    (x, y, m), (tx, ty, tm) = _split(_probe_data(600, 1), 400)
    noise = np.random.default_rng(5).normal(size=x.shape), np.random.default_rng(6).normal(size=tx.shape)
    out = linear_probe(noise[0], y, m, noise[1], ty, tm)
    assert -0.15 < out["r2"] < 0.05


def test_mean_predictor_scores_about_zero():
    (x, y, m), (tx, ty, tm) = _split(_probe_data(600, 2), 400)
    out = linear_probe(np.zeros((400, 0)), y, m, np.zeros((200, 0)), ty, tm)
    assert -0.05 < out["r2"] <= 0.0  # SSE about the train mean ≥ SST about the held-out mean
    assert out["mse"] == pytest.approx(float(((ty - y.mean(0)) ** 2).mean()))


def test_r2_is_about_the_heldout_mean_so_a_shifted_mean_guess_scores_below_zero():
    (x, y, m), (tx, ty, tm) = _split(_probe_data(600, 2), 400)
    shifted = ty + 2.0 * ty.std(0)  # held-out targets drift away from the train mean
    out = linear_probe(np.zeros((400, 0)), y, m, np.zeros((200, 0)), shifted, tm)
    assert out["r2"] == pytest.approx(-4.0, abs=0.6)  # SSE ≈ SST + n·(2σ)² → R² ≈ 1 − (1 + 4)


def test_masked_dims_are_ignored():
    (x, y, m), (tx, ty, tm) = _split(_probe_data(600, 3), 400)
    m[:, 8:], tm[:, 8:] = False, False  # an 8-dim embodiment padded to 14
    clean = linear_probe(x, y, m, tx, ty, tm)
    garbage_y, garbage_ty = y.copy(), ty.copy()
    garbage_y[:, 8:] = np.random.default_rng(0).normal(scale=1e6, size=(400, 6))
    garbage_ty[:, 8:] = np.nan
    dirty = linear_probe(x, garbage_y, m, tx, garbage_ty, tm)
    assert dirty["r2"] == pytest.approx(clean["r2"], abs=1e-12)
    assert dirty["mse"] == pytest.approx(clean["mse"], abs=1e-12)
    assert dirty["per_dim_r2"][8:] == [None] * 6
    assert clean["r2"] > 0.99


def test_probe_fits_each_embodiment_separately():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(D, D))
    x = rng.normal(size=(800, D))
    groups = np.array(["left_arm", "right_arm"] * 400)
    y = 0.1 * (x @ a) * np.where(groups == "left_arm", 1.0, -1.0)[:, None]  # opposite maps: pooled fit cancels
    m = np.ones_like(y, bool)
    tr, te = slice(0, 600), slice(600, None)
    per_embodiment = linear_probe(x[tr], y[tr], m[tr], x[te], y[te], m[te],
                                  train_groups=groups[tr], test_groups=groups[te])
    pooled = linear_probe(x[tr], y[tr], m[tr], x[te], y[te], m[te])
    assert per_embodiment["r2"] > 0.99
    assert set(per_embodiment["per_embodiment"]) == {"left_arm", "right_arm"}
    assert pooled["r2"] < 0.1


def test_probe_skips_embodiments_never_seen_in_train():
    (x, y, m), (tx, ty, tm) = _split(_probe_data(300, 7), 200)
    out = linear_probe(x, y, m, tx, ty, tm, train_groups=["a"] * 200, test_groups=["a"] * 50 + ["b"] * 50)
    assert out["skipped"] == {"b": 50}
    assert out["n_test"] == 50


def test_active_dims_count_the_dims_whose_mean_kl_exceeds_the_threshold():
    rng = np.random.default_rng(0)
    mu = torch.zeros(500, D, dtype=torch.float64)
    logvar = torch.zeros(500, D, dtype=torch.float64)
    mu[:, :3] = torch.from_numpy(rng.normal(size=(500, 3)))  # ~0.5 nats + posterior narrower than the prior
    logvar[:, :3] = -2.0
    mu[:, 3] = 0.1  # 0.005 nats: under the 0.01 default
    logvar[:, 4] = 0.2  # 0.5·(e^0.2 − 1 − 0.2) ≈ 0.0107 nats: just over
    out = kl_summary(kl_per_dim(mu, logvar).numpy())
    assert out["active_dims"] == 4
    assert out["per_dim"][3] == pytest.approx(0.005)
    assert out["per_dim"][5:] == [0.0] * 9
    assert kl_summary(kl_per_dim(mu, logvar).numpy(), active_threshold=0.02)["active_dims"] == 3


# ---------------------------------------------------------------------------------------------------- baselines
def test_pca_k_keeps_the_top_directions_of_synthetic_features():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(128, 3)))[0].T  # 3 orthonormal directions in 128-d
    x = (rng.normal(size=(500, 3)) * [5.0, 3.0, 1.0]) @ basis + 0.01 * rng.normal(size=(500, 128)) + 7.0
    pca = PCA.fit(x, 14)
    assert pca.components.shape == (14, 128)
    assert pca.explained[:3].sum() > 0.99 and pca.explained[0] > pca.explained[1] > pca.explained[2]
    scores = pca.transform(x)
    assert scores.shape == (500, 14) and np.allclose(scores.mean(0), 0, atol=1e-9)
    # the top 3 scores span the generating directions: a linear read-out recovers them
    back = scores[:, :3] @ pca.components[:3] + pca.mean
    assert np.abs(back - x).max() < 0.1
    np.testing.assert_allclose(PCA.fit(x, 3).reconstruct(x), back)  # the rank-3 reconstruction the eval upsamples


def test_information_per_dim_is_the_gaussian_channel_bound():
    rng = np.random.default_rng(1)
    mu = np.zeros((20000, 3))
    mu[:, 0] = rng.normal(scale=np.sqrt(3.0), size=20000)  # Var μ = 3, σ² = 1 → ½·log2(4) = 1 bit
    mu[:, 1] = rng.normal(scale=np.sqrt(15.0), size=20000)  # Var μ = 15 → 2 bits
    var = np.ones((20000, 3))
    var[:, 1] = 1.0
    bits = information_bits(mu, var)
    assert bits[0] == pytest.approx(1.0, abs=0.03) and bits[1] == pytest.approx(2.0, abs=0.03)
    assert bits[2] == 0.0  # a constant μ carries nothing, whatever its σ
    out = information_summary(mu, var)
    assert out["dims_over_min"] == 2 and out["total_bits"] == pytest.approx(3.0, abs=0.05)


def test_s_pcfc_is_one_for_a_collapsed_latent_and_low_for_one_that_sees_direction():
    rng = np.random.default_rng(2)
    const = np.tile(rng.normal(size=(1, 14)), (100, 1))
    assert s_pcfc(const, const) == pytest.approx(1.0)
    motion = rng.normal(size=(100, 14))
    assert s_pcfc(motion, -motion) == pytest.approx(-1.0)  # a reversed motion maps to the opposite latent
    # consecutive pairs: (t−1 → t) ends where (t → t+1) starts, per item
    frames = np.array([[0, 2], [2, 4], [4, 6], [0, 2]])
    p, q = consecutive_pairs(["a", "a", "a", "b"], frames)
    assert p.tolist() == [0, 1] and q.tolist() == [1, 2]


def test_ridge_is_chosen_on_train_folds_and_saves_an_overfit_probe():
    rng = np.random.default_rng(3)
    n, p = 120, 128  # fewer pairs than features: ordinary least squares overfits
    x, tx = rng.normal(size=(n, p)), rng.normal(size=(400, p))
    w = np.zeros((p, 1))
    w[:4] = 1.0
    y, ty = x @ w + 0.5 * rng.normal(size=(n, 1)), tx @ w + 0.5 * rng.normal(size=(400, 1))
    m, tm = np.ones_like(y, bool), np.ones_like(ty, bool)
    items = [f"item{i // 10}" for i in range(n)]
    ridge = select_ridge(x, y, m, ["e"] * n, items)
    assert ridge >= 0.1  # the smallest ridges in the grid overfit 128 features on 120 pairs
    chosen = linear_probe(x, y, m, tx, ty, tm, ridge=ridge)["r2"]
    assert chosen > linear_probe(x, y, m, tx, ty, tm, ridge=1e-3)["r2"] + 0.1


# ---------------------------------------------------------------------------------------------------- corpus
SCALE = 20.0
H, W = 12, 10  # stored flow size
# item layout: (source, embodiment, action dims, split) — ssv2 is human video: unlabelled, no actions
ITEMS = ([("robotwin", "aloha", 14, "train")] * 4 + [("robotwin", "aloha", 14, "val")] * 2
         + [("task_agnostic", "so100", 6, "train")] * 4 + [("task_agnostic", "so100", 6, "test")] * 2
         + [("ssv2", "human", 0, "val")])


def _action_map(dims: int, seed: int) -> np.ndarray:
    """Each embodiment's action change is its own linear function of the pair's (u, v) motion."""
    return np.random.default_rng(seed).normal(size=(dims, 2)) / SCALE


def make_corpus(root: Path, n_pairs: int = 10) -> list[dict]:
    """Flow artifacts of uniform translations (u, v) per pair, and action files whose change over each pair is
    a linear map of (u, v): a latent holding the mean flow then encodes the action exactly."""
    rng = np.random.default_rng(0)
    maps = {"aloha": _action_map(14, 1), "so100": _action_map(6, 2)}
    rows = []
    for i, (source, embodiment, dims, split) in enumerate(ITEMS):
        item_id = f"{source}/ep{i:02d}"
        motion = np.clip(rng.normal(scale=8.0, size=(n_pairs, 2)), -25, 25)
        flow = np.broadcast_to(motion[:, :, None, None], (n_pairs, 2, H, W)).copy()
        valid = np.ones((n_pairs, H, W), bool)
        valid[:, :, -2:] = False  # a masked border, as at the canvas edge
        pairs = np.stack([np.arange(n_pairs), np.arange(1, n_pairs + 1)], 1)
        art = root / "flow" / f"ep{i:02d}.flow.npz"
        write_flow_artifact(art, flow, valid, pairs, {"fps": 10.0, "item_id": item_id})
        row = {"item_id": item_id, "source": source, "tier": {"robotwin": 3, "task_agnostic": 4}.get(source, 2),
               "split": split, "embodiment": embodiment, "has_actions": dims > 0, "n_pairs": n_pairs,
               "artifact_path": str(art), "native_fps": 10.0, "action_dim": dims, "input_uri": ""}
        if dims:
            actions = np.cumsum(np.r_[rng.normal(size=(1, dims)), motion @ maps[embodiment].T], 0)
            if source == "robotwin":
                row["input_uri"] = str(root / f"ep{i:02d}.hdf5")
                with h5py.File(row["input_uri"], "w") as h5:
                    h5["joint_action/vector"] = actions
            else:
                (root / f"ep{i:02d}").mkdir()
                np.save(root / f"ep{i:02d}" / "actions.npy", actions)
                row["input_uri"] = str(root / f"ep{i:02d}")
        rows.append(row)
    return rows


def tiny_config() -> VAEConfig:
    # image_size must divide by 2^(len(widths)-1) = 8; widths[-1] by latent_channels
    return VAEConfig(image_size=32, widths=[8, 16, 32, 32], latent_channels=32, hidden=64, flow_scale_px=SCALE)


class OracleVAE(LatentActionVAE):
    """A stand-in for a well-trained model: μ[:2] = the pair's mean flow (network units), the rest silent;
    decoding paints that uniform flow back. Its probe R² should be ≈ 1 and its EPE ≈ 0 on this corpus."""

    def encode(self, x):
        mu = torch.zeros(len(x), self.cfg.latent_dim, dtype=x.dtype)
        mu[:, :2] = x.mean((2, 3))
        return mu, torch.zeros_like(mu)

    def decode(self, z):
        s = self.cfg.image_size
        return z[:, :2, None, None].expand(-1, -1, s, s).clone()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae_eval")
    rows = make_corpus(root)
    train = [r for r in rows if r["split"] == "train"]
    heldout = [r for r in rows if r["split"] in ("val", "test")]
    return rows, train, heldout, compute_action_stats(train)


def _batches(rows, stats, labelled_only):
    return lambda: PairSampler(rows, tiny_config(), stats, seed=0).iter_batches(8, labelled_only=labelled_only)


def test_collect_gathers_latents_epe_and_provenance(corpus):
    rows, _, heldout, stats = corpus
    torch.manual_seed(0)
    model = OracleVAE(tiny_config()).train()
    got = collect(model, _batches(heldout, stats, False)(), rows=rows, keep_examples=3)
    assert model.training  # the caller's mode comes back
    assert len(got) == 50 and got.mu.shape == (50, D) and got.kl.shape == (50, D)
    assert np.allclose(got.epe_px, 0, atol=0.05)  # oracle decodes the uniform flow exactly (float16 storage)
    assert (got.zero_epe_px > 0).all()
    assert set(zip(got.sources, got.embodiments)) == {("robotwin", "aloha"), ("task_agnostic", "so100"),
                                                      ("ssv2", "human")}
    assert got.labelled.sum() == 40 and not got.labelled[np.array(got.sources) == "ssv2"].any()
    assert len(got.examples) == 3 and len({e.item_id for e in got.examples}) == 3
    # μ[:2] is the mean flow of the model input: check one pair against its artifact's motion directly
    with np.load(rows[4]["artifact_path"]) as z:
        first = z["flow"][0, :, 0, 0].astype(np.float64) / SCALE
    i = got.item_ids.index(rows[4]["item_id"])
    assert np.allclose(got.mu[i, :2], first, atol=1e-3)
    with pytest.raises(ValueError, match="rows="):
        collect(model, _batches(heldout, stats, False)())


def test_evaluate_end_to_end(corpus, tmp_path):
    rows, train, heldout, stats = corpus
    cfg = tiny_config()
    torch.manual_seed(0)
    oracle = OracleVAE(cfg)
    torch.manual_seed(1)
    random_model = LatentActionVAE(cfg)
    out = evaluate(oracle, random_model, _batches(train, stats, True), _batches(heldout, stats, False), tmp_path,
                   flow_scale_px=SCALE, rows=rows)

    on_disk = json.loads((tmp_path / "eval.json").read_text())
    assert on_disk == out
    assert set(out) == {"overall", "robotwin", "ssv2", "task_agnostic", "meta"}
    assert out["meta"]["scopes"] == ["overall", "robotwin", "ssv2", "task_agnostic"]
    assert out["meta"]["counts"]["heldout_pairs"] == 50 and out["meta"]["counts"]["train_labelled"] == 80
    for scope in ("overall", "robotwin", "task_agnostic"):
        s = out[scope]
        assert set(s) >= {"probe", "epe_px", "kl", "n_heldout_pairs", "n_heldout_labelled"}
        assert set(s["probe"]) == {"trained", "random_init", "mean", "pca_k", "pooled_flow"}
        assert s["probe"]["trained"]["r2"] > 0.9  # μ holds the motion that each embodiment's action is a map of
        # uniform translations: pooled flow and its PCA hold the motion too, so the baselines reach it as well
        assert s["probe"]["pooled_flow"]["r2"] > 0.9 and s["probe"]["pca_k"]["r2"] > 0.9
        assert s["probe"]["pca_k"]["features"] == D and s["probe"]["pooled_flow"]["features"] == 128
        assert s["moving_epe_px"]["trained"]["mean"] < 0.05 < s["moving_epe_px"]["zero_flow"]["mean"]
        assert np.isfinite(s["epe_px"]["mean_field"]["mean"])
        # oracle: σ = 1 and μ[:2] = motion / 20 px (std ≈ 0.4) → ½·log2(1 + 0.16) ≈ 0.1 bit in 2 dims, 0 elsewhere
        bits = s["information"]["per_dim_bits"]
        assert all(0.03 < b < 0.3 for b in bits[:2]) and bits[2:] == [0.0] * (D - 2)
        # motions of successive pairs are independent: past→now and future→now latents are uncorrelated
        assert s["s_pcfc"]["n"] > 0 and abs(s["s_pcfc"]["value"]) < 0.5
        assert -0.5 < s["probe"]["mean"]["r2"] <= 0.0
        assert np.isfinite(s["probe"]["random_init"]["r2"]) and np.isfinite(s["probe"]["random_init"]["mse"])
        assert s["probe"]["trained"]["mse"] < s["probe"]["mean"]["mse"]
        assert s["epe_px"]["trained"]["mean"] < 0.05 < s["epe_px"]["zero_flow"]["mean"]
        # a uniform translation is a constant pooled field: PCA-k's reconstruction, upsampled, is exact too
        assert s["epe_px"]["pca_k"]["mean"] < 0.05 and s["moving_epe_px"]["pca_k"]["mean"] < 0.05
        assert np.isfinite(s["epe_px"]["random_init"]["median"])
        assert s["kl"]["active_dims"] == 2  # only μ[:2] moves
        assert len(s["kl"]["per_dim"]) == D and all(np.isfinite(s["kl"]["per_dim"]))
    # the so100 embodiment has 6 real dims: the 8 padded ones are never scored
    assert out["task_agnostic"]["probe"]["trained"]["per_dim_r2"][6:] == [None] * 8
    # human video: EPE and KL but no labelled pair to probe
    assert out["ssv2"]["n_heldout_labelled"] == 0 and out["ssv2"]["probe"]["trained"]["r2"] is None
    assert out["ssv2"]["epe_px"]["trained"]["n"] == 10
    assert out["meta"]["counts"]["baseline_fit_pairs"] == 80  # the train stream (labelled_only here)

    img = cv2.imread(str(tmp_path / "reconstructions.png"))
    assert img is not None and img.shape[:2] == picture_size(5)  # 5 held-out items, one row each
    assert len(out["meta"]["picture"]["pairs"]) == 5
    assert {p["source"] for p in out["meta"]["picture"]["pairs"]} == {"robotwin", "ssv2", "task_agnostic"}
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporaries
