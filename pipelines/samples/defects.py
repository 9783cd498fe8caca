"""Deliberately bad items for the sample pyramid, so quarantine and audits have something real to find.

Each defect is a copy of a good item, damaged the way real data gets damaged. `DEFECTS` says what each one is,
the audit checks that must report it and the reason ingest gives when it quarantines the item; a flaw the audit
finds in the generated samples themselves would be listed with `planted=False`, so the demo's audit report can be
checked against it: these items, and nothing else.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import av
import h5py
import numpy as np

from manifests.splits import SplitRatios, assign_split


@dataclass(frozen=True)
class Defect:
    what: str
    checks: tuple[str, ...]  # the audit checks (audit/checks/) that must name the item
    reason: str = ""  # what the quarantine reason contains, for items ingest quarantines
    planted: bool = True  # False: a flaw of the generated samples themselves, found by the audit, not made on purpose


# "<source>/<last part of the item id>" (or "<source>/*" for every item of a source) -> the defect there.
# The audit of the demo reports exactly these.
DEFECTS = {
    "task_agnostic/episode_900001": Defect("rgb_front.mp4 (and the wrist views) cut in half mid-download",
                                           ("media_readable",), "rgb_front.mp4"),
    "task_agnostic/episode_900002": Defect("NaN in actions.npy", ("finite_values",), "non-finite values"),
    "robotwin/episode900": Defect("HDF5 written without its action group", ("missing_fields",),
                                  "missing key joint_action/vector"),
    "ssv2/990001": Defect("one frame repeated for the whole clip", ("static_clip", "frozen_frames")),
    # names chosen so that, with the demo's split salt, the exact copy shares the original's split (train) and the
    # near copy lands in val: a duplicate inside train, and a leak across splits
    "task_agnostic/episode_900004": Defect("byte copy of episode_000000", ("exact_duplicates",)),
    "task_agnostic/episode_900003": Defect("episode_000000 brightened and re-encoded, in another split",
                                           ("near_duplicates", "cross_split_duplicates")),
    # planted by real_clips.write_ego4d: ego4d.json claims a few more frames than one video's mp4 holds
    "ego4d/*": Defect("ego4d.json over-counts the frames of one video", ("stream_matches_metadata",)),
    # planted in the LeRobot samples' actions as they are written (LEROBOT_ACTION_DEFECTS), so stats agree
    "lerobot/aloha_demo_v3/episode_000001": Defect("the robot stands still: every action is the first one",
                                                   ("idle_actions",)),
    "lerobot/aloha_demo_v3/episode_000002": Defect("the left gripper flips open/closed every step for 10 steps",
                                                   ("gripper_chatter",)),
    "lerobot/aloha_demo_v21/episode_000000": Defect("one arm joint written as a constant", ("frozen_action_dims",)),
    "lerobot/aloha_demo_v21/episode_000001": Defect("one step of a joint jumps by 1.5 rad and back",
                                                    ("action_jumps",)),
    "lerobot/aloha_demo_v21/episode_000002": Defect("a joint's bump clipped at 2 rad for several steps",
                                                    ("action_saturation",)),
    "lerobot/aloha_demo_v21/episode_000003": Defect("the same joint clipped at the same 2 rad",
                                                    ("action_saturation",)),
}
# dataset folder → {episode index: damage}: what `damage_actions` does to the LeRobot samples' actions
LEROBOT_ACTION_DEFECTS = {"aloha_demo_v3": {1: "idle", 2: "chatter"},
                          "aloha_demo_v21": {0: "frozen", 1: "jump", 2: "saturation", 3: "saturation"}}

STATIC_SSV2_ID = "990001"
EXACT_COPY, NEAR_COPY = "episode_900004", "episode_900003"


def defect_key(item_id: str) -> str | None:
    """The `DEFECTS` key of a catalog item id (source/.../name): the id itself, `source/name` or `source/*`."""
    source, _, rest = item_id.partition("/")
    return next((k for k in (item_id, f"{source}/{rest.rsplit('/', 1)[-1]}", f"{source}/*") if k in DEFECTS), None)


def defect_for(item_id: str) -> Defect | None:
    """The known defect of a catalog item id, if any."""
    key = defect_key(item_id)
    return DEFECTS[key] if key else None


def damage_actions(action: np.ndarray, damage: str) -> np.ndarray:
    """A damaged copy of one episode's absolute joint targets [T, 14] (ALOHA order: 6 joints + gripper per arm)."""
    a = np.array(action, np.float32)
    mid = len(a) // 2
    if damage == "idle":
        a[:] = a[0]
    elif damage == "chatter":
        a[mid - 5:mid + 5, 6] = np.clip(a[mid, 6] + np.where(np.arange(10) % 2 == 0, 0.8, -0.8), -1.0, 1.0)
    elif damage == "frozen":
        a[:, 3] = a[:, 3].mean()
    elif damage == "jump":
        a[mid, 1] += 1.5
    elif damage == "saturation":
        bump = 5.0 * np.clip(1 - np.abs(np.arange(len(a)) - mid) / 10, 0, None)  # a 20-step tent up to +5 rad
        a[:, 0] = np.minimum(a[:, 0] + bump, 2.0)
    else:
        raise ValueError(f"unknown action damage {damage!r}")
    return a


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


