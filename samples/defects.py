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
from samples.files import X264_REPRODUCIBLE


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
# planted in the v2.1 LeRobot sample's files after they are written (LEROBOT_FILE_DEFECTS, `damage_lerobot_files`)
# and in its states as they are written (a shifted or a dead state dim, so its stats agree)
LEROBOT_DATASET_DEFECT = Defect("a data file of an episode the metadata does not list; info.json total_videos two "
                                "too many", ("orphan_rows", "info_matches_data"))
for _index, _what, _checks, _reason in (
        # the video's frames keep their times: the damaged timestamps disagree with the video's pts too
        (4, "two timestamps swapped", ("timestamps_monotonic", "timestamp_spacing", "pts_drift"), ""),
        (5, "a frame dropped: the timestamps skip one period", ("timestamp_spacing", "timestamp_drift", "pts_drift"),
         ""),
        (6, "frame_index repeats a value", ("frame_indices",), "frame_index is not"),
        (7, "the head camera's mp4 is a git-lfs pointer", ("media_readable", "media_files"), "video"),
        (8, "episodes_stats.jsonl left from before an edit: a stale action max", ("stale_stats",), ""),
        (9, "task_index points past the task table", ("task_index_valid",), ""),
        (10, "an empty instruction", ("language_empty",), ""),
        (11, "an instruction with template leftovers", ("language_template",), ""),
        (12, "the state trails the action by 6 steps instead of 1", ("action_delay",), ""),
        (13, "a state joint that never moves while its action does", ("dead_joints",), ""),
        (14, "the global index of an episode shifted by 1000", ("global_index",), ""),
        (15, "the head camera stutters: one picture held for 4 frames mid-motion", ("frame_stutter",), ""),
        (16, "the head camera's frame times jitter: 4 frames stamped 0.4 frame late in the mp4", ("pts_drift",), "")):
    DEFECTS[f"lerobot/aloha_demo_v21/episode_{_index:06d}"] = Defect(_what, _checks, _reason)
DEFECTS["lerobot/aloha_demo_v21"] = LEROBOT_DATASET_DEFECT
# not planted: the demo's VAE trains for minutes on a few dozen clips, so the per-source label checks may find its
# latents of a source collapsed or blind to the actions; the report lists that as the warning it is
WEAK_DEMO_LATENTS = Defect("the demo's briefly trained VAE gives this source weak latents",
                           ("latent_collapse", "latent_action_agreement"), planted=False)
for _source in ("task_agnostic", "anypos", "robotwin", "oxe", "lerobot", "ssv2", "ego4d"):
    DEFECTS[_source] = WEAK_DEMO_LATENTS
# not planted: the 2026-layout RoboTwin episode saves no depth or segmentation, so its flow is DIS on the rendered
# video (mean 0.25 px, mostly noise on a still background) where its siblings get exact sim flow (0.04 px); a latent
# that keeps the linear code of the motion (vae.coarse_skip_init: pca) puts it apart from the rest of RoboTwin
DEFECTS["robotwin/episode_0000000"] = Defect(
    "the 2026-layout episode's flow is DIS on video, its siblings' exact sim flow: its latents sit apart",
    ("latent_outliers", *WEAK_DEMO_LATENTS.checks), planted=False)

# dataset folder → {episode index: damage}: what `damage_actions` (and `damage_state`) do to the LeRobot samples
LEROBOT_ACTION_DEFECTS = {"aloha_demo_v3": {1: "idle", 2: "chatter"},
                          "aloha_demo_v21": {0: "frozen", 1: "jump", 2: "saturation", 3: "saturation",
                                             12: "delay", 13: "dead_joint"}}
LEROBOT_FILE_DEFECTS = {"aloha_demo_v21": {4: "timestamps_backwards", 5: "dropped_frame", 6: "frame_index",
                                           7: "lfs_pointer", 8: "stale_stats", 9: "task_index",
                                           10: "empty_instruction", 11: "template_instruction", 14: "global_index",
                                           15: "stutter", 16: "pts_jitter"}}
