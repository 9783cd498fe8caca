"""Crash trials at scale: `--trials N` kills of the pipeline's stages (ingest, flow, vae train, label, shard,
train) at seeded random moments, each rerun and checked (`tests/crash_trials.py`: the reference run, the kill, the
invariants, the comparison with an uninterrupted run). Prints the table (trial, stage, kill time, state after the
kill, rerun ok, identical, broken invariants) and a JSON summary.

    .venv/bin/python bench/chaos.py --trials 24 [--seed 0] [--stages ingest flow ...] [--out bench_out/chaos]

Stages are taken in turn; each is killed a seeded random time into its work: uniform in [0.05, 0.95] of the
span from the moment it started working (its progress file, or the trainers' metrics.csv, appeared: imports and
setup done) to its end in the uninterrupted run. Each trial works in its own copy of the workdir in another
folder, so outputs that depend on the workdir's path count as not identical.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from tests.crash_trials import HEADER, STAGES, Reference, summary  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--out", type=Path, default=None, help="keep the workdirs here (default: a temp dir, removed)")
    args = ap.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="chaos"))
    if args.out:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
    t0 = time.perf_counter()
    try:
        ref = Reference(root)
        walls = ", ".join(f"{s} {w:.1f}s" for s, w in ref.durations.items())
        print(f"uninterrupted reference: {walls}", flush=True)
        rng = random.Random(args.seed)
        print(HEADER, flush=True)
        trials = []
        for n in range(args.trials):
            trial = ref.trial(n, args.stages[n % len(args.stages)], rng)
            trials.append(trial)
            print(trial.row(), flush=True)
        print(summary(trials))
        print(f"wall {time.perf_counter() - t0:.0f}s")
    finally:
        if not args.out:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
