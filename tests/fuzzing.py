"""Seeded damage for every adapter's files, and a run that ingests and flows the damaged copies.

A trial copies one source root (hard links, so only the damaged file is new) and damages one of its files chosen
by the seed; `run_trial` ingests and flows the copy with the local runner in a workdir of its own and says what
became of its items: done, quarantined (with a reason), failed (an
exception the adapter did not turn into a reason: a finding), or the source refused as a whole with a clear error.
`tests/test_fuzz_inputs.py` runs a fast subset; `bench/fuzz_inputs.py` every adapter × damage kind in worker
processes, with a timeout (hangs) and their peak memory.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\n"
               "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 1048576\n")
HUGE = 1 << 40


def _rewrite(path: Path, data: bytes) -> None:
    path.unlink()  # the copy is a hard link: write a new file, never into the original
    path.write_bytes(data)


def truncate(path: Path, rng: random.Random) -> str:
    data = path.read_bytes()
    keep = int(len(data) * rng.uniform(0.05, 0.9))
    _rewrite(path, data[:keep])
    return f"truncated to {keep} of {len(data)} bytes"


def _flip(path: Path, rng: random.Random, lo: int, hi: int, n: int) -> None:
    data = bytearray(path.read_bytes())
    for _ in range(n):
        if hi > lo:
            data[rng.randrange(lo, hi)] ^= rng.randrange(1, 256)
    _rewrite(path, bytes(data))


def flip_header(path: Path, rng: random.Random) -> str:
    _flip(path, rng, 0, min(512, path.stat().st_size), 8)
    return "8 bytes flipped in the first 512"


def flip_payload(path: Path, rng: random.Random) -> str:
    size = path.stat().st_size
    _flip(path, rng, size // 4, 3 * size // 4, 32)
    return "32 bytes flipped in the middle half"


def zero_bytes(path: Path, rng: random.Random) -> str:
    _rewrite(path, b"")
    return "emptied"


def lfs_pointer(path: Path, rng: random.Random) -> str:
    _rewrite(path, LFS_POINTER.encode())
    return "replaced by a git-lfs pointer"


def _wrong(value: Any, rng: random.Random) -> Any:
    choices = ["not a number", None, [], {"x": 1}, -1, 1e308, float("nan")]
    return rng.choice([c for c in choices if type(c) is not type(value)])


def _mutate_json(obj: Any, rng: random.Random, depth: int = 0) -> Any:
    if isinstance(obj, dict) and obj:
        key = rng.choice(sorted(obj))
        obj[key] = _mutate_json(obj[key], rng, depth + 1) if rng.random() < 0.5 and depth < 4 else _wrong(obj[key], rng)
    elif isinstance(obj, list) and obj:
        i = rng.randrange(len(obj))
        obj[i] = _mutate_json(obj[i], rng, depth + 1) if rng.random() < 0.5 and depth < 4 else _wrong(obj[i], rng)
    else:
        return _wrong(obj, rng)
    return obj


def wrong_types(path: Path, rng: random.Random) -> str:
    """A value of the wrong type where the format has types: JSON/JSONL leaves, a Parquet column cast to
    strings, an HDF5 dataset replaced by strings, an .npy of strings."""
    name = path.name
    if name.endswith(".json"):
        obj = json.loads(path.read_text())
        _rewrite(path, json.dumps(_mutate_json(obj, rng)).encode())
        return "a JSON value of the wrong type"
    if name.endswith(".jsonl"):
        lines = path.read_text().splitlines()
        i = rng.randrange(len(lines))
        lines[i] = json.dumps(_mutate_json(json.loads(lines[i]), rng))
        _rewrite(path, ("\n".join(lines) + "\n").encode())
        return f"line {i}: a JSON value of the wrong type"
    if name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        col = rng.choice(table.column_names)
        as_text = pa.array([json.dumps(v, default=str) for v in table.column(col).to_pylist()])
        path.unlink()
        pq.write_table(table.set_column(table.column_names.index(col), col, as_text), path)
        return f"Parquet column {col} as strings"
    if name.endswith((".h5", ".hdf5")):
        import h5py

        data = path.read_bytes()
        _rewrite(path, data)
        with h5py.File(path, "r+") as h5:
            names: list[str] = []
            h5.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
            key = rng.choice(sorted(names))
            n = h5[key].shape[0] if h5[key].shape else 1
            del h5[key]
            h5[key] = np.array(["x"] * max(n, 1), dtype=h5py.string_dtype())
        return f"HDF5 dataset {key} as strings"
    if name.endswith(".npy"):
        path.unlink()
        np.save(path, np.array(["x", "y"]))
        return ".npy of strings"
    return flip_payload(path, rng)


def huge_length(path: Path, rng: random.Random) -> str:
    """A length field that declares 2^40 bytes: a TFRecord record's length, an MP4 box's size (64-bit form)."""
    data = bytearray(path.read_bytes())
    if ".tfrecord" in path.name and len(data) >= 12:
        data[0:8] = struct.pack("<Q", HUGE)
        _rewrite(path, bytes(data))
        return "first TFRecord length 2^40"
    if path.suffix in (".mp4", ".mov") and len(data) >= 16:
        offset, boxes = 0, []
        while offset + 8 <= len(data):  # walk the top-level boxes to find moov
            size, kind = struct.unpack(">I4s", data[offset:offset + 8])
            boxes.append((offset, kind))
            if size < 8:
                break
            offset += size
        at = next((o for o, k in boxes if k == b"moov"), boxes[0][0])
        data[at:at + 4] = struct.pack(">I", 0xFFFFFFFF)
        _rewrite(path, bytes(data))
        return f"MP4 box at {at} declares 4 GiB"
    return flip_header(path, rng)


DAMAGE: dict[str, Callable[[Path, random.Random], str]] = {
    "truncate": truncate, "flip_header": flip_header, "flip_payload": flip_payload, "zero_bytes": zero_bytes,
    "lfs_pointer": lfs_pointer, "wrong_types": wrong_types, "huge_length": huge_length,
}


@dataclass
class Trial:
    adapter: str  # the source entry's kind (+ its name, when one kind has several entries)
    damage: str
    seed: int
    file: str = ""
    what: str = ""
    items: Counter = field(default_factory=Counter)  # item statuses after ingest and flow
    reasons: list[str] = field(default_factory=list)  # first few, for the report
    source_error: str = ""
    failed: list[str] = field(default_factory=list)  # reasons of failed items (findings)


def make_trial(entry: dict[str, Any], name: str, samples: Path, out: Path, damage: str, seed: int) -> tuple[Trial, dict]:
    """Copy `entry`'s root under `out` (hard links), damage one of its files; the trial and its source entry."""
    src = samples / entry["root"]
    rng = random.Random(f"{name}/{damage}/{seed}")
    dst = out / f"{name}__{damage}__{seed}"
    shutil.copytree(src, dst, copy_function=os.link)
    files = sorted(p for p in dst.rglob("*") if p.is_file() and p.stat().st_size > 0)
    if damage == "huge_length":  # the files that have the length fields, where the source has any
        files = [p for p in files if ".tfrecord" in p.name or p.suffix == ".mp4"] or files
    if damage == "wrong_types":
        files = [p for p in files if p.suffix in (".json", ".jsonl", ".parquet", ".h5", ".hdf5", ".npy")] or files
    target = rng.choice(files)
    trial = Trial(name, damage, seed, str(target.relative_to(dst)))
    trial.what = DAMAGE[damage](target, rng)
    return trial, {**entry, "root": str(dst)}


