"""Does stage-2 pretraining on latent actions help? The Motus paper's Fig. 6 at toy scale, with the project's
own jobs: held-out VLA action MSE of the target robot after stage 3, for three arms, mean ± std over seeds.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_pretraining_ablation.py [--scale 1] [--seeds 0 1 2] \
        [--steps 300] [--stage3-steps 100] [--out bench_out/pretraining_ablation_s1] [--device cpu]

| arm | stage 2 (steps − stage-3 steps) | stage 3 (real actions, 10% of the target's train episodes) |
|---|---|---|
| `latent_pretrained` | latent actions of the trained VAE, every tier, mixture weights (`loader.tier_weights`) | from its checkpoint |
| `random_latents` | latent actions of a random-init VAE (the same jobs, `vae.steps: 0`) | from its checkpoint |
| `scratch` | none | from a fresh model, all `--steps` |

The corpus is built once under `--out` and reused (a stamp says with which settings): the sample pyramid →
ingest → flow (bench_latent_quality's `build_corpus`, demo config, local engine) → VAE train → label → shard into
`shards_trained`; a stage-3 set `shards_target` from the same per-item samples (the target's train items cut to
`--fraction`, its val/test items held out, train-only action statistics, written by the shard job's own
`plan_shards` / `train_stats` / `write_shard_set`); then a random-init VAE checkpoint → label → shard into
`shards_random`. Each run trains into `runs/<arm>_s<seed>/` with the trainer's Python entry points (resumable).
The target robot is a source whose actions drove its frames (default `task_agnostic`, tier 4: random joint motion
of the simulated ALOHA; the sample L6 LeRobot episodes pair borrowed footage with synthetic actions).
Results: `<out>/ablation.json` and the table on stdout. Never run in CI.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from bench.bench_latent_quality import CONFIG, build_corpus  # noqa: E402
from catalog import Catalog  # noqa: E402
from manifests.io import atomic_write_text  # noqa: E402
from manifests.shard_format import read_index  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from pipelines.label import run_label  # noqa: E402
from pipelines.runners import make_runner  # noqa: E402
from pipelines.shard import plan_shards, run_shard, shard_settings, stable_order, train_stats, write_shard_set  # noqa: E402
from jobs.vae import run_vae_train  # noqa: E402

TRAIN_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train_demo.yaml"
ARMS = ("latent_pretrained", "random_latents", "scratch")
CORPUS_VERSION = 1
# stage-2 mixture: every tier the same share, whatever its clip count (Octo-style dataset weights)
TIER_WEIGHTS = {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0, 5: 1.0, 6: 1.0}
# stage 3 (and scratch): the VLA is scored, so it gets half the steps; the IDM keeps reading the video
STAGE3_SHARES = {"vla": 0.5, "idm": 0.3, "joint": 0.1, "wm": 0.1}


# --- the corpus ---------------------------------------------------------------------------------------------------

def pipeline_config(out: Path, scale: int, vae_steps: int, **overrides: Any) -> Any:
    base = {"runner.engine": "local", "samples.scale": scale, "vae.steps": vae_steps, "vae.threads": 1,
            "runner.torch_threads": 1}
    return load_config(CONFIG, workdir=str(out), **{**base, **overrides})


def sample_rows(catalog: Catalog) -> list[dict[str, Any]]:
    """The per-item sample tars the last shard run built (the rows the shard job packs)."""
    return catalog.sql(
        """SELECT a.item_id, a.path, a.bytes, a.blake2b AS checksum, i.split, i.tier, i.source FROM artifacts a
           JOIN items i USING (item_id) JOIN done_items('shard') USING (item_id)
           WHERE a.stage = 'shard' ORDER BY a.item_id""").to_pylist()


def write_target_set(root: Path, rows: list[dict[str, Any]], cfg: Any, target: str, fraction: float) -> dict[str, Any]:
    """The stage-3 shard set: `fraction` of the target's train items (at least one, in the shard job's stable
    order), all its val/test items held out; written by the shard job's own functions."""
    mine = [r for r in rows if r["source"] == target]
    train = sorted((r for r in mine if r["split"] == "train"), key=lambda r: (stable_order(r["item_id"]), r["item_id"]))
    if not train:
        raise SystemExit(f"no train items of target source {target!r} (sources: {sorted({r['source'] for r in rows})})")
    kept = train[:max(1, round(fraction * len(train)))]
    held = [r for r in mine if r["split"] in ("val", "test")]
    if not held:
        raise SystemExit(f"no val/test items of {target!r} to evaluate on: raise --scale")
    chosen = kept + held
    shards = plan_shards(chosen, cfg.shards.target_mb * 1e6, per_tier=False)
    settings = {**shard_settings(cfg), "subset": {"source": target, "fraction": fraction,
                                                  "train_items": [r["item_id"] for r in kept]}}
    write_shard_set(root, shards, train_stats(chosen), settings, run_id="ablation")
    return {"target": target, "train_items": len(kept), "of_train": len(train), "held_out": len(held)}


