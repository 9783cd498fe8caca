"""Driver scaling: ingest of a metadata-heavy source at N and 10·N items, and `pyramid status` on a big catalog.

The source is Something-Something v2's release layout with label files listing N clips (train / validation /
test, as released) of which only a few are on disk (tiny real webms, hard-linked under `--on-disk` ids), ingested
with `missing_clips: quarantine`: every listed clip is a task, so the driver plans, streams and records N outcomes
while the workers do almost nothing. Each ingest runs in a fresh process (the local runner, so the figure is the
driver's own memory plus a trivial probe); its peak RSS (`ru_maxrss`) and items/s are printed for N and 10·N, with
the ratios (targets: RSS ≤ 1.2, items/s ≥ 0.8).

Then a catalog built by the project's `Catalog` gets `--status-items` synthetic items (rows inserted straight
into DuckDB: items, their ingest and flow states, an ingest run record with four source entries, two of them
LeRobot roots so that items are mapped to entries by URI) and `pyramid status` runs on it in fresh processes with
a bytecode cache, as an installed package runs (wall and CPU seconds, start-up included; target: < 2 s at 1 M),
along with `Catalog.funnel()` alone.

    .venv/bin/python bench/bench_scale.py [--n 20000] [--on-disk 20] [--status-items 1000000] [--parts ingest,status]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parent.parent


def make_ssv2(root: Path, n: int, on_disk: int, clips: list[Path]) -> None:
    """Label files listing `n` clips (80/10/10 train/validation/test); `on_disk` of them exist as hard links to
    the few real `clips`."""
    from samples.real_clips import ssv2_class_index

    labels = root / "labels"
    videos = root / "20bn-something-something-v2"
    labels.mkdir(parents=True)
    videos.mkdir(parents=True)
    (labels / "labels.json").write_text(json.dumps(ssv2_class_index()))
    template = "Pushing [something] from left to right"
    files: dict[str, list] = {"train.json": [], "validation.json": [], "test.json": []}
    step = max(1, n // max(on_disk, 1))
    for i in range(n):
        clip_id = str(100_000 + i)
        name = "validation.json" if i % 10 == 8 else "test.json" if i % 10 == 9 else "train.json"
        files[name].append({"id": clip_id} if name == "test.json" else
                           {"id": clip_id, "label": f"pushing cup {i} from left to right", "template": template,
                            "placeholders": [f"cup {i}"]})
        if on_disk and i % step == 0 and i // step < on_disk:
            os.link(clips[(i // step) % len(clips)], videos / f"{clip_id}.webm")
    for name, entries in files.items():
        (labels / name).write_text(json.dumps(entries))


def child_ingest(root: Path, workdir: Path) -> None:
    """One ingest in this (fresh) process; prints a JSON line with its figures."""
    from catalog import Catalog
    from pipelines.config import load_config
    from pipelines.ingest import ingest
    from pipelines.runners import make_runner

    cfg = load_config(None, workdir=str(workdir), **{"runner.engine": "local"})
    cfg.sources = [type(cfg.sources[0])(kind="ssv2", root=str(root), options={"missing_clips": "quarantine"})]
    t0 = time.perf_counter()
    with Catalog(cfg.catalog_path) as cat:
        report = ingest(cfg, cat, make_runner("local"), progress=False)
        wall = time.perf_counter() - t0
        rows = cat.con.execute("SELECT count(*) FROM item_stages").fetchone()[0]
        items = cat.con.execute("SELECT count(*) FROM items").fetchone()[0]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"tasks": report.stage.total, "counts": report.stage.as_dict(), "wall_s": wall,
                      "items_per_s": report.stage.total / wall, "peak_rss_mb": rss_mb, "stage_rows": rows,
                      "items": items}))


def run_child(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env, cwd=REPO)
    if out.returncode:
        raise SystemExit(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def synthetic_catalog(path: Path, n: int) -> None:
    """A catalog (made by `Catalog`) holding `n` synthetic items of three kinds (LeRobot from two roots): ingest
    done for 90 %, quarantined for 10 %, flow done for half; one ingest run record naming the four entries."""
    from catalog import Catalog

    with Catalog(path) as cat:
        roots = ["ssv2", "lerobot/arm_a", "lerobot/arm_b", "robotwin"]  # two LeRobot roots: mapped per item
        cfg = {"workdir": str(path.parent), "sources": [{"kind": r.split("/")[0], "root": f"data/{r}"} for r in roots]}
        cat.finish_run(cat.start_run("ingest", cfg), "ok", {"done": n})
        cat.con.execute(f"""
            INSERT INTO {cat.table('item_stages')}
            SELECT (['ssv2', 'lerobot', 'robotwin'])[1 + i % 3] || '/' || lpad(i::VARCHAR, 8, '0') AS item_id,
                   'ingest', CASE WHEN i % 10 = 9 THEN 'quarantined' ELSE 'done' END,
                   CASE WHEN i % 10 = 9 THEN 'missing video file ' || i || '.webm' END,
                   'data/' || (['ssv2', 'lerobot/arm_' || (['a', 'b'])[1 + i % 2], 'robotwin'])[1 + i % 3] || '/'
                       || i || '.webm',
                   md5(i::VARCHAR)[:16], 'synthetic', 1, 0.01, now()
            FROM range({n}) t(i)""")
        cat.con.execute(f"""
            INSERT INTO {cat.table('item_stages')}
            SELECT item_id, 'flow', 'done', NULL, input_uri, input_fingerprint, 'synthetic', 1, 0.1, now()
            FROM {cat.table('item_stages')} WHERE stage = 'ingest' AND status = 'done' AND hash(item_id) % 2 = 0""")
        cat.con.execute(f"""
            INSERT INTO {cat.table('items')} (item_id, source, native_id, tier, group_id, split, media_uris, cameras,
                fps, frame_count, width, height, duration_s, start_s, embodiment, action_dim, has_actions, language,
                licence, input_uri, input_blake2b, input_bytes, extras)
            SELECT item_id, split_part(item_id, '/', 1), split_part(item_id, '/', 2), 1, item_id,
                   (['train', 'train', 'train', 'train', 'train', 'train', 'train', 'train', 'val', 'test'])
                       [1 + (hash(item_id) % 10)::BIGINT],
                   [input_uri], ['video'], 12, 36, 320, 240, 3.0, 0.0, 'human', 0, false, ['pushing a cup'],
                   'synthetic', input_uri, md5(item_id), 1000, '{{"codec": "vp9"}}'
            FROM {cat.table('item_stages')} WHERE stage = 'ingest' AND status = 'done'""")
        cat.con.execute("CHECKPOINT")


def child_status(workdir: Path) -> None:
    from catalog import Catalog

    t0 = time.perf_counter()
    with Catalog(workdir / "catalog.duckdb", read_only=True) as cat:
        cat.funnel()
    print(json.dumps({"funnel_s": time.perf_counter() - t0}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20_000, help="listed clips of the small run (the big one is 10·N)")
    ap.add_argument("--on-disk", type=int, default=20, help="listed clips that exist on disk (hard links)")
    ap.add_argument("--status-items", type=int, default=1_000_000, help="synthetic items for the status timing")
    ap.add_argument("--parts", default="ingest,status", help="what to run: ingest, status or both")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, path = args.child
        if kind == "status":
            return child_status(Path(path))
        return child_ingest(Path(path) / "ssv2", Path(path) / "work")

    from samples.real_clips import write_ssv2

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        tmp = Path(tmp)
        clips = write_ssv2(tmp / "real", n_clips=2, seed=0) if "ingest" in args.parts else []
        results = {}
        for n in (args.n, 10 * args.n) if "ingest" in args.parts else ():
            base = tmp / f"n{n}"
            t0 = time.perf_counter()
            make_ssv2(base / "ssv2", n, args.on_disk, clips)
            print(f"generated {n} listed clips ({args.on_disk} on disk) in {time.perf_counter() - t0:.1f}s", flush=True)
            results[n] = r = run_child("--child", "ingest", str(base))
            print(f"N={n:>8}: {r['tasks']} tasks {r['counts']} in {r['wall_s']:.1f}s  {r['items_per_s']:.0f} items/s  "
                  f"driver peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
        if results:
            small, big = results[args.n], results[10 * args.n]
            print(f"ratios 10·N / N: peak RSS {big['peak_rss_mb'] / small['peak_rss_mb']:.2f} (target ≤ 1.2), "
                  f"items/s {big['items_per_s'] / small['items_per_s']:.2f} (target ≥ 0.8)", flush=True)
        if "status" in args.parts:
            status_timing(tmp, args.status_items)


def status_timing(tmp: Path, n_items: int) -> None:
    """`pyramid status` (and `Catalog.funnel()` alone) on a catalog of `n_items` synthetic items."""
    work = tmp / "status"
    t0 = time.perf_counter()
    synthetic_catalog(work / "catalog.duckdb", n_items)
    print(f"synthetic catalog of {n_items} items built in {time.perf_counter() - t0:.1f}s", flush=True)
    funnel = run_child("--child", "status", str(work))
    # as installed: bytecode cached (this checkout may run with PYTHONDONTWRITEBYTECODE; the cache goes to tmp)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(PYTHONPATH=str(REPO), COLUMNS="200", PYTHONPYCACHEPREFIX=str(tmp / "pycache"))
    cmd = [sys.executable, "-m", "jobs.cli", "status", "--workdir", str(work)]
    runs = []
    for _ in range(3):  # the first fills the bytecode cache
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if out.returncode:
            raise SystemExit(f"pyramid status failed:\n{out.stderr[-3000:]}")
        runs.append((wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime))
    wall, cpu = min(runs[1:])
    print(f"{n_items} catalogued items: `pyramid status` {wall:.2f}s wall, {cpu:.2f}s CPU (process start "
          f"included, best of 2 after a warm-up; target < 2 s); Catalog.funnel() {funnel['funnel_s']:.2f}s "
          "(open included)")


if __name__ == "__main__":
    main()
