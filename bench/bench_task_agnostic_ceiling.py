"""Pooled-flow probe ceiling of the task-agnostic tier on held-out episodes: the generator before issue 21
(gym-aloha's top camera, uniform motion) against today's (front camera, wrist views, varied motion), one run.

Both corpora are generated fresh (a seed the demo does not use), read through the adapter, and get flow of the
main view (camera 0) from the flow stage's own function (exact sim flow, or DIS with `--backend dis`) on the
working canvas, stored at the store size. Each pair (t, t+Δ) becomes 8×8 average-pooled flow (2×8×8 = 128
features); a ridge regression per action dim (alpha picked by grouped 4-fold CV on train episodes only) predicts
the action change a[t+Δ] − a[t]; R² is reported on held-out episodes (every third), per-dim mean and overall
(pooled over dims). Also printed: the same probe for a[t+Δ−1] − a[t−1] (the commands that drive the pair under
the layout's `action_applied = after_frame`) and for the measured joints, and with `--wrist` each wrist view and
all views together (the wrist views then get sim extras, so exact flow, too).

    PYTHONPATH=. .venv/bin/python bench/bench_task_agnostic_ceiling.py [--episodes 24] [--frames 75] [--wrist]

`--keep DIR --reuse` keeps corpora and flow for a rerun with the same flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402

from flow_extraction.artifacts import read_flow_artifact  # noqa: E402
from flow_extraction.config import FlowConfig  # noqa: E402
from pipelines.flow import compute_item_flow, make_backends  # noqa: E402
from samples.sim_task_agnostic import DEFAULT_CAMERAS  # noqa: E402
from sources.task_agnostic import TaskAgnosticSource  # noqa: E402

CONFIGS = {  # generator settings: before issue 21, and today's defaults
    "before": {"cameras": ("top",), "motion": "uniform"},
    "after": {},
}
ALPHAS = 10.0 ** np.arange(-6.0, 1.5, 0.5)  # times the mean feature variance
POOL = 8


def pooled(flow: np.ndarray, pool: int = POOL) -> np.ndarray:
    """[N, 2, H, W] → [N, 2·pool·pool] by block averaging (H, W multiples of pool)."""
    n, c, h, w = flow.shape
    return flow.astype(np.float32).reshape(n, c, pool, h // pool, pool, w // pool).mean((3, 5)).reshape(n, -1)


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    xm, ym = x.mean(0), y.mean(0)
    xc = x - xm
    penalty = alpha * len(x) * max(float(xc.var(0).mean()), 1e-12)
    w = np.linalg.solve(xc.T @ xc + penalty * np.eye(x.shape[1]), xc.T @ (y - ym))
    return w, ym - xm @ w


def r2_per_dim(y: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-dim R² (dims with no variance left out as NaN) and overall R² (pooled over dims, variance-weighted)."""
    sse, sst = ((y - pred) ** 2).sum(0), ((y - y.mean(0)) ** 2).sum(0)
    per = np.where(sst > 1e-12, 1 - sse / np.maximum(sst, 1e-12), np.nan)
    return per, float(1 - sse.sum() / sst.sum())


def probe(x: np.ndarray, y: np.ndarray, groups: np.ndarray, test: np.ndarray) -> dict:
    """Per action dim, pick alpha by grouped 4-fold CV on train episodes, refit on all train, score held-out.

    Features stay in pixels (no per-feature scaling: a cell the arm rarely enters would otherwise be blown up).
    Alpha is chosen per dim (as RidgeCV with alpha_per_target): a joint that moves many pixels wants little
    shrinkage, one that barely shows wants a lot, and one shared alpha would trade one against the other.
    """
    tr = ~test
    train_groups = np.unique(groups[tr])
    fold = np.full(groups.max() + 1, -1)
    fold[train_groups] = np.arange(len(train_groups)) % 4
    f = fold[groups]
    cv_err = np.zeros((len(ALPHAS), y.shape[1]))
    for i, a in enumerate(ALPHAS):
        for k in range(4):
            fit, val = tr & (f != k), tr & (f == k)
            w, b = ridge_fit(x[fit], y[fit], a)
            cv_err[i] += ((x[val] @ w + b - y[val]) ** 2).sum(0)
    best = cv_err.argmin(0)
    pred = np.empty_like(y)
    for i in np.unique(best):
        dims = best == i
        w, b = ridge_fit(x[tr], y[tr][:, dims], ALPHAS[i])
        pred[:, dims] = x @ w + b
    per, overall = r2_per_dim(y[test], pred[test])
    per_tr, _ = r2_per_dim(y[tr], pred[tr])
    return {"alpha": f"{ALPHAS[best].min():.0e}..{ALPHAS[best].max():.0e}", "per_dim": per,
            "mean": float(np.nanmean(per)), "overall": overall, "train_mean": float(np.nanmean(per_tr)),
            "n_train": int(tr.sum()), "n_test": int(test.sum())}


