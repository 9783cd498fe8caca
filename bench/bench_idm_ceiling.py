"""Can the stage-2 latent actions be read from the frames at all? A supervised inverse-dynamics ceiling on the
shards the compact Motus trains on, in the Motus evaluation's units (issue 22: on the demo's shards IDM ≈ VLA ≈
IDM on swapped video, all above the per-embodiment mean).

Windows come from the trainer's own factories (`training_hooks.data.shard_batches` with the trainer config):
the first `--train-batches` training batches (the stream a run at this config trains on; clips repeat with other
windows) to fit, and the first `eval_windows` held-out windows of `eval_splits` to score: the windows the trainer's
evaluation scores. Latent row k is the motion from frame k to frame k+1 (frame 0: the condition frame), so each
(window, k) is one example: frames k and k+1, area-pooled to each `--sizes` H×W (as `Motus.frames_to_patches`, in
[−1, 1]), against the normalised latent row k.

Predictors (all fit the residual from the per-embodiment mean, so each says what the frames add to it):
- `ridge <feat>`: kernel (dual) ridge on the flattened features, linear kernel;
- `rbf <feat>`: the same with a Gaussian kernel on them (bandwidth: the median train distance), a nonlinear IDM;
where <feat> is `diff` (frame k+1 − frame k), `diff+frame` (both, concatenated) or `frame` (frame k alone: what
the scene says without the motion, the VLA-like control). The ridge penalty is chosen per latent dim by grouped
4-fold CV over the train clips (a clip's windows stay in one fold). Baselines: the per-embodiment mean of the
train windows (as the trainer's `ActionMeans`) and zero. MSE averaged over rows and dims = the evaluation's
per-window action MSE averaged over windows.

    PYTHONPATH=. .venv/bin/python bench/bench_idm_ceiling.py --shards demo_run/shards \
        [--config configs/train_demo.yaml] [--train-batches 100] [--sizes 48x40 96x80]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from training_hooks.data import shard_batches  # noqa: E402
from training_hooks.evaluation import window_groups  # noqa: E402
from training_hooks.train import load_train_config  # noqa: E402

ALPHAS = np.logspace(-3, 4, 15)  # relative to the mean diagonal of the kernel
FEATURES = ("diff", "diff+frame", "frame")


def collect(batches, n_windows: int, sizes: list[tuple[int, int]]) -> dict:
    """Pooled frames [N, 1+F, 3·h·w] per size, actions [N, A, D], groups (clip), embodiment, tier of n windows."""
    frames = {s: [] for s in sizes}
    actions, clips, embs, tiers = [], [], [], []
    n = 0
    for batch in batches:
        if n >= n_windows:
            break
        keep = min(n_windows - n, batch["first_frame"].shape[0])
        video = torch.cat([batch["first_frame"][:keep, None], batch["video_frames"][:keep]], 1).float()
        B, T = video.shape[:2]
        for s in sizes:  # as Motus.frames_to_patches: area pooling, [-1, 1]
            pooled = F.interpolate(video.flatten(0, 1), size=s, mode="area") * 2 - 1
            frames[s].append(pooled.reshape(B, T, -1).numpy().astype(np.float32))
        actions.append(batch["action_sequence"][:keep].float().numpy().copy())
        clips += list(batch["item_id"][:keep])
        embs += window_groups(batch)[:keep]
        tiers += [int(t) for t in batch["tier"][:keep]]
        n += keep
    return {"frames": {s: np.concatenate(v) for s, v in frames.items()}, "actions": np.concatenate(actions),
            "clips": np.array(clips), "embs": np.array(embs), "tiers": np.array(tiers)}


def rows(data: dict, size: tuple[int, int], feat: str) -> np.ndarray:
    """Per (window, k) features [N·A, d]: frame k+1 − frame k, and/or frame k (row-major: window, then k)."""
    fr = data["frames"][size]
    a = data["actions"].shape[1]
    cur, nxt = fr[:, :a], fr[:, 1:a + 1]
    parts = {"diff": [nxt - cur], "diff+frame": [nxt - cur, cur], "frame": [cur]}[feat]
    return np.concatenate(parts, -1).reshape(-1, sum(p.shape[-1] for p in parts))


def emb_means(actions: np.ndarray, embs: np.ndarray) -> dict[str, np.ndarray]:
    """Per-embodiment mean of the windows' step-averaged actions (the trainer's ActionMeans), '' = all."""
    per_window = actions.mean(1)
    out = {e: per_window[embs == e].mean(0) for e in np.unique(embs)}
    out[""] = per_window.mean(0)
    return out


def centred_kernel(G: np.ndarray, fit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A Gram matrix [N, N] (all rows) centred on the mean feature of the `fit` rows: (K[fit, fit], K[:, fit])."""
    m = G[:, fit].mean(1)
    c = m[fit].mean()
    K = G[:, fit] - m[:, None] - m[fit][None, :] + c
    return K[fit], K


