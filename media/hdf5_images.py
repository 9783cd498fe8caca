"""Image datasets in HDF5 files (RoboTwin 2.0 and XPolicyLab 2026 episodes): per-frame JPEG bytes in either
colour order, or raw uint8 RGB arrays; media URI `episode.hdf5#<dataset key>`. See docs/formats.md (RoboTwin)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import h5py
import numpy as np

from common.errors import BadInput
from media.hdf5_open import open_hdf5_input

XPL_RGB_MARKER = b"XPL-RGB1"  # payload of the JPEG COM segment XPolicyLab's encode_image_bit stamps


def has_xpl_rgb_marker(buf: bytes) -> bool:
    """Whether a JPEG carries XPolicyLab's `XPL-RGB1` COM segment (a standard, correctly ordered RGB JPEG).

    Walks the header segments from SOI up to SOS (the marker may follow APP0 or other segments); the
    entropy-coded data is never scanned.
    """
    n = len(buf)
    if n < 4 or buf[0] != 0xFF or buf[1] != 0xD8:
        return False
    i = 2
    while i + 4 <= n:
        if buf[i] != 0xFF:
            return False
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8, 0xD9) or 0xD0 <= marker <= 0xD7:  # segments without a length
            i += 2
            continue
        if marker in (0x00, 0xDA):  # stuffing outside scan data, or start of scan: no header left
            return False
        length = (buf[i + 2] << 8) | buf[i + 3]
        if length < 2:
            return False
        if marker == 0xFE and buf[i + 4 : i + 2 + length] == XPL_RGB_MARKER:
            return True
        i += 2 + length
    return False


def _as_bytes(data: Any) -> bytes:
    if isinstance(data, np.ndarray):
        return data.tobytes()
    if isinstance(data, str):
        return data.encode("latin-1")
    return bytes(data)


def decode_image_bytes(data: Any) -> np.ndarray:
    """One stored JPEG (bytes, numpy bytes or a uint8 buffer) → RGB uint8 array, for both byte formats.

    Legacy RoboTwin bytes (an RGB array handed to cv2.imencode as if BGR): cv2.imdecode already gives RGB.
    XPolicyLab standard bytes (marked `XPL-RGB1`): cv2.imdecode gives BGR, swapped once here.
    """
    buf = _as_bytes(data)
    img = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("JPEG does not decode")
    if has_xpl_rgb_marker(buf):
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img


def image_reader(ds: h5py.Dataset) -> Callable[[int], np.ndarray]:
    """Frame i of an image dataset as RGB uint8: per-frame encoded bytes (fixed-length `S{n}`, variable-length
    bytes or uint8 buffers) or raw uint8 [T, H, W, 3] RGB arrays. ValueError for anything else."""
    if ds.ndim == 4 and ds.dtype == np.uint8:
        if ds.shape[-1] != 3:
            raise ValueError(f"raw image array of shape {ds.shape}: expected [T, H, W, 3] RGB")
        return lambda i: np.ascontiguousarray(ds[i])
    if ds.ndim == 1 and ds.dtype.kind in "SO":  # fixed-length bytes, or variable-length bytes / uint8 buffers
        return lambda i: decode_image_bytes(ds[i])
    if ds.ndim == 2 and ds.dtype == np.uint8:  # [T, N] stack of fixed-size encoded buffers
        return lambda i: decode_image_bytes(ds[i])
    raise ValueError(f"unsupported image dataset (dtype {ds.dtype}, shape {ds.shape}): expected per-frame "
                     "JPEG bytes or uint8 [T, H, W, 3] RGB")


def image_encoding(ds: h5py.Dataset) -> str:
    """How an image dataset stores its frames (recorded in extras): raw-rgb, jpeg-xpl-rgb1 or jpeg-legacy."""
    if ds.ndim == 4:
        return "raw-rgb"
    return "jpeg-xpl-rgb1" if has_xpl_rgb_marker(_as_bytes(ds[0])) else "jpeg-legacy"


def iter_hdf5_frames(path: str, key: str) -> Iterator[np.ndarray]:
    """RGB frames of the image dataset `key` in an episode HDF5 (media URI `episode.hdf5#key`), either layout."""
    name = Path(path).name
    with open_hdf5_input(path) as h5:
        if key not in h5:
            raise BadInput(f"missing key {key} in {name}")
        ds = h5[key]
        try:
            read = image_reader(ds)
        except ValueError as e:
            raise BadInput(f"{key} in {name}: {e}") from e
        for i in range(ds.shape[0]):
            try:
                frame = read(i)
            except ValueError:
                raise BadInput(f"{key} frame {i} in {name} does not decode") from None
            yield frame
