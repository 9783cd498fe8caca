"""The shard format's one owner: a sample's members and metadata record, deterministic tars, sample iteration,
and the shard set's `index.json` (the layout and every field: docs/formats.md, "WebDataset shards")."""

from __future__ import annotations

import dataclasses
import io
import json
import mmap
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from common import storage
from common.storage import sha256_file
from manifests.io import atomic_write_text
from manifests.shard_video import decode_frames

SAMPLE_FORMAT = "motus-pyramid/shard-sample/v2"
# v1: members only where non-empty (no actions.npy without actions, no txt/lang.npz without language)
SAMPLE_FORMATS = ("motus-pyramid/shard-sample/v1", SAMPLE_FORMAT)
# JSON fields that v1 left null when empty; v2 writes a typed empty value, so a schema inferred from a few samples
# (Hugging Face `datasets`) has one type per field
TYPED_EMPTY = {"action_timing": "", "language_encoder": "", "language_dim": 0}
SHARDS_FORMAT = "motus-pyramid/shards/v1"
INDEX_NAME = "index.json"
VIDEO_FORMATS = ("jpeg", "mp4")
# member suffix -> order inside a sample (JSON first: a streaming reader learns what follows)
MEMBER_ORDER = ("json", "frames.mjpeg", "mp4", "la14.npy", "actions.npy", "txt", "lang.npz")
# the index's fields per shard, in the order they are written (the index's bytes depend on it)
INDEX_ENTRY_FIELDS = ("split", "tier", "index", "n_samples", "bytes", "sha256", "item_ids", "path")


def sample_key(item_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_/-]", "_", item_id)


@dataclass
class SampleMeta:
    """The `<key>.json` member. A field a sample does not carry reads as its default; fields this code does not
    know are kept in `extra` and written back. Values are written as given (the stage's types make the bytes)."""

    item_id: str
    n_frames: int
    frame_size: list[int]  # [H, W] of the stored frames
    fps: float
    video_format: str = "jpeg"
    frame_offsets: list[int] | None = None  # Motion-JPEG byte offsets (T + 1); None for mp4
    source: str = ""
    tier: int = -1  # -1: unknown
    split: str = "train"
    group_id: str = ""
    embodiment: str = "none"
    delta_frames: int = 0
    delta_s: float = 0.0
    grid: str = ""
    flow_backend: str = ""
    vae_checkpoint_blake2b: str = ""
    latent_dim: int = 14
    action_dim: int = 0
    action_names: list[str] = field(default_factory=list)
    action_semantics: list[str] = field(default_factory=list)  # manifests/actions.py
    action_timing: str = ""
    language_encoder: str = ""
    language_dim: int = 0
    has_actions: bool = True  # v1 had no flag: its actions member was there only for items with actions
    format: str = ""  # set by encode_sample; a sample without one is refused on reading
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any], key: str = "?") -> SampleMeta:
        """The record from a JSON member (v1 or v2); a missing required field or a non-object is a ValueError."""
        if not isinstance(data, Mapping):
            data = json.loads(bytes(data) if isinstance(data, memoryview) else data)
        if not isinstance(data, Mapping):
            raise ValueError(f"sample {key}: the JSON member is not an object")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names and not (k in TYPED_EMPTY and v is None)}
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   and f.name not in known]
        if missing:
            raise ValueError(f"sample {key}: JSON member lacks {', '.join(missing)}")
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **out}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True).encode()


