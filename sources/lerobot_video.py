"""LeRobot video: the episode window of a camera's mp4 (what really decodes in it) and Motus's 3-view T layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from common.errors import BadInput


# ------------------------------------------------------------------------------------------------ composite


def composite_t_layout(head: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Motus's 3-view frame: `head` at full size on top, `left` and `right` wrists at half size side by side below.

    For an H×W head the result is (H + H//2)×W: 480×640 → 720×640, RoboTwin's 240×320 → 360×320
    (Motus `data/utils/multi_camera_concat.py`, same cv2 bilinear resize). Motus needs an even W; here an odd W
    gives the left wrist W//2 columns and the right one the rest, so the rows always line up.
    """
    for name, img in (("head", head), ("left", left), ("right", right)):
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"{name} frame must be [H, W, 3], got {img.shape}")
    h, w = head.shape[:2]
    half_h, left_w = h // 2, w // 2
    if half_h == 0 or left_w == 0:
        raise ValueError(f"head frame {h}x{w} is too small for a T layout")
    out = np.empty((h + half_h, w, 3), dtype=head.dtype)
    out[:h] = head
    out[h:, :left_w] = cv2.resize(left, (left_w, half_h), interpolation=cv2.INTER_LINEAR)
    out[h:, left_w:] = cv2.resize(right, (w - left_w, half_h), interpolation=cv2.INTER_LINEAR)
    return out


# ------------------------------------------------------------------------------------------------ helpers


@dataclass(frozen=True)
class CameraWindow:
    """What one camera's episode window really holds."""

    frames: int
    first_time: float | None  # pts time of the first frame in the window
    width: int
    height: int
    stream_end: float | None  # time of the last frame the file yielded (None: nothing decoded)
    ended: bool  # the stream ran out before the window's end
    packet_bytes: int



def probe_window(path: Path, start: float, end: float | None, fps: float, check_decode: bool = True,
                 digest: Any = None, label: str | None = None) -> CameraWindow:
    """Frames of `path` whose pts lie in [start - half a frame, end - half a frame) (end None: to the end).

    Seeks to the window, then demuxes; with `check_decode` every packet of the window is decoded and only frames
    that decode are counted, else packets are counted by pts and only the first frame is decoded. The window's
    compressed packets go into `digest` (the episode's own video bytes, for its checksum).
    """
    label = label or path.name
    tol = 0.5 / fps
    lo, hi = start - tol, (end - tol) if end is not None else float("inf")
    reorder = 32 / fps  # packets come in decode order: look this far past the window before stopping (demux mode)
    frames, first_time, size, last_time, packet_bytes, ended = 0, None, (0, 0), None, 0, True
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise BadInput(f"no video stream in {label}")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            tb = stream.time_base
            if start > tol and tb:
                container.seek(max(0, int(lo / tb)), stream=stream, backward=True)
            for packet in container.demux(stream):
                t_packet = float(packet.pts * tb) if packet.pts is not None and tb is not None else None
                if t_packet is not None and packet.size and lo <= t_packet < hi:
                    packet_bytes += packet.size
                    if digest is not None:
                        digest.update(bytes(packet))
                    if not check_decode:
                        frames += 1
                        first_time = t_packet if first_time is None else min(first_time, t_packet)
                if not check_decode and t_packet is not None and t_packet >= hi + reorder:
                    ended = False
                    break
                if not (check_decode or size == (0, 0)):
                    continue
                stop = False
                for frame in packet.decode():
                    t = float(frame.time) if frame.time is not None else 0.0
                    last_time = t
                    if t < lo:
                        continue
                    if t >= hi:
                        stop = True
                        break
                    if size == (0, 0):
                        size = (frame.width, frame.height)
                    if check_decode:
                        frames += 1
                        first_time = t if first_time is None else first_time
                if stop and check_decode:
                    ended = False
                    break
    except BadInput:
        raise
    except FileNotFoundError as e:
        raise BadInput(f"missing video file {label}") from e
    except av.error.FFmpegError as e:
        raise BadInput(f"video {label} does not decode in the episode window ({e.strerror or type(e).__name__}; "
                       "truncated or corrupt file?)") from e
    except (OSError, ValueError) as e:
        raise BadInput(f"unreadable video {label}: {type(e).__name__}: {e}") from e
    return CameraWindow(frames, first_time, size[0], size[1], last_time, ended, packet_bytes)

