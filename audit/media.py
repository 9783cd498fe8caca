"""The audit's media pass: every frame of an item's main camera decoded once, as a per-item stage the engine runs
(Ray or Beam workers through the project's runner, or the driver's own loop when none is given).

A worker keeps only small facts per item (`MediaFacts`): the sampled frames' `FrameFacts` (black, frozen and
duplicate checks), the runs of repeated pictures between moving frames (`frame_stutter`), and how many frames FFmpeg
decoded with error concealment (`concealed_errors`). Rows in, small dicts out: no frames cross a process boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import cv2
import numpy as np

from audit.frames import FrameFacts, sample_positions
from common.errors import BadInput
from flow_extraction.frames import iter_frames
from pipelines.stages import Resources, Stage, execute

STEP_WIDTH = 64  # consecutive frames are compared as grey thumbnails this wide ...
NOISE_LEVEL = 8.0  # ... counting only what changes beyond this many grey levels: codec noise (a keyframe that codes
# the same picture again, with g=2 every other frame) stays below it, a moving edge does not


@dataclass(frozen=True)
class RepeatRun:
    """Frames first..last each show (nearly) the picture of the frame before: one picture held for
    last − first + 2 frames. `before`/`after` are the steps into frame first − 1 and out of frame last (None at the
    clip's ends). A step is the mean grey change between two frames beyond `NOISE_LEVEL` (thumbnails)."""

    first: int
    last: int
    before: float | None
    after: float | None

    @property
    def repeats(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True)
class MediaFacts:
    item_id: str
    frames: FrameFacts
    decoded: int  # frames of the window decoded
    median_step: float  # median step between consecutive frames (mean grey change beyond NOISE_LEVEL)
    repeat_runs: list[RepeatRun]  # runs of at least `min_repeats` repeated pictures (see `repeat_runs`)
    corrupt_frames: int | None  # frames decoded with error concealment; None: not a video file (HDF5, TFRecord)

    def to_dict(self) -> dict[str, Any]:
        """Plain values and arrays only: what a Beam worker can hand back."""
        f = self.frames
        return {"item_id": self.item_id, "indices": list(f.indices), "mean_luma": list(f.mean_luma),
                "std_luma": list(f.std_luma), "max_change": f.max_change, "pixel_hash": f.pixel_hash,
                "dhash": f.dhash, "decoded": self.decoded, "median_step": self.median_step,
                "repeat_runs": [[r.first, r.last, r.before, r.after] for r in self.repeat_runs],
                "corrupt_frames": self.corrupt_frames}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MediaFacts":
        frames = FrameFacts(d["item_id"], list(d["indices"]), list(d["mean_luma"]), list(d["std_luma"]),
                            float(d["max_change"]), d["pixel_hash"], np.asarray(d["dhash"], bool))
        return cls(d["item_id"], frames, int(d["decoded"]), float(d["median_step"]),
                   [RepeatRun(*r) for r in d["repeat_runs"]], d["corrupt_frames"])


def repeat_runs(steps: np.ndarray, repeat_diff: float, min_repeats: int) -> list[RepeatRun]:
    """Runs of ≥ `min_repeats` consecutive steps at or below `repeat_diff`. `steps[t − 1]` compares frame t with
    frame t − 1."""
    out, t, n = [], 0, len(steps)
    while t < n:
        if steps[t] > repeat_diff:
            t += 1
            continue
        end = t
        while end + 1 < n and steps[end + 1] <= repeat_diff:
            end += 1
        if end - t + 1 >= min_repeats:
            before = float(steps[t - 1]) if t >= 1 else None
            after = float(steps[end + 1]) if end + 1 < n else None
            out.append(RepeatRun(t + 1, end + 1, before, after))
        t = end + 1
    return out


def media_facts(row: Mapping[str, Any], frames_per_item: int, size_hw: tuple[int, int], camera: int,
                repeat_share: float, min_repeats: int) -> MediaFacts:
    """Decode every frame of the item's window once. Raises BadInput when the media does not decode or ends early.
    A step counts as a repeat when it is at most `repeat_share` of the clip's median step."""
    wanted = set(sample_positions(int(row["frame_count"] or 0), frames_per_item))
    if not wanted:
        raise BadInput(f"the catalog gives {row['item_id']} no frames")
    report: dict[str, Any] = {}
    sampled: dict[int, np.ndarray] = {}
    steps: list[float] = []
    previous = None
    count = 0
    for index, frame, canvas in iter_frames(row, size_hw, camera, report=report):
        h, w = canvas.content_hw
        content = frame[canvas.offset_y : canvas.offset_y + h, canvas.offset_x : canvas.offset_x + w]
        if index in wanted:
            sampled[index] = content.copy()
        small = cv2.resize(cv2.cvtColor(content, cv2.COLOR_RGB2GRAY),
                           (STEP_WIDTH, max(1, round(STEP_WIDTH * h / w))), interpolation=cv2.INTER_AREA)
        small = small.astype(np.float32)
        if previous is not None:
            steps.append(float(np.maximum(np.abs(small - previous) - NOISE_LEVEL, 0).mean()))
        previous, count = small, count + 1
    order = sorted(wanted)
    if len(sampled) < len(order):
        raise BadInput(f"only {len(sampled)} of the {len(order)} sampled frames decode")
    steps_a = np.asarray(steps, np.float64)
    median = float(np.median(steps_a)) if len(steps_a) else 0.0
    runs = repeat_runs(steps_a, repeat_share * median, min_repeats) if median > 0 else []
    is_video = "corrupt_frames" in report or _is_video_uri(row, camera)
    return MediaFacts(row["item_id"], FrameFacts.of(row["item_id"], order, [sampled[i] for i in order]), count,
                      median, runs, int(report.get("corrupt_frames", 0)) if is_video else None)


def _is_video_uri(row: Mapping[str, Any], camera: int) -> bool:
    uris = row.get("media_uris") or []
    if not uris:
        return False
    uri = uris[min(camera, len(uris) - 1)]
    path, _, fragment = uri.partition("#")
    return (not fragment or fragment.startswith("crop=")) and not path.endswith((".hdf5", ".h5"))


def _stage_fn(task: Mapping[str, Any], context: Any) -> dict[str, Any]:
    facts = media_facts(task["row"], task["frames_per_item"], tuple(task["size_hw"]), task["camera"],
                        task["repeat_share"], task["min_repeats"])
    return facts.to_dict()


MEDIA_STAGE = Stage("audit_media", _stage_fn, resources=Resources(num_cpus=1, batch_size=4))


def media_tasks(rows: Iterable[Mapping[str, Any]], settings: Any, camera: int) -> Iterable[dict[str, Any]]:
    for row in rows:
        yield {"item_id": row["item_id"], "row": dict(row), "frames_per_item": settings.frames_per_item,
               "size_hw": list(settings.frame_size), "camera": camera,
               "repeat_share": settings.stutter_repeat_share, "min_repeats": settings.stutter_min_repeats}


def run_media_stage(rows: list[Mapping[str, Any]], settings: Any, camera: int,
                    runner: Any = None) -> dict[str, MediaFacts | str]:
    """item id → its facts, or why its media could not be decoded. `runner` (anything with the runners'
    `map(stage, tasks)`) spreads the items over workers; None decodes them one after another in this process."""
    tasks = media_tasks(rows, settings, camera)
    outcomes = runner.map(MEDIA_STAGE, tasks) if runner is not None else (execute(MEDIA_STAGE, t, None) for t in tasks)
    out: dict[str, MediaFacts | str] = {}
    for o in outcomes:
        out[o.item_id] = MediaFacts.from_dict(o.result) if o.status == "done" else (o.reason or o.status)
    return {r["item_id"]: out.get(r["item_id"], "the media stage returned nothing for it") for r in rows}
