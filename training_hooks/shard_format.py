"""One training sample in a WebDataset shard: how it is encoded, and how it is read back.

A sample is one clip (one catalog item), not one training window: the loader cuts windows from it at read time,
as the Motus loaders do from whole episodes, so overlapping windows never store the same frames twice and the
window rule (stride, frame count, action ratio) stays a training choice instead of being baked into the data.

Members of a sample (the WebDataset key is the item id with every character outside `[A-Za-z0-9_/-]` replaced
by `_`, so it never contains a dot):

| member | content |
|---|---|
| `<key>.json` | metadata: item id, source, tier, embodiment, split, fps, frame count, frame size, Δ, flow backend, VAE checkpoint, language encoder, `action_names` / `action_semantics` / `action_timing` (what each action dim means: manifests/actions.py), and `frame_offsets` for `frames.mjpeg` |
| `<key>.frames.mjpeg` | the T frames at the working size as one Motion-JPEG stream (concatenated JPEGs; byte offsets in the JSON) — or `<key>.mp4` (H.264) with `video_format: mp4` |
| `<key>.la14.npy` | float32 [T−1, 14]: latent actions, row j = the motion starting at frame j |
| `<key>.actions.npy` | float32 [T, D]: real actions aligned to the stored frames; float32 [T, 0] (and `has_actions` false in the JSON) for items without |
| `<key>.txt` | language lines, one per line; empty for items without language |
| `<key>.lang.npz` | token-level embeddings of the lines: `lengths` int32 [n] (tokens per line), `dim` int32 [1] (E), `tokens` float16 [ΣL_i·E] (the lines' [L_i, E] arrays, flattened and concatenated); v1: arrays `line0`, `line1`, … |

Every sample of format v2 carries the same six members (the video as `frames.mjpeg` or `mp4`, one per shard set), so tools that infer one
schema per shard from its first samples (Hugging Face `datasets`' WebDataset builder, the Hub's viewer) accept
every shard; JSON fields that can be empty hold a typed empty value (`""`, `0`), never null, so every field has
one type across samples. Samples of format v1 (written before) omit the actions and language members when empty; the reader
takes both.

Tars are deterministic: members in a fixed order, mtime 0, uid/gid 0, no user names, so the same inputs give
byte-identical shards.
"""

from __future__ import annotations

import io
import json
import mmap
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Mapping, Sequence

import cv2
import numpy as np
import simplejpeg

SAMPLE_FORMAT = "motus-pyramid/shard-sample/v2"
# v1: members only where non-empty (no actions.npy without actions, no txt/lang.npz without language)
SAMPLE_FORMATS = ("motus-pyramid/shard-sample/v1", SAMPLE_FORMAT)
# JSON fields that v1 left null when empty; v2 writes a typed empty value, so a schema inferred from a few samples
# (Hugging Face `datasets`) has one type per field
TYPED_EMPTY = {"action_timing": "", "language_encoder": "", "language_dim": 0}
SHARDS_FORMAT = "motus-pyramid/shards/v1"
VIDEO_FORMATS = ("jpeg", "mp4")
# member suffix -> order inside a sample (JSON first: a streaming reader learns what follows)
MEMBER_ORDER = ("json", "frames.mjpeg", "mp4", "la14.npy", "actions.npy", "txt", "lang.npz")


def sample_key(item_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_/-]", "_", item_id)


