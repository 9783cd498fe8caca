"""Ego4D videos: each full-scale video probed and checksummed once per worker process, and clip windows cut to the
frames the real stream holds."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from sources.media import VideoInfo, file_checksum, probe_video
from common.errors import BadInput


# ------------------------------------------------------------------------------------------- probing, cached


@dataclass(frozen=True)
class VideoFacts:
    info: VideoInfo
    checksum: str
    size: int


# (path, size, mtime_ns) -> VideoFacts, or the BadInput reason of a bad video (so its other clips fail fast).
# Module-level, so it lives as long as the worker process; bounded because a worker may see many videos.
_VIDEO_CACHE: OrderedDict[tuple[str, int, int], VideoFacts | str] = OrderedDict()
_CACHE_SIZE = 16


def clear_video_cache() -> None:
    _VIDEO_CACHE.clear()


def _video_facts(path: Path, missing_reason: str) -> VideoFacts:
    """Probe and checksum a video once per process; a changed file (size or mtime) is probed again."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise BadInput(missing_reason) from None
    key = (str(path), st.st_size, st.st_mtime_ns)
    cached = _VIDEO_CACHE.get(key)
    if cached is None:
        try:
            cached = VideoFacts(probe_video(path), file_checksum(path), st.st_size)
        except BadInput as e:
            cached = str(e)
        _VIDEO_CACHE[key] = cached
        while len(_VIDEO_CACHE) > _CACHE_SIZE:
            _VIDEO_CACHE.popitem(last=False)
    else:
        _VIDEO_CACHE.move_to_end(key)
    if isinstance(cached, str):
        raise BadInput(cached)
    if cached.info.fps <= 0:
        raise BadInput(f"video {path.name} declares no frame rate")
    return cached


# ------------------------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class FrameSpan:
    """The whole frames of a stream that a time window covers."""

    first_frame: int
    frame_count: int
    fps: float

    @property
    def start_s(self) -> float:
        return self.first_frame / self.fps

    @property
    def duration_s(self) -> float:
        return self.frame_count / self.fps


def cut_window(start_s: float, end_s: float, fps: float, stream_frames: int) -> FrameSpan:
    """The frames whose timestamps fall in [start_s, end_s), limited to the frames the stream holds."""
    eps = 1e-6  # a timestamp a rounding error below a frame's time still counts as that frame
    first = max(0, math.ceil(start_s * fps - eps))
    stop = min(stream_frames, math.ceil(end_s * fps - eps))
    return FrameSpan(first, max(0, stop - first), fps)
