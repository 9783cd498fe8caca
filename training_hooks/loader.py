"""Motus training batches from our WebDataset shards: windows cut from whole clips, normalised and collated into
exactly the dict the Motus trainer consumes (research motus_and_formats.md §1.2–1.5).

    loader = make_loader("demo_run/shards", "train", LoaderConfig(), batch_size=4, num_workers=2)
    for batch in loader:  # first_frame, video_frames, action_sequence, language_embedding, language_mask,
        ...               # [initial_state], item_id, tier

Pipeline, one plain generator per step, run by every consumer (a worker thread or process, or the caller):
shards of this consumer → samples (a `shard_format.Sample`, frames still encoded, a view into the memory-mapped
shard) → windows (index sets drawn by the Motus rule) → shuffle buffer (holds encoded clips only) → labels cut
and normalised, frames decoded straight into the batch being filled → batches.

Window rule, step = `video_step` (or `video_step_s` × the clip's fps, rounded to a multiple of r: the same time
span for every frame rate), F frames, ratio r, g = step / r, A = F·r, clip of T frames:
- condition index c uniform in [0, T−1−F·step] (0 when negative); `first_frame` = frame c;
- video frames c + (i+1)·step for i < F, clamped to T−1;
- `latent` mode (stage 2): latent rows c + k·g for k < A, clamped to T−2 (row j = the motion starting at frame j);
- `real` mode (stage 3): action rows c + (k+1)·g for k < A, clamped to T−1, so video frame i is the action at
  position (i+1)·r − 1; `initial_state` = actions[c] (`state_from_actions`, RoboTwin's qpos convention).

Splitting. Consumers are (rank, worker) pairs, `world_size × num_workers` of them. Every consumer shuffles the
shard list with the same (seed, epoch) and takes every n-th shard, so the ranks see disjoint shards whose union is
the split, and each epoch deals them out differently. With fewer shards than consumers the loader falls back to
sample-level splitting instead of failing or duplicating: every consumer reads every shard (in the same shuffled
order) and keeps every n-th sample; decoding only happens for kept samples, so the extra cost is tar reads. Either
way per-consumer sample counts can differ by a shard's worth, so with `resampled=False` the ranks of a DDP run can
get different batch counts: train multi-node with `resampled=True` (an endless stream of shards drawn with
replacement, weighted by sample count, per-consumer seeds) and count steps, as WebDataset advises.

Why not `webdataset.WebDataset` (1.0.2): its node splitter reads the rank from torch.distributed (we take it
explicitly), it shuffles shards after splitting (a rank would see the same shards every epoch), it has no
sample-level fallback, and its handlers drop bad samples without counting them. The steps here are plain
generators in its style. Tars are memory-mapped (`shard_format.map_tar`): a window reads the pages of its 9
JPEGs instead of copying the whole clip.

Workers. `num_workers` > 0 starts decoding threads by default (`worker_kind: thread`): each is one consumer,
decodes into the float32 batches itself and hands them over through a bounded queue; the loader takes them
round-robin, as a DataLoader takes its workers' batches, so threads and processes give the same batches in the
same order. JPEG decoding (simplejpeg) and the numpy passes release the GIL; tar headers, JSON and npy parsing
hold it but are a tenth of a sample's time. Threads share one address space, so batches need no shared-memory
copies, and the float32 buffers come from one pool. `worker_kind: process` runs DataLoader worker processes
instead (for per-sample Python that holds the GIL, e.g. mp4 clips): they send uint8 frames through shared memory
(a quarter of float32's bytes) and the consumer widens them. With workers `make_loader` sets OpenCV to one thread
in the calling process (before a fork: OpenCV's pool is not fork-safe, cv2.setNumThreads in a forked worker
hung); worker processes get one torch thread in `worker_init_fn`.

Speed (bench/bench_loader.py, 2 cores). Per frame the JPEG is decoded into a small reused buffer that stays in
cache and scaled into its float32 CHW slot in one pass. Float32 buffers are reused once no tensor refers to them
(`_BufferPool`: first-touch page faults on 13 MB of fresh float32 per sample were a third of the CPU on a VM).

Bad samples (undecodable member or frame, T < 2, latent rows ≠ T−1, no or misaligned actions in `real` mode, an
embodiment without train-split action stats when normalising in `real` mode) are
skipped, logged (the first few per reason and consumer) and counted in `loader.skipped` (all workers, shared
memory); a missing shard file is a FileNotFoundError naming it.
"""