def generate(root: Path, settings: dict, args) -> float:
    from samples.sim_task_agnostic import write_task_agnostic

    t0 = time.perf_counter()
    write_task_agnostic(root, args.episodes, n_frames=args.frames, seed=args.seed, **settings)
    return time.perf_counter() - t0


def flow_features(root: Path, camera: int, backend: str, work: Path) -> tuple[list, dict]:
    """Per episode: (pairs, pooled flow) from the flow stage, on camera index ``camera``."""
    fc = FlowConfig(backend="dis", sim_for_sim_tiers=backend == "sim", camera=camera)
    backends = make_backends(dataclasses.asdict(fc))
    src = TaskAgnosticSource(root)
    out = []
    for ref in src.discover():
        row = src.probe(ref).row()
        out_path = work / f"{ref.native_id}.{camera}.npz"
        if not out_path.exists():
            compute_item_flow({"row": row, "flow": dataclasses.asdict(fc), "out_path": str(out_path)}, backends)
        art = read_flow_artifact(out_path)
        out.append((art.pairs.astype(np.int64), pooled(art.flow)))
    return out, {"backend": art.meta["backend"], "camera": row["cameras"][min(camera, len(row["cameras"]) - 1)]}


def targets(root: Path, name: str, pairs: np.ndarray, kind: str) -> np.ndarray:
    a = np.load(root / "episodes" / name / "actions.npy").astype(np.float64)
    t1, t2 = pairs[:, 0], pairs[:, 1]
    if kind == "a[t2]-a[t1]":
        return a[t2] - a[t1]
    if kind == "a[t2-1]-a[t1-1]":  # actions[t] is commanded after frame t: commands t1..t2-1 drive the pair
        return a[t2 - 1] - a[np.maximum(t1 - 1, 0)]
    j = np.load(root / "episodes" / name / "joints.npy").astype(np.float64)
    return j[t2] - j[t1]