STATE_DAMAGE = ("delay", "dead_joint")
TEMPLATE_TASK = "put the [object] in the box at <top center>"
LFS_POINTER_TEXT = ("version https://git-lfs.github.com/spec/v1\n"
                    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 48213\n")

STUTTER_HOLD = 4  # frames showing the held picture in the "stutter" episode
JITTER_FRAMES, JITTER_SHARE = 4, 0.4  # frames stamped late in the "pts_jitter" episode, by this share of a frame

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


def unexplained(found: dict[str, set[str]], planted: set[str]) -> dict[str, str]:
    """What an audit's findings (subject → the checks that failed it) break of the contract "the planted defects
    and nothing else": a subject no defect explains, a planted defect reported by other checks than its own, one
    not reported at all (of the keys in `planted`). A known flaw (planted=False) may be reported by any of its checks."""
    out = {}
    for subject, checks in sorted(found.items()):
        d = defect_for(subject)
        if d is None:
            out[subject] = f"no defect explains it: {sorted(checks)}"
        elif (checks != set(d.checks)) if d.planted else not checks <= set(d.checks):
            out[subject] = f"reported by {sorted(checks)}, the defect names {sorted(d.checks)}"
    for key in sorted(planted - {defect_key(s) for s in found}):
        out[key] = "planted but not reported"
    return out


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


def damage_state(action: np.ndarray, state: np.ndarray, damage: str) -> np.ndarray:
    """A damaged copy of one episode's observed state [T, 14] (the samples' state trails the action by one step)."""
    s = np.array(state, np.float32)
    if damage == "delay":  # the state trails the command by 6 steps
        s = np.vstack([np.repeat(action[:1], 6, axis=0), action[:-6]]).astype(np.float32)
    elif damage == "dead_joint":  # the left elbow's encoder reports its first value throughout
        s[:, 2] = s[0, 2]
    else:
        raise ValueError(f"unknown state damage {damage!r}")
    return s


def damage_lerobot_files(root: Path, plan: dict[int, str]) -> list[Path]:
    """Damage a written LeRobot v2.x dataset's files (`LEROBOT_FILE_DEFECTS`), plus one data file of an unlisted
    episode and an info.json total_videos two too many (`LEROBOT_DATASET_DEFECT`). Returns the files changed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = root / "meta"
    info = json.loads((meta / "info.json").read_text())
    fps = float(info["fps"])
    episodes = [json.loads(line) for line in (meta / "episodes.jsonl").read_text().splitlines() if line.strip()]
    tasks = [json.loads(line) for line in (meta / "tasks.jsonl").read_text().splitlines() if line.strip()]
    data = lambda i: root / info["data_path"].format(episode_chunk=i // info["chunks_size"], episode_index=i)  # noqa: E731
    changed = []

    def edit_column(index: int, name: str, fn) -> None:
        table = pq.read_table(data(index))
        values = fn(table.column(name).to_numpy().copy())
        pq.write_table(table.set_column(table.column_names.index(name), name, pa.array(values, table.column(name).type)),
                       data(index))
        changed.append(data(index))

    def new_task(index: int, text: str) -> None:
        tasks.append({"task_index": len(tasks), "task": text})
        edit_column(index, "task_index", lambda v: np.full_like(v, len(tasks) - 1))
        episodes[index]["tasks"] = [text]

    for index, kind in sorted(plan.items()):
        mid = episodes[index]["length"] // 2
        if kind == "timestamps_backwards":
            edit_column(index, "timestamp", lambda v: np.concatenate([v[:mid], v[mid:mid + 2][::-1], v[mid + 2:]]))
        elif kind == "dropped_frame":
            edit_column(index, "timestamp", lambda v: np.concatenate([v[:mid], v[mid:] + np.float32(1 / fps)]))
        elif kind == "frame_index":
            edit_column(index, "frame_index", lambda v: np.concatenate([v[:mid], [v[mid - 1]], v[mid + 1:]]))
        elif kind == "global_index":
            edit_column(index, "index", lambda v: v + 1000)
        elif kind == "task_index":
            edit_column(index, "task_index", lambda v: np.full_like(v, 99))
        elif kind == "empty_instruction":
            new_task(index, "")
        elif kind == "template_instruction":
            new_task(index, TEMPLATE_TASK)
        elif kind in ("stutter", "pts_jitter"):
            key = next(k for k, f in info["features"].items() if f.get("dtype") == "video")
            video = root / info["video_path"].format(episode_chunk=index // info["chunks_size"], video_key=key,
                                                     episode_index=index)
            with av.open(str(video)) as container:
                frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
            ticks = 10 * np.arange(len(frames))  # a clock 10 ticks per frame
            if kind == "stutter":  # the encoder got the same picture until the capture caught up
                k = stutter_start(frames)
                frames[k + 1:k + STUTTER_HOLD] = frames[k]
            else:  # frames stamped with their (late) capture times, the rows with the nominal grid
                ticks[mid:mid + JITTER_FRAMES] += round(10 * JITTER_SHARE)
            write_h264_ticks(video, frames, fps, ticks, 10)
            changed.append(video)
        elif kind == "lfs_pointer":
            key = next(k for k, f in info["features"].items() if f.get("dtype") == "video")
            video = root / info["video_path"].format(episode_chunk=index // info["chunks_size"], video_key=key,
                                                     episode_index=index)
            video.write_text(LFS_POINTER_TEXT)
            changed.append(video)
        elif kind == "stale_stats":
            path = meta / "episodes_stats.jsonl"
            lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            lines[index]["stats"]["action"]["max"][0] += 0.5
            path.write_text("".join(json.dumps(e) + "\n" for e in lines))
            changed.append(path)
        else:
            raise ValueError(f"unknown LeRobot file damage {kind!r}")
    orphan = data(99)
    table = pq.read_table(data(0))
    pq.write_table(table.set_column(table.column_names.index("episode_index"), "episode_index",
                                    pa.array(np.full(table.num_rows, 99), pa.int64())), orphan)
    info["total_tasks"] = len(tasks)
    info["total_videos"] += 2
    (meta / "info.json").write_text(json.dumps(info, indent=4))
    (meta / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    (meta / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in episodes))
    return changed + [orphan, meta / "info.json"]


def stutter_start(frames: np.ndarray) -> int:
    """Where to hold a picture so that the stutter is plain: the frame k whose scene moves both into k and out of
    the hold (into k + STUTTER_HOLD) the most. A hold where the scene itself slows down looks like a pause."""
    d = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))  # d[k - 1]: frame k against k − 1
    k = np.arange(1, len(frames) - STUTTER_HOLD)
    return int(k[np.argmax(np.minimum(d[k - 1], d[k + STUTTER_HOLD - 1]))])


def write_h264_ticks(path: Path, frames: np.ndarray, fps: float, ticks: np.ndarray, ticks_per_frame: int) -> None:
    """An H.264 mp4 of these frames (as the LeRobot v2.1 sample writes them) whose frame i is presented at
    ticks[i] / (fps · ticks_per_frame) seconds."""
    from fractions import Fraction

    tb = Fraction(1, round(fps * ticks_per_frame))
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(round(fps)))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.time_base = tb
        stream.options = {"crf": "18", "preset": "fast", "g": "2", **X264_REPRODUCIBLE}
        for rgb, tick in zip(frames, ticks):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts, frame.time_base = int(tick), tb
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


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
    from samples.real_clips import SSV2_FPS
    from samples.real_footage import VP9_OPTIONS, encode_video, write_json

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
    from samples.files import write_h264

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