def run_trial(trial: Trial, entry: dict, workdir: Path) -> Trial:
    """Ingest and flow (local runner, DIS flow at a small size) one damaged copy in a workdir of its own; fill in
    what became of its items."""
    from catalog import Catalog
    from pipelines.config import config_from_dict
    from pipelines.flow import run_flow
    from pipelines.ingest import ingest
    from pipelines.runners import LocalRunner

    cfg = config_from_dict({"workdir": str(workdir), "runner": {"engine": "local"},
                            "flow": {"store_size": [32, 32], "flow_size": [64, 48]}, "sources": [entry]})
    with Catalog(cfg.catalog_path) as cat:
        report = ingest(cfg, cat, LocalRunner(), progress=False)
        run_flow(cfg, cat, LocalRunner(), progress=False)
        rows = cat.sql("SELECT stage, status, reason FROM item_stages").to_pylist()
    for r in rows:
        trial.items[f"{r['stage']}:{r['status']}"] += 1
        if r["status"] == "failed":
            trial.failed.append(r["reason"])
        elif r["reason"] and len(trial.reasons) < 3:
            trial.reasons.append(r["reason"][:160])
    trial.source_error = "; ".join(report.source_errors.values())[:300]
    return trial


def as_json(trials: list[Trial]) -> str:
    return json.dumps([{**asdict(t), "items": dict(t.items)} for t in trials], indent=1)


def main(argv: list[str] | None = None) -> None:
    """One trial in this process (what `bench/fuzz_inputs.py` runs per trial, in a subprocess): prints its JSON."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--entry", required=True, help="the source entry as JSON, root relative to --samples")
    ap.add_argument("--name", required=True)
    ap.add_argument("--samples", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--damage", choices=sorted(DAMAGE), required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    trial, entry = make_trial(json.loads(args.entry), args.name, args.samples, args.out, args.damage, args.seed)
    run_trial(trial, entry, args.out / f"work__{args.name}__{args.damage}__{args.seed}")
    import resource

    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    print("TRIAL " + json.dumps({**asdict(trial), "items": dict(trial.items), "rss_mb": peak / 1024}))


if __name__ == "__main__":
    main()
