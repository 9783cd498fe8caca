"""Small, dependable media utilities: probe a video by reading its stream (not trusting its header),
checksum inputs, fingerprint files for rerun detection."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import av
import numpy as np

from common.fingerprint import fingerprint as hash_parts
from common.errors import BadInput


@dataclass(frozen=True)
class VideoInfo:
    frame_count: int  # frames with data in the stream (counted by demuxing, not from metadata)
    fps: float  # average frame rate the container declares
    width: int
    height: int
    duration_s: float
    codec: str
    header_frames: int  # what the container header claims (0 when it does not say)


def probe_video(path: str | os.PathLike, check_decode: bool = True) -> VideoInfo:
    """Count packets by demuxing (cheap), then decode the first and last frames to prove the stream is whole.

    Raises BadInput with a readable reason for missing, empty, truncated or undecodable files.
    """
    path = Path(path)
    if not path.exists():
        raise BadInput(f"missing video file {path.name}")
    if path.stat().st_size == 0:
        raise BadInput(f"empty video file {path.name}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise BadInput(f"no video stream in {path.name}")
            stream = container.streams.video[0]
            header_frames = int(stream.frames or 0)
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            codec = stream.codec_context.name
            width, height = stream.codec_context.width, stream.codec_context.height
            packets = sum(1 for p in container.demux(stream) if p.size > 0)
        if packets == 0:
            raise BadInput(f"video {path.name} has no frames")
        if check_decode:
            first, decoded = None, 0
            with av.open(str(path)) as container:
                for frame in container.decode(video=0):
                    first = first or frame
                    decoded += 1
            if first is None:
                raise BadInput(f"video {path.name}: no frame decodes ({packets} packets)")
            if decoded < packets:
                raise BadInput(f"video {path.name} is truncated: {decoded} of {packets} frames decode")
            width, height = first.width, first.height
    except BadInput:
        raise
    except av.error.FFmpegError as e:
        raise BadInput(f"unreadable video {path.name}: {e.strerror or type(e).__name__}") from e
    except (OSError, ValueError) as e:
        raise BadInput(f"unreadable video {path.name}: {type(e).__name__}: {e}") from e
    duration = packets / fps if fps > 0 else 0.0
    return VideoInfo(packets, fps, width, height, duration, codec, header_frames)


def file_checksum(paths: str | os.PathLike | Iterable[str | os.PathLike], chunk: int = 1 << 20) -> str:
    """blake2b over the bytes of one file, or of several files in the given order (names included)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    h = hashlib.blake2b(digest_size=16)
    for p in paths:
        p = Path(p)
        h.update(p.name.encode() + b"\x00")
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()


def fingerprint(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> str:
    """size + mtime of the inputs: cheap to compute at discovery; a changed input gets redone on rerun."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    parts = []
    for p in paths:
        try:
            st = os.stat(p)
            parts.append(f"{Path(p).name}:{st.st_size}:{st.st_mtime_ns}")
        except FileNotFoundError:
            parts.append(f"{Path(p).name}:missing")
    return hash_parts(*parts)


def check_finite(name: str, array: np.ndarray) -> None:
    """BadInput naming the first bad rows when an action/state array holds NaN or Inf."""
    bad = ~np.isfinite(array)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        shown = ", ".join(map(str, rows[:5])) + (" ..." if len(rows) > 5 else "")
        raise BadInput(f"non-finite values (NaN/Inf) in {name} at rows {shown} ({len(rows)} rows)")
