"""VAE throughput in one run: training samples/s and labelling pairs/s, against the DIS flow stage's pairs/s
measured on the same items (labelling must not be slower than the flow stage that feeds it).

All three run in-process with the local runner, one worker, so the ratios compare like with like.

    .venv/bin/python bench/bench_vae.py [--episodes 6] [--steps 40]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from catalog import Catalog  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from pipelines.flow import run_flow  # noqa: E402
from pipelines.ingest import ingest  # noqa: E402
from pipelines.label import run_label  # noqa: E402
from pipelines.runners import make_runner  # noqa: E402
from jobs.vae import run_vae_train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=6)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    from samples.sim_task_agnostic import write_task_agnostic

    with tempfile.TemporaryDirectory(prefix="bench-vae-") as tmp:
        root = Path(tmp)
        write_task_agnostic(root / "samples" / "task_agnostic" / "aloha_random", args.episodes, n_frames=75, seed=0)
        cfg = load_config(None, workdir=str(root), **{"runner.engine": "local", "vae.steps": args.steps,
                                                     "splits.train": 1.0, "splits.val": 0.0, "splits.test": 0.0})
        cfg.sources = [s for s in cfg.sources if s.kind == "task_agnostic"]
        runner = make_runner("local")
        with Catalog(cfg.catalog_path) as cat:
            ingest(cfg, cat, runner, progress=False)
            t0 = time.perf_counter()
            flow = run_flow(cfg, cat, runner, progress=False)
            flow_s = time.perf_counter() - t0
            pairs = int(sum(r["pairs"] for r in flow.per_source))
            train = run_vae_train(cfg, cat, progress=False)
            t0 = time.perf_counter()
            run_label(cfg, cat, runner, progress=False)
            label_s = time.perf_counter() - t0
    flow_rate, label_rate = pairs / flow_s, pairs / label_s
    print(f"items: {args.episodes} task-agnostic episodes, {pairs} flow pairs, 1 worker, torch threads: training "
          f"{cfg.vae.threads}, labelling {cfg.runner.torch_threads}")
    print(f"flow stage (DIS {cfg.flow.dis_preset}) : {flow_rate:8.1f} pairs/s")
    print(f"vae training               : {train.samples_per_s:8.1f} samples/s ({args.steps} steps of {cfg.vae.batch_size})")
    print(f"labelling                  : {label_rate:8.1f} pairs/s")
    print(f"labelling / flow stage     : {label_rate / flow_rate:8.2f}x (must be >= 1)")


if __name__ == "__main__":
    main()
