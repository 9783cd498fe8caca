"""Pooled-flow probe ceiling of the OXE sample on held-out episodes: frames borrowed from a task-agnostic clip (the
sample before issue 21 item 5) against frames rendered from the arm the actions drive (today's), one run.

Both corpora (fractal20220817_data layout, 3 Hz) are written fresh with a seed the demo does not use, read through
the OXE adapter, and get DIS flow of the main camera from the flow stage's own function on the working canvas
(Δ = 0.2 s: one step at 3 Hz). Each pair becomes 8×8 average-pooled flow (128 features); the ridge probe of
bench_task_agnostic_ceiling.py (alpha per dim by grouped 4-fold CV on train episodes) predicts the action over the
pair from manifests/actions.py (`pair_action`: Σ a[t1:t2] for these per-step deltas); R² on held-out episodes
(every third). The borrowed frames come from one task-agnostic episode generated here.

    PYTHONPATH=. .venv/bin/python bench/bench_oxe_ceiling.py [--episodes 24]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ["OMP_NUM_THREADS"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from bench_task_agnostic_ceiling import pooled, probe  # noqa: E402
from flow_extraction.artifacts import read_flow_artifact  # noqa: E402
from manifests.actions import pair_action  # noqa: E402
from flow_extraction.config import FlowConfig  # noqa: E402
from pipelines.flow import compute_item_flow, make_backends  # noqa: E402
from sources.oxe import OXESource  # noqa: E402

DATASET = "fractal20220817_data"


def features(root: Path, work: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Pooled flow [N, 128], the action over each pair [N, 7] and episode groups [N] of every episode."""
    fc = FlowConfig(backend="dis")
    backends = make_backends(dataclasses.asdict(fc))
    src = OXESource(root)
    xs, ys, gs, names = [], [], [], []
    for g, ref in enumerate(sorted(src.discover(), key=lambda r: r.native_id)):
        row = src.probe(ref).row()
        out = work / f"{g}.npz"
        compute_item_flow({"row": row, "flow": dataclasses.asdict(fc), "out_path": str(out)}, backends)
        art = read_flow_artifact(out)
        pairs = art.pairs.astype(np.int64)
        xs.append(pooled(art.flow))
        ys.append(pair_action(OXESource.load_actions(row), row["action_semantics"], pairs, row["fps"],
                              row["action_timing"]))
        gs.append(np.full(len(pairs), g))
        names = row["action_names"]
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(gs), names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=24)
    ap.add_argument("--seed", type=int, default=100)  # not the demo's seed
    args = ap.parse_args()

    from samples.oxe_rlds import write_oxe
    from samples.pyramid import _first_episode_video
    from samples.sim_task_agnostic import write_task_agnostic

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-oxe-ceiling-") as tmp:
        base = Path(tmp)
        write_task_agnostic(base / "task_agnostic" / "aloha_random", 1, n_frames=75, seed=args.seed)
        for name, frames_from in (("before", _first_episode_video(base)), ("after", None)):
            t0 = time.perf_counter()
            write_oxe(base / name, args.episodes, seed=args.seed, dataset=DATASET, frames_from=frames_from)
            gen_s = time.perf_counter() - t0
            (base / f"flow-{name}").mkdir()
            x, y, g, names = features(base / name, base / f"flow-{name}")
            results[name] = (probe(x, y, g, g % 3 == 2), gen_s)
    ev = results["after"][0]
    print(f"OXE ({DATASET}) probe ceiling: {args.episodes} new episodes (seed {args.seed}), {ev['n_train']} train / "
          f"{ev['n_test']} held-out pairs, DIS flow of the main view at the flow stage's canvas, 8×8 avg-pooled → "
          "ridge → the action over the pair (Σ world_vector, ...)")
    print(f"{'':24s} {'before (borrowed frames)':>26s} {'after (sim)':>14s}")
    for name, (r, gen_s) in results.items():
        print(f"  {name:6s}: generation {gen_s:.1f}s, held-out R² per-dim mean {r['mean']:.3f}, overall "
              f"{r['overall']:.3f} (train {r['train_mean']:.2f}, alpha {r['alpha']})")
    print("per dim (held-out R²):       before   after")
    for i, n in enumerate(names):
        print(f"  {n:26s} {results['before'][0]['per_dim'][i]:7.3f} {results['after'][0]['per_dim'][i]:7.3f}")


if __name__ == "__main__":
    main()
