"""Ingest throughput: the Ray and Beam runners against a plain in-process loop over the same items, in one run.

Prints items/s for each and their throughput ratios to the local loop (<1 means the engine is slower). Beam's
time includes its pipeline start-up (DirectRunner worker processes), which cannot be measured apart.
The items are the sample pyramid's RoboTwin and task-agnostic episodes, copied `--copies` times so there is
enough work to amortise start-up. Ray start-up (`ray.init`) is reported separately from the stage time.

    .venv/bin/python bench/bench_ingest.py [--copies 8] [--scale 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from catalog import Catalog  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from pipelines.ingest import discover_tasks, INGEST  # noqa: E402
from pipelines.driver import run_stage  # noqa: E402
from pipelines.runners import make_runner  # noqa: E402


def make_items(root: Path, copies: int, scale: int) -> None:
    from samples.sim_robotwin import write_robotwin
    from samples.sim_task_agnostic import write_task_agnostic

    ta = root / "samples" / "task_agnostic" / "aloha_random"
    write_task_agnostic(ta, n_episodes=4 * scale, n_frames=75, seed=0)
    rt = root / "samples" / "robotwin"
    write_robotwin(rt, n_episodes=2 * scale, seed=0)
    episodes = sorted((ta / "episodes").iterdir())
    hdf5s = sorted(rt.glob("*/*/data/episode*.hdf5"))
    for c in range(1, copies):
        for ep in episodes:
            shutil.copytree(ep, ep.with_name(f"{ep.name}_copy{c}"))
        for f in hdf5s:
            shutil.copyfile(f, f.with_name(f"episode{1000 * c + int(f.stem[7:])}.hdf5"))


def timed_ingest(root: Path, engine: str) -> tuple[int, float, float]:
    cfg = load_config(None, workdir=str(root), **{"runner.engine": engine})
    cfg.sources = [s for s in cfg.sources if s.kind in ("robotwin", "task_agnostic")]
    errors: dict[str, str] = {}
    tasks = list(discover_tasks(cfg, errors=errors))
    assert not errors, errors
    runner = make_runner(engine)
    t0 = time.perf_counter()
    if engine == "ray":
        runner._ensure_started()  # start-up measured apart from throughput
    startup = time.perf_counter() - t0
    with Catalog(root / f"bench-{engine}.duckdb") as cat:
        t0 = time.perf_counter()
        report = run_stage(INGEST, tasks, cat, runner, f"bench-{engine}", force=True, progress=False)
        wall = time.perf_counter() - t0
    runner.close()
    assert report.counts["done"] == len(tasks), report.reasons
    return len(tasks), wall, startup


def per_source_rates(scale: int) -> dict[str, tuple[int, float]]:
    """items and items/s per source, local loop, over the whole sample pyramid."""
    from samples.pyramid import generate_sample_pyramid

    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-src-") as tmp:
        root = Path(tmp)
        generate_sample_pyramid(root / "samples", scale=scale, defects=False)
        base = load_config(None, workdir=str(root), **{"runner.engine": "local"})
        for sc in base.sources:
            cfg = load_config(None, workdir=str(root), **{"runner.engine": "local"})
            cfg.sources = [sc]
            errors: dict[str, str] = {}
            tasks = list(discover_tasks(cfg, errors=errors))
            if errors:
                continue
            with Catalog(root / f"bench-{sc.kind}.duckdb") as cat:
                t0 = time.perf_counter()
                run_stage(INGEST, tasks, cat, make_runner("local"), f"bench-{sc.kind}", force=True, progress=False)
                out[sc.kind] = (len(tasks), len(tasks) / (time.perf_counter() - t0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--scale", type=int, default=1)
    ap.add_argument("--no-per-source", action="store_true", help="skip the per-source rates")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        root = Path(tmp)
        make_items(root, args.copies, args.scale)
        n, local_wall, _ = timed_ingest(root, "local")
        _, ray_wall, ray_startup = timed_ingest(root, "ray")
        _, beam_wall, _ = timed_ingest(root, "beam")
    local_rate, ray_rate, beam_rate = n / local_wall, n / ray_wall, n / beam_wall
    print(f"items: {n} (cores: {os.cpu_count()})")
    print(f"local loop : {local_rate:7.2f} items/s ({local_wall:.2f}s)")
    print(f"ray runner : {ray_rate:7.2f} items/s ({ray_wall:.2f}s, plus {ray_startup:.2f}s ray.init)")
    print(f"beam runner: {beam_rate:7.2f} items/s ({beam_wall:.2f}s, pipeline start-up included)")
    print(f"ray/local throughput ratio: {ray_rate / local_rate:.2f}  (with start-up: {n / (ray_wall + ray_startup) / local_rate:.2f})")
    print(f"beam/local throughput ratio: {beam_rate / local_rate:.2f}")
    if not args.no_per_source:
        print("per source (local loop, sample pyramid):")
        for kind, (n, rate) in per_source_rates(args.scale).items():
            print(f"  {kind:14s} {n:4d} items  {rate:8.1f} items/s")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
