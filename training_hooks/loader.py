"""Motus training batches from our WebDataset shards: windows cut from whole clips, normalised and collated into
exactly the dict the Motus trainer consumes. Window rule, splitting, workers: docs/trainer.md#loader."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from flow_extraction.frames import fit_canvas, to_canvas
from training_hooks.batching import (BufferPool, FrameBatch, Undecodable, collate_labels, pad_actions,
                                     threaded_batches, widen_frames, worker_init)
from training_hooks.mixture import MixturePlan, mixture_weights, read_clip, weighted_stream
from training_hooks.normalise import (BY_EMBODIMENT, LATENT_GROUPINGS, NORMALISERS, LatentNormalisers, Normaliser,
                                      no_embodiment_stats)
from common import storage
from manifests.shard_format import Sample, decode_sample, index_path, iter_samples, read_index, set_root

log = logging.getLogger(__name__)

ACTION_MODES = ("latent", "real")
WORKER_KINDS = ("thread", "process")
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
    # latent actions: one map for all (global) or one per embodiment, i.e. per source (training_hooks/normalise.py)
    latent_normalise_by: str = "global"
    state_from_actions: bool = True  # real mode: initial_state = the action row at the condition frame
    shuffle_buffer: int = 64  # windows held for shuffling; holds their clips still encoded (~MBs each, not frames)
    windows_per_clip: int = 1  # windows drawn per clip visit
    resampled: bool = False  # endless stream of shards drawn with replacement (multi-node training)
    text_dim: int | None = None  # language width when the shards carry no embeddings (None: from the index)
    worker_kind: str = "thread"  # what num_workers > 0 starts: decoding threads, or DataLoader worker processes
    # batches queued per worker; with threads, workers × (prefetch + 1) + 2 float32 batches can exist at once
    prefetch: int = 2
    # the pyramid as a mixture (training_hooks/mixture.py): the share of windows per tier ({1: 0.2, 3: 0.8}) or per
    # source ({ssv2: 0.5, robotwin: 0.5}), whatever their clip counts; unnamed groups get 0. None: by clip count
    tier_weights: dict[Any, float] | None = None
    source_weights: dict[str, float] | None = None

    def validate(self) -> None:
        mixture_weights(self.tier_weights, self.source_weights)
        if self.action_mode not in ACTION_MODES:
            raise ValueError(f"action_mode {self.action_mode!r} is not one of {ACTION_MODES}")
        if self.normalise not in NORMALISERS:
            raise ValueError(f"normalise {self.normalise!r} is not one of {NORMALISERS}")
        if self.latent_normalise_by not in LATENT_GROUPINGS:
            raise ValueError(f"latent_normalise_by {self.latent_normalise_by!r} is not one of {LATENT_GROUPINGS}")
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


# --- window rule --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WindowIndices:
    """The indices of one training window in its clip: the condition frame, the video frames, the action rows."""

    condition: int
    video: list[int]  # F frame indices
    rows: list[int]  # A latent or action rows


def clip_step(cfg: LoaderConfig, fps: float | None) -> int:
    """Frames between video frames for a clip at `fps`: `video_step`, or `video_step_s` in this clip's frames."""
    if cfg.video_step_s is None or not fps:
        return cfg.video_step
    r = cfg.action_ratio
    return max(r, int(round(cfg.video_step_s * float(fps) / r)) * r)