@dataclass
class Sample:
    """A decoded sample; frames stay encoded until `frames(indices)` asks for some."""

    key: str
    meta: SampleMeta
    video: bytes | memoryview  # a view into the mapped shard when read by `map_tar`
    latent_action: np.ndarray
    actions: np.ndarray | None = None
    lines: list[str] = field(default_factory=list)
    language: list[np.ndarray] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return int(self.meta.n_frames)

    @property
    def frame_size(self) -> tuple[int, int]:
        return int(self.meta.frame_size[0]), int(self.meta.frame_size[1])

    def frames(self, indices: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        """RGB uint8 [len(indices), H, W, 3] of the given frame indices (any order, repeats allowed), written into
        `out` when given."""
        return decode_frames(self.meta, self.video, indices, out)


# --- writing ------------------------------------------------------------------------------------------------------

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


def encode_sample(meta: SampleMeta, video: bytes, latent_action: np.ndarray,
                  actions: np.ndarray | None = None, lines: Sequence[str] = (),
                  language: Sequence[np.ndarray] = ()) -> list[tuple[str, bytes]]:
    """The tar members of one sample, in their fixed order."""
    key = sample_key(meta.item_id)
    if meta.video_format not in VIDEO_FORMATS:
        raise ValueError(f"video_format must be one of {VIDEO_FORMATS}, not {meta.video_format!r}")
    if language and len(language) != len(lines):
        raise ValueError(f"{meta.item_id}: {len(language)} embeddings for {len(lines)} language lines")
    language = [np.asarray(e, np.float16) for e in language]
    meta = dataclasses.replace(meta, format=SAMPLE_FORMAT, has_actions=actions is not None,
                               **{k: empty for k, empty in TYPED_EMPTY.items() if getattr(meta, k) is None})
    n_frames = len(latent_action) + 1
    # [T, 0] for an item without actions: still a list of float rows, the type the other samples have
    actions = np.zeros((n_frames, 0), np.float32) if actions is None else np.ascontiguousarray(actions, np.float32)
    dim = int(language[0].shape[1]) if language else int(meta.language_dim or 0)
    tokens = np.concatenate([e.reshape(-1) for e in language]) if language else np.zeros(0, np.float16)
    members = {"json": meta.to_json(),
               ("frames.mjpeg" if meta.video_format == "jpeg" else "mp4"): video,
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
    with storage.open_file(path) as f, tarfile.open(fileobj=f, mode="r") as tar:
        for info in tar:
            if info.isfile() and (suffixes is None or split_member(info.name)[1] in suffixes):
                yield info.name, tar.extractfile(info).read()


def map_tar(path: str | Path, suffixes: Sequence[str] | None = None) -> Iterator[tuple[str, memoryview]]:
    """As `read_tar`, but every member is a zero-copy view into the memory-mapped shard: a reader that needs 9
    frames of a clip touches only their pages instead of copying the whole clip (the loader's path).

    The mapping lives as long as any view does. Shard sets are replaced by renaming folders, never rewritten in
    place, so a mapped shard does not change under its reader (on a local filesystem an unlinked file stays
    readable while mapped). On network filesystems (NFS, FUSE mounts of object stores) an I/O error on a mapped
    page is a SIGBUS rather than an OSError: copy shards to local disk for training, or read them by URL.
    A URL (`s3://...`) is fetched whole into memory (one GET) and viewed there (`view_tar`)."""
    if storage.is_url(path):
        return view_tar(storage.read_bytes(path), storage.redact(path), suffixes)
    with open(path, "rb") as f:
        if not f.seek(0, io.SEEK_END):
            raise tarfile.ReadError(f"{path}: empty file")
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return _tar_views(mapped, str(path), suffixes)


def view_tar(data: bytes, name: str, suffixes: Sequence[str] | None = None) -> Iterator[tuple[str, memoryview]]:
    """As `map_tar` over a shard already in memory (e.g. fetched from object storage); `name` is for errors."""
    if not data:
        raise tarfile.ReadError(f"{name}: empty file")
    return _tar_views(data, name, suffixes)


def _tar_views(buffer: Any, name: str, suffixes: Sequence[str] | None) -> Iterator[tuple[str, memoryview]]:
    view = memoryview(buffer)
    with tarfile.open(fileobj=io.BytesIO(buffer) if isinstance(buffer, bytes) else buffer, mode="r:") as tar:
        for info in tar:
            if info.isfile() and (suffixes is None or split_member(info.name)[1] in suffixes):
                end = info.offset_data + info.size
                if end > len(view):
                    raise tarfile.ReadError(f"{name}: unexpected end of data in member {info.name}")
                yield info.name, view[info.offset_data:end]


# --- decoding ---------------------------------------------------------------------------------------------------


# --- reading ------------------------------------------------------------------------------------------------------

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
    meta = SampleMeta.from_json(members["json"], key)
    if meta.format not in SAMPLE_FORMATS:
        raise ValueError(f"sample {key}: format {meta.format!r}, expected one of {SAMPLE_FORMATS}")
    video = members.get("frames.mjpeg", members.get("mp4"))
    if video is None:
        raise ValueError(f"sample {key}: no video member")
    actions = _actions(members, meta)
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
    meta.has_actions = actions is not None
    return Sample(key, meta, video, np.load(io.BytesIO(members["la14.npy"])), actions, lines, language)


def _actions(members: Mapping[str, bytes | memoryview], meta: SampleMeta) -> np.ndarray | None:
    """v2 says whether the item has actions (else [T, 0]); v1 has the member only when it does."""
    if "actions.npy" not in members or not meta.has_actions:
        return None
    return np.load(io.BytesIO(members["actions.npy"]))


def iter_samples(path: str | Path, suffixes: Sequence[str] | None = None, mapped: bool = False
                 ) -> Iterator[tuple[str, dict[str, bytes | memoryview]]]:
    """(key, {suffix: bytes}) of every sample in a shard; `suffixes` reads only those members, `mapped` gives
    zero-copy views into the memory-mapped tar (`map_tar`)."""
    return group_samples((map_tar if mapped else read_tar)(path, suffixes))


def read_samples(path: str | Path, mapped: bool = False) -> Iterator[Sample]:
    """Every sample of a shard, decoded (frames stay encoded)."""
    for key, members in iter_samples(path, mapped=mapped):
        yield decode_sample(key, members)


def read_sample_metas(path: str | Path) -> Iterator[tuple[str, SampleMeta]]:
    """(key, metadata) of every sample, reading only the JSON members."""
    for key, members in iter_samples(path, ("json",)):
        yield key, SampleMeta.from_json(members["json"], key)


def read_sample_json(path: str | Path) -> Iterator[tuple[str, Any]]:
    """(key, the parsed JSON member as it is, whatever it holds): for checks that report malformed metadata."""
    for key, members in iter_samples(path, ("json",)):
        yield key, json.loads(members["json"])


def read_labels(path: str | Path) -> Iterator[tuple[SampleMeta, np.ndarray, np.ndarray | None]]:
    """(metadata, latent actions, real actions or None) of every sample, reading only those members."""
    for key, members in iter_samples(path, ("json", "la14.npy", "actions.npy")):
        meta = SampleMeta.from_json(members["json"], key)
        yield meta, np.load(io.BytesIO(members["la14.npy"])), _actions(members, meta)


def scan_samples(path: str | Path) -> list[tuple[str, SampleMeta, tuple[tuple[str, int, int], ...]]]:
    """(key, metadata, (suffix, byte offset, size) of each member) of every sample, reading only tar headers and
    the JSON members: a reader can then take any sample straight from the mapped tar."""
    out: list[tuple[str, dict[str, Any], list[tuple[str, int, int]]]] = []

    def scan(fileobj, read: Callable[[int, int], bytes]) -> None:
        with tarfile.open(fileobj=fileobj, mode="r:") as tar:
            for info in tar:  # tarfile seeks to its next header itself, so `read` may move the file position
                if not info.isfile():
                    continue
                key, suffix = split_member(info.name)
                if not out or out[-1][0] != key:
                    out.append((key, {}, []))
                out[-1][2].append((suffix, info.offset_data, info.size))
                if suffix == "json":
                    out[-1][1].update(json.loads(read(info.offset_data, info.size)))

    if storage.is_url(path):  # a shard in a bucket: headers and JSON members through buffered range reads
        with storage.open_file(path) as f:
            scan(f, lambda offset, size: (f.seek(offset), f.read(size))[1])
    else:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            scan(mapped, lambda offset, size: mapped[offset:offset + size])
    return [(key, SampleMeta.from_json(meta, key), tuple(spans)) for key, meta, spans in out]

# --- the shard index ----------------------------------------------------------------------------------------------

def index_path(root: str | Path) -> Path | str:
    """`<root>/index.json`, or `root` itself when it names the JSON file; a URL (`s3://...`) stays a URL string."""
    if storage.is_url(root):
        return str(root) if str(root).endswith(".json") else storage.join(root, INDEX_NAME)
    root = Path(root)
    return root if root.suffix == ".json" else root / INDEX_NAME


def set_root(root: str | Path) -> Path | str:
    """The folder (or URL prefix) a shard set's relative shard paths start from."""
    return storage.parent(index_path(root))


def webdataset_urls(root: str | Path, split: str | None = None) -> list[str]:
    """The shard URLs of a set (one split, or all) as the `webdataset` package opens them: local paths as they are,
    object-storage URLs as `pipe:` commands that stream the object through `python -m common.storage cat` (its
    credentials from the environment, as ours)."""
    import shlex
    import sys

    base = set_root(root)
    paths = [storage.join(base, sh["path"]) for sh in read_index(root, check_files=False)["shards"]
             if split is None or sh.get("split") == split]
    if not storage.is_url(base):
        return [str(p) for p in paths]
    return [f"pipe:{shlex.quote(sys.executable)} -m common.storage cat {shlex.quote(p)}" for p in paths]


def index_entry(root: str | Path, rel: str, split: str, tier: int | None, index: int, item_ids: Sequence[str]
                ) -> dict[str, Any]:
    """A written shard's index entry: where it is (relative to the set's root), what it holds, its size and sha256."""
    path = Path(root) / rel
    entry = {"split": split, "tier": tier, "index": index, "n_samples": len(item_ids), "bytes": path.stat().st_size,
             "sha256": sha256_file(path), "item_ids": list(item_ids), "path": rel}
    return {k: entry[k] for k in INDEX_ENTRY_FIELDS}


def write_index(root: str | Path, shards: Sequence[Mapping[str, Any]], stats: Mapping[str, Any],
                settings: Mapping[str, Any]) -> Path:
    """Write `<root>/index.json` atomically: the format, settings, statistics and the shards' entries."""
    index = {"format": SHARDS_FORMAT, "settings": dict(settings), "stats": dict(stats),
             "shards": [{k: sh[k] for k in INDEX_ENTRY_FIELDS} for sh in shards]}
    path = index_path(root)
    if storage.is_url(path):
        storage.write_bytes(path, json.dumps(index, indent=1).encode())  # one PUT: whole or absent
    else:
        atomic_write_text(path, json.dumps(index, indent=1))
    return path


def read_index(root: str | Path, check_files: bool = True) -> dict[str, Any]:
    """Read and validate a shard set's index (a folder or a URL prefix): its format and shards list, and
    (`check_files`) every shard file there at its size."""
    path = index_path(root)
    try:
        text = storage.read_text(path)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise FileNotFoundError(f"no shard index at {storage.redact(path)} (write shards with the shard stage first)"
                                ) from None
    index = json.loads(text)
    where = storage.redact(path)
    if not isinstance(index, dict) or index.get("format") != SHARDS_FORMAT:
        found = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise ValueError(f"{where}: format {found!r}, expected {SHARDS_FORMAT!r}")
    if not isinstance(index.get("shards"), list):
        raise ValueError(f"{where}: no 'shards' list")
    if not check_files:
        return index
    sizes = _shard_sizes(path, index["shards"])
    missing = [sh["path"] for sh in index["shards"] if sh["path"] not in sizes]
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard file(s) listed in {where} are missing: {', '.join(missing[:5])}"
                                + (" ..." if len(missing) > 5 else ""))
    # a size mismatch means a shard was truncated or replaced after the index was written (sha256 is too slow here)
    resized = [sh["path"] for sh in index["shards"] if sh.get("bytes") is not None and sizes[sh["path"]] != sh["bytes"]]
    if resized:
        raise ValueError(f"{len(resized)} shard file(s) differ in size from {where}: {', '.join(resized[:5])}")
    return index


def _shard_sizes(index_file: str | Path, shards: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """{relative path: size} of the listed shards that exist: one listing for a URL (thousands of objects cost one
    request per thousand), one stat per shard locally."""
    if storage.is_url(index_file):
        return storage.list_files(storage.parent(index_file))
    base = Path(index_file).parent
    return {sh["path"]: (base / sh["path"]).stat().st_size for sh in shards if (base / sh["path"]).is_file()}
