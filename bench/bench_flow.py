"""Flow backends: pairs/s at the working size (384×320) on real generated frames, as ratios to DIS "fast"
measured in the same run, with one thread per process as the pipeline runs them.

    .venv/bin/python bench/bench_flow.py [--pairs 40] [--dpflow]

`--dpflow` adds DPFlow on CPU with random weights (speed only; weights do not change the cost): CPU DPFlow is
for tests, production flow runs it on a GPU.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402

from flow_extraction.dis import DISBackend  # noqa: E402
from flow_extraction.frames import iter_frames  # noqa: E402
from flow_extraction.sim_flow import SimFlowBackend  # noqa: E402
from common.torch_compat import set_worker_threads  # noqa: E402


def timed(fn, n_pairs: int) -> float:
    fn()  # warm-up (model build, first-size allocations)
    t0 = time.perf_counter()
    fn()
    return n_pairs / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=40)
    ap.add_argument("--dpflow", action="store_true")
    args = ap.parse_args()
    set_worker_threads(1)
    from pipelines.samples.sim_task_agnostic import write_task_agnostic

    with tempfile.TemporaryDirectory(prefix="bench-flow-") as tmp:
        root = Path(tmp) / "ta"
        [ep] = write_task_agnostic(root, n_episodes=1, n_frames=args.pairs + 5, seed=0, workers=1)
        row = {"item_id": "bench/0", "media_uris": [str(ep / "rgb_front.mp4")], "fps": 25.0,
               "frame_count": args.pairs + 5, "start_s": 0.0}
        frames = np.stack([f for _, f, _ in iter_frames(row, (384, 320))])
        first, second = frames[: args.pairs], frames[5 : args.pairs + 5]
        pairs = np.stack([np.arange(args.pairs), np.arange(args.pairs) + 5], 1)
        rates = {}
        for preset in ("ultrafast", "fast", "medium"):
            dis = DISBackend(preset)
            rates[f"dis/{preset}"] = timed(lambda: dis.compute(first, second), args.pairs)
        sim = SimFlowBackend()
        rates["sim (exact, 240x320 native)"] = timed(lambda: sim.compute_item(str(ep / "sim.h5"), "top", pairs), args.pairs)
        if args.dpflow:
            from flow_extraction.dpflow import DPFlowBackend

            dp = DPFlowBackend(None, allow_random=True, batch_size=1)
            n = min(args.pairs, 4)
            rates["dpflow (cpu, fp32)"] = timed(lambda: dp.compute(first[:n], second[:n]), n)
    base = rates["dis/fast"]
    print(f"pairs: {args.pairs} at 384x320, 1 thread")
    for name, rate in rates.items():
        print(f"{name:30s} {rate:9.1f} pairs/s   x{rate / base:6.2f} vs dis/fast")


if __name__ == "__main__":
    main()