def draw_window(n_frames: int, cfg: LoaderConfig, rng: np.random.Generator, step: int | None = None
                ) -> WindowIndices:
    """One window by the Motus index rule (docs/trainer.md#loader, "Window rule"); needs n_frames >= 2."""
    T, step, F, r = n_frames, step or cfg.video_step, cfg.num_video_frames, cfg.action_ratio
    g = step // r
    top = T - 1 - F * step
    c = int(rng.integers(0, top + 1)) if top > 0 else 0
    video = [min(c + (i + 1) * step, T - 1) for i in range(F)]
    if cfg.action_mode == "latent":
        rows = [min(c + k * g, T - 2) for k in range(F * r)]
    else:
        rows = [min(c + (k + 1) * g, T - 1) for k in range(F * r)]
    return WindowIndices(c, video, rows)


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
        self.latent_norms = (LatentNormalisers(stats, cfg.normalise, cfg.latent_normalise_by)
                             if cfg.action_mode == "latent" else None)
        self.action_stats = stats.get("actions", {})
        self._action_norms: dict[str, Normaliser | None] = {}
        self.lang_dim = int((stats.get("language") or {}).get("dim") or cfg.text_dim or 0)
        # skip counters per (worker slot, reason) in shared memory, so worker processes' counts reach the consumer
        self.skips = torch.zeros(1, len(SKIP_REASONS), dtype=torch.int64)
        self.mixture: MixturePlan | None = None  # set by make_loader when the config weighs tiers or sources

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
            return self.batches(0, 1, BufferPool())
        return self.batches(info.id, info.num_workers, None)

    def batches(self, worker: int, n_workers: int, pool: BufferPool | None) -> Iterator[dict[str, Any]]:
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

    def batches(self, pool: BufferPool | None) -> Iterator[dict[str, Any]]:
        """Windows decoded straight into the batch being filled; a clip whose frames fail to decode is skipped
        and its slot filled by the next window, so every batch but a last partial one is full."""
        ds, cfg = self.ds, self.cfg
        frames: FrameBatch | None = None
        labels: list[dict[str, Any]] = []
        windows = self._mixed() if ds.mixture is not None else self._windows(self._members())
        for sample, window in self._shuffle(windows):
            if sample.key in self.bad:  # an earlier window of this clip did not decode (counted once, there)
                continue
            item = self._labels(sample, window)
            if frames is None:
                frames = FrameBatch(ds.batch_size, cfg, pool)
            try:
                frames.write(len(labels), sample, [window.condition, *window.video])
            except Undecodable as exc:  # skips the clip; any other error is a bug or a bad setting: raised
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

    def _mixed(self) -> Iterator[tuple[Sample, WindowIndices]]:
        """Endless windows, each from a group drawn by weight (training_hooks/mixture.py); each group an endless
        stream of this consumer's clips of it, reshuffled every pass."""
        ds, plan, views = self.ds, self.ds.mixture, {}

        def group_windows(group: Any) -> Iterator[tuple[Sample, WindowIndices]]:
            clips = plan.share(group, ds.seed, ds.epoch, self.me, self.consumers)
            while True:
                produced = 0
                for i in self.rng.permutation(len(clips)):
                    for sample_window in self._windows(iter([read_clip(clips[i], views, plan.shards)])):
                        produced += 1
                        yield sample_window
                if not produced:
                    raise ValueError(f"loader: every clip of {plan.by} {group} was skipped ({ds.skipped}); "
                                     f"drop it from loader.{plan.by}_weights")

        return weighted_stream(plan, {g: group_windows(g) for g in plan.groups}, self.rng)

    def _windows(self, members: Iterator[tuple[str, dict[str, memoryview]]]
                 ) -> Iterator[tuple[Sample, WindowIndices]]:
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
                if cfg.normalise != "none" and sample.meta.embodiment not in self.ds.action_stats:
                    self._skip("no_action_stats", key,
                               f"no train-split action stats for {sample.meta.embodiment!r}")
                    continue
            step = clip_step(cfg, sample.meta.fps)
            for _ in range(cfg.windows_per_clip):
                yield sample, draw_window(T, cfg, self.rng, step)

    def _shuffle(self, items: Iterator[tuple[Sample, WindowIndices]]) -> Iterator[tuple[Sample, WindowIndices]]:
        """WebDataset's buffer shuffle with our generator: fill to `shuffle_buffer`, then swap out a random one."""
        size, rng = self.cfg.shuffle_buffer, self.rng
        if size <= 1:
            yield from items
            return
        buf: list[tuple[Sample, WindowIndices]] = []
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

    def _labels(self, sample: Sample, window: WindowIndices) -> dict[str, Any]:
        """Everything of one window but its frames: actions (normalised, padded), state, a language line, ids."""
        cfg, state = self.cfg, None
        if cfg.action_mode == "latent":
            actions = sample.latent_action[window.rows]
            norm = self.ds.latent_norms(str(sample.meta.item_id or sample.key))
            if norm is not None:
                actions = norm(actions)
        else:
            embodiment = sample.meta.embodiment
            norm = self.ds.action_norm(embodiment)
            actions = sample.actions[window.rows]
            if cfg.state_from_actions:
                state = sample.actions[window.condition]
            if norm is not None:
                actions = norm(actions)
                state = norm(state) if state is not None else None
            actions = pad_actions(actions, cfg.action_dim, embodiment)
            state = pad_actions(state, cfg.action_dim, embodiment) if state is not None else None
        language = None
        if sample.language:
            language = sample.language[int(self.rng.integers(len(sample.language)))][: cfg.max_text_len]
        tier = sample.meta.tier
        return {"actions": actions, "state": state, "language": language,
                "item_id": str(sample.meta.item_id), "tier": int(tier) if tier is not None else -1}

    def _skip(self, reason: str, key: str, why: Any) -> None:
        self.ds.skips[self.slot, SKIP_REASONS.index(reason)] += 1
        n = self.logged[reason] = self.logged.get(reason, 0) + 1
        if n <= LOGGED_PER_REASON:
            log.warning("skipping sample %s (%s): %s%s", key, reason, why,
                        " (further skips for this reason are only counted)" if n == LOGGED_PER_REASON else "")


