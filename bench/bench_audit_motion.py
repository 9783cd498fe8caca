"""Speed of the audit's metadata-level checks per 1,000 episodes, against a baseline measured in the same run: one
vectorised pass over the same actions (per-dim range and step percentiles, what any check must at least read).

- motion checks (audit/checks/motion.py) on ALOHA-shaped random walks in memory: the checks' own cost, not I/O;
- dataset, language and state checks (audit/checks/dataset.py, language.py, state.py) on a LeRobot v3.0 dataset
  written to a temporary folder (one data parquet, the episodes parquet with per-episode stats, one small mp4 per
  camera whose header is read and packets demuxed, 4 frames each): reading its files included.

    .venv/bin/python bench/bench_audit_motion.py [--episodes 1000] [--steps 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.checks import dataset, language, motion, state  # noqa: E402
from audit.config import AuditConfig  # noqa: E402
from audit.lerobot_tables import read_tables  # noqa: E402

ALOHA = ["absolute:joint"] * 6 + ["absolute:gripper"] + ["absolute:joint"] * 6 + ["absolute:gripper"]
RULES = (motion.idle, motion.frozen, motion.jumps, motion.chatter, motion.saturated)
DATASET_RULES = (dataset.monotonic, dataset.spacing, dataset.drift, dataset.frame_indices, dataset.global_index,
                 dataset.task_indices, dataset.info_matches, dataset.orphans, dataset.stale_stats, dataset.bad_files,
                 dataset.camera_lengths, dataset.camera_rates, dataset.pts_drift, language.single_instruction, state.dead,
                 state.delays)
CAMERAS = ("observation.images.cam_high", "observation.images.cam_left_wrist")
FPS = 30


def write_v3(root: Path, data: list[np.ndarray]) -> Path:
    """A LeRobot v3.0 dataset of these action episodes (state = action one step later), as lerobot lays it out."""
    vec = pa.list_(pa.float32())
    lengths = [len(a) for a in data]
    starts = np.cumsum([0] + lengths[:-1])
    acts = np.concatenate(data)
    states = np.concatenate([np.vstack([a[:1], a[:-1]]) for a in data])
    ep_index = np.repeat(np.arange(len(data)), lengths)
    frame = np.concatenate([np.arange(n) for n in lengths])
    (root / "data/chunk-000").mkdir(parents=True)
    pq.write_table(pa.table({"action": pa.array(list(acts), vec), "observation.state": pa.array(list(states), vec),
                             "timestamp": pa.array((frame / FPS).astype(np.float32)), "frame_index": frame,
                             "episode_index": ep_index, "index": np.arange(len(acts)),
                             "task_index": ep_index % 3}), root / "data/chunk-000/file-000.parquet")
    episodes = {"episode_index": np.arange(len(data)), "length": lengths,
                "tasks": [[f"task {i % 3}"] for i in range(len(data))],
                "data/chunk_index": np.zeros(len(data), int), "data/file_index": np.zeros(len(data), int)}
    for cam in CAMERAS:
        episodes.update({f"videos/{cam}/chunk_index": np.zeros(len(data), int),
                         f"videos/{cam}/file_index": np.zeros(len(data), int),
                         f"videos/{cam}/from_timestamp": starts / FPS,
                         f"videos/{cam}/to_timestamp": (starts + lengths) / FPS})
        video = root / f"videos/{cam}/chunk-000/file-000.mp4"
        video.parent.mkdir(parents=True)
        with av.open(str(video), "w", format="mp4") as out:
            stream = out.add_stream("libx264", rate=Fraction(FPS))
            stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
            for i in range(4):
                f = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, np.uint8), format="rgb24")
                f.pts, f.time_base = i, Fraction(1, FPS)
                out.mux(stream.encode(f))
            out.mux(stream.encode(None))
    for key, values in (("action", data), ("observation.state", [np.vstack([a[:1], a[:-1]]) for a in data])):
        for stat, fn in (("min", np.min), ("max", np.max), ("mean", np.mean), ("std", np.std)):
            episodes[f"stats/{key}/{stat}"] = [fn(v.astype(np.float64), axis=0).tolist() for v in values]
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.table(episodes), root / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(pa.table({"task_index": [0, 1, 2], "task": [f"task {i}" for i in range(3)]}),
                   root / "meta/tasks.parquet")
    features = {"action": {"dtype": "float32", "shape": [14]}, "observation.state": {"dtype": "float32", "shape": [14]},
                **{c: {"dtype": "video", "shape": [32, 32, 3], "info": {"video.fps": FPS}} for c in CAMERAS},
                **{c: {"dtype": "int64", "shape": [1]} for c in ("frame_index", "episode_index", "index", "task_index")},
                "timestamp": {"dtype": "float32", "shape": [1]}}
    (root / "meta/info.json").write_text(json.dumps({
        "codebase_version": "v3.0", "fps": FPS, "total_episodes": len(data), "total_frames": int(sum(lengths)),
        "total_tasks": 3, "features": features}))
    return root


def episodes(n: int, steps: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.normal(0, 0.05, (steps, 14)).cumsum(0) + rng.uniform(-0.5, 0.5, 14)).astype(np.float32)
            for _ in range(n)]


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    data = episodes(args.episodes, args.steps)
    s = AuditConfig()

    def baseline() -> None:
        for a in data:
            np.ptp(a, axis=0)
            np.percentile(np.abs(np.diff(a, axis=0)), 95, axis=0)

    group: list[motion.Motion] = []

    def read() -> None:
        group[:] = [motion.Motion.of(f"ep/{i}", a, ALOHA, 30.0) for i, a in enumerate(data)]

    base = best_of(args.repeats, baseline)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_v3(Path(tmp) / "bench_v3", data)
        t_tables = best_of(args.repeats, lambda: read_tables(root))
        tables = read_tables(root)
        per_dataset_rule = {rule.__name__: best_of(args.repeats, lambda rule=rule: rule(tables, s))
                            for rule in DATASET_RULES}
        found = {rule.__name__: rule(tables, s) for rule in DATASET_RULES}
    assert not any(found[k] for k in found if k != "delays") and not found["delays"][0], found
    t_read = best_of(args.repeats, read)
    per_rule = {rule.__name__: best_of(args.repeats, lambda rule=rule: rule(group, s)) for rule in RULES}
    total = t_read + sum(per_rule.values())
    scale = 1000 / args.episodes
    print(f"motion checks, {args.episodes} episodes × {args.steps} steps × 14 dims (best of {args.repeats})")
    print(f"{'part':<16}{'s / 1,000 episodes':>20}{'× baseline':>12}")
    for name, t in [("baseline", base), ("read", t_read), *per_rule.items(), ("all five", total)]:
        print(f"{name:<16}{t * scale:>20.3f}{t / base:>12.1f}")
    dataset_total = t_tables + sum(per_dataset_rule.values())
    print(f"dataset, language and state checks on a LeRobot v3.0 dataset of the same episodes on disk")
    for name, t in [("read files", t_tables), *per_dataset_rule.items(), (f"all {len(DATASET_RULES)}", dataset_total),
                    ("motion+dataset", total + dataset_total)]:
        print(f"{name:<16}{t * scale:>20.3f}{t / base:>12.1f}")


if __name__ == "__main__":
    main()