from __future__ import annotations

import json
import logging
import mmap
import queue
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from flow_extraction.frames import fit_canvas, to_canvas
from training_hooks.shard_format import (SHARDS_FORMAT, Sample, decode_jpeg_frame, decode_sample, group_samples,
                                         map_tar)

log = logging.getLogger(__name__)

ACTION_MODES = ("latent", "real")
NORMALISERS = ("q01q99", "meanstd", "none")
WORKER_KINDS = ("thread", "process")
Q_CLIP = 1.5  # q01q99 maps q01..q99 to −1..1; values beyond are clipped to ±1.5
SKIP_REASONS = ("undecodable_sample", "undecodable_frames", "too_short", "latent_rows", "no_actions",
                "actions_rows", "no_action_stats")
LOGGED_PER_REASON = 5  # per consumer; the counter keeps counting after that


@dataclass
class LoaderConfig:
    """How windows are cut and batches shaped; the defaults are Motus's stage-2 config (latent_action.yaml)."""

    height: int = 384
    width: int = 320
    num_video_frames: int = 8  # F
    video_step: int = 6  # raw frames between video frames (Motus global_downsample_rate)
    # seconds between video frames: when set, each clip's step is round(video_step_s × its fps) (a multiple of
    # action_ratio), so 12 fps SSv2 and 50 fps LeRobot clips get the same time span as 30 fps ones (Motus's 6
    # frames at 30 Hz = 0.2 s, the flow Δ the latents were made with)
    video_step_s: float | None = None
    action_ratio: int = 1  # actions per video frame (Motus video_action_freq_ratio); video_step % ratio == 0
    action_mode: str = "latent"  # latent (stage 2: la14 rows) | real (stage 3: actions.npy rows)
    action_dim: int = 14  # D; real actions with fewer dims are zero-padded
    max_text_len: int = 32  # L: language tokens kept per sample (zero-padded)
    normalise: str = "q01q99"  # q01q99 | meanstd | none (Motus itself feeds latents raw)
    state_from_actions: bool = True  # real mode: initial_state = the action row at the condition frame
    shuffle_buffer: int = 64  # windows held for shuffling; holds their clips still encoded (~MBs each, not frames)
    windows_per_clip: int = 1  # windows drawn per clip visit
    resampled: bool = False  # endless stream of shards drawn with replacement (multi-node training)
    text_dim: int | None = None  # language width when the shards carry no embeddings (None: from the index)
    worker_kind: str = "thread"  # what num_workers > 0 starts: decoding threads, or DataLoader worker processes
    # batches queued per worker; with threads, workers × (prefetch + 1) + 2 float32 batches can exist at once
    prefetch: int = 2

    def validate(self) -> None:
        if self.action_mode not in ACTION_MODES:
            raise ValueError(f"action_mode {self.action_mode!r} is not one of {ACTION_MODES}")
        if self.normalise not in NORMALISERS:
            raise ValueError(f"normalise {self.normalise!r} is not one of {NORMALISERS}")
        if self.worker_kind not in WORKER_KINDS:
            raise ValueError(f"worker_kind {self.worker_kind!r} is not one of {WORKER_KINDS}")
        if min(self.height, self.width, self.num_video_frames, self.video_step, self.action_ratio,
               self.action_dim, self.max_text_len, self.windows_per_clip, self.prefetch) < 1:
            raise ValueError(f"sizes, counts and steps must be >= 1: {self}")
        if self.video_step % self.action_ratio:
            raise ValueError(f"video_step {self.video_step} is not a multiple of action_ratio {self.action_ratio}")

    @property
    def num_actions(self) -> int:
        return self.num_video_frames * self.action_ratio


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


# --- normalisation ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Normaliser:
    """x → clip((x − offset) · scale); per dimension."""

    offset: np.ndarray
    scale: np.ndarray
    clip: float | None

    @classmethod
    def from_stats(cls, stats: Mapping[str, Sequence[float]], how: str, what: str) -> Normaliser | None:
        if how == "none":
            return None
        need = ("q01", "q99") if how == "q01q99" else ("mean", "std")
        if any(k not in stats for k in need):
            raise KeyError(f"index stats for {what} lack {need} (normalise: {how}); rebuild the shards or use 'none'")
        if how == "q01q99":
            lo, hi = np.asarray(stats["q01"], np.float32), np.asarray(stats["q99"], np.float32)
            span = hi - lo
            # a dimension that never moves (q01 == q99) maps to 0 instead of dividing by zero
            scale = np.where(span > 1e-8, 2.0 / np.maximum(span, 1e-8), 0.0).astype(np.float32)
            return cls((lo + hi) / 2, scale, Q_CLIP)
        mean, std = np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32)
        return cls(mean, np.where(std > 1e-8, 1.0 / np.maximum(std, 1e-8), 1.0).astype(np.float32), None)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = (x - self.offset) * self.scale
        return np.clip(y, -self.clip, self.clip) if self.clip is not None else y


