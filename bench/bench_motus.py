"""Training steps/s of the compact Motus at the demo's config (configs/train_demo.yaml), against baselines measured
in the same run: the same model without the shared rotary clock (rope_dims 0: the pre-issue-22 attention), and
a forward pass alone (no backward, no optimiser step). `--ablate` instead trains the controlled case (a square
whose displacement between frames is the action, no language prior) with each part of the shared clock removed,
in parallel processes, and prints IDM vs VLA vs swapped-video action MSE at several steps.

    python bench/bench_motus.py [--config configs/train_demo.yaml] [--steps 20] [--threads 1]
    python bench/bench_motus.py --ablate [--steps 2000] [--seeds 2] [--jobs 14] [--out ablation.jsonl]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import statistics
import tempfile
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training_hooks.motus import Motus  # noqa: E402
from training_hooks.motus_config import MotusConfig  # noqa: E402
from training_hooks.train import (SyntheticMotion, TrainConfig, evaluate, load_motus, load_train_config,  # noqa: E402
                                  make_optimizer, train)

# the controlled case: 32x32 frames, 4 video frames, a 2-d action = the square's displacement (~2 px per unit)
CONTROLLED_MODEL = dict(work_size=[32, 32], patch_size=8, n_layers=2, n_heads=4, head_dim=16, d_video=64,
                        d_action=64, d_und=32, text_dim=16, num_video_frames=4, action_dim=2, rope_dims=8)
BEFORE = dict(rope_dims=0, pos_init_std=0.02, mode_shares={"joint": 1.0})  # the model before issue 22
QUARTER = {"mode_shares": {"joint": .25, "idm": .25, "vla": .25, "wm": .25}}
ABLATIONS = {  # name: (model overrides, seeds to run: "all" or 1)
    "before (no clock, 0.02 positions, independent t)": (BEFORE, "all"),
    "all three (rotary clock, 0.5 positions, quarter shares)": (QUARTER, "all"),
    "- rotary clock": ({**QUARTER, "rope_dims": 0}, "all"),
    "- position scale (0.02)": ({**QUARTER, "pos_init_std": 0.02}, "all"),
    "- mode shares (independent t)": ({"mode_shares": {"joint": 1.0}}, "all"),
    "all three, IDM-heavy shares .2/.4/.2/.2 (default)": ({}, "all"),
}


def controlled_data(model: MotusConfig, n: int, seed: int) -> SyntheticMotion:
    return SyntheticMotion(n, model, (32, 32), seed=seed, language_prior=False, travel=0.06)


def controlled_run(job: tuple[str, dict, int, int]) -> dict:
    """Train one ablation of the controlled case; evaluate its checkpoints on 128 held-out clips."""
    name, overrides, seed, steps = job
    torch.set_num_threads(1)
    model_cfg = MotusConfig(**{**CONTROLLED_MODEL, **overrides})
    cfg = TrainConfig(model=model_cfg, steps=steps, batch_size=16, lr=2e-3, min_lr=2e-4, warmup_steps=20,
                      log_every=100, checkpoint_every=max(1, steps // 4), eval_every=10 ** 9, eval_windows=0,
                      seed=seed)
    val = controlled_data(model_cfg, 128, seed=1000 + seed).val_batches(32)
    out = {"name": name, "seed": seed, "steps": steps, "evals": {}}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train(cfg, controlled_data(model_cfg, 4096, seed).train_batches(16, seed), None, tmp, progress=False)
        out["train_s"] = round(time.perf_counter() - t0, 1)
        for path in sorted(Path(tmp, "checkpoints").glob("step_*.pt")):
            model, state = load_motus(path)
            result = evaluate(model, val, num_steps=10, seed=0)
            out["evals"][state["step"]] = {k: round(v, 4) for k, v in result.items() if k.endswith("_mse")}
    return out


def ablate(steps: int, seeds: int, jobs: int, out_path: str | None) -> None:
    work = [(name, overrides, seed, steps) for name, (overrides, runs) in ABLATIONS.items()
            for seed in range(seeds if runs == "all" else 1)]
    print(f"controlled case: {len(work)} runs of {steps} steps, {jobs} processes", flush=True)
    results = []
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        for result in pool.imap_unordered(controlled_run, work):
            results.append(result)
            print(json.dumps(result), flush=True)
            if out_path:
                with open(out_path, "a") as f:
                    f.write(json.dumps(result) + "\n")
    print(f"\n{'variant':<55}{'step':>6}{'IDM mean':>10}{'VLA mean':>10}{'IDM swap':>10}{'IDM/VLA':>9}"
          f"{'swap/IDM':>9}{'zero':>8}   (mean over seeds, one-step posterior means)")
    for name in ABLATIONS:
        runs = [r for r in results if r["name"] == name]
        for step in sorted({int(s) for r in runs for s in r["evals"]}):
            rows = [r["evals"][step] for r in runs if step in r["evals"]]

            def avg(key: str) -> float:
                return statistics.mean(row[f"{key}_action_mse"] for row in rows)

            idm, vla, swap = avg("idm_mean"), avg("vla_mean"), avg("idm_swapped")
            print(f"{name[:55]:<55}{step:>6}{idm:>10.4f}{vla:>10.4f}{swap:>10.4f}{idm / vla:>9.2f}{swap / idm:>9.2f}"
                  f"{avg('zero'):>8.4f}  n={len(rows)}")


def time_steps(model: Motus, batches: list, steps: int, train: bool, lr: float) -> float:
    """Median seconds per step over `steps` steps after 3 warm-up steps (median: the machine is shared)."""
    from training_hooks.train import TrainConfig

    opt = make_optimizer(model, TrainConfig(model=model.cfg, lr=lr)) if train else None
    times = []
    for i in range(3 + steps):
        batch = batches[i % len(batches)]
        g = torch.Generator().manual_seed(i)
        t0 = time.perf_counter()
        if train:
            loss = model(batch, generator=g)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            opt.step()
        else:
            with torch.no_grad():
                model(batch, generator=g)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs/train_demo.yaml"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--image-size", type=int, nargs=2, default=[384, 320])
    ap.add_argument("--ablate", action="store_true", help="the controlled-case ablation instead of the speed bench")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", help="--ablate: append each run's JSON line here")
    args = ap.parse_args()
    if args.ablate:
        return ablate(args.steps, args.seeds, args.jobs, args.out)
    torch.set_num_threads(args.threads)
    cfg, _ = load_train_config(args.config)
    data = SyntheticMotion(4 * cfg.batch_size, cfg.model, tuple(args.image_size), seed=0)
    batches = [data.batch(range(i, i + cfg.batch_size)) for i in range(0, 4 * cfg.batch_size, cfg.batch_size)]
    variants = {
        "train step (this config)": (cfg.model, True),
        "train step, no rotary clock (baseline)": (dataclasses.replace(cfg.model, rope_dims=0), True),
        "forward only (baseline)": (cfg.model, False),
    }
    print(f"compact Motus at {args.config}: batch {cfg.batch_size}, {args.image_size[0]}x{args.image_size[1]} "
          f"frames, {args.threads} thread(s), median of {args.steps} steps")
    results = {}
    for name, (model_cfg, train) in variants.items():
        torch.manual_seed(0)
        model = Motus(model_cfg)
        results[name] = time_steps(model, batches, args.steps, train, cfg.lr)
    ours = results["train step (this config)"]
    for name, sec in results.items():
        print(f"  {name:<40} {1 / sec:7.2f} steps/s  {cfg.batch_size / sec:7.1f} samples/s  "
              f"ratio to this config {ours / sec:5.2f}")
    per_minute = 60 / ours
    print(f"  -> {per_minute:.0f} training steps per minute of one core; the demo's {cfg.steps} steps take "
          f"~{cfg.steps * ours / 60:.1f} min of model time")


if __name__ == "__main__":
    main()
