"""The trainer's batch factories: `SyntheticMotion` (moving squares, no shards needed) and `shard_batches` (the
WebDataset shards through `training_hooks.loader`). A factory is `make(step_offset, rank, world_size)` → batches."""

from __future__ import annotations

import itertools
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from common.run_kit import derive_seed
from training_hooks.motus_config import MotusConfig

Batch = dict[str, torch.Tensor]
TrainBatches = Callable[[int, int, int], Iterator[Batch]]  # (step_offset, rank, world_size) -> batches


class SyntheticMotion:
    """N fixed samples of a coloured square gliding over a grey canvas. Action j is the square's displacement at
    step j, mapped to action_dim by a fixed linear map, so actions are recoverable from the video (IDM) and
    frames follow from actions (WM); the language tokens name one of four headings (VLA). With
    `language_prior=False` (the controlled case) the steps are N(0, 1) with no heading and no language token is
    real, so only the video tells the actions. Sample i is a pure function of (seed, i); the action map and
    language table do not depend on the seed, so sets made with different seeds (train / val) share them."""

    def __init__(self, n: int, model: MotusConfig, image_size: tuple[int, int] = (384, 320), text_len: int = 8,
                 seed: int = 0, language_prior: bool = True, travel: float | None = None):
        if n < 1:
            raise ValueError(f"a synthetic set needs at least one sample, got {n}")
        self.n, self.model, self.image_size = n, model, tuple(image_size)
        # canvas fraction per unit step: by default ~a quarter of the canvas per clip
        self.travel = 0.25 / model.num_actions if travel is None else travel
        fixed = torch.Generator().manual_seed(1234)
        self.action_map = torch.randn(model.action_dim, 2, generator=fixed) / math.sqrt(2)
        self.language = torch.randn(4, text_len, model.text_dim, generator=fixed)
        # without the language prior no token is real and the steps have no heading: only the video tells them
        self.language_len = [min(text_len, 3 + k) if language_prior else 0 for k in range(4)]
        g = torch.Generator().manual_seed(seed)
        self.heading = torch.randint(4, (n,), generator=g)
        angle = self.heading * (math.pi / 2) + math.pi / 4
        direction = torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1)  # (dy, dx)
        if language_prior:
            self.steps = direction[:, None] + 0.3 * torch.randn(n, model.num_actions, 2, generator=g)
        else:
            self.steps = torch.randn(n, model.num_actions, 2, generator=g)
        self.start = 0.4 + 0.2 * torch.rand(n, 2, generator=g)  # centre, as fractions of (H, W)
        self.colour = 0.5 + 0.5 * torch.rand(n, 3, generator=g)

    def sample(self, i: int) -> Batch:
        cfg, (H, W) = self.model, self.image_size
        side = 0.25 * min(H, W)
        path = self.start[i] + self.travel * torch.cumsum(self.steps[i], dim=0)  # after each action
        shown = path[cfg.action_ratio - 1::cfg.action_ratio]  # frame f shows the end of its action chunk
        centres = torch.cat([self.start[i][None], shown]) * torch.tensor([H, W])
        centres = torch.maximum(torch.minimum(centres, torch.tensor([H, W]) - side / 2), torch.tensor(side / 2))
        ys, xs = torch.arange(H) + 0.5, torch.arange(W) + 0.5
        # anti-aliased edges: coverage moves smoothly with sub-pixel motion
        cover_y = (side / 2 + 0.5 - (ys[None] - centres[:, :1]).abs()).clamp(0, 1)
        cover_x = (side / 2 + 0.5 - (xs[None] - centres[:, 1:]).abs()).clamp(0, 1)
        cover = cover_y[:, None, :, None] * cover_x[:, None, None, :]  # [1+F, 1, H, W]
        frames = 0.2 + cover * (self.colour[i][None, :, None, None] - 0.2)
        k = int(self.heading[i])
        mask = torch.arange(self.language.shape[1]) < self.language_len[k]
        out = {"first_frame": frames[0], "video_frames": frames[1:],
               "action_sequence": self.steps[i] @ self.action_map.T,
               "language_embedding": self.language[k] * mask[:, None], "language_mask": mask}
        if cfg.state_dim:
            out["initial_state"] = F.pad(self.start[i], (0, cfg.state_dim - 2))[:cfg.state_dim]
        return out

    def batch(self, indices: Iterable[int]) -> Batch:
        samples = [self.sample(i) for i in indices]
        return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}

    def train_batches(self, batch_size: int, seed: int = 0) -> TrainBatches:
        """The factory `train` takes: batch k of rank r draws its samples with a generator seeded by (seed, k, r)."""
        def make(step_offset: int, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
            for step in itertools.count(step_offset):
                g = torch.Generator().manual_seed(derive_seed(seed, step, rank, world_size))
                yield self.batch(torch.randint(self.n, (batch_size,), generator=g).tolist())
        return make

    def val_batches(self, batch_size: int) -> list[Batch]:
        return [self.batch(range(i, min(i + batch_size, self.n))) for i in range(0, self.n, batch_size)]


def shard_batches(shards: Path, loader: dict[str, Any], cfg: Any, num_workers: int):
    """(train factory, val factory) over WebDataset shards through `training_hooks.loader.make_loader`.

    The loader's window shape follows the model (num_video_frames, action_ratio, action_dim) and the stage
    (latent actions in stage 2, real ones in stage 3); `loader:` settings that contradict them are errors. A
    resumed run continues the same stream: it replays the stream from step 0 and drops the batches before its
    resume step (reading and decoding them again: the cost of a resume grows with the step, exactness does not
    depend on a saved loader state). `loader.tier_weights` / `source_weights` weigh the train
    windows (training_hooks/mixture.py); held-out windows are read unweighted.
    The trainer config `cfg` is a `training_hooks.train.TrainConfig`."""
    from manifests.shard_format import read_index
    from training_hooks.loader import LoaderConfig, make_loader

    m = cfg.model
    implied = {"num_video_frames": m.num_video_frames, "action_ratio": m.action_ratio, "action_dim": m.action_dim,
               "action_mode": "latent" if cfg.stage == 2 else "real", "text_dim": m.text_dim}
    clash = [f"loader.{k} {loader[k]!r} (the model/stage implies {v!r})" for k, v in implied.items()
             if k in loader and loader[k] != v]
    if clash:
        raise ValueError(f"loader settings contradict the model: {', '.join(clash)}")
    loader_cfg = LoaderConfig(**{**implied, **loader})
    loader_cfg.validate()  # bad mixture weights fail here, before any process starts training
    val_cfg = replace(loader_cfg, tier_weights=None, source_weights=None)
    # fail before step 0, on every rank alike, rather than on one rank mid-run (the others would hang in allreduce)
    index = read_index(shards)
    lang_dim = (index.get("stats", {}).get("language") or {}).get("dim")
    if lang_dim and lang_dim != m.text_dim:
        raise ValueError(f"the shards' language embeddings are {lang_dim}-d ({index['stats']['language'].get('encoder')}) "
                         f"but model.text_dim is {m.text_dim}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    n_train = sum(int(sh.get("n_samples") or 0) for sh in index["shards"] if sh.get("split") == "train")
    weighted = bool(loader_cfg.tier_weights or loader_cfg.source_weights)  # endless streams repeat small groups
    if n_train < cfg.batch_size * world and not weighted:
        raise ValueError(f"{n_train} train clips in {shards}: fewer than batch_size {cfg.batch_size} × {world} process(es)")
    eval_splits = [sp for sp in cfg.eval_splits if any(sh.get("split") == sp for sh in index["shards"])]

    def stream(rank: int, world_size: int) -> Iterator[Batch]:
        seed = derive_seed(cfg.seed, 0)  # one stream per (seed, rank): a resumed run continues it
        for epoch in itertools.count():  # each rank rolls over on its own: DDP syncs steps, not epochs
            empty = True
            for batch in make_loader(shards, "train", loader_cfg, cfg.batch_size, num_workers=num_workers,
                                     seed=seed, epoch=epoch, rank=rank, world_size=world_size):
                empty = False
                yield batch
            if empty:
                raise ValueError(f"no train batches of {cfg.batch_size} in {shards} (rank {rank} of {world_size})")

    def train_batches(step_offset: int, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        return itertools.islice(stream(rank, world_size), step_offset, None)

    def val_batches() -> Iterator[Batch]:
        # epoch after epoch (other windows of the same held-out clips), the splits' batches interleaved so every
        # tier comes early, until the evaluation has its windows
        for epoch in itertools.count():
            loaders = [iter(make_loader(shards, split, val_cfg, cfg.batch_size, num_workers=num_workers,
                                        seed=cfg.seed, epoch=epoch, drop_last=False)) for split in eval_splits]
            empty = True
            for batch in itertools.chain.from_iterable(itertools.zip_longest(*loaders)):
                if batch is not None:
                    empty = False
                    yield batch
            if empty:
                return

    if not eval_splits:
        print(f"[motus] no {' or '.join(cfg.eval_splits)} shards in {shards}: training without evaluation",
              file=sys.stderr, flush=True)
    return train_batches, (val_batches if eval_splits else None)