@dataclass
class Sample:
    """A decoded sample; frames stay encoded until `frames(indices)` asks for some."""

    key: str
    meta: dict[str, Any]
    video: bytes | memoryview  # a view into the mapped shard when read by `map_tar`
    latent_action: np.ndarray
    actions: np.ndarray | None = None
    lines: list[str] = field(default_factory=list)
    language: list[np.ndarray] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return int(self.meta["n_frames"])

    @property
    def frame_size(self) -> tuple[int, int]:
        return int(self.meta["frame_size"][0]), int(self.meta["frame_size"][1])

    def frames(self, indices: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        """RGB uint8 [len(indices), H, W, 3] of the given frame indices (any order, repeats allowed), written into
        `out` when given."""
        return decode_frames(self.meta, self.video, indices, out)


# --- encoding ---------------------------------------------------------------------------------------------------

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


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An uncompressed npz with fixed zip timestamps (np.savez stamps members with the current time)."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, a in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, _npy_bytes(a))
    return buf.getvalue()


def encode_sample(meta: Mapping[str, Any], video: bytes, latent_action: np.ndarray,
                  actions: np.ndarray | None = None, lines: Sequence[str] = (),
                  language: Sequence[np.ndarray] = ()) -> list[tuple[str, bytes]]:
    """The tar members of one sample, in their fixed order. `meta` must hold `item_id` and `video_format`."""
    key = sample_key(meta["item_id"])
    if meta["video_format"] not in VIDEO_FORMATS:
        raise ValueError(f"video_format must be one of {VIDEO_FORMATS}, not {meta['video_format']!r}")
    if language and len(language) != len(lines):
        raise ValueError(f"{meta['item_id']}: {len(language)} embeddings for {len(lines)} language lines")
    language = [np.asarray(e, np.float16) for e in language]
    meta = {"format": SAMPLE_FORMAT, **meta, "has_actions": actions is not None}
    meta.update({k: empty for k, empty in TYPED_EMPTY.items() if meta.get(k) is None})
    n_frames = len(latent_action) + 1
    # [T, 0] for an item without actions: still a list of float rows, the type the other samples have
    actions = np.zeros((n_frames, 0), np.float32) if actions is None else np.ascontiguousarray(actions, np.float32)
    dim = int(language[0].shape[1]) if language else int(meta.get("language_dim") or 0)
    tokens = np.concatenate([e.reshape(-1) for e in language]) if language else np.zeros(0, np.float16)
    members = {"json": json.dumps(meta, sort_keys=True).encode(),
               ("frames.mjpeg" if meta["video_format"] == "jpeg" else "mp4"): video,
               "la14.npy": _npy_bytes(np.ascontiguousarray(latent_action, np.float32)),
               "actions.npy": _npy_bytes(actions),
               "txt": "\n".join(lines).encode(),
               # flat 1-D arrays keep their dtype even when empty (a 2-D empty one reads as an untyped list)
               "lang.npz": _npz_bytes({"lengths": np.array([len(e) for e in language], np.int32),
                                       "dim": np.array([dim], np.int32), "tokens": tokens})}
    return [(f"{key}.{suffix}", members[suffix]) for suffix in MEMBER_ORDER if suffix in members]


def write_tar(dest: str | Path | BinaryIO, members: Iterable[tuple[str, bytes]]) -> None:
    """Write members to a tar (a path or an open binary file) with fixed metadata: identical members give
    identical bytes."""
    target = {"fileobj": dest} if hasattr(dest, "write") else {"name": dest}
    with tarfile.open(mode="w", format=tarfile.PAX_FORMAT, **target) as tar:
        for name, data in members:
            tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def read_tar(path: str | Path, suffixes: Sequence[str] | None = None) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) in tar order; with `suffixes`, only those members are read (the others are skipped
    without reading their bytes, e.g. the video when only labels are wanted)."""
    with tarfile.open(path, "r") as tar:
        for info in tar:
            if info.isfile() and (suffixes is None or split_member(info.name)[1] in suffixes):
                yield info.name, tar.extractfile(info).read()


def map_tar(path: str | Path, suffixes: Sequence[str] | None = None) -> Iterator[tuple[str, memoryview]]:
    """As `read_tar`, but every member is a zero-copy view into the memory-mapped shard: a reader that needs 9
    frames of a clip touches only their pages instead of copying the whole clip (the loader's path).

    The mapping lives as long as any view does. Shard sets are replaced by renaming folders, never rewritten in
    place, so a mapped shard does not change under its reader (on a local filesystem an unlinked file stays
    readable while mapped). On network filesystems (NFS, FUSE mounts of object stores) an I/O error on a mapped
    page is a SIGBUS rather than an OSError: copy shards to local disk for training."""
    with open(path, "rb") as f:
        if not f.seek(0, io.SEEK_END):
            raise tarfile.ReadError(f"{path}: empty file")
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(mapped)
    with tarfile.open(fileobj=mapped, mode="r:") as tar:
        for info in tar:
            if info.isfile() and (suffixes is None or split_member(info.name)[1] in suffixes):
                end = info.offset_data + info.size
                if end > len(view):
                    raise tarfile.ReadError(f"{path}: unexpected end of data in member {info.name}")
                yield info.name, view[info.offset_data:end]


# --- decoding ---------------------------------------------------------------------------------------------------

def split_member(name: str) -> tuple[str, str]:
    """`a/b/key.la14.npy` → (`a/b/key`, `la14.npy`): the key ends at the first dot of the last path part."""
    head, _, tail = name.rpartition("/")
    stem, _, suffix = tail.partition(".")
    return (f"{head}/{stem}" if head else stem), suffix


def group_samples(members: Iterable[tuple[str, bytes]]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Consecutive members sharing a key → (key, {suffix: bytes}), as WebDataset groups them."""
    key, group = None, {}
    for name, data in members:
        k, suffix = split_member(name)
        if k != key and group:
            yield key, group
            group = {}
        key = k
        group[suffix] = data
    if group:
        yield key, group


def decode_sample(key: str, members: Mapping[str, bytes | memoryview]) -> Sample:
    """The sample's metadata, labels and language, decoded; its video stays encoded (a view stays a view)."""
    if "json" not in members or "la14.npy" not in members:
        raise ValueError(f"sample {key}: missing {'json' if 'json' not in members else 'la14.npy'} member")
    meta = json.loads(bytes(members["json"]))
    if meta.get("format") not in SAMPLE_FORMATS:
        raise ValueError(f"sample {key}: format {meta.get('format')!r}, expected one of {SAMPLE_FORMATS}")
    video = members.get("frames.mjpeg", members.get("mp4"))
    if video is None:
        raise ValueError(f"sample {key}: no video member")
    # v2 says whether the item has actions; v1 has the member only when it does
    actions = np.load(io.BytesIO(members["actions.npy"])) if "actions.npy" in members else None
    if meta.get("has_actions") is False:
        actions = None
    text = bytes(members["txt"]).decode() if "txt" in members else ""
    lines = text.split("\n") if text else []
    language = []
    if "lang.npz" in members:
        with np.load(io.BytesIO(members["lang.npz"])) as z:
            if "tokens" in z.files:  # v2: one flat array, split by line lengths
                lengths, dim = z["lengths"], int(z["dim"][0])
                rows = np.split(z["tokens"].reshape(-1, dim) if len(lengths) else z["tokens"], np.cumsum(lengths)[:-1])
                language = list(rows) if len(lengths) else []
            else:  # v1: line0, line1, ...
                language = [z[f"line{i}"] for i in range(len(z.files))]
    return Sample(key, meta, video, np.load(io.BytesIO(members["la14.npy"])), actions, lines, language)


def decode_frames(meta: Mapping[str, Any], video: bytes | memoryview, indices: Sequence[int],
                  out: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 [len(indices), H, W, 3] at the stored frame size, written into `out` when given."""
    indices = [int(i) for i in indices]
    shape = (len(indices), *(int(n) for n in meta["frame_size"]), 3)
    if out is None:
        out = np.empty(shape, np.uint8)
    elif out.shape != shape or out.dtype != np.uint8:
        raise ValueError(f"output array is {out.dtype} {out.shape}, frames are uint8 {shape}")
    if not indices:
        return out
    if min(indices) < 0 or max(indices) >= int(meta["n_frames"]):
        raise IndexError(f"frame index out of range 0..{int(meta['n_frames']) - 1}: {indices}")
    if meta["video_format"] == "jpeg":
        for k, i in enumerate(indices):
            decode_jpeg_frame(meta, video, i, out[k])
        return out
    out[...] = _decode_mp4(video, indices)
    return out


def decode_jpeg_frame(meta: Mapping[str, Any], video: bytes | memoryview, i: int, out: np.ndarray) -> np.ndarray:
    """Frame `i` of a Motion-JPEG stream decoded straight into `out` (RGB uint8 [H, W, 3] at the stored size).

    simplejpeg (libjpeg-turbo, the same decoder and settings as cv2.imdecode, bit-identical output) writes into
    the given buffer and is about 20% faster here; strict mode makes a truncated or corrupt frame an error
    instead of a grey-filled image."""
    offsets = meta["frame_offsets"]
    data = np.frombuffer(video, np.uint8, offsets[i + 1] - offsets[i], offsets[i])
    try:
        img = simplejpeg.decode_jpeg(data, "RGB", buffer=out)
    except ValueError as exc:
        raise ValueError(f"{meta.get('item_id')}: frame {i} does not decode: {exc}") from None
    if img.shape != out.shape:
        raise ValueError(f"{meta.get('item_id')}: frame {i} is {img.shape[1]}x{img.shape[0]}, "
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


# --- the shard index ----------------------------------------------------------------------------------------------

def open_shard_index(root: str | Path) -> dict[str, Any]:
    """Read and validate `<root>/index.json` (or the file itself): its format, and every shard file there at its size."""
    root = Path(root)
    path = root if root.suffix == ".json" else root / "index.json"
    if not path.is_file():
        raise FileNotFoundError(f"no shard index at {path} (write shards with the shard stage first)")
    index = json.loads(path.read_text())
    if index.get("format") != SHARDS_FORMAT:
        raise ValueError(f"{path}: format {index.get('format')!r}, expected {SHARDS_FORMAT!r}")
    if not isinstance(index.get("shards"), list):
        raise ValueError(f"{path}: no 'shards' list")
    missing = [sh["path"] for sh in index["shards"] if not (path.parent / sh["path"]).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard file(s) listed in {path} are missing: {', '.join(missing[:5])}"
                                + (" ..." if len(missing) > 5 else ""))
    # a size mismatch means a shard was truncated or replaced after the index was written (sha256 is too slow here)
    resized = [sh["path"] for sh in index["shards"]
               if sh.get("bytes") is not None and (path.parent / sh["path"]).stat().st_size != sh["bytes"]]
    if resized:
        raise ValueError(f"{len(resized)} shard file(s) differ in size from {path}: {', '.join(resized[:5])}")
    return index