def _read(path: Path | str) -> Iterator[tuple[str, dict[str, memoryview]]]:
    if not storage.is_url(path) and not path.is_file():  # a missing URL is a FileNotFoundError from the GET
        raise FileNotFoundError(f"shard file missing: {path}")
    yield from iter_samples(path, mapped=True)


# --- the loader ---------------------------------------------------------------------------------------------------

class ShardLoader:
    """Iterable of Motus batches from `ShardWindows`, with `skipped` and `set_epoch`. num_workers 0: the consuming
    thread reads and decodes; else decoding threads or DataLoader worker processes (`training_hooks/batching.py`)."""

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
            yield from self.dataset.batches(0, 1, BufferPool())
        elif self.worker_kind == "thread":
            # in flight at once: per thread, its queue plus the batch it fills; the consumer holds one or two
            yield from threaded_batches(self.dataset, n, BufferPool(n * (self.prefetch + 1) + 2), self.prefetch)
        else:
            pool = BufferPool()
            for batch in DataLoader(self.dataset, batch_size=None, num_workers=n, worker_init_fn=worker_init,
                                    persistent_workers=False, prefetch_factor=self.prefetch):
                yield widen_frames(batch, pool)

    @property
    def skipped(self) -> dict[str, int]:
        return self.dataset.skipped

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


def make_loader(shards: str | Path, split: str, cfg: LoaderConfig, batch_size: int, num_workers: int = 0,
                seed: int = 0, epoch: int = 0, rank: int = 0, world_size: int = 1,
                drop_last: bool = True) -> ShardLoader:
    """Batches of the Motus contract from the `split` shards under the shard root `shards` (drop_last by default,
    like Motus's training loader; evaluation passes drop_last=False so a small val split still counts).
    `num_workers` threads or processes, as `cfg.worker_kind` says."""
    cfg.validate()
    index = read_index(shards)
    root = set_root(shards)
    chosen = [(storage.join(root, sh["path"]), int(sh.get("n_samples") or 0))
              for sh in index["shards"] if sh.get("split") == split]
    if not chosen:
        have = sorted({str(sh.get("split")) for sh in index["shards"]})
        raise ValueError(f"{root}: no shards for split {split!r} (splits: {', '.join(have) or 'none'})")
    stats = index.get("stats") or {}
    if cfg.action_mode == "latent" and cfg.normalise != "none" and "latent_action" not in stats:
        have = sorted({str(sh.get("split")) for sh in index["shards"]})
        raise ValueError(
            f"{index_path(shards)} has no latent-action statistics to normalise with (normalise={cfg.normalise!r}); "
            f"its shards hold {', '.join(have) or 'no'} split(s) and the build that wrote it took statistics from "
            "train shards only: rebuild the set with `pyramid shard` (a set without train shards then gets them from "
            "the splits it has, marked in index.json) or load it with normalise='none'")
    if (cfg.action_mode == "latent" and cfg.normalise != "none" and cfg.latent_normalise_by == "embodiment"
            and BY_EMBODIMENT not in stats):
        raise ValueError(no_embodiment_stats(str(index_path(shards))))
    if stats.get("note"):
        log.warning("loader: %s: %s", index_path(shards), stats["note"])
    dataset = ShardWindows(chosen, cfg, stats, batch_size, drop_last=drop_last, seed=seed, epoch=epoch, rank=rank,
                           world_size=world_size)
    mix = mixture_weights(cfg.tier_weights, cfg.source_weights)
    if mix is not None:
        dataset.mixture = MixturePlan([path for path, _ in chosen], *mix, split=split)
        log.info("loader: %s split mixed by %s", split, dataset.mixture.describe())
    dataset.reserve_workers(num_workers)
    consumers = world_size * max(1, num_workers)
    if len(chosen) < consumers and not cfg.resampled and mix is None:
        log.warning("loader: %d %s shard(s) for %d consumers (ranks x workers): splitting by sample, every consumer "
                    "reads every shard", len(chosen), split, consumers)
    if num_workers > 0:
        # one OpenCV thread per worker; set before the fork for process workers (see worker_init)
        cv2.setNumThreads(1)
    log.info("loader: %d %s shard(s) from %s, batch %d, %d %s worker(s), rank %d/%d, seed %d epoch %d, config %s",
             len(chosen), split, storage.redact(root), batch_size, num_workers, cfg.worker_kind, rank, world_size,
             seed, epoch, asdict(cfg))
    return ShardLoader(dataset, num_workers)
