"""Export a registered shard set to the folder layout the released Motus stage-2 loader reads. Layout, captions and
text width: docs/formats.md#export-motus."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from common import storage
from manifests.io import atomic_write, atomic_write_text
from common.storage import sha256_file
from manifests.shard_format import SampleMeta, index_path, read_index, read_samples, set_root
from manifests.shard_video import encode_mp4

MOTUS_FOLDERS = ("videos", "metas", "latent_action_dim14", "umt5_wan", "qpos")
# the width of the released Motus's text input: UMT5-XXL states into Wan's text_embedding, a Linear 4096 -> 3072
MOTUS_TEXT_DIM = 4096
# the instruction of a clip without language; {embodiment}, {source} and {tier} are filled in per clip
DEFAULT_CAPTION = "{embodiment} robot: random joint exploration"
# the released Motus stage-2 window: 8 video frames every 6 frames, plus the condition frame; shorter clips are
# skipped by its loader, so the export lists them
MOTUS_WINDOW_FRAMES = 8 * 6 + 1


def motus_stem(item_id: str) -> str:
    """`source/a/b.c` → `a__b_c`: a file stem without dots or slashes, unique within its source."""
    native = item_id.split("/", 1)[1] if "/" in item_id else item_id
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in native.replace("/", "__"))


@dataclass
class ExportReport:
    out: Path
    per_source: dict[str, int]
    embedding_dim: int
    encoder: str | None
    short: list[str] = field(default_factory=list)  # item ids with fewer frames than MOTUS_WINDOW_FRAMES

    @property
    def motus_width(self) -> bool:
        return self.embedding_dim == MOTUS_TEXT_DIM


def _save_torch(path: Path, obj: Any) -> None:
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


def local_out(out: str | Path) -> Path:
    """The export folder as a local path. The writers take local folders only (an export is a tree of many small
    files written in place and checked before it is complete); `export_target` stages an export bound for a
    bucket."""
    if storage.is_url(out):
        raise ValueError(f"export_motus / export_lerobot write a local folder, not {storage.redact(out)}: use "
                         "`pyramid export ... s3://...` (or `export_target`), which stages it locally and uploads it")
    return storage.local_path(out)


@contextlib.contextmanager
def export_target(out: str | Path) -> Iterator[Path]:
    """The local folder to export into: `out` itself, or for a bucket URL a staging folder under $TMPDIR whose tree
    is uploaded to `out` when the export completes (`upload_export`), then deleted. An export that fails uploads
    nothing."""
    if not storage.is_url(out):
        yield storage.local_path(out)
        return
    existing = storage.list_files(out)
    if existing and "export.json" not in existing:  # as locally: a non-empty prefix that is not an export
        raise FileExistsError(f"{storage.redact(out)} holds objects and no export.json: choose an empty prefix or a "
                              "previous export's")
    with tempfile.TemporaryDirectory(prefix="pyramid-export-") as tmp:
        stage = Path(tmp) / "export"
        yield stage
        upload_export(stage, str(out))


def upload_export(local: Path, url: str) -> int:
    """Upload the export tree `local` to the prefix `url`, replacing a previous export there whole: its
    export.json is deleted first (the prefix reads as no export until the new one is complete), every file is
    uploaded, objects of the previous export that the new tree lacks are deleted, and export.json goes last.
    Returns the number of objects written."""
    files = {p.relative_to(local).as_posix(): p for p in sorted(local.rglob("*")) if p.is_file()}
    if "export.json" not in files:
        raise FileNotFoundError(f"{local}: no export.json, not a finished export")
    storage.remove(storage.join(url, "export.json"))
    for rel, path in files.items():
        if rel != "export.json":
            storage.put_file(path, storage.join(url, rel))
    for rel in sorted(set(storage.list_files(url)) - set(files)):
        storage.remove(storage.join(url, rel))
    storage.put_file(files["export.json"], storage.join(url, "export.json"))
    return len(files)


def _clear_previous_export(out: Path) -> None:
    """Re-exporting replaces the previous export whole (clips no longer in the shards must not linger, the Motus
    loader would still find them); a non-empty folder that is not an export is refused, never emptied."""
    if not out.exists() or not any(out.iterdir()):
        return
    previous = out / "export.json"
    if not previous.exists():
        raise FileExistsError(f"{out} is not empty and holds no export.json: choose an empty or a previous export folder")
    for source in json.loads(previous.read_text()).get("per_source", {}):
        shutil.rmtree(out / source, ignore_errors=True)
    previous.unlink()


def caption_for(meta: SampleMeta | None, caption: str = DEFAULT_CAPTION) -> str:
    """The instruction written for a clip without language lines."""
    text = caption.format(embodiment=(meta.embodiment if meta else "") or "unknown",
                          source=meta.source if meta else "", tier=meta.tier if meta else "")
    if not text.strip():
        raise ValueError(f"caption {caption!r} gives an empty instruction: the Motus loader refuses those")
    return text


def check_text_width(dim: int, encoder: str | None, allow_text_width: bool = False) -> None:
    """Embeddings the released Motus cannot take are an error before anything is written, unless allowed."""
    if dim != MOTUS_TEXT_DIM and not allow_text_width:
        raise ValueError(
            f"the shards' language embeddings are {dim} wide ({encoder}), but the released Motus feeds umt5_wan/*.pt "
            f"into Wan's text_embedding, a Linear {MOTUS_TEXT_DIM} -> 3072, so training would fail with 'mat1 and mat2 "
            f"shapes cannot be multiplied'. Shard with `shards.language_encoder: umt5` and `shards.language_encoder_path`"
            f" set to a local UMT5-XXL encoder folder (E = {MOTUS_TEXT_DIM}), or pass --allow-text-width "
            f"(allow_text_width=True) for a Motus whose text layer takes {dim}")


def export_motus(shard_root: str | Path, out: str | Path, splits: tuple[str, ...] | None = ("train",),
                 on_item: Callable[[str], None] | None = None, caption: str = DEFAULT_CAPTION,
                 allow_text_width: bool = False) -> ExportReport:
    """Write the shards of `splits` (train by default: the Motus loader has no notion of splits, so a tree is one
    split; None exports every split into one tree) to the Motus layout under `out`. Clips without language get
    `caption` (see `caption_for`) as their instruction. Embeddings must be `MOTUS_TEXT_DIM` wide unless
    `allow_text_width`; shards without any language get zero embeddings of that width."""
    import torch

    out = local_out(out)
    index = read_index(shard_root)
    caption_for(None, caption)  # a template that gives an empty text fails before anything is written
    language = index["stats"].get("language") or {}
    dim = int(language.get("dim") or MOTUS_TEXT_DIM)
    check_text_width(dim, language.get("encoder"), allow_text_width)
    _clear_previous_export(out)
    stems: dict[tuple[str, str], str] = {}
    per_source: dict[str, int] = {}
    items = []
    for sh in index["shards"]:
        if splits and sh["split"] not in splits:
            continue
        for sample in read_samples(storage.join(set_root(shard_root), sh["path"])):
            meta = sample.meta
            root, stem = out / meta.source, motus_stem(meta.item_id)
            other = stems.setdefault((meta.source, stem), meta.item_id)
            if other != meta.item_id:
                raise ValueError(f"items {other} and {meta.item_id} both map to {meta.source}/videos/{stem}.mp4")
            for folder in MOTUS_FOLDERS:
                (root / folder).mkdir(parents=True, exist_ok=True)
            if meta.video_format == "mp4":
                video = sample.video
            else:
                frames = (sample.frames([i])[0] for i in range(sample.n_frames))
                video, _ = encode_mp4(frames, float(meta.fps))
            atomic_write(root / "videos" / f"{stem}.mp4", lambda f: f.write(video))
            lines = sample.lines or [caption_for(meta, caption)]
            atomic_write_text(root / "metas" / f"{stem}.txt", "\n".join(lines) + "\n")
            _save_torch(root / "latent_action_dim14" / f"{stem}.pt", torch.from_numpy(sample.latent_action.astype(np.float32)))
            if sample.language and any(e.shape[1] != dim for e in sample.language):
                raise ValueError(f"{meta.item_id}: language embeddings {sample.language[0].shape[1]} wide, the shard "
                                 f"index says {dim} ({language.get('encoder')}): reshard with one encoder")
            embeddings = ([torch.from_numpy(e.astype(np.float32)) for e in sample.language] if sample.language
                          else [torch.zeros(1, dim) for _ in lines])
            _save_torch(root / "umt5_wan" / f"{stem}.pt", embeddings)
            if sample.actions is not None:
                _save_torch(root / "qpos" / f"{stem}.pt", torch.from_numpy(sample.actions.astype(np.float32)))
            per_source[meta.source] = per_source.get(meta.source, 0) + 1
            items.append({"item_id": meta.item_id, "path": f"{meta.source}/videos/{stem}.mp4",
                          "split": meta.split, "frames": sample.n_frames, "has_qpos": sample.actions is not None,
                          "captioned": not sample.lines})
            if on_item:
                on_item(meta.item_id)
    for stale in sorted(out.rglob("cached_episodes*.pkl")):  # the Motus loader's episode caches, any version
        stale.unlink()
    short = sorted(i["item_id"] for i in items if i["frames"] < MOTUS_WINDOW_FRAMES)
    index_sha = sha256_file(index_path(shard_root))
    atomic_write_text(out / "export.json", json.dumps(
        {"format": "motus-pyramid/motus-export/v1", "shard_index_sha256": index_sha, "encoder": language.get("encoder"),
         "embedding_dim": dim, "per_source": per_source, "motus_window_frames": MOTUS_WINDOW_FRAMES,
         "shorter_than_window": short, "items": items}, indent=1))
    return ExportReport(out, per_source, dim, language.get("encoder"), short)
