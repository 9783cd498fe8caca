"""Deliberately bad items for the sample pyramid, so quarantine and audits have something real to find.

Each defect is a copy of a good item, damaged the way real data gets damaged; `DEFECTS` says what each one is
and the reason the pipeline should give for it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np

# native episode name -> what is wrong with it (the expected quarantine reason contains the value)
DEFECTS = {
    "task_agnostic/episode_900001": "truncated",  # mp4 cut in half mid-download
    "task_agnostic/episode_900002": "non-finite values",  # NaN in actions.npy
    "robotwin/episode900": "missing key joint_action/vector",  # HDF5 written without its action group
}


def truncate_file(path: Path, keep_fraction: float = 0.5) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(int(size * keep_fraction))


def add_task_agnostic_defects(root: Path) -> list[Path]:
    episodes = sorted(p for p in (root / "episodes").iterdir() if p.is_dir() and not p.name.startswith("episode_9"))
    if not episodes:
        return []
    src = episodes[0]
    truncated = root / "episodes" / "episode_900001"
    nan_actions = root / "episodes" / "episode_900002"
    for dst in (truncated, nan_actions):
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
    for mp4 in truncated.glob("rgb_*.mp4"):
        truncate_file(mp4)
    actions = np.load(nan_actions / "actions.npy")
    actions[len(actions) // 3, 0] = np.nan
    np.save(nan_actions / "actions.npy", actions)
    return [truncated, nan_actions]


def add_robotwin_defects(root: Path) -> list[Path]:
    files = sorted(p for p in root.glob("*/*/data/episode*.hdf5") if not p.stem.startswith("episode9"))
    if not files:
        return []
    src = files[0]
    dst = src.with_name("episode900.hdf5")
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as h5:
        del h5["joint_action/vector"]
    instr = src.parent.parent / "instructions" / f"{src.stem}.json"
    if instr.exists():
        shutil.copyfile(instr, instr.with_name("episode900.json"))
    return [dst]
