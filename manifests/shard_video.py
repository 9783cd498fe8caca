"""The video member of a shard sample: Motion-JPEG streams (frame offsets in the JSON) and reproducible H.264,
encoded and decoded (docs/formats.md, "WebDataset shards")."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Iterable, Sequence

import cv2
import numpy as np
import simplejpeg

if TYPE_CHECKING:
    from manifests.shard_format import SampleMeta


def encode_jpeg_stream(frames: Iterable[np.ndarray], quality: int = 90) -> tuple[bytes, list[int]]:
    """RGB frames → one Motion-JPEG byte stream and the byte offset of every frame (plus the end)."""
    chunks, offsets, pos = [], [0], 0
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    for frame in frames:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise ValueError("JPEG encoding failed")
        chunks.append(buf.tobytes())
        pos += len(chunks[-1])
        offsets.append(pos)
    return b"".join(chunks), offsets


def encode_mp4(frames: Iterable[np.ndarray], fps: float, crf: int = 20) -> tuple[bytes, int]:
    """RGB frames → (H.264 mp4 bytes, frame count). Reproducible bytes: single-threaded x264 without its assembly,
    bit-exact flags, explicit timestamps, and the colour conversion done by OpenCV."""
    import av
    from fractions import Fraction

    buf, stream, n = io.BytesIO(), None, 0
    with av.open(buf, "w", format="mp4", options={"fflags": "+bitexact"}) as out:
        for frame in frames:
            if stream is None:
                rate = Fraction(fps).limit_denominator(1001)
                stream = out.add_stream("libx264", rate=rate)
                stream.height, stream.width = frame.shape[:2]
                stream.pix_fmt = "yuv420p"
                stream.thread_count = 1
                # x264 with its assembly gave different bytes for the same frames from one process to the next
                # (3 of 42 demo clips): plain C is deterministic and costs ~5 ms a 384x320 frame
                stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1", "flags": "+bitexact",
                                  "x264-params": "threads=1:lookahead-threads=1:sliced-threads=0:asm=0"}
            picture = _yuv420p_frame(frame)
            picture.pts = n  # explicit timestamps in the stream's 1/fps time base (none lets the encoder guess)
            picture.time_base = 1 / rate
            for packet in stream.encode(picture):
                out.mux(packet)
            n += 1
        if stream is None:
            raise ValueError("no frames to encode")
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue(), n


def _yuv420p_frame(frame: np.ndarray):
    """An RGB frame as a yuv420p VideoFrame, converted by OpenCV (BT.601, limited range, as swscale's default).
    Letting the encoder convert rgb24 made the bytes depend on where numpy put the array (swscale's SIMD paths
    differ with alignment): the same frames gave different mp4s from one call to the next."""
    import av

    if frame.shape[0] % 2 or frame.shape[1] % 2:  # I420 needs even sides; odd ones keep the encoder's conversion
        return av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    return av.VideoFrame.from_ndarray(cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420), format="yuv420p")


def decode_frames(meta: SampleMeta, video: bytes | memoryview, indices: Sequence[int],
                  out: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 [len(indices), H, W, 3] at the stored frame size, written into `out` when given."""
    indices = [int(i) for i in indices]
    shape = (len(indices), *(int(n) for n in meta.frame_size), 3)
    if out is None:
        out = np.empty(shape, np.uint8)
    elif out.shape != shape or out.dtype != np.uint8:
        raise ValueError(f"output array is {out.dtype} {out.shape}, frames are uint8 {shape}")
    if not indices:
        return out
    if min(indices) < 0 or max(indices) >= int(meta.n_frames):
        raise IndexError(f"frame index out of range 0..{meta.n_frames - 1}: {indices}")
    if meta.video_format == "jpeg":
        for k, i in enumerate(indices):
            decode_jpeg_frame(meta, video, i, out[k])
        return out
    out[...] = _decode_mp4(video, indices)
    return out


def decode_jpeg_frame(meta: SampleMeta, video: bytes | memoryview, i: int, out: np.ndarray) -> np.ndarray:
    """Frame `i` of a Motion-JPEG stream decoded straight into `out` (RGB uint8 [H, W, 3] at the stored size).

    simplejpeg (libjpeg-turbo, the same decoder and settings as cv2.imdecode, bit-identical output) writes into
    the given buffer and is about 20% faster here; strict mode makes a truncated or corrupt frame an error
    instead of a grey-filled image."""
    offsets = meta.frame_offsets
    data = np.frombuffer(video, np.uint8, offsets[i + 1] - offsets[i], offsets[i])
    try:
        img = simplejpeg.decode_jpeg(data, "RGB", buffer=out)
    except ValueError as exc:
        raise ValueError(f"{meta.item_id}: frame {i} does not decode: {exc}") from None
    if img.shape != out.shape:
        raise ValueError(f"{meta.item_id}: frame {i} is {img.shape[1]}x{img.shape[0]}, "
                         f"the sample says {out.shape[1]}x{out.shape[0]}")
    return out


def _decode_mp4(video: bytes, indices: list[int]) -> np.ndarray:
    import av

    wanted, last = set(indices), max(indices)
    found: dict[int, np.ndarray] = {}
    with av.open(io.BytesIO(video)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                found[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    missing = wanted - set(found)
    if missing:
        raise ValueError(f"mp4 ended before frames {sorted(missing)[:5]}")
    return np.stack([found[i] for i in indices])
