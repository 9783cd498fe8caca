"""Stream an item's frames at the working size: decode, resample, aspect-preserving pad. Never a whole video.

Media URIs come from the items table: a video file (mp4/webm, decoded with PyAV, windowed by the item's
`start_s` and `frame_count`; `video.mp4#crop=x,y,w,h` is one view of frames that stack several, as AnyPos/ATARA
record them), or `episode.hdf5#observation/<cam>/rgb` / `#vision/<cam>/colors` (RoboTwin's 2.0 and 2026 image
datasets, decoded to RGB by media/hdf5_images.py, which knows both JPEG byte orders), or an RLDS episode inside a
TFRecord shard (media/tfrecord_frames.py).
Frames are padded like Motus's `resize_with_padding`: scale to fit inside the canvas, centre, pad black; `place`
gives the same frame area-shrunk to smaller sizes (the flow stage's) without making the canvas.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import av
import cv2
import numpy as np

from common.errors import BadInput


@dataclass(frozen=True)
class Canvas:
    """Where a source frame of size (src_h, src_w) lands inside the working canvas (height, width)."""

    height: int
    width: int
    src_h: int
    src_w: int
    scale: float
    offset_x: int
    offset_y: int

    @property
    def content_hw(self) -> tuple[int, int]:
        return round(self.src_h * self.scale), round(self.src_w * self.scale)

    def valid_mask(self) -> np.ndarray:
        """True on pixels that show the source, False on the black padding."""
        mask = np.zeros((self.height, self.width), bool)
        h, w = self.content_hw
        mask[self.offset_y : self.offset_y + h, self.offset_x : self.offset_x + w] = True
        return mask


def fit_canvas(src_hw: tuple[int, int], canvas_hw: tuple[int, int]) -> Canvas:
    src_h, src_w = src_hw
    height, width = canvas_hw
    scale = min(height / src_h, width / src_w)
    h, w = round(src_h * scale), round(src_w * scale)
    return Canvas(height, width, src_h, src_w, scale, (width - w) // 2, (height - h) // 2)


def to_canvas(frame: np.ndarray, canvas: Canvas) -> np.ndarray:
    out = np.zeros((canvas.height, canvas.width, 3), np.uint8)
    _paste(out, _content(frame, canvas), canvas.offset_y, canvas.offset_x)
    return out


def _content(frame: np.ndarray, canvas: Canvas) -> np.ndarray:
    """The source frame resized to its size on the canvas."""
    h, w = canvas.content_hw
    if (h, w) != frame.shape[:2]:
        interp = cv2.INTER_AREA if canvas.scale < 1 else cv2.INTER_LINEAR
        frame = cv2.resize(frame, (w, h), interpolation=interp)
    return frame


def _paste(out: np.ndarray, content: np.ndarray, y: int, x: int) -> None:
    out[y : y + content.shape[0], x : x + content.shape[1]] = content


def place(frame: np.ndarray, canvas: Canvas, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """A source frame at each of `sizes` (H, W): the canvas frame area-shrunk to that size, pixel for pixel, without
    making the canvas where the canvas divides into the size (192×160 and 96×80 of 384×320). The content is
    resized once, as `to_canvas` does, then area-shrunk with only the letterbox rows and columns that share a block
    with it, so the rest of the canvas's zeros are never made nor averaged. Other sizes go through the canvas."""
    content = _content(frame, canvas)
    h, w = content.shape[:2]
    out = []
    for height, width in ((int(a), int(b)) for a, b in sizes):
        if canvas.height % height or canvas.width % width or (height, width) == (canvas.height, canvas.width):
            small = np.zeros((canvas.height, canvas.width, 3), np.uint8)
            _paste(small, content, canvas.offset_y, canvas.offset_x)
            if (height, width) != (canvas.height, canvas.width):
                small = cv2.resize(small, (width, height), interpolation=cv2.INTER_AREA)
        else:
            small = np.zeros((height, width, 3), np.uint8)
            fy, fx = canvas.height // height, canvas.width // width
            y0, x0 = canvas.offset_y // fy, canvas.offset_x // fx  # the small pixels the content touches
            y1, x1 = -(-(canvas.offset_y + h) // fy), -(-(canvas.offset_x + w) // fx)
            dy, dx = canvas.offset_y - y0 * fy, canvas.offset_x - x0 * fx
            block = content
            if (dy, dx) != (0, 0) or ((y1 - y0) * fy, (x1 - x0) * fx) != (h, w):  # blocks straddle the letterbox edge
                block = np.zeros(((y1 - y0) * fy, (x1 - x0) * fx, 3), np.uint8)
                _paste(block, content, dy, dx)
            small[y0:y1, x0:x1] = cv2.resize(block, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
        out.append(small)
    return out


def _start_s(row: Mapping[str, Any], camera: int) -> float:
    """The window start in this camera's file (LeRobot v3 cameras can sit at different offsets)."""
    import json

    per_camera = json.loads(row.get("extras") or "{}").get("camera_start_s")
    if isinstance(per_camera, list) and per_camera:
        return float(per_camera[min(camera, len(per_camera) - 1)])
    return float(row.get("start_s") or 0.0)


def media_uri(row: Mapping[str, Any], camera: int = 0) -> str:
    uris = row.get("media_uris") or []
    if not uris:
        raise BadInput(f"item {row['item_id']} has no media")
    return uris[min(camera, len(uris) - 1)]


def _decode_video(path: str, start_s: float, tolerance_s: float = 1e-3,
                  report: dict[str, Any] | None = None) -> Iterator[np.ndarray]:
    """RGB frames from `start_s` on. `report`, when given, counts the frames FFmpeg flagged corrupt (decoded with
    error concealment: a damaged bitstream that still "decodes") under "corrupt_frames"."""
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if start_s > 0 and stream.time_base:
                container.seek(int(start_s / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else 0.0
                if t < start_s - tolerance_s:
                    continue  # seek lands on the keyframe before the window
                if report is not None and frame.is_corrupt:
                    report["corrupt_frames"] = report.get("corrupt_frames", 0) + 1
                yield frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as e:
        raise BadInput(f"video {Path(path).name} does not decode: {e.strerror or type(e).__name__}") from e


def _open_media(uri: str, start_s: float, tolerance_s: float = 1e-3,
                report: dict[str, Any] | None = None) -> Iterator[np.ndarray]:
    """RGB frames of a media URI, by its kind: an RLDS episode inside a TFRecord shard
    (`shard#record=N&offset=B&key=steps/...`), one view of a video (`video.mp4#crop=...`), an HDF5 image dataset
    (`file.hdf5#key`: per-frame JPEG bytes, legacy or XPolicyLab-marked, or raw uint8 RGB arrays), a video file."""
    from media.tfrecord_frames import is_tfrecord_uri, iter_tfrecord_frames  # here: h5py and the codecs load lazily

    if is_tfrecord_uri(uri):
        return iter_tfrecord_frames(uri)
    path, _, fragment = uri.partition("#")
    if fragment.startswith("crop="):  # one view of a frame that stacks several (AnyPos/ATARA head over wrists)
        x, y, w, h = crop_box(uri)
        return (f[y:y + h, x:x + w] for f in _decode_video(path, start_s, tolerance_s, report))
    if "#" in uri:
        from media.hdf5_images import iter_hdf5_frames

        return iter_hdf5_frames(*uri.split("#", 1))
    return _decode_video(uri, start_s, tolerance_s, report)


def crop_box(uri: str) -> tuple[int, int, int, int]:
    """(x, y, width, height) of a `video.mp4#crop=x,y,w,h` URI: that rectangle of every frame is the camera."""
    try:
        x, y, w, h = (int(v) for v in uri.rsplit("#crop=", 1)[1].split(","))
    except (IndexError, ValueError):
        raise BadInput(f"malformed crop URI {uri!r}: expected <video>#crop=x,y,width,height") from None
    if min(x, y) < 0 or min(w, h) <= 0:
        raise BadInput(f"crop URI {uri!r} names an empty or negative rectangle")
    return x, y, w, h


def native_frame_index(frames, native_fps: float, fps: float | None) -> np.ndarray:
    """Resampled frame indices → the native frames they were taken from (round half up). The one rule shared
    by frame streaming, exact sim flow and action lookup, so flow and actions always describe the same frames."""
    step = native_fps / fps if fps and fps < native_fps else 1.0
    return np.floor(np.asarray(frames, np.float64) * step + 0.5).astype(np.int64)


def iter_frames(row: Mapping[str, Any], canvas_hw: tuple[int, int], camera: int = 0,
                fps: float | None = None,
                report: dict[str, Any] | None = None) -> Iterator[tuple[int, np.ndarray, Canvas]]:
    """Yield (frame index, RGB uint8 canvas frame, canvas geometry) for the item's window.

    With `fps` below the item's native rate, frames are picked nearest to a regular grid at `fps` (indices then
    count resampled frames). Raises BadInput when the stream ends before the item's `frame_count`. `report`
    (video files only) gets the count of frames decoded with error concealment ("corrupt_frames").
    """
    for index, frame, canvas in iter_source_frames(row, canvas_hw, camera, fps, report):
        yield index, to_canvas(frame, canvas), canvas


def iter_source_frames(row: Mapping[str, Any], canvas_hw: tuple[int, int], camera: int = 0,
                       fps: float | None = None,
                       report: dict[str, Any] | None = None) -> Iterator[tuple[int, np.ndarray, Canvas]]:
    """`iter_frames` before the canvas: (frame index, RGB uint8 source frame, where it lands on the canvas), for
    callers that want the frame at another size (`place`)."""
    uri = media_uri(row, camera)
    native_fps = float(row["fps"])
    expected = int(row["frame_count"])
    frames = _open_media(uri, _start_s(row, camera), 0.5 / native_fps, report)  # half a frame: float timestamps drift
    canvas = None
    next_pick, out_index, seen = 0, 0, 0
    for native_index, frame in enumerate(frames):
        if native_index >= expected:
            break
        seen += 1
        if native_index != next_pick:
            continue
        if canvas is None:
            canvas = fit_canvas(frame.shape[:2], canvas_hw)
        yield out_index, frame, canvas
        out_index += 1
        next_pick = int(native_frame_index(out_index, native_fps, fps))
    if seen < expected:
        raise BadInput(f"media ended after {seen} of {expected} frames ({Path(uri.split('#')[0]).name})")


def resampled_count(frame_count: int, native_fps: float, fps: float | None) -> tuple[int, float]:
    """Frames and rate after resampling (what `iter_frames` yields)."""
    if not fps or fps >= native_fps:
        return frame_count, native_fps
    n = int(frame_count * fps / native_fps) + 2  # an upper bound; keep the frames that exist
    return int((native_frame_index(np.arange(n), native_fps, fps) < frame_count).sum()), fps
