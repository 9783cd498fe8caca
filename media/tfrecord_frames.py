"""Frames inside TFRecord episode records (RLDS, as Open X-Embodiment ships them): `shard#record=N&offset=B&key=K`
URIs, reading one episode record, decoding its JPEG/PNG camera bytes to RGB without TensorFlow."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from common.errors import BadInput
from media.tfrecord import ExampleDecodeError, TFRecordError, parse_example, read_record_at, scan_records

# ------------------------------------------------------------------------------------------------ media URIs


def frame_uri(shard: str | Path, record: int, offset: int, key: str) -> str:
    """`<shard>#record=<n>&offset=<byte>&key=<feature key>`: one camera's frames inside one episode record."""
    return f"{shard}#record={int(record)}&offset={int(offset)}&key={urllib.parse.quote(key, safe='/')}"


def is_tfrecord_uri(uri: str) -> bool:
    """True for `frame_uri` URIs (what a frame streamer should hand to `iter_tfrecord_frames`)."""
    return "#" in uri and ".tfrecord" in uri.rsplit("#", 1)[0] and "key=" in uri.rsplit("#", 1)[1]


def parse_frame_uri(uri: str) -> tuple[Path, int | None, int | None, str]:
    """(shard path, record index or None, byte offset or None, feature key) of a `frame_uri` URI."""
    if "#" not in uri:
        raise BadInput(f"not a TFRecord frame URI (no #record=...&key=...): {uri}")
    path, fragment = uri.rsplit("#", 1)
    query = urllib.parse.parse_qs(fragment, keep_blank_values=True)
    try:
        key = query["key"][0]
        record = int(query["record"][0]) if "record" in query else None
        offset = int(query["offset"][0]) if "offset" in query else None
    except (KeyError, ValueError, IndexError) as e:
        raise BadInput(f"malformed TFRecord frame URI {uri!r}: expected #record=<n>&offset=<byte>&key=<key>") from e
    if record is None and offset is None:
        raise BadInput(f"TFRecord frame URI {uri!r} names neither record nor offset")
    return Path(path), record, offset, key


def read_episode_record(shard: str | Path, record: int | None, offset: int | None) -> bytes:
    """The verified bytes of one record (by byte offset, else by walking the headers to index `record`)."""
    shard = Path(shard)
    if not shard.exists():
        raise BadInput(f"missing shard file {shard.name}")
    try:
        if offset is None:
            found, err = scan_records(shard)
            if record is None or record >= len(found):
                raise BadInput(f"{shard.name}: record {record} not found ({len(found)} readable records"
                               + (f"; {err}" if err else "") + ")")
            offset = found[record][0]
        with open(shard, "rb") as f:
            data, _ = read_record_at(f, shard, offset)
    except TFRecordError as e:
        raise BadInput(str(e)) from e
    except OSError as e:
        raise BadInput(f"unreadable shard {shard.name}: {e}") from e
    return data


def parse_episode(data: bytes, where: str, keys=None) -> dict[str, Any]:
    try:
        return parse_example(data, keys)
    except ExampleDecodeError as e:
        raise BadInput(f"{where}: not a tf.train.Example: {e}") from e


def decode_image_rgb(data: bytes) -> np.ndarray | None:
    """Encoded JPEG/PNG bytes -> RGB uint8 [H, W, 3] (TFDS encodes RGB arrays; cv2 decodes to BGR); None when the
    bytes are empty (a camera some RLDS shards store as b'' in every step) or do not decode."""
    if not data:
        return None  # cv2.imdecode asserts on an empty buffer: bad input, not a crash
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        return None
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def iter_tfrecord_frames(uri: str) -> Iterator[np.ndarray]:
    """Yield the frames named by a `frame_uri` URI, decoded one at a time, as RGB uint8 [H, W, 3].

    Raises BadInput for a missing/truncated/corrupt shard, a missing key or an undecodable image.
    """
    shard, record, offset, key = parse_frame_uri(uri)
    data = read_episode_record(shard, record, offset)
    where = f"{shard.name} record {record if record is not None else '@' + str(offset)}"
    feats = parse_episode(data, where, {key})
    images = feats.get(key)
    if images is None:
        raise BadInput(f"missing key {key} in {where}")
    if not isinstance(images, list):
        raise BadInput(f"{key} in {where} is a numeric feature, not encoded images")
    for i, buf in enumerate(images):
        frame = decode_image_rgb(buf)
        if frame is None:
            what = "is empty bytes" if not buf else "does not decode (not JPEG/PNG)"
            raise BadInput(f"{key} step {i} in {where} {what}")
        yield frame


def camera_problem(images: Any) -> str | None:
    """Why one camera's per-step encoded images cannot be used (None: usable). Empty bytes anywhere make it
    unusable; otherwise its first and last frame must decode (the frame streamer checks every frame)."""
    if not isinstance(images, list):
        return "is a numeric feature, not encoded images"
    if not images:
        return "holds no images"
    empty = sum(1 for b in images if not b)
    if empty:
        return f"{empty} of {len(images)} steps are empty bytes"
    for i in (0, len(images) - 1):
        if decode_image_rgb(images[i]) is None:
            return f"step {i} does not decode (not JPEG/PNG)"
    return None
