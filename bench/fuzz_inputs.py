"""Fuzzed input for every adapter: each source of the sample pyramid × each damage kind × `--seeds` seeds, one damaged
copy per trial (`tests/fuzzing.py`: truncation, byte flips in headers and payloads, zero-byte files, git-lfs
pointers, wrong types in JSON/Parquet/HDF5/.npy, 2^40-byte lengths in TFRecord and MP4 headers), ingested and
flowed in a subprocess of its own with a timeout (a hang) and its peak memory (`ru_maxrss` of the process tree).

    .venv/bin/python bench/fuzz_inputs.py [--samples DIR] [--seeds 2] [--timeout 300] [--out bench_out/fuzz]

Without `--samples` it generates the sample pyramid (scale 1, no planted defects) under `--out` first (~2 min).
Prints one table per adapter × damage kind: trials, items done / quarantined / failed (failed = an exception the
adapter did not turn into a reason), sources refused with an error, crashes (the run raised or exited non-zero),
hangs, peak RSS. The targets: 0 failed, 0 crashes, 0 hangs, peak RSS far below any declared 2^40 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from tests.fuzzing import DAMAGE  # noqa: E402


def entries() -> list[tuple[str, dict]]:
    """The demo config's source entries (roots relative to the sample pyramid), named uniquely."""
    out, seen = [], set()
    for e in yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())["sources"]:
        root = e["root"].removeprefix("samples/")
        name = e["kind"] + (f"_{Path(root).name}" if e["kind"] == "lerobot" else "")
        name += "_fho" if (e.get("options") or {}).get("clips") == "fho" else ""
        if name not in seen:
            seen.add(name)
            out.append((name, {**e, "root": root}))
    return out


def one(name: str, entry: dict, samples: Path, out: Path, damage: str, seed: int, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "tests.fuzzing", "--entry", json.dumps(entry), "--name", name, "--samples",
           str(samples), "--out", str(out), "--damage", damage, "--seed", str(seed)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        hang = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        stdout, stderr = proc.communicate()
        hang = True
    found = [line for line in stdout.splitlines() if line.startswith("TRIAL ")]
    result = json.loads(found[-1][6:]) if found else {"adapter": name, "damage": damage, "seed": seed, "items": {},
                                                      "failed": [], "source_error": "", "rss_mb": float("nan")}
    result.update(hang=hang, crash=not hang and (proc.returncode != 0 or not found),
                  stderr_tail=stderr[-400:] if proc.returncode else "", wall_s=time.perf_counter() - t0)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=Path, help="a sample pyramid (pyramid samples --no-defects); default: made")
    ap.add_argument("--out", type=Path, default=REPO / "bench_out" / "fuzz")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per trial before it counts as a hang")
    ap.add_argument("--damage", nargs="+", default=sorted(DAMAGE), choices=sorted(DAMAGE))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    samples = args.samples
    if samples is None:
        samples = args.out / "samples"
        if not samples.exists():
            from samples.pyramid import generate_sample_pyramid

            generate_sample_pyramid(samples, scale=1, seed=0, defects=False)
    t0 = time.perf_counter()
    results = []
    for name, entry in entries():
        for damage in args.damage:
            for seed in range(args.seeds):
                r = one(name, entry, samples, args.out / "trials", damage, seed, args.timeout)
                results.append(r)
                flag = "HANG" if r["hang"] else "CRASH" if r["crash"] else "FAILED" if r["failed"] else "ok"
                print(f"{name} {damage} seed {seed}: {flag} {r.get('file', '')} {r.get('what', '')} "
                      f"{r['items']} {r['source_error'][:100]}", flush=True)
    (args.out / "fuzz.json").write_text(json.dumps(results, indent=1))
    table: dict[tuple[str, str], dict] = defaultdict(lambda: defaultdict(float))
    for r in results:
        row = table[(r["adapter"], r["damage"])]
        row["trials"] += 1
        for key, n in r["items"].items():
            stage, status = key.split(":")
            if stage == "ingest":
                row[status] += n
        row["failed_items"] += len(r["failed"])
        row["refused"] += bool(r["source_error"])
        row["crashes"] += r["crash"]
        row["hangs"] += r["hang"]
        if r["rss_mb"] == r["rss_mb"]:  # not NaN (a hang or crash reports none)
            row["rss"] = max(row["rss"], r["rss_mb"])
    print("\n| adapter | damage | trials | items done | quarantined | failed | sources refused | crashes | hangs | "
          "peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (adapter, damage), row in sorted(table.items()):
        print(f"| {adapter} | {damage} | {row['trials']:.0f} | {row['done']:.0f} | {row['quarantined']:.0f} | "
              f"{row['failed_items']:.0f} | {row['refused']:.0f} | {row['crashes']:.0f} | {row['hangs']:.0f} | "
              f"{row['rss']:.0f} |")
    peak = max((r["rss_mb"] for r in results if r["rss_mb"] == r["rss_mb"]), default=float("nan"))
    total = {k: sum(1 for r in results if r[k]) for k in ("crash", "hang")}
    print(json.dumps({"trials": len(results), "failed_items": sum(len(r["failed"]) for r in results), **total,
                      "peak_rss_mb": round(peak), "wall_s": round(time.perf_counter() - t0)}))


if __name__ == "__main__":
    main()
