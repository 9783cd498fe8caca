"""File writers the sample generators share: every file goes to a temporary sibling and is renamed into place, so
an interrupted run never leaves a complete-looking file."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av
import h5py
import numpy as np

H5_GZIP_LEVEL = 4  # depth/segmentation compress ~4-10x; higher levels cost time for little gain

# libx264 options every sample writer adds, so the same frames always give the same bytes. x264's macroblock-tree
# rate control, on its AVX-512 code path, reads memory that the encoder did not write: the same frames gave
# different files (up to ~60 grey levels apart once decoded) depending on what the process had encoded before,
# so 41 of 51 task-agnostic videos changed from one sample run to the next. Without mb-tree the bytes depend on
# the frames alone, with x264's assembly and threads kept (no slower); at the same crf files are ~20% larger and
# ~1 dB closer to the frames. (Turning off the assembly, or only its AVX-512 part, also works: slower, or not portable.)
X264_REPRODUCIBLE = {"x264-params": "mbtree=0"}


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it to ``final`` (atomic on POSIX), else delete it.

    The temporary name starts with a dot and ends in ``.tmp`` so globs like ``*.mp4`` never match it.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, obj: object) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file handle: np.save would append ".npy"
        np.save(fh, arr)


def write_h264(path: Path, frames: Sequence[np.ndarray] | np.ndarray, fps: float, crf: int = 20) -> None:
    """Write RGB uint8 frames [T,H,W,3] as an H.264 (libx264, yuv420p) mp4 with PyAV, tagged ``fps``.

    yuv420p needs even sizes. Frames get consecutive timestamps 1/fps apart and the encoder is flushed, so
    decoders return exactly T frames.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 [T,H,W,3], got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264/yuv420p needs even frame sizes, got {h}x{w}")
    rate = Fraction(fps).limit_denominator(1001)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            # "fast" preset: near-"medium" quality at a fraction of the CPU; small frames, short clips
            stream.options = {"crf": str(crf), "preset": "fast", **X264_REPRODUCIBLE}
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():  # flush the encoder's delayed frames
                container.mux(packet)


def h5_compressed(group: h5py.Group, name: str, data: np.ndarray, per_frame_chunks: bool = True) -> h5py.Dataset:
    """gzip + shuffle dataset, chunked one frame at a time so readers can fetch single frames cheaply."""
    chunks = (1, *data.shape[1:]) if per_frame_chunks and data.ndim >= 2 else True
    return group.create_dataset(
        name, data=data, compression="gzip", compression_opts=H5_GZIP_LEVEL, shuffle=True, chunks=chunks
    )