def ridge_paths(Kff: np.ndarray, Kaf: np.ndarray, y: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """Dual ridge predictions [len(alphas), N, D] for all rows, from the fit kernel's eigendecomposition."""
    s, U = np.linalg.eigh(Kff)
    s = np.clip(s, 0, None)
    scale = max(float(np.mean(np.diag(Kff))), 1e-12)
    ym = y.mean(0)
    Uty = U.T @ (y - ym)
    KU = Kaf @ U
    return np.stack([KU @ (Uty / (s + a * scale)[:, None]) + ym for a in alphas])


def fit_predict(G: np.ndarray, y: np.ndarray, train: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Kernel ridge with the penalty per target dim chosen by grouped 4-fold CV on the train rows; predictions
    [N, D] for every row from a fit on all train rows."""
    tr = np.flatnonzero(train)
    uniq = np.unique(groups[tr])
    fold_of = {g: i % 4 for i, g in enumerate(np.random.default_rng(0).permutation(uniq))}
    folds = np.array([fold_of[g] for g in groups[tr]])
    cv = np.zeros((len(ALPHAS), y.shape[1]))
    for k in range(4):
        fit, val = tr[folds != k], tr[folds == k]
        Kff, Kaf = centred_kernel(G[np.ix_(np.r_[fit, val], np.r_[fit, val])], np.arange(len(fit)))
        pred = ridge_paths(Kff, Kaf[len(fit):], y[fit], ALPHAS)
        cv += ((pred - y[val][None]) ** 2).sum(1)
    best = cv.argmin(0)
    Kff, Kaf = centred_kernel(G, tr)
    pred = ridge_paths(Kff, Kaf, y[tr], ALPHAS)
    return pred[best, :, np.arange(y.shape[1])].T


def rbf(G: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Gaussian kernel from a linear Gram matrix; bandwidth² = the median squared distance between train rows."""
    d = np.diag(G)
    D2 = np.clip(d[:, None] + d[None, :] - 2 * G, 0, None)
    tr = np.flatnonzero(train)
    sub = D2[np.ix_(tr[::7], tr[::7])]
    return np.exp(-D2 / max(float(np.median(sub[sub > 0])), 1e-12))


def scores(err: np.ndarray, test: np.ndarray, tiers: np.ndarray) -> dict:
    """Mean error over the held-out rows, overall and per tier."""
    out = {"all": float(err[test].mean())}
    for t in np.unique(tiers[test]):
        out[f"tier {t}"] = float(err[test & (tiers == t)].mean())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=Path, required=True)
    ap.add_argument("--config", type=Path, default=Path("configs/train_demo.yaml"))
    ap.add_argument("--train-batches", type=int, default=100, help="training batches to fit on (batch_size each)")
    ap.add_argument("--sizes", nargs="+", default=["48x40", "96x80"], help="pooled H×W per feature set")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg, loader = load_train_config(args.config)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    t0 = time.perf_counter()
    make_train, make_val = shard_batches(args.shards, loader, cfg, 0)
    train = collect(make_train(0), args.train_batches * cfg.batch_size, sizes)
    held = collect(make_val(), cfg.eval_windows, sizes)
    A = train["actions"].shape[1]
    print(f"windows: {len(train['clips'])} train ({len(set(train['clips']))} clips), {len(held['clips'])} held out "
          f"({len(set(held['clips']))} clips), {A} rows each; read in {time.perf_counter() - t0:.0f}s", flush=True)

    y = np.concatenate([train["actions"], held["actions"]]).reshape(-1, train["actions"].shape[2])
    is_test = np.r_[np.zeros(len(train["clips"]) * A, bool), np.ones(len(held["clips"]) * A, bool)]
    groups = np.repeat(np.r_[train["clips"], held["clips"]], A)
    tiers = np.repeat(np.r_[train["tiers"], held["tiers"]], A)
    embs = np.repeat(np.r_[train["embs"], held["embs"]], A)
    means = emb_means(train["actions"], train["embs"])
    base = np.stack([means.get(e, means[""]) for e in embs])
    resid = y - base

    def err(pred: np.ndarray) -> np.ndarray:
        return ((pred - y) ** 2).mean(1)

    results = {"zero": scores(err(np.zeros_like(y)), is_test, tiers),
               "emb mean": scores(err(base), is_test, tiers)}
    for size in sizes:
        grams = {}
        for part in ("diff", "frame"):
            x = np.concatenate([rows(train, size, part), rows(held, size, part)])
            grams[part] = x @ x.T
            del x
        grams["diff+frame"] = grams["diff"] + grams["frame"]
        for feat in FEATURES:
            for kind in ("ridge", "rbf"):
                t1 = time.perf_counter()
                G = grams[feat] if kind == "ridge" else rbf(grams[feat], ~is_test)
                pred = base + fit_predict(G, resid, ~is_test, groups)
                name = f"{kind} {feat} {size[0]}x{size[1]}"
                results[name] = scores(err(pred), is_test, tiers)
                print(f"  {name}: {results[name]['all']:.4f} ({time.perf_counter() - t1:.0f}s)", flush=True)

    ref = results["emb mean"]
    cols = list(ref)
    print(f"\nheld-out latent-action MSE ({len(held['clips'])} windows × {A} rows; normalised units as the Motus "
          f"eval); in brackets: ratio to the per-embodiment mean")
    print(f"  {'predictor':<28}" + "".join(f"{c:>18}" for c in cols))
    for name, row in results.items():
        print(f"  {name:<28}" + "".join(f"{row.get(c, float('nan')):>9.4f} ({row.get(c, float('nan')) / ref[c]:.2f})"
                                        for c in cols))
    counts = defaultdict(int)
    for t in held["tiers"]:
        counts[int(t)] += 1
    print(f"  held-out windows per tier: {dict(sorted(counts.items()))}; total {time.perf_counter() - t0:.0f}s")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "tiers": dict(counts)}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
