"""Sweep VAE objectives fast: export a workdir's flow pairs once (with the project's PairSampler and action
targets), then train and evaluate many (variant, seed, steps) jobs from that file with the project's own
`train_step` and `evaluate` — in parallel processes, on a GPU when there is one.

    .venv/bin/python bench/sweep_vae_objective.py export WORKDIR pairs.npz [--config configs/demo.yaml]
    python bench/sweep_vae_objective.py run pairs.npz OUT [--device cuda] [--jobs 12] [--seeds 0 1 2]

`run` needs only torch, numpy, cv2, pyyaml and diffusers (no DuckDB, no video decoding), so it runs on a
machine that has none of the pipeline's other dependencies. Batches are drawn like PairSampler's (labelled share
from labelled pairs, tiers weighed equally, pairs uniform within a tier) but from the export, whose flow is
already at the VAE's input size: exploratory figures for choosing an objective; the reported ones come from
`bench_latent_quality.py`, which trains through the whole pipeline.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (name, vae overrides): the objectives compared
VARIANTS: dict[str, dict[str, Any]] = {
    "before": {},
    "per_source": {"recon_balance": "per_source"},
    "moving8": {"moving_weight": 8.0},
    "per_source_moving8": {"recon_balance": "per_source", "moving_weight": 8.0},
    "per_source_cosine": {"recon_balance": "per_source", "lr_decay_steps": -1},  # -1: the job's step count
    "per_source_align20": {"recon_balance": "per_source", "lambda_align": 20.0},
    "per_source_lab30": {"recon_balance": "per_source", "labelled_fraction": 0.3},
    "per_source_scale2": {"recon_balance": "per_source", "flow_scale_px": 2.0},
    "frame": {"recon_balance": "per_source", "decoder_condition": "frame"},
    "frame_cosine": {"recon_balance": "per_source", "decoder_condition": "frame", "lr_decay_steps": -1},
    "frame_align20": {"recon_balance": "per_source", "decoder_condition": "frame", "lambda_align": 20.0},
    "frame_beta1e-3": {"recon_balance": "per_source", "decoder_condition": "frame", "beta": 1e-3},
    "cosine": {"recon_balance": "per_source", "lr_decay_steps": -1},
    "epe": {"recon_balance": "per_source", "lr_decay_steps": -1, "recon_loss": "epe"},
}
# arrays a job reads from the export ("frame" only when the flow artifacts stored first frames)
ARRAYS = ("flow", "valid", "action", "action_mask", "labelled", "pair_index", "pair_frames", "frame")


# ---------------------------------------------------------------------------------------------- export (CPU)
def export(workdir: str, out: str, config: str | None) -> None:
    import torch.nn.functional as F

    from catalog import Catalog
    from latent_action_vae.data import PairSampler, compute_action_stats, stats_to_dict
    from latent_action_vae.train import flow_manifest_rows
    from pipelines.config import load_config
    from jobs.vae import excluded_items

    cfg = load_config(config, workdir=workdir)
    vc = cfg.vae
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        excluded = excluded_items(cfg, cat)
    rows, _ = flow_manifest_rows(cfg.manifests_dir, cfg.path("."), excluded)
    train = [r for r in rows if r["split"] == "train"]
    labelled = [r for r in train if r["has_actions"] and (not vc.align_embodiments or r["embodiment"] in vc.align_embodiments)]
    stats = compute_action_stats(labelled)
    sampler = PairSampler(rows, vc, stats, seed=0)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ARRAYS}
    ids: list[str] = []
    size = (vc.image_size, vc.image_size)
    for batch in sampler.iter_batches(256):
        # the model's own resize rule (LatentActionVAE.prepare): area for flow, "fully valid" for the mask
        parts["flow"].append(F.interpolate(batch["flow"].float(), size=size, mode="area").half().numpy())
        parts["valid"].append((F.interpolate(batch["valid"].float()[:, None], size=size, mode="area")[:, 0] > 0.999).numpy())
        for k in ("action", "action_mask", "labelled", "pair_index", "pair_frames"):
            parts[k].append(batch[k].numpy())
        if batch.get("frame") is not None:  # first frames at the input size, as the model would resize them
            parts["frame"].append(F.interpolate(batch["frame"].float(), size=size, mode="area").round().byte().numpy())
        ids += batch["item_ids"]
    keep = ("item_id", "source", "embodiment", "tier", "split", "n_pairs", "mean_px", "has_actions")
    meta = {"rows": [{k: r[k] for k in keep} for r in rows], "action_stats": stats_to_dict(stats),
            "excluded": excluded, "vae": dataclasses.asdict(vc), "workdir": Path(workdir).name}
    np.savez_compressed(out, item_ids=np.array(ids), meta=json.dumps(meta),
                        **{k: np.concatenate(v) for k, v in parts.items() if v})
    print(f"exported {len(ids)} pairs of {len(rows)} items ({len(excluded)} excluded) to {out} "
          f"({os.path.getsize(out) / 1e6:.1f} MB)")


# ---------------------------------------------------------------------------------------------- run (anywhere)
class Pairs:
    """The export in memory, as PairSampler-shaped batches."""

    def __init__(self, path: str):
        z = np.load(path, allow_pickle=False)
        self.meta = json.loads(str(z["meta"]))
        self.arrays = {k: z[k] for k in ARRAYS if k in z.files}
        self.item_ids = z["item_ids"].tolist()
        self.rows = {r["item_id"]: r for r in self.meta["rows"]}
        split = np.array([self.rows[i]["split"] for i in self.item_ids])
        self.tier = np.array([int(self.rows[i]["tier"]) for i in self.item_ids])
        self.train = np.flatnonzero(split == "train")
        self.heldout = np.flatnonzero(np.isin(split, ["val", "test"]))

    def batch(self, idx: np.ndarray, labelled: np.ndarray | None = None) -> dict[str, Any]:
        import torch

        out = {k: torch.from_numpy(np.ascontiguousarray(v[idx])) for k, v in self.arrays.items()}
        out["flow"] = out["flow"].float()
        if labelled is not None:
            out["labelled"] = torch.from_numpy(labelled)
        out["item_ids"] = [self.item_ids[i] for i in idx]
        return out

    def draw(self, rng: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
        """Tiers weighed equally, a uniform pair within the tier (PairSampler with default tier weights)."""
        tiers = np.unique(self.tier[pool])
        by_tier = {t: pool[self.tier[pool] == t] for t in tiers}
        return np.array([rng.choice(by_tier[t]) for t in rng.choice(tiers, size=n)], np.int64)

    def stream(self, idx: np.ndarray, labelled_only: bool, max_pairs: int, batch_size: int = 256):
        if labelled_only:
            idx = idx[self.arrays["labelled"][idx]]
        if len(idx) > max_pairs:
            idx = idx[(np.arange(max_pairs) * len(idx)) // max_pairs]
        return lambda: (self.batch(idx[i:i + batch_size]) for i in range(0, len(idx), batch_size))


def run_job(path: str, out_dir: str, variant: str, seed: int, steps: int, device: str) -> dict[str, Any]:
    import torch

    from latent_action_vae.evaluate import evaluate
    from latent_action_vae.model import LatentActionVAE
    from latent_action_vae.train import source_balance, train_step
    from latent_action_vae.config import VAEConfig

    torch.set_num_threads(1)
    data = Pairs(path)
    base = {k: v for k, v in data.meta["vae"].items() if k in {f.name for f in dataclasses.fields(VAEConfig)}}
    overrides = dict(VARIANTS[variant])
    if overrides.get("lr_decay_steps") == -1:
        overrides["lr_decay_steps"] = steps
    vc = VAEConfig(**{**base, **overrides, "seed": seed, "steps": steps})
    torch.manual_seed(seed)
    model = LatentActionVAE(vc).to(device)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=vc.lr,
                                  weight_decay=vc.weight_decay)
    train_rows = [data.rows[i] for i in dict.fromkeys(data.item_ids[j] for j in data.train)]
    weights = source_balance(train_rows, vc)
    labelled_pool = data.train[data.arrays["labelled"][data.train]]
    n_lab = int(round(vc.batch_size * vc.labelled_fraction)) if len(labelled_pool) else 0
    t0 = time.perf_counter()
    last: dict[str, float] = {}
    for step in range(steps):
        rng = np.random.default_rng([seed, step])
        idx = np.r_[data.draw(rng, labelled_pool, n_lab) if n_lab else np.empty(0, np.int64),
                    data.draw(rng, data.train, vc.batch_size - n_lab)]
        lab = np.r_[np.ones(n_lab, bool), np.zeros(vc.batch_size - n_lab, bool)]
        batch = data.batch(idx, lab)
        batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        last = train_step(model, optimiser, batch, vc, step, weights)
    train_s = time.perf_counter() - t0
    torch.manual_seed(seed + 1)
    random_model = LatentActionVAE(vc).to(device).eval()
    job = f"{variant}_s{seed}_{steps}"
    n = vc.eval_max_pairs
    report = evaluate(model.eval(), random_model, data.stream(data.train, True, n), data.stream(data.heldout, False, n),
                      Path(out_dir) / job, vc.flow_scale_px, rows=list(data.rows.values()),
                      train_all_batches_fn=data.stream(data.train, False, n), excluded=data.meta["excluded"])
    report["meta"]["job"] = {"variant": variant, "seed": seed, "steps": steps, "train_s": round(train_s, 1),
                             "last": last, "device": device}
    return report


def _worker(args: tuple) -> tuple[str, dict[str, Any] | str]:
    path, out_dir, variant, seed, steps, device = args
    key = f"{variant}_s{seed}_{steps}"
    try:
        return key, run_job(path, out_dir, variant, seed, steps, device)
    except Exception as e:  # noqa: BLE001 - one failed job is one error row, the sweep goes on
        import traceback

        return key, f"{type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}"


FIGS = (("R2 mu", ("probe", "trained", "r2")), ("R2 pca", ("probe", "pca_k", "r2")),
        ("R2 pool", ("probe", "pooled_flow", "r2")), ("R2 rand", ("probe", "random_init", "r2")),
        ("EPE", ("epe_px", "trained", "mean")), ("zero", ("epe_px", "zero_flow", "mean")),
        ("movEPE", ("moving_epe_px", "trained", "mean")), ("movZero", ("moving_epe_px", "zero_flow", "mean")),
        ("bits", ("information", "total_bits")), ("dims", ("information", "dims_over_min")),
        ("spcfc", ("s_pcfc", "value")))


def table(results: dict[str, Any]) -> list[str]:
    def dig(node, path):
        for k in path:
            node = node.get(k) if isinstance(node, dict) else None
        return node

    groups: dict[tuple[str, int], list[dict]] = {}
    for key, r in results.items():
        if isinstance(r, dict):
            j = r["meta"]["job"]
            groups.setdefault((j["variant"], j["steps"]), []).append(r)
    lines = [f"{'variant':22s} {'steps':>5s} {'scope':14s} n " + " ".join(f"{f:>12s}" for f, _ in FIGS)]
    for (variant, steps), rs in sorted(groups.items()):
        for scope in ("overall", "robotwin", "task_agnostic", "ego4d", "ssv2", "oxe", "lerobot"):
            present = [r[scope] for r in rs if scope in r]
            if not present:
                continue
            cells = []
            for _, path in FIGS:
                vals = [float(v) for v in (dig(p, path) for p in present) if v is not None]
                cells.append(f"{np.mean(vals):6.2f}±{np.std(vals):4.2f}" if vals else f"{'-':>12s}")
            lines.append(f"{variant:22s} {steps:5d} {scope:14s} {len(present)} " + " ".join(f"{c:>12s}" for c in cells))
    return lines


def run(path: str, out_dir: str, variants: list[str], seeds: list[int], steps: list[int], device: str,
        jobs: int, job_dir: str | None = None, long_variants: list[str] | None = None) -> None:
    """Every (variant, seed) at every step count — `long_variants` only at the largest one. Each result is
    appended to OUT/results.jsonl as it lands (a sweep cut short keeps what finished); the table goes to
    stdout and OUT/sweep.json; per-job eval files go to `job_dir` (default OUT/jobs)."""
    import multiprocessing as mp

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    job_dir = job_dir or str(Path(out_dir) / "jobs")
    longest = max(steps)
    work = [(path, job_dir, v, s, n, device) for n in sorted(steps, reverse=True) for v in variants for s in seeds
            if n != longest or long_variants is None or v in long_variants]
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # numpy's BLAS in every worker: jobs × 1 thread, not jobs × cores
    with mp.get_context("spawn").Pool(min(jobs, len(work))) as pool, open(Path(out_dir) / "results.jsonl", "a") as log:
        for key, result in pool.imap_unordered(_worker, work):
            results[key] = result
            log.write(json.dumps({"job": key, "result": result}, default=str) + "\n")
            log.flush()
            status = "error: " + result.splitlines()[0] if isinstance(result, str) else \
                f"train {result['meta']['job']['train_s']}s, R2 mu {result['overall']['probe']['trained']['r2']}"
            print(f"[sweep] {key} ({time.perf_counter() - t0:.0f}s): {status}", flush=True)
    lines = table(results)
    print("\n".join(lines), flush=True)
    errors = {k: v for k, v in results.items() if isinstance(v, str)}
    for k, v in errors.items():
        print(f"[sweep] {k} failed: {v}")
    Path(out_dir, "sweep.json").write_text(json.dumps({"table": lines, "results": results}, default=str))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("workdir")
    e.add_argument("out")
    e.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"))
    r = sub.add_parser("run")
    r.add_argument("pairs")
    r.add_argument("out")
    r.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--steps", type=int, nargs="+", default=[600])
    r.add_argument("--device", default="cpu")
    r.add_argument("--jobs", type=int, default=2)
    r.add_argument("--job-dir", default=None, help="per-job eval files (default OUT/jobs)")
    r.add_argument("--long-variants", nargs="+", default=None, help="only these at the largest --steps")
    a = ap.parse_args()
    if a.cmd == "export":
        export(a.workdir, a.out, a.config)
    else:
        run(a.pairs, a.out, a.variants, a.seeds, a.steps, a.device, a.jobs, a.job_dir, a.long_variants)


if __name__ == "__main__":
    main()