# --- window rule --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Window:
    condition: int
    video: list[int]  # F frame indices
    rows: list[int]  # A latent or action rows


def clip_step(cfg: LoaderConfig, fps: float | None) -> int:
    """Frames between video frames for a clip at `fps`: `video_step`, or `video_step_s` in this clip's frames."""
    if cfg.video_step_s is None or not fps:
        return cfg.video_step
    r = cfg.action_ratio
    return max(r, int(round(cfg.video_step_s * float(fps) / r)) * r)


def draw_window(n_frames: int, cfg: LoaderConfig, rng: np.random.Generator, step: int | None = None) -> Window:
    """One window by the Motus index rule (module docstring); needs n_frames >= 2."""
    T, step, F, r = n_frames, step or cfg.video_step, cfg.num_video_frames, cfg.action_ratio
    g = step // r
    top = T - 1 - F * step
    c = int(rng.integers(0, top + 1)) if top > 0 else 0
    video = [min(c + (i + 1) * step, T - 1) for i in range(F)]
    if cfg.action_mode == "latent":
        rows = [min(c + k * g, T - 2) for k in range(F * r)]
    else:
        rows = [min(c + (k + 1) * g, T - 1) for k in range(F * r)]
    return Window(c, video, rows)


# --- frames -------------------------------------------------------------------------------------------------------