def build_shards(out: Path, scale: int, vae_steps: int, target: str, fraction: float) -> dict[str, Any]:
    """shards_trained, shards_target, shards_random under `out` (reused when the stamp matches)."""
    stamp_path = out / "ablation_corpus.json"
    stamp = {"version": CORPUS_VERSION, "scale": scale, "vae_steps": vae_steps, "target": target, "fraction": fraction}
    if stamp_path.exists():
        done = json.loads(stamp_path.read_text())
        if {k: done.get(k) for k in stamp} == stamp:
            return done
    t0 = time.perf_counter()
    build_corpus(out, scale, "local")
    print(f"[ablation] samples → ingest → flow: {time.perf_counter() - t0:.0f}s", flush=True)
    runner = make_runner("local")
    info: dict[str, Any] = dict(stamp)
    for name, steps in (("trained", vae_steps), ("random", 0)):
        t1 = time.perf_counter()
        cfg = pipeline_config(out, scale, steps, **{"vae.output": f"vae_{name}", "shards.output": f"shards_{name}"})
        with Catalog(cfg.catalog_path) as cat:
            run_vae_train(cfg, cat, progress=False)
            run_label(cfg, cat, runner, progress=False)
            run_shard(cfg, cat, runner, progress=False)
            if name == "trained":
                info["stage3"] = write_target_set(out / "shards_target", sample_rows(cat), cfg, target, fraction)
        print(f"[ablation] VAE ({name}, {steps} steps) → label → shard: {time.perf_counter() - t1:.0f}s", flush=True)
    stamp_path.write_text(json.dumps(info, indent=1))
    return info


# --- the arms -----------------------------------------------------------------------------------------------------

