"""Speed of the audit's media pass (audit/media.py: every frame of an item decoded once, the facts the black, frozen,
duplicate, stutter and concealed-error checks read) in items/s: on the engine's workers (Ray actors, Beam's
DirectRunner processes) with 1 and 2 workers, against the in-driver loop (one item after another in the audit's own
process) measured in the same run on the same clips.

Clips: H.264 mp4s written with PyAV (a moving square on a textured background), `--frames` frames of 120x160.
Worker start-up (actors, Beam's pipeline) is inside the timed call, Ray's own `ray.init` is not (the pipeline's
stages share one Ray instance per job).

    .venv/bin/python bench/bench_audit_media.py [--items 48] [--frames 90] [--engines ray,beam]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.config import AuditConfig  # noqa: E402
from audit.media import MEDIA_STAGE, MediaFacts, run_media_stage  # noqa: E402
from pipelines.runners import make_runner  # noqa: E402
from samples.defects import write_h264_ticks  # noqa: E402

FPS = 30


def write_clips(root: Path, n_items: int, n_frames: int) -> list[dict]:
    rng = np.random.default_rng(0)
    background = rng.integers(30, 90, (120, 160, 3)).astype(np.uint8)
    rows = []
    for i in range(n_items):
        frames = np.repeat(background[None], n_frames, axis=0)
        for t in range(n_frames):
            x = (3 * t + 7 * i) % 130
            frames[t, 40:70, x:x + 30] = (240, 200, 40)
        path = root / f"clip_{i:04d}.mp4"
        write_h264_ticks(path, frames, FPS, 10 * np.arange(n_frames), 10)
        rows.append({"item_id": f"bench/clip_{i:04d}", "media_uris": [str(path)], "fps": FPS,
                     "frame_count": n_frames, "extras": None, "start_s": 0.0})
    return rows


def timed(rows, settings, runner=None) -> tuple[float, dict]:
    t0 = time.perf_counter()
    facts = run_media_stage(rows, settings, 0, runner)
    seconds = time.perf_counter() - t0
    bad = [k for k, v in facts.items() if not isinstance(v, MediaFacts)]
    if bad:
        raise SystemExit(f"{len(bad)} items failed, e.g. {bad[0]}: {facts[bad[0]]}")
    return seconds, facts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=48)
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--engines", default="ray,beam")
    args = ap.parse_args()
    settings = AuditConfig()
    with tempfile.TemporaryDirectory() as tmp:
        rows = write_clips(Path(tmp), args.items, args.frames)
        timed(rows[:2], settings)  # warm the codecs and imports
        base_s, base = timed(rows, settings)
        print(f"{args.items} items x {args.frames} frames (120x160 H.264); media stage batch size "
              f"{MEDIA_STAGE.resources.batch_size}")
        print(f"{'in-driver loop (baseline)':<28} {args.items / base_s:8.1f} items/s  {base_s:6.2f} s  1.00x")
        for engine in [e for e in args.engines.split(",") if e]:
            for workers in (1, 2):
                runner = make_runner(engine, num_cpus=workers) if engine == "ray" else \
                    make_runner(engine, num_workers=workers)
                try:
                    if engine == "ray":
                        runner.pool_size(MEDIA_STAGE, 1)  # ray.init outside the timing
                    seconds, facts = timed(rows, settings, runner)
                finally:
                    runner.close()
                same = all(facts[k].frames.pixel_hash == base[k].frames.pixel_hash for k in base)
                print(f"{f'{engine}, {workers} worker(s)':<28} {args.items / seconds:8.1f} items/s  {seconds:6.2f} s  "
                      f"{base_s / seconds:4.2f}x  (facts identical to the baseline: {same})")


if __name__ == "__main__":
    main()