def evaluate(root: Path, feats: list, names: list[str], kind: str) -> dict:
    x = np.concatenate([f for _, f in feats])
    y = np.concatenate([targets(root, n, p, kind) for n, (p, _) in zip(names, feats)])
    groups = np.concatenate([np.full(len(p), i) for i, (p, _) in enumerate(feats)])
    return probe(x, y, groups, groups % 3 == 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=24)
    ap.add_argument("--frames", type=int, default=75)
    ap.add_argument("--seed", type=int, default=100)  # not the demo's seed: genuinely new episodes
    ap.add_argument("--backend", choices=("sim", "dis"), default="sim")
    ap.add_argument("--wrist", action="store_true", help="also probe each wrist view and all views together")
    ap.add_argument("--keep", type=Path, default=None, help="generate here and keep the corpora")
    ap.add_argument("--reuse", action="store_true", help="with --keep: reuse corpora and flow generated before")
    ap.add_argument("--front", default=None, help="try another front camera: 'x,y,z:tx,ty,tz:fovy' (metres, degrees)")
    ap.add_argument("--after", default=None, help="generator settings for 'after' as JSON, e.g. '{\"joint_range\": 0.5}'")
    ap.add_argument("--only-after", action="store_true", help="skip the 'before' corpus (for trying settings)")
    args = ap.parse_args()
    if args.after:
        CONFIGS["after"] = {**CONFIGS["after"], **json.loads(args.after)}
    if args.only_after:
        del CONFIGS["before"]
    if args.front:
        pos, target, fovy = args.front.split(":")
        CONFIGS["after"] = {**CONFIGS["after"], "front_camera": {
            "pos": tuple(map(float, pos.split(","))), "target": tuple(map(float, target.split(","))), "fovy": float(fovy)}}

    kinds = ("a[t2]-a[t1]", "a[t2-1]-a[t1-1]", "joints[t2]-joints[t1]")
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-ta-ceiling-") as tmp:
        base = args.keep or Path(tmp)
        for cfg, settings in CONFIGS.items():
            root = base / cfg / "aloha_random"
            reuse = args.keep is not None and (root / "dataset.json").exists() and args.reuse
            if args.wrist:  # exact flow for the wrist views too
                settings = {**settings, "sim_cameras": tuple(settings.get("cameras", DEFAULT_CAMERAS))}
            gen_s = float("nan") if reuse else generate(root, settings, args)
            cams = TaskAgnosticSource(root).meta["cameras"]
            names = sorted(p.name for p in (root / "episodes").iterdir())
            views = [0] + (list(range(1, len(cams))) if args.wrist else [])
            t0 = time.perf_counter()
            flow_dir = (base if args.reuse else Path(tmp)) / "flow" / f"{cfg}-{args.backend}"
            per_view = {v: flow_features(root, v, args.backend, flow_dir) for v in views}
            flow_s = time.perf_counter() - t0
            res = {"gen_s": gen_s, "flow_s": flow_s, "cameras": cams, "backend": per_view[0][1]["backend"]}
            for kind in kinds:
                res[(0, kind)] = evaluate(root, per_view[0][0], names, kind)
            if len(views) > 1:
                for v in views[1:]:
                    res[(v, kinds[0])] = evaluate(root, per_view[v][0], names, kinds[0])
                joint = [(per_view[0][0][i][0], np.concatenate([per_view[v][0][i][1] for v in views], 1))
                         for i in range(len(names))]
                res[("all", kinds[0])] = evaluate(root, joint, names, kinds[0])
            results[cfg] = res

    from gym_aloha.constants import ACTIONS

    a = results["after"]
    b = results.get("before", a)  # --only-after: compare the settings with themselves
    ev = b[(0, kinds[0])]
    n_test_eps = len(range(2, args.episodes, 3))
    print(f"task-agnostic probe ceiling: {args.episodes} new episodes × {args.frames} frames (seed {args.seed}), "
          f"{ev['n_train']} train / {ev['n_test']} held-out pairs ({args.episodes - n_test_eps} / {n_test_eps} "
          f"episodes), flow: {a['backend']} at the flow stage's canvas, "
          f"{POOL}×{POOL} avg-pooled → ridge")
    for cfg, r in results.items():
        print(f"  {cfg:6s}: cameras {r['cameras']}, generation {r['gen_s']:.1f}s "
              f"({r['gen_s'] / args.episodes:.2f}s/episode), flow {r['flow_s']:.1f}s")
    print(f"{'target (main view = camera 0)':32s} {'before':>16s} {'after':>16s} {'ratio':>7s}   (held-out R², "
          "per-dim mean / overall; train per-dim mean)")
    for kind in kinds:
        rb, ra = b[(0, kind)], a[(0, kind)]
        print(f"{kind:32s} {rb['mean']:7.3f} / {rb['overall']:6.3f} {ra['mean']:7.3f} / {ra['overall']:6.3f} "
              f"{ra['mean'] / max(rb['mean'], 1e-9):6.2f}x   (train {rb['train_mean']:.2f} → {ra['train_mean']:.2f}; "
              f"alpha {rb['alpha']} → {ra['alpha']})")
    for key in [k for k in a if isinstance(k, tuple) and k[0] != 0]:
        view = "all views" if key[0] == "all" else f"camera {key[0]} ({a['cameras'][key[0]]})"
        print(f"  after, {view:28s}: {a[key]['mean']:.3f} / {a[key]['overall']:.3f}")
    extra = ("all", kinds[0]) in a
    print(f"per dim, {kinds[0]}:        main view before   after" + ("   after, all views" if extra else ""))
    for i, name in enumerate(ACTIONS):
        print(f"  {name:24s} {b[(0, kinds[0])]['per_dim'][i]:16.3f} {a[(0, kinds[0])]['per_dim'][i]:7.3f}"
              + (f" {a[('all', kinds[0])]['per_dim'][i]:18.3f}" if extra else ""))


if __name__ == "__main__":
    main()