def train_configs(steps: int, stage3_steps: int, seed: int, eval_windows: int, eval_steps: int,
                  image: tuple[int, int], action_dim: int, target: str,
                  stage3_shares: dict[str, float]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(stage-2 YAML mapping, stage-3 YAML mapping) from configs/train_demo.yaml. Stage 2 keeps the config's mode
    curriculum, its switch steps scaled to the stage-2 length; stage 3 (and scratch) trains with `stage3_shares`,
    VLA-heavy by default because the VLA is what the ablation scores."""
    base = yaml.safe_load(TRAIN_CONFIG.read_text())
    base.update(seed=seed, checkpoint_every=10**6, log_every=20, threads=1, warmup_steps=20, eval_steps=eval_steps)
    base["loader"].update(height=image[0], width=image[1])
    s2 = copy.deepcopy(base)
    s2.update(stage=2, steps=steps - stage3_steps, eval_windows=0, eval_every=10**6)
    if base.get("mode_shares_schedule"):
        s2["mode_shares_schedule"] = {int(k * s2["steps"] / base["steps"]): v
                                      for k, v in base["mode_shares_schedule"].items()}
    s2["loader"]["tier_weights"] = dict(TIER_WEIGHTS)
    s3 = copy.deepcopy(base)
    s3.update(stage=3, steps=stage3_steps, eval_windows=eval_windows, eval_every=10**6, mode_shares_schedule=None)
    s3["model"]["mode_shares"] = dict(stage3_shares)
    s3["model"].update(action_dim=action_dim, state_dim=action_dim, action_time=1.0)
    # the few target episodes as one endless weighted stream: fewer clips than a batch is fine
    s3["loader"].update(windows_per_clip=1, source_weights={target: 1.0})
    return s2, s3


def run_training(cfg_map: dict[str, Any], shards: Path, out: Path, device: str) -> Any:
    from training_hooks.train import load_train_config, shard_batches, train

    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump({**cfg_map, "device": device}, sort_keys=False))
    cfg, loader = load_train_config(path)
    make_train, make_val = shard_batches(shards, loader, cfg, num_workers=0)
    return train(cfg, make_train, make_val, out, resume=True, progress=False)


def run_arm(arm: str, seed: int, args: argparse.Namespace, runs: Path, action_dim: int) -> dict[str, Any]:
    """Train one arm (resuming its runs) and return its record; an arm finished before (its `arm.json`, written
    last) is read back, so seeds can run in separate processes and one more call prints the whole table."""
    done_path = runs / f"{arm}_s{seed}" / "arm.json"
    if done_path.exists():
        return json.loads(done_path.read_text())
    s2, s3 = train_configs(args.steps, args.stage3_steps, seed, args.eval_windows, args.eval_steps,
                           tuple(args.image_size), action_dim, args.target, args.stage3_shares)
    t0 = time.perf_counter()
    record: dict[str, Any] = {"arm": arm, "seed": seed}
    if arm == "scratch":
        s3["steps"] = args.steps
    else:
        shards = args.out / ("shards_trained" if arm == "latent_pretrained" else "shards_random")
        stage2 = run_training(s2, shards, runs / f"{arm}_s{seed}" / "stage2", args.device)
        s3["init_from"] = str(stage2.checkpoint)
        record["stage2_mixture"] = stage2.mixture
        record["stage2_loss"] = stage2.last.get("loss")
    stage3 = run_training(s3, args.out / "shards_target", runs / f"{arm}_s{seed}" / "stage3", args.device)
    record.update(eval=stage3.eval, stage3_loss=stage3.last.get("loss"), wall_s=round(time.perf_counter() - t0, 1))
    atomic_write_text(done_path, json.dumps(record, indent=1, default=str))
    return record


FIGURES = (("VLA mean", "vla_mean_action_mse"), ("VLA 1x", "vla_action_mse"), ("IDM mean", "idm_mean_action_mse"),
           ("zero", "zero_action_mse"), ("emb mean", "embodiment_mean_action_mse"), ("hold state", "hold_state_action_mse"))


def summarise(records: list[dict[str, Any]]) -> list[str]:
    lines = [f"| arm | {' | '.join(label for label, _ in FIGURES)} | windows | seeds |",
             "|---|" + "---|" * (len(FIGURES) + 2)]
    scratch = [r["eval"].get("vla_mean_action_mse") for r in records if r["arm"] == "scratch"]
    for arm in ARMS:
        rs = [r for r in records if r["arm"] == arm]
        if not rs:
            continue
        cells = []
        for _, key in FIGURES:
            vals = [r["eval"][key] for r in rs if key in r["eval"]]
            cells.append(f"{np.mean(vals):.3f} ± {np.std(vals):.3f}" if vals else "—")
        lines.append(f"| {arm} | {' | '.join(cells)} | {rs[0]['eval'].get('samples', 0)} | {len(rs)} |")
    if scratch and all(v is not None for v in scratch):
        for arm in ARMS[:2]:
            vals = [r["eval"]["vla_mean_action_mse"] for r in records if r["arm"] == arm]
            if vals:
                lines.append(f"{arm}: VLA mean / scratch = {np.mean(vals) / np.mean(scratch):.3f}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=1, help="sample-pyramid scale (the demo's is 1)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=300, help="total training steps of every arm")
    ap.add_argument("--stage3-steps", type=int, default=100, help="of which stage 3 (the pretrained arms)")
    ap.add_argument("--vae-steps", type=int, default=600, help="steps of the trained VAE (the demo's 600)")
    ap.add_argument("--target", default="task_agnostic", help="the target robot's source")
    ap.add_argument("--fraction", type=float, default=0.1, help="share of the target's train episodes in stage 3")
    ap.add_argument("--eval-windows", type=int, default=64, help="held-out target windows per evaluation")
    ap.add_argument("--eval-steps", type=int, default=10, help="Euler steps of the one-sample figures")
    ap.add_argument("--image-size", type=int, nargs=2, default=[96, 80], metavar=("H", "W"),
                    help="loader canvas (the model pools to its 48×40 work size either way)")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--device", default="cpu", help="torch device for training (cpu | cuda)")
    ap.add_argument("--out", type=Path, default=None, help="corpus + runs (default bench_out/pretraining_ablation_s<scale>)")
    ap.add_argument("--stage3-shares", type=json.loads, default=dict(STAGE3_SHARES),
                    help='mode shares of stage 3 and of scratch, JSON (default %(default)s)')
    ap.add_argument("--corpus-only", action="store_true", help="build the shared corpus and stop")
    args = ap.parse_args()
    if not 0 < args.stage3_steps < args.steps:
        ap.error("--stage3-steps must be between 0 and --steps")
    args.out = (args.out or Path("bench_out") / f"pretraining_ablation_s{args.scale}").resolve()
    t0 = time.perf_counter()
    corpus = build_shards(args.out, args.scale, args.vae_steps, args.target, args.fraction)
    print(f"[ablation] corpus at {args.out} ready in {time.perf_counter() - t0:.0f}s: {corpus['stage3']}", flush=True)
    if args.corpus_only:
        return
    index = read_index(args.out / "shards_target", check_files=False)
    action_dim = max(len(s["q99"]) for s in index["stats"]["actions"].values())
    runs = args.out / f"runs_{args.steps}_{args.stage3_steps}"
    records = []
    for seed in args.seeds:
        for arm in args.arms:
            records.append(run_arm(arm, seed, args, runs, action_dim))
            ev = records[-1]["eval"]
            print(f"[ablation] {arm} seed {seed}: VLA mean {ev.get('vla_mean_action_mse', float('nan')):.4f} zero "
                  f"{ev.get('zero_action_mse', float('nan')):.4f} ({records[-1]['wall_s']:.0f}s)", flush=True)
    wall = time.perf_counter() - t0
    lines = [f"pretraining ablation: target {corpus['stage3']['target']} ({corpus['stage3']['train_items']} of "
             f"{corpus['stage3']['of_train']} train episodes in stage 3, {corpus['stage3']['held_out']} held out), "
             f"{args.steps} steps per arm (stage 2 {args.steps - args.stage3_steps} + stage 3 {args.stage3_steps}), "
             f"seeds {args.seeds}, held-out action MSE mean ± std; wall {wall:.0f}s"] + summarise(records)
    print("\n".join(lines))
    (args.out / "ablation.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                        "corpus": corpus, "table": lines, "runs": records}, indent=1))


if __name__ == "__main__":
    main()