def pad_to_canvas(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Motus's `resize_with_padding` (scale to fit keeping the aspect, centre, pad black), as the pipeline does it."""
    if frames.shape[1:3] == (height, width):
        return frames
    canvas = fit_canvas(frames.shape[1:3], (height, width))
    return np.stack([to_canvas(f, canvas) for f in frames])


# --- the dataset --------------------------------------------------------------------------------------------------

class ShardWindows(IterableDataset):
    """Batches of windows from the shards of one split. `batches(worker, n_workers, pool)` is one consumer's
    stream; iterating the dataset (what a DataLoader worker process does) is the stream of that worker."""

    def __init__(self, shards: list[tuple[Path, int]], cfg: LoaderConfig, stats: Mapping[str, Any],
                 batch_size: int, drop_last: bool = True, seed: int = 0, epoch: int = 0, rank: int = 0,
                 world_size: int = 1):
        cfg.validate()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        self.shards, self.cfg, self.batch_size, self.drop_last = shards, cfg, batch_size, drop_last
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size
        self.latent_norm = (Normaliser.from_stats(stats.get("latent_action", {}), cfg.normalise, "latent_action")
                            if cfg.action_mode == "latent" else None)
        self.action_stats = stats.get("actions", {})
        self._action_norms: dict[str, Normaliser | None] = {}
        self.lang_dim = int((stats.get("language") or {}).get("dim") or cfg.text_dim or 0)
        # skip counters per (worker slot, reason) in shared memory, so worker processes' counts reach the consumer
        self.skips = torch.zeros(1, len(SKIP_REASONS), dtype=torch.int64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def reserve_workers(self, num_workers: int) -> None:
        self.skips = torch.zeros(max(1, num_workers), len(SKIP_REASONS), dtype=torch.int64).share_memory_()

    @property
    def skipped(self) -> dict[str, int]:
        totals = self.skips.sum(0).tolist()
        return {reason: n for reason, n in zip(SKIP_REASONS, totals) if n}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """In a DataLoader worker process: that worker's batches, frames as uint8 in shared memory (`widen_frames`
        makes them float in the consumer); elsewhere: consumer 0 of 1 with float frames."""
        info = get_worker_info()
        if info is None:
            return self.batches(0, 1, _BufferPool())
        return self.batches(info.id, info.num_workers, None)

    def batches(self, worker: int, n_workers: int, pool: _BufferPool | None) -> Iterator[dict[str, Any]]:
        """Consumer (rank, worker)'s batches: float32 frames from `pool`, or uint8 frames in shared memory."""
        return _Consumer(self, worker, n_workers).batches(pool)

    def action_norm(self, embodiment: str | None) -> Normaliser | None:
        if self.cfg.normalise == "none":
            return None
        if embodiment not in self._action_norms:
            if embodiment not in self.action_stats:
                raise KeyError(f"index stats have no actions for embodiment {embodiment!r} (have "
                               f"{sorted(self.action_stats)}); use normalise: none or rebuild the shards")
            self._action_norms[embodiment] = Normaliser.from_stats(self.action_stats[embodiment], self.cfg.normalise,
                                                                   f"actions/{embodiment}")
        return self._action_norms[embodiment]


class _Consumer:
    """One consumer's pass over its share of the shards: its seed, its skip slot, its log counts. One per worker
    process or thread, so nothing here is shared between threads."""

    def __init__(self, ds: ShardWindows, worker: int, n_workers: int):
        self.ds, self.cfg = ds, ds.cfg
        self.consumers, self.me = ds.world_size * n_workers, ds.rank * n_workers + worker
        self.slot = worker if worker < len(ds.skips) else 0
        self.logged: dict[str, int] = {}
        self.bad: set[str] = set()
        self.rng = np.random.default_rng([ds.seed, ds.epoch, self.me])

    def batches(self, pool: _BufferPool | None) -> Iterator[dict[str, Any]]:
        """Windows decoded straight into the batch being filled; a clip whose frames fail to decode is skipped
        and its slot filled by the next window, so every batch but a last partial one is full."""
        ds, cfg = self.ds, self.cfg
        frames: _FrameBatch | None = None
        labels: list[dict[str, Any]] = []
        for sample, window in self._shuffle(self._windows(self._members())):
            if sample.key in self.bad:  # an earlier window of this clip did not decode (counted once, there)
                continue
            item = self._labels(sample, window)
            if frames is None:
                frames = _FrameBatch(ds.batch_size, cfg, pool)
            try:
                frames.write(len(labels), sample, [window.condition, *window.video])
            except _Undecodable as exc:  # skips the clip; any other error is a bug or a bad setting: raised
                self.bad.add(sample.key)
                self._skip("undecodable_frames", sample.key, exc.__cause__ or exc)
                continue
            labels.append(item)
            if len(labels) == ds.batch_size:
                yield frames.finish(collate_labels(labels, cfg.max_text_len, ds.lang_dim))
                frames, labels = None, []
        if labels and not ds.drop_last:
            yield frames.finish(collate_labels(labels, cfg.max_text_len, ds.lang_dim))

    # -- the steps --

    def _members(self) -> Iterator[tuple[str, dict[str, memoryview]]]:
        ds = self.ds
        if self.cfg.resampled:  # endless, weighted by sample count
            rng = np.random.default_rng([ds.seed, ds.epoch, self.me, 1])
            weights = np.array([max(n, 1) for _, n in ds.shards], np.float64)
            while True:
                yield from _read(ds.shards[int(rng.choice(len(ds.shards), p=weights / weights.sum()))][0])
        order = np.random.default_rng([ds.seed, ds.epoch]).permutation(len(ds.shards))
        if len(ds.shards) >= self.consumers:
            for i in order[self.me::self.consumers]:
                yield from _read(ds.shards[i][0])
            return
        position = 0  # fewer shards than consumers: every consumer reads all, keeps every n-th sample
        for i in order:
            for member in _read(ds.shards[i][0]):
                if position % self.consumers == self.me:
                    yield member
                position += 1

    def _windows(self, members: Iterator[tuple[str, dict[str, memoryview]]]) -> Iterator[tuple[Sample, Window]]:
        cfg = self.cfg
        for key, group in members:
            try:
                sample = decode_sample(key, group)
                T = sample.n_frames
            except Exception as exc:  # noqa: BLE001 - any broken member is a bad sample, not a dead run
                self._skip("undecodable_sample", key, exc)
                continue
            if T < 2:
                self._skip("too_short", key, f"{T} frame(s)")
                continue
            if len(sample.latent_action) != T - 1:
                self._skip("latent_rows", key, f"{len(sample.latent_action)} latent rows for {T} frames")
                continue
            if cfg.action_mode == "real":
                if sample.actions is None:
                    self._skip("no_actions", key, "no actions.npy")
                    continue
                if len(sample.actions) != T:
                    self._skip("actions_rows", key, f"{len(sample.actions)} action rows for {T} frames")
                    continue
                if cfg.normalise != "none" and sample.meta.get("embodiment") not in self.ds.action_stats:
                    self._skip("no_action_stats", key,
                               f"no train-split action stats for {sample.meta.get('embodiment')!r}")
                    continue
            step = clip_step(cfg, sample.meta.get("fps"))
            for _ in range(cfg.windows_per_clip):
                yield sample, draw_window(T, cfg, self.rng, step)

    def _shuffle(self, items: Iterator[tuple[Sample, Window]]) -> Iterator[tuple[Sample, Window]]:
        """WebDataset's buffer shuffle with our generator: fill to `shuffle_buffer`, then swap out a random one."""
        size, rng = self.cfg.shuffle_buffer, self.rng
        if size <= 1:
            yield from items
            return
        buf: list[tuple[Sample, Window]] = []
        for item in items:
            if len(buf) < size:
                buf.append(item)
                continue
            j = int(rng.integers(len(buf)))
            buf[j], item = item, buf[j]
            yield item
        while buf:
            j = int(rng.integers(len(buf)))
            buf[j], buf[-1] = buf[-1], buf[j]
            yield buf.pop()

    def _labels(self, sample: Sample, window: Window) -> dict[str, Any]:
        """Everything of one window but its frames: actions (normalised, padded), state, a language line, ids."""
        cfg, state = self.cfg, None
        if cfg.action_mode == "latent":
            actions = sample.latent_action[window.rows]
            if self.ds.latent_norm is not None:
                actions = self.ds.latent_norm(actions)
        else:
            embodiment = sample.meta.get("embodiment")
            norm = self.ds.action_norm(embodiment)
            actions = sample.actions[window.rows]
            if cfg.state_from_actions:
                state = sample.actions[window.condition]
            if norm is not None:
                actions = norm(actions)
                state = norm(state) if state is not None else None
            actions = _pad_actions(actions, cfg.action_dim, embodiment)
            state = _pad_actions(state, cfg.action_dim, embodiment) if state is not None else None
        language = None
        if sample.language:
            language = sample.language[int(self.rng.integers(len(sample.language)))][: cfg.max_text_len]
        tier = sample.meta.get("tier")
        return {"actions": actions, "state": state, "language": language,
                "item_id": str(sample.meta.get("item_id", sample.key)), "tier": int(tier) if tier is not None else -1}

    def _skip(self, reason: str, key: str, why: Any) -> None:
        self.ds.skips[self.slot, SKIP_REASONS.index(reason)] += 1
        n = self.logged[reason] = self.logged.get(reason, 0) + 1
        if n <= LOGGED_PER_REASON:
            log.warning("skipping sample %s (%s): %s%s", key, reason, why,
                        " (further skips for this reason are only counted)" if n == LOGGED_PER_REASON else "")


def _read(path: Path) -> Iterator[tuple[str, dict[str, memoryview]]]:
    if not path.is_file():
        raise FileNotFoundError(f"shard file missing: {path}")
    yield from group_samples(map_tar(path))


def _pad_actions(x: np.ndarray, want: int, embodiment: str | None) -> np.ndarray:
    d = x.shape[-1]
    if d > want:
        raise ValueError(f"embodiment {embodiment!r} has {d}-d actions, more than action_dim {want}")
    if d == want:
        return x
    return np.concatenate([x, np.zeros((*x.shape[:-1], want - d), x.dtype)], -1)


# --- frames into batches ------------------------------------------------------------------------------------------

_SCALE = np.float32(1.0 / 255.0)


class _Undecodable(Exception):
    """A sample whose frames do not decode (its cause says why): the clip is skipped and counted."""


class _FrameBatch:
    """The frames of one batch being filled, row by row: float32 `first_frame` [B, 3, H, W] and `video_frames`
    [B, F, 3, H, W] from a buffer pool (in the consuming process), or uint8 `frames` [B, F+1, H, W, 3] in shared
    memory (in a worker process, for `widen_frames`).

    Float rows: each JPEG is decoded into a small reused HWC buffer that stays in cache, split into planes and
    scaled into its CHW slot in one pass, so a frame's bytes go through memory once (decode, stack and widen as
    separate passes over the whole batch cost a third more). uint8 rows: decoded straight into the shared slot."""

    def __init__(self, batch_size: int, cfg: LoaderConfig, pool: _BufferPool | None):
        H, W, F = cfg.height, cfg.width, cfg.num_video_frames
        self.hw, self.pool = (H, W), pool
        if pool is not None:
            self.first, self.video = pool.take((batch_size, 3, H, W)), pool.take((batch_size, F, 3, H, W))
            self.first_np, self.video_np = self.first.numpy(), self.video.numpy()
            self.hwc, self.planes = _scratch(H, W)
        else:
            storage = torch.UntypedStorage._new_shared(batch_size * (F + 1) * H * W * 3)
            self.frames = torch.empty(0, dtype=torch.uint8).set_(storage).view(batch_size, F + 1, H, W, 3)
            self.frames_np = self.frames.numpy()

    def write(self, b: int, sample: Sample, wanted: list[int]) -> None:
        """Row b: frames `wanted` (condition first; clamped repeats at a clip's end are decoded once). Raises
        `_Undecodable` when the sample's frames do not decode."""
        try:
            size = sample.frame_size
            jpeg = sample.meta.get("video_format") == "jpeg"
            unique = sorted(set(wanted))
            decoded = None if jpeg else dict(zip(unique, sample.frames(unique)))  # mp4: one pass up to the last
        except Exception as exc:  # noqa: BLE001 - whatever the container library raises
            raise _Undecodable(sample.key) from exc
        fitted = size == self.hw
        canvas = None if fitted else fit_canvas(size, self.hw)
        first_k: dict[int, int] = {}
        for k, i in enumerate(wanted):
            if i in first_k:
                self._copy(b, first_k[i], k)
                continue
            first_k[i] = k
            if jpeg:
                target = self._slot_u8(b, k) if fitted else np.empty((*size, 3), np.uint8)
                try:
                    frame = decode_jpeg_frame(sample.meta, sample.video, i, target)
                except (ValueError, IndexError, KeyError) as exc:
                    raise _Undecodable(sample.key) from exc
            else:
                frame = decoded[i]
            if canvas is not None:
                frame = to_canvas(frame, canvas)
            self._store(b, k, frame)

    def _slot_u8(self, b: int, k: int) -> np.ndarray:
        return self.hwc if self.pool is not None else self.frames_np[b, k]

    def _dst(self, b: int, k: int) -> np.ndarray:
        return self.first_np[b] if k == 0 else self.video_np[b, k - 1]

    def _store(self, b: int, k: int, frame: np.ndarray) -> None:
        if self.pool is None:
            if frame is not self.frames_np[b, k]:
                self.frames_np[b, k] = frame
            return
        _widen(frame, self.planes, self._dst(b, k))

    def _copy(self, b: int, src: int, dst: int) -> None:
        if self.pool is None:
            self.frames_np[b, dst] = self.frames_np[b, src]
        else:
            self._dst(b, dst)[...] = self._dst(b, src)

    def finish(self, labels: dict[str, Any]) -> dict[str, Any]:
        """The batch: frames (only the filled rows) first, then the labels."""
        n = len(labels["item_id"])
        if self.pool is None:
            return {"frames": self.frames[:n], **labels}
        return {"first_frame": self.first[:n], "video_frames": self.video[:n], **labels}


def _scratch(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """An HWC uint8 frame and a [3, H, W] uint8 plane buffer: reused per frame so they stay in cache."""
    return np.empty((height, width, 3), np.uint8), np.empty((3, height, width), np.uint8)


def _widen(frame: np.ndarray, planes: np.ndarray, out: np.ndarray) -> None:
    """RGB uint8 [H, W, 3] → float32 [3, H, W] in [0, 1], into `out`: cv2.split into the contiguous planes, then
    one scale over them; every pass is contiguous (a strided permute-and-convert cost 3x more)."""
    cv2.split(frame, [planes[0], planes[1], planes[2]])
    np.multiply(planes, _SCALE, out=out, casting="unsafe")


def collate_labels(items: list[dict[str, Any]], max_text_len: int, lang_dim: int) -> dict[str, Any]:
    """Per-window labels → batch tensors: `action_sequence`, `language_embedding` (zero-padded to max_text_len),
    `language_mask`, `item_id`, `tier`, and `initial_state` when every window has one."""
    B = len(items)
    width = next((it["language"].shape[1] for it in items if it["language"] is not None), lang_dim)
    language = np.zeros((B, max_text_len, width), np.float32)
    mask = np.zeros((B, max_text_len), bool)
    for b, item in enumerate(items):
        if item["language"] is not None:
            L = item["language"].shape[0]
            language[b, :L] = item["language"]
            mask[b, :L] = True
    batch = {"action_sequence": torch.from_numpy(np.stack([it["actions"] for it in items]).astype(np.float32, copy=False)),
             "language_embedding": torch.from_numpy(language), "language_mask": torch.from_numpy(mask),
             "item_id": [it["item_id"] for it in items],
             "tier": torch.tensor([it["tier"] for it in items], dtype=torch.int64)}
    if all(it["state"] is not None for it in items):
        batch["initial_state"] = torch.from_numpy(np.stack([it["state"] for it in items]).astype(np.float32, copy=False))
    return batch


def widen_frames(batch: dict[str, Any], pool: _BufferPool) -> dict[str, Any]:
    """A worker process's batch: uint8 `frames` [B, F+1, H, W, 3] → float32 `first_frame` [B, 3, H, W] and
    `video_frames` [B, F, 3, H, W] in [0, 1] from `pool`, in place of `frames`; the other keys keep their order."""
    frames = batch.pop("frames").numpy()
    B, n, H, W, _ = frames.shape
    first, video = pool.take((B, 3, H, W)), pool.take((B, n - 1, 3, H, W))
    first_np, video_np = first.numpy(), video.numpy()
    _, planes = _scratch(H, W)
    for b in range(B):
        for i in range(n):
            _widen(frames[b, i], planes, first_np[b] if i == 0 else video_np[b, i - 1])
    return {"first_frame": first, "video_frames": video, **batch}


def _fresh_array(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised float32 array; large ones in anonymous memory advised to use huge pages."""
    nbytes = 4 * int(np.prod(shape))
    if nbytes < (8 << 20):
        return np.empty(shape, np.float32)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        buf.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError):  # no THP on this kernel: plain pages
        pass
    return np.frombuffer(buf, np.float32).reshape(shape)


class _BufferPool:
    """Float32 batch buffers, reused once nothing references them any more; one pool per loader iteration,
    shared by its threads.

    A batch of 384×320 frames is 13 MB of float32 per sample; freshly allocated every batch, the kernel's
    first-touch page faults cost about a third of the loader's CPU on our 2-core VM (huge pages, where the kernel
    allows them, help for the first batches). A buffer is a numpy array that the `torch.from_numpy` tensor and
    every view of it keep a reference to, so when its reference count is back to the pool's own, no batch, tensor
    or view uses it and it is handed out again. A consumer that keeps batches only makes the pool allocate more
    (it keeps at most `limit` per shape: the batches that can be in flight at once)."""

    def __init__(self, limit: int = 4):
        self.limit, self.buffers = limit, {}
        self.lock = threading.Lock()

    def take(self, shape: tuple[int, ...]) -> torch.Tensor:
        shape = tuple(shape)
        with self.lock:
            buffers = self.buffers.setdefault(shape, [])
            for arr in buffers:
                if sys.getrefcount(arr) == 3:  # the list, this loop variable and getrefcount's argument: unused
                    return torch.from_numpy(arr)
            arr = _fresh_array(shape)
            if len(buffers) < self.limit:
                buffers.append(arr)
            return torch.from_numpy(arr)


# --- the loader ---------------------------------------------------------------------------------------------------

def _worker_init(_worker_id: int) -> None:
    from pipelines.torch_compat import set_worker_threads

    # torch only: OpenCV's pool is not fork-safe (cv2.setNumThreads in a forked worker can hang in
    # pthread_cond_destroy on the parent's pool), so make_loader sets OpenCV to one thread before the fork
    set_worker_threads(1)


class ShardLoader:
    """Iterable of Motus batches from `ShardWindows`, with `skipped` and `set_epoch`.

    num_workers 0: the consuming thread reads and decodes. Thread workers (the default): `num_workers` threads,
    each one consumer of the split, decode straight into the float batches and hand them over through bounded
    queues, taken round-robin as a DataLoader takes its workers' batches (so thread and process workers give the
    same batches in the same order). JPEG decoding and the numpy passes release the GIL; only tar headers,
    JSON and npy parsing hold it. Process workers: a torch DataLoader whose workers send uint8 frames through
    shared memory, widened to float here; for heavier per-sample Python (e.g. mp4 clips)."""

    def __init__(self, dataset: ShardWindows, num_workers: int = 0):
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, not {num_workers}")
        self.dataset, self.num_workers = dataset, num_workers
        self.worker_kind, self.prefetch = dataset.cfg.worker_kind, dataset.cfg.prefetch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        n = self.num_workers
        if len(self.dataset.skips) < max(1, n):  # one skip-counter slot per worker (before any fork)
            self.dataset.reserve_workers(n)
        if n == 0:
            yield from self.dataset.batches(0, 1, _BufferPool())
        elif self.worker_kind == "thread":
            # in flight at once: per thread, its queue plus the batch it fills; the consumer holds one or two
            yield from _threaded(self.dataset, n, _BufferPool(n * (self.prefetch + 1) + 2), self.prefetch)
        else:
            pool = _BufferPool()
            for batch in DataLoader(self.dataset, batch_size=None, num_workers=n, worker_init_fn=_worker_init,
                                    persistent_workers=False, prefetch_factor=self.prefetch):
                yield widen_frames(batch, pool)

    @property
    def skipped(self) -> dict[str, int]:
        return self.dataset.skipped

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


_END = object()


class _Raised:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _threaded(dataset: ShardWindows, n: int, pool: _BufferPool, prefetch: int) -> Iterator[dict[str, Any]]:
    stop = threading.Event()
    queues: list[queue.Queue] = [queue.Queue(prefetch) for _ in range(n)]

    def offer(q: queue.Queue, item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce(worker: int) -> None:
        try:
            for batch in dataset.batches(worker, n, pool):
                if not offer(queues[worker], batch):
                    return  # the consumer stopped
            offer(queues[worker], _END)
        except BaseException as exc:  # noqa: BLE001 - raised again in the consumer
            offer(queues[worker], _Raised(exc))

    threads = [threading.Thread(target=produce, args=(w,), name=f"shard-loader-{w}", daemon=True) for w in range(n)]
    for t in threads:
        t.start()
    try:
        active = list(range(n))
        while active:
            for w in list(active):
                got = queues[w].get()
                if got is _END:
                    active.remove(w)
                elif isinstance(got, _Raised):
                    raise got.exc
                else:
                    yield got
    finally:
        stop.set()  # producers notice within 0.1 s of finishing their batch
        # a garbage collection inside a producer can close an abandoned loader there: joining the others from
        # it could wait on a lock that producer holds (the pool's), so only another thread joins
        if threading.current_thread() not in threads:
            for t in threads:
                t.join()


def make_loader(shards: str | Path, split: str, cfg: LoaderConfig, batch_size: int, num_workers: int = 0,
                seed: int = 0, epoch: int = 0, rank: int = 0, world_size: int = 1,
                drop_last: bool = True) -> ShardLoader:
    """Batches of the Motus contract from the `split` shards under the shard root `shards` (drop_last by default,
    like Motus's training loader; evaluation passes drop_last=False so a small val split still counts).
    `num_workers` threads or processes, as `cfg.worker_kind` says."""
    cfg.validate()
    index = open_shard_index(shards)
    root = Path(shards)
    root = root.parent if root.suffix == ".json" else root
    chosen = [(root / sh["path"], int(sh.get("n_samples") or 0)) for sh in index["shards"] if sh.get("split") == split]
    if not chosen:
        have = sorted({str(sh.get("split")) for sh in index["shards"]})
        raise ValueError(f"{root}: no shards for split {split!r} (splits: {', '.join(have) or 'none'})")
    stats = index.get("stats") or {}
    dataset = ShardWindows(chosen, cfg, stats, batch_size, drop_last=drop_last, seed=seed, epoch=epoch, rank=rank,
                           world_size=world_size)
    dataset.reserve_workers(num_workers)
    consumers = world_size * max(1, num_workers)
    if len(chosen) < consumers and not cfg.resampled:
        log.warning("loader: %d %s shard(s) for %d consumers (ranks x workers): splitting by sample, every consumer "
                    "reads every shard", len(chosen), split, consumers)
    if num_workers > 0:
        # one OpenCV thread per worker; set before the fork for process workers (see _worker_init)
        cv2.setNumThreads(1)
    log.info("loader: %d %s shard(s) from %s, batch %d, %d %s worker(s), rank %d/%d, seed %d epoch %d, config %s",
             len(chosen), split, root, batch_size, num_workers, cfg.worker_kind, rank, world_size, seed, epoch,
             asdict(cfg))
    return ShardLoader(dataset, num_workers)