def add_static_ssv2_clip(root: Path, n_frames: int = 30) -> list[Path]:
    """An SSv2 clip that shows one frame of a real clip for `n_frames` frames, listed in train.json."""
    from pipelines.samples.real_clips import SSV2_FPS, VP9_OPTIONS, encode_video, write_json

    train_json = root / "labels" / "train.json"
    train = json.loads(train_json.read_text()) if train_json.exists() else []
    entries = [e for e in train if e["id"] != STATIC_SSV2_ID]
    if not entries:
        return []
    src = root / "20bn-something-something-v2" / f"{entries[0]['id']}.webm"
    with av.open(str(src)) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
    dst = src.with_name(f"{STATIC_SSV2_ID}.webm")
    encode_video(dst, np.repeat(first[None], n_frames, axis=0), SSV2_FPS, "libvpx-vp9", "webm", VP9_OPTIONS)
    write_json(train_json, entries + [{**entries[0], "id": STATIC_SSV2_ID}])
    return [dst]


def add_duplicate_defects(root: Path, salt: str = SplitRatios().salt) -> list[Path]:
    """A byte copy of the first task-agnostic episode in the same split, and a brightened, re-encoded copy that
    the split hash (group = item id) puts in another split."""
    from pipelines.samples.sim_task_agnostic import write_h264

    episodes = sorted(p for p in (root / "episodes").iterdir() if p.is_dir() and not p.name.startswith("episode_9"))
    if not episodes:
        return []
    src = episodes[0]
    split = lambda name: assign_split(f"task_agnostic/{root.name}/{name}", SplitRatios(salt=salt))  # noqa: E731
    if split(EXACT_COPY) != split(src.name) or split(NEAR_COPY) == split(src.name):
        raise ValueError(f"with split salt {salt!r} the copies of {root.name}/{src.name} do not land as planned: "
                         f"{split(src.name)}, {EXACT_COPY} {split(EXACT_COPY)}, {NEAR_COPY} {split(NEAR_COPY)}")
    exact, near = root / "episodes" / EXACT_COPY, root / "episodes" / NEAR_COPY
    for dst in (exact, near):
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
    fps = float(json.loads((root / "dataset.json").read_text())["fps"])
    for mp4 in near.glob("rgb_*.mp4"):
        with av.open(str(mp4)) as container:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        write_h264(mp4, np.clip(frames.astype(np.int16) + 12, 0, 255).astype(np.uint8), fps, crf=28)
    return [exact, near]
