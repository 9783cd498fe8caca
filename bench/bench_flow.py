"""Flow: can the stage keep up with decoding, and what does a reduced flow size cost in accuracy? One thread.

    .venv/bin/python bench/bench_flow.py [--scale 1] [--repeats 1] [--pairs 40] [--dpflow]

1. Backends: pairs/s at the working size (384×320) on rendered frames, as ratios to DIS "fast" (`--dpflow` adds
   DPFlow on CPU with random weights: speed only; production DPFlow runs on a GPU).
2. The stage on real footage (the sample pyramid's SSv2 and Ego4D clips, `--scale` as `pyramid samples`): two
   decode-only bounds, no flow: frames onto the 384×320 canvas (`iter_frames`, what the stage streamed before
   2026-12), and raw decoding (RGB frames at the source size, no canvas: the stage since places each decoded
   frame straight at the flow size, so this is the strict bound); then the flow stage's throughput
   (`compute_item_flow`: decode, flow, statistics, the artifact) per DIS preset at the canvas and at 192×160
   (the default), then DIS knobs over a preset (fs finest scale, st patch stride, gd gradient-descent and vr
   variational-refinement iterations) at 192×160, 128×106 and 96×80, as ratios to both bounds (`--only REGEX`
   runs the rows it matches). Throughput counts CPU seconds of this process (decoder
   threads included, min over `--repeats`), so other load on the machine does not skew the ratios.
3. Accuracy of the STORED flow (96×80, canvas pixels): EPE of every setting against the same preset at the canvas
   and against medium at the canvas (the default before `flow_size`), with the reference's mean |flow| beside it;
   and on rendered task-agnostic episodes, EPE against exact sim flow (`flow_extraction/sim_flow.py`) over pixels
   valid in both, beside zero flow's.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402

from common.torch_compat import set_worker_threads  # noqa: E402
from flow_extraction.artifacts import read_flow_artifact  # noqa: E402
from flow_extraction.base import end_point_error  # noqa: E402
from flow_extraction.config import FlowConfig  # noqa: E402
from flow_extraction.dis import DISBackend  # noqa: E402
from flow_extraction.frames import _open_media, _start_s, iter_frames  # noqa: E402
from flow_extraction.sim_flow import SimFlowBackend  # noqa: E402

REDUCED = [192, 160]  # H, W: twice the 96×80 store, and above the VAE's 64² input
SETTINGS = {f"{p} @{'x'.join(map(str, hw))}": {"dis_preset": p, "flow_size": hw}
            for hw in ([384, 320], REDUCED) for p in ("medium", "fast", "ultrafast")}
KNOB_NAMES = {"fs": "dis_finest_scale", "ps": "dis_patch_size", "st": "dis_patch_stride",
              "gd": "dis_gradient_descent_iterations", "vr": "dis_refinement_iterations"}


def setting(preset: str, hw: list[int], **knobs: int) -> tuple[str, dict]:
    """A row: a preset with DIS knobs over it (short names: fs, ps, st, gd, vr) at a flow size."""
    name = " ".join([preset, *(f"{k}{v}" for k, v in knobs.items())]) + f" @{hw[0]}x{hw[1]}"
    return name, {"dis_preset": preset, "flow_size": hw, **{KNOB_NAMES[k]: v for k, v in knobs.items()}}


SETTINGS.update(dict([  # tuned DIS knobs and flow sizes between the store (96×80) and 192×160
    setting("medium", REDUCED, vr=0),
    setting("fast", REDUCED, fs=1, vr=0),
    setting("medium", [128, 106]),
    setting("medium", [128, 106], vr=2),
    setting("medium", [128, 106], gd=12),
    setting("medium", [128, 106], vr=0),  # the default since 2026-12
    setting("medium", [96, 80]),
    setting("medium", [96, 80], vr=0),
]))
BEFORE = "medium @384x320"
MOVING_PX = 1.0  # exact sim flow above this counts as a moving pixel


def timed(fn, n_pairs: int) -> float:
    fn()  # warm-up (model build, first-size allocations)
    t0 = time.perf_counter()
    fn()
    return n_pairs / (time.perf_counter() - t0)


def backend_rates(n_pairs: int, dpflow: bool, root: Path) -> None:
    from samples.sim_task_agnostic import DEFAULT_CAMERAS, write_task_agnostic

    main_view = DEFAULT_CAMERAS[0]
    [ep] = write_task_agnostic(root / "ta_backends", n_episodes=1, n_frames=n_pairs + 5, seed=0, workers=1)
    row = {"item_id": "bench/0", "media_uris": [str(ep / f"rgb_{main_view}.mp4")], "fps": 25.0,
           "frame_count": n_pairs + 5, "start_s": 0.0}
    frames = np.stack([f for _, f, _ in iter_frames(row, (384, 320))])
    first, second = frames[:n_pairs], frames[5 : n_pairs + 5]
    pairs = np.stack([np.arange(n_pairs), np.arange(n_pairs) + 5], 1)
    rates = {}
    for preset in ("ultrafast", "fast", "medium"):
        dis = DISBackend(preset)
        rates[f"dis/{preset}"] = timed(lambda: dis.compute(first, second), n_pairs)
    sim = SimFlowBackend()
    rates["sim (exact, 240x320 native)"] = timed(lambda: sim.compute_item(str(ep / "sim.h5"), main_view, pairs), n_pairs)
    if dpflow:
        from flow_extraction.dpflow import DPFlowBackend

        dp = DPFlowBackend(None, allow_random=True, batch_size=1)
        n = min(n_pairs, 4)
        rates["dpflow (cpu, fp32)"] = timed(lambda: dp.compute(first[:n], second[:n]), n)
    base = rates["dis/fast"]
    print(f"1. backends: {n_pairs} pairs at 384x320, 1 thread")
    for name, rate in rates.items():
        print(f"   {name:30s} {rate:9.1f} pairs/s   x{rate / base:6.2f} vs dis/fast")


def catalog_rows(workdir: Path, sources: list[dict]) -> list[dict]:
    from catalog import Catalog
    from pipelines.config import load_config
    from pipelines.ingest import ingest
    from pipelines.runners import make_runner

    cfg = load_config(None, workdir=str(workdir), **{"runner.engine": "local", "sources": sources})
    with Catalog(cfg.catalog_path) as cat:
        ingest(cfg, cat, make_runner("local"), progress=False)
        return cat.items().to_pylist()


def cpu_seconds(fn, repeats: int) -> float:
    best = np.inf
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def run_stage(rows: list[dict], fc: FlowConfig, out: Path) -> None:
    from pipelines.flow import compute_item_flow, make_backends

    backends = make_backends(dataclasses.asdict(fc))
    for i, row in enumerate(rows):
        compute_item_flow({"row": row, "flow": dataclasses.asdict(fc), "out_path": str(out / f"{i}.flow.npz")},
                          backends)


def stored(out: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    arts = [read_flow_artifact(out / f"{i}.flow.npz") for i in range(n)]
    return (np.concatenate([a.flow.astype(np.float32) for a in arts]), np.concatenate([a.valid for a in arts]))


def stage_vs_decode(rows: list[dict], sim_rows: list[dict], repeats: int, root: Path, only: str | None = None) -> None:
    import re

    settings = {k: v for k, v in SETTINGS.items() if k == BEFORE or not only or re.search(only, k)}
    n_frames = sum(int(r["frame_count"]) for r in rows)

    def decode_canvas() -> None:
        for row in rows:
            for _ in iter_frames(row, (384, 320)):
                pass

    def decode_raw() -> None:
        for row in rows:
            frames = _open_media(row["media_uris"][0], _start_s(row, 0), 0.5 / float(row["fps"]))
            for _, _ in zip(range(int(row["frame_count"])), frames):
                pass

    bound = n_frames / cpu_seconds(decode_canvas, repeats)
    raw = n_frames / cpu_seconds(decode_raw, repeats)
    print(f"\n2. the flow stage on {len(rows)} real-footage items ({n_frames} frames), 1 thread, CPU time")
    print(f"   decode-only (frames onto the 384x320 canvas) {bound:8.0f} frames/s   x1.000   "
          f"(raw decoding, no canvas: {raw:.0f} frames/s)")
    results = {}
    for name, overrides in settings.items():
        fc = FlowConfig(store_frames=True, **{**dict.fromkeys(KNOB_NAMES.values()), **overrides})
        real_out, sim_out = root / "real" / name.replace(" ", ""), root / "sim" / name.replace(" ", "")
        real_out.mkdir(parents=True)
        sim_out.mkdir(parents=True)
        rate = n_frames / cpu_seconds(lambda: run_stage(rows, fc, real_out), repeats)
        run_stage(sim_rows, fc, sim_out)
        results[name] = (rate, stored(real_out, len(rows)), stored(sim_out, len(sim_rows)))
        print(f"   flow stage, {name:26s} {rate:8.0f} frames/s   x{rate / bound:.3f} of canvas decoding   "
              f"x{rate / raw:.3f} of raw decoding")
    exact_out = root / "sim" / "exact"
    exact_out.mkdir(parents=True)
    run_stage(sim_rows, FlowConfig(sim_for_sim_tiers=True), exact_out)
    exact, exact_valid = stored(exact_out, len(sim_rows))
    moving = exact_valid & (np.sqrt((exact ** 2).sum(1)) > MOVING_PX)

    _, (ref, ref_valid), _ = results[BEFORE]
    print(f"\n3. EPE of the stored flow (96x80, canvas px); real footage: mean |flow| of {BEFORE} "
          f"{end_point_error(0 * ref, ref, ref_valid):.2f} px; rendered: {len(exact)} pairs of exact sim flow, "
          f"zero flow's EPE {end_point_error(0 * exact, exact, exact_valid):.3f} px "
          f"({end_point_error(0 * exact, exact, moving):.2f} px where "
          f"exact |flow| > {MOVING_PX} px, {moving.sum() / exact_valid.sum():.1%} of valid pixels)")
    print(f"   {'setting':26s} {'vs same preset @384x320':>24s} {'vs ' + BEFORE:>22s} {'vs exact sim flow':>18s} "
          f"{'(moving pixels)':>16s}")
    for name, (_, (flow, valid), (sflow, svalid)) in results.items():
        full_name = SETTINGS[name]["dis_preset"] + " @384x320"  # the same preset, no knobs, at the canvas
        vs_full = np.nan
        if full_name in results:
            _, (full, full_valid), _ = results[full_name]
            vs_full = end_point_error(flow, full, valid & full_valid)
        vs_before = end_point_error(flow, ref, valid & ref_valid)
        vs_exact = end_point_error(sflow, exact, svalid & exact_valid)
        vs_moving = end_point_error(sflow, exact, svalid & moving)
        print(f"   {name:26s} {vs_full:24.3f} {vs_before:22.3f} {vs_exact:18.3f} {vs_moving:16.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=40)
    ap.add_argument("--scale", type=int, default=1, help="sample pyramid scale of the real-footage items")
    ap.add_argument("--sim-episodes", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--dpflow", action="store_true")
    ap.add_argument("--only", help="regex: run only the stage rows it matches (and the full-size medium baseline)")
    args = ap.parse_args()
    set_worker_threads(1)
    import cv2

    cv2.setNumThreads(1)
    from samples.real_clips import write_ego4d, write_ssv2
    from samples.sim_task_agnostic import write_task_agnostic

    with tempfile.TemporaryDirectory(prefix="bench-flow-") as tmp:
        root = Path(tmp)
        if not args.only:
            backend_rates(args.pairs, args.dpflow, root)
        write_ssv2(root / "samples" / "ssv2", 8 * args.scale, seed=0)
        write_ego4d(root / "samples" / "ego4d", 2 * args.scale, seed=0)
        write_task_agnostic(root / "samples" / "ta", args.sim_episodes, n_frames=45, seed=1, workers=1)
        rows = catalog_rows(root / "real", [
            {"kind": "ssv2", "root": str(root / "samples" / "ssv2")},
            {"kind": "ego4d", "root": str(root / "samples" / "ego4d"), "options": {"before_s": 1.0, "after_s": 3.0}},
            {"kind": "ego4d", "root": str(root / "samples" / "ego4d"), "options": {"clips": "fho"}}])
        sim_rows = catalog_rows(root / "simwd", [{"kind": "task_agnostic", "root": str(root / "samples" / "ta")}])
        stage_vs_decode(rows, sim_rows, args.repeats, root / "out", args.only)


if __name__ == "__main__":
    main()
