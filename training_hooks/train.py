"""The compact Motus trainer: one loop with atomic checkpoints and exact resume, periodic evaluation, multi-process
CPU training under torchrun. The loop and launching: docs/trainer.md ("The loop", "Launching")."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel

from manifests.checkpoints import load_checkpoint, save_checkpoint
from common.run_kit import MetricsLog, derive_seed, settings_diff
from manifests.io import atomic_write, atomic_write_text, remove_stale_temps
from common.config import build_dataclass, read_yaml_mapping
from training_hooks.data import Batch, SyntheticMotion, TrainBatches, shard_batches
from training_hooks.evaluation import ACTION_ERRORS, ActionMeans, evaluate, format_eval, window_groups
from training_hooks.mixture import TIERS, MixtureCounter, format_mixture
from training_hooks.motus import Motus
from training_hooks.motus_config import MODES, MotusConfig, check_mode_shares

# v2: the shared rotary clock, mode shares and scaled positions; v1 checkpoints hold other weights and keys
CHECKPOINT_KIND = "motus-pyramid/motus/v2"
# share_<mode>: the realised share of each training mode over the steps since the previous row
# tier_<k>: each pyramid tier's share of the training windows since the previous row (shard batches)
METRICS = ("step", "loss", "loss_video", "loss_action", "lr", "samples_per_s", *(f"share_{m}" for m in MODES),
           *(f"tier_{k}" for k in TIERS))
# settings a resumed run must share with its checkpoint (the model's shape, and what the optimiser state holds)
RESUME_KEYS = ("stage", "lr", "betas", "weight_decay", "mode_shares_schedule")


@dataclass
class TrainConfig:
    model: MotusConfig = field(default_factory=MotusConfig)
    stage: int = 2  # 2: latent actions, no state | 3: real actions (+ state), usually with init_from
    init_from: str | None = None  # stage 3: a stage-2 checkpoint; its action head is swapped, the rest kept
    steps: int = 1000
    batch_size: int = 4  # per process
    lr: float = 3e-4  # Motus uses 5e-5 at 8B; the compact model trains well at 3e-4
    min_lr: float = 3e-5  # the cosine ends here
    warmup_steps: int = 100
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.01
    grad_clip: float = 0.5
    log_every: int = 10
    checkpoint_every: int = 200
    eval_every: int = 200
    eval_windows: int = 64  # held-out windows per evaluation (the val stream is read again if it holds fewer)
    eval_steps: int = 10  # Euler steps when sampling for evaluation
    eval_mean_samples: int = 8  # posterior mean = the average of this many samples (1: one step from t=1) ...
    eval_mean_steps: int = 4  # ... of this many Euler steps each
    # held-out shard splits evaluated (those present); both, since a small val split can miss whole tiers
    eval_splits: list[str] = field(default_factory=lambda: ["val", "test"])
    seed: int = 0
    threads: int = 1  # torch threads per process
    device: str = "cpu"  # where the model trains and evaluates (cpu | cuda | cuda:N); batches are moved there
    # training modes by step, a curriculum: {from_step: mode shares}, each entry holding from its step until the
    # next; model.mode_shares before the first (and throughout when null). E.g. {0: {idm: 1}, 500: {joint: 0.2,
    # idm: 0.4, vla: 0.2, wm: 0.2}}: the IDM setting alone for 500 steps, then the mixed shares (docs/trainer.md)
    mode_shares_schedule: dict[int, dict[str, float]] | None = None

    def __post_init__(self) -> None:
        if self.stage not in (2, 3):
            raise ValueError(f"stage must be 2 or 3, got {self.stage}")
        if self.stage == 2 and self.model.state_dim:
            raise ValueError("model.state_dim must be 0 in stage 2 (latent actions carry no robot state)")
        if self.init_from is not None and self.stage != 3:
            raise ValueError("init_from (a stage-2 checkpoint) is for stage 3")
        at_least = {"steps": 0, "batch_size": 1, "warmup_steps": 0, "log_every": 1, "checkpoint_every": 1,
                    "eval_every": 1, "eval_windows": 0, "eval_steps": 1, "eval_mean_samples": 1, "eval_mean_steps": 1,
                    "threads": 1}
        for key, low in at_least.items():
            if getattr(self, key) < low:
                raise ValueError(f"{key} must be >= {low}, got {getattr(self, key)}")
        for key in ("lr", "min_lr", "weight_decay", "grad_clip"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        if "train" in self.eval_splits:
            raise ValueError("eval_splits must name held-out splits, not train")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        for start, shares in (self.mode_shares_schedule or {}).items():
            if not isinstance(start, int) or isinstance(start, bool) or not 0 <= start < self.steps:
                raise ValueError(f"mode_shares_schedule: each key is the step its shares start at, an integer in "
                                 f"[0, steps={self.steps}), got {start!r}")
            check_mode_shares(shares, f"mode_shares_schedule[{start}]")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def mode_shares_at(self, step: int) -> dict[str, float]:
        """The mode shares training step `step` draws with: the last `mode_shares_schedule` entry at or before it,
        else model.mode_shares."""
        starts = [k for k in (self.mode_shares_schedule or {}) if k <= step]
        return self.mode_shares_schedule[max(starts)] if starts else self.model.mode_shares


def load_train_config(path: str | os.PathLike | None, **overrides: Any) -> tuple[TrainConfig, dict[str, Any]]:
    """TrainConfig from YAML (its keys, `model:` nested) plus the optional `loader:` mapping, kept apart for
    `training_hooks.loader.LoaderConfig`. Unknown keys and wrong types are errors naming the key."""
    data = read_yaml_mapping(path, "trainer config")
    loader = data.pop("loader", None) or {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return build_dataclass(TrainConfig, data, ""), loader


# --- pieces of the loop -------------------------------------------------------------------------------------
def lr_multiplier(cfg: TrainConfig) -> Callable[[int], float]:
    """Linear warmup to lr, then a cosine down to min_lr at cfg.steps."""
    floor = cfg.min_lr / cfg.lr if cfg.lr else 1.0

    def at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return at


def make_optimizer(model: Motus, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (nanoGPT's split: no decay on biases and norm gains)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's contents, or a ValueError saying why it cannot be used (not ours, or an older version)."""
    state = load_checkpoint(path, "compact-Motus checkpoint")
    kind = state.get("kind") if isinstance(state, dict) else None
    if kind != CHECKPOINT_KIND:
        if isinstance(kind, str) and kind.startswith("motus-pyramid/motus/"):
            raise ValueError(f"{path} is a {kind} checkpoint, from before this version of the compact Motus "
                             f"({CHECKPOINT_KIND}: shared rotary clock, mode shares); its weights do not fit: train "
                             "again, or resume with --no-resume / another output folder")
        raise ValueError(f"{path} is not a compact-Motus checkpoint")
    return state


def load_motus(path: str | os.PathLike) -> tuple[Motus, dict[str, Any]]:
    """A trained model (eval mode) and the rest of its checkpoint (config, step, ...)."""
    state = read_checkpoint(path)
    model = Motus(MotusConfig(**state["config"]["model"]))
    model.load_state_dict(state["model"])
    return model.eval(), state


# model settings that say how it trains, not what its weights are: stage 3 takes them from its own config
STAGE3_TRAINING_KEYS = ("mode_shares", "time_sampling", "video_loss_weight", "action_loss_weight")


def build_model(cfg: TrainConfig) -> Motus:
    """A fresh model, or for stage 3 with init_from the stage-2 model with its action head swapped."""
    torch.manual_seed(cfg.seed)
    if cfg.init_from is None:
        return Motus(cfg.model)
    model, _ = load_motus(cfg.init_from)
    m = cfg.model
    model.swap_action_head(m.action_dim, m.state_dim, m.n_registers, m.action_ratio, m.action_time)
    # how stage 3 trains (not what the weights are) is this config's
    model.cfg = dataclasses.replace(model.cfg, **{k: getattr(m, k) for k in STAGE3_TRAINING_KEYS})
    differ = settings_diff(dataclasses.asdict(model.cfg), dataclasses.asdict(m), "model.")
    if differ:
        raise ValueError(f"init_from {cfg.init_from} has other shared sizes than this config: {differ} "
                         "(only action_dim, state_dim, n_registers, action_ratio and action_time may change in "
                         f"stage 3, and the training settings {', '.join(STAGE3_TRAINING_KEYS)})")
    return model.train()


def param_digest(model: torch.nn.Module) -> str:
    """blake2b of every parameter's bytes: equal digests mean bit-identical weights."""
    h = hashlib.blake2b(digest_size=16)
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class TrainResult:
    checkpoint: Path | None  # last.pt (None when no step was taken and none existed)
    steps: int
    resumed_from: int
    last: dict[str, float]  # the last step's logged values
    samples_per_s: float  # over all processes
    eval: dict[str, Any]
    param_digest: str
    metrics_path: Path
    mode_shares: dict[str, float]  # realised share of each training mode over this run's steps (this process)
    mixture: dict[str, Any] = field(default_factory=dict)  # windows and shares per tier and source (this process)


# --- the loop -----------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, make_train_batches: TrainBatches, make_val_batches: Callable[[], Iterable[Batch]] | None,
          out_dir: str | os.PathLike, resume: bool = True, progress: bool = True) -> TrainResult:
    """Train from step 0, or from `out_dir/checkpoints/last.pt` when `resume` and it exists.

    `make_train_batches(step_offset, rank, world_size)` yields this process's batches from step `step_offset`
    on; `make_val_batches()` yields validation batches (rank 0 evaluates the first cfg.eval_windows windows every
    cfg.eval_every steps and at the end; `evaluate`). Under torchrun (WORLD_SIZE > 1) it joins a gloo process group,
    wraps the model in DDP, and only rank 0 writes metrics.csv, eval.json and checkpoints.
    """
    torch.set_num_threads(cfg.threads)
    out_dir = Path(out_dir)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    own_group = world_size > 1 and not dist.is_initialized()
    if own_group:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world_size > 1 else 0
    is_main = rank == 0

    def log(msg: str) -> None:
        if progress and is_main:
            print(f"[motus] {msg}", file=sys.stderr, flush=True)

    ckpt_dir = out_dir / "checkpoints"
    last_path = ckpt_dir / "last.pt"
    resuming = resume and last_path.exists()
    model = (Motus(cfg.model) if resuming else build_model(cfg)).to(cfg.device)
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(cfg))
    start = 0
    action_means = ActionMeans()
    mixture = MixtureCounter()  # windows per tier and source: the realised mixture
    if resuming:
        state = read_checkpoint(last_path)
        old, new = state["config"], cfg.to_dict()
        differ = ", ".join(filter(None, [
            settings_diff({**dataclasses.asdict(MotusConfig()), **old["model"]}, new["model"], "model."),
            settings_diff({k: old.get(k) for k in RESUME_KEYS}, {k: new[k] for k in RESUME_KEYS})]))
        if differ:
            raise ValueError(f"{last_path} was trained with other settings ({differ}); resume with the same ones, "
                             "or start over with resume=False / --no-resume or another output folder")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        action_means = ActionMeans(state["action_means"])
        mixture = MixtureCounter(state.get("mixture"))
        start = state["step"]
        log(f"resuming from step {start} ({last_path})")
    net = DistributedDataParallel(model, forward_sync_buffers=False) if world_size > 1 else model  # constant buffers
    log(f"config:\n{yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip()}")
    info = model.describe()
    log(f"{info['params']:,} parameters {info['params_by_expert']}; tokens {info['tokens']}; "
        f"{world_size} process(es) × batch {cfg.batch_size}")

    def checkpoint(step: int) -> None:
        state = {"kind": CHECKPOINT_KIND, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "step": step, "config": cfg.to_dict(),
                 "torch_rng": torch.get_rng_state(), "world_size": world_size, "action_means": action_means.state(),
                 "mixture": mixture.state()}
        step_path = ckpt_dir / f"step_{step:06d}.pt"
        save_checkpoint(step_path, state)
        atomic_write(last_path, lambda f: f.write(step_path.read_bytes()))

    eval_result: dict[str, Any] = {}

    def run_eval(step: int) -> None:
        nonlocal eval_result
        if make_val_batches is None or cfg.eval_windows == 0:
            return
        eval_result = evaluate(model, make_val_batches(), cfg.eval_steps, cfg.seed, action_means.means(),
                               cfg.eval_windows, cfg.eval_mean_samples, cfg.eval_mean_steps)
        atomic_write_text(out_dir / "eval.json", json.dumps({"step": step, **eval_result}, indent=2) + "\n")
        log(f"@ step {step} {format_eval(eval_result)}")

    metrics_path = out_dir / "metrics.csv"
    if is_main:
        for leftover in remove_stale_temps(ckpt_dir, out_dir, recursive=False):  # an interrupted run's temp files
            log(f"removed {leftover.name}, left by an interrupted run")
        out_dir.mkdir(parents=True, exist_ok=True)
    last: dict[str, float] = {}
    evaluated_at = -1
    modes_logged = torch.zeros(len(MODES))  # since the previous metrics row
    modes_run = torch.zeros(len(MODES))
    batches = make_train_batches(start, rank, world_size)
    t0 = time.perf_counter()
    with MetricsLog(metrics_path, METRICS, start, enabled=is_main) as metrics:
        for step in range(start, cfg.steps):
            batch = next(batches, None)
            if batch is None:
                raise ValueError(f"the training batches ran out at step {step} (rank {rank}); the factory must "
                                 "yield one batch per step until cfg.steps")
            mixture.add(batch)
            batch = {k: v.to(cfg.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            lr = scheduler.get_last_lr()[0]
            generator = torch.Generator().manual_seed(derive_seed(cfg.seed, step, rank))
            step_shares = cfg.mode_shares_at(step)
            if step == start or step_shares is not cfg.mode_shares_at(step - 1):
                log(f"step {step}: training modes drawn with shares {step_shares}")
            losses = net(batch, generator=generator, mode_shares=step_shares)
            if is_main:
                action_means.add(batch)
            modes_logged += losses["mode_counts"].cpu()
            modes_run += losses["mode_counts"].cpu()
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            done = step + 1
            if step % cfg.log_every == 0 or done == cfg.steps:
                values = torch.stack([losses[k].detach() for k in ("loss", "loss_video", "loss_action")])
                if world_size > 1:
                    dist.all_reduce(values)
                    values /= world_size
                rate = (done - start) * cfg.batch_size * world_size / (time.perf_counter() - t0)
                shares = modes_logged / modes_logged.sum()
                last = {"step": step, "loss": values[0].item(), "loss_video": values[1].item(),
                        "loss_action": values[2].item(), "lr": lr, "samples_per_s": rate,
                        **{f"share_{m}": round(v, 4) for m, v in zip(MODES, shares.tolist())},
                        **mixture.recent_shares()}
                modes_logged.zero_()
                metrics.write(last)
                log(f"step {step}/{cfg.steps} loss {last['loss']:.4f} (video {last['loss_video']:.4f} action "
                    f"{last['loss_action']:.4f}) lr {lr:.2e} {rate:.1f} samples/s")
            if is_main and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
                checkpoint(done)
            if is_main and done % cfg.eval_every == 0:
                run_eval(done)
                evaluated_at = done
    final_step = max(start, cfg.steps)
    if is_main and evaluated_at != final_step:
        run_eval(final_step)
    realised_mix = mixture.summary()
    if is_main:
        atomic_write_text(out_dir / "mixture.json", json.dumps(realised_mix, indent=1) + "\n")
        log(format_mixture(realised_mix))
    digest = param_digest(model)
    if world_size > 1:
        dist.barrier()
        if own_group:
            dist.destroy_process_group()
    realised = {m: round(v, 4) for m, v in zip(MODES, (modes_run / modes_run.sum().clamp(min=1)).tolist())}
    return TrainResult(last_path if last_path.exists() else None, cfg.steps, start, last,
                       last.get("samples_per_s", 0.0), eval_result, digest, metrics_path, realised, realised_mix)


# --- command line -------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training_hooks.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, help="YAML: TrainConfig keys (model: nested) and an optional loader:")
    ap.add_argument("--out", type=Path, required=True, help="run folder: metrics.csv, eval.json, checkpoints/")
    data = ap.add_mutually_exclusive_group(required=True)
    data.add_argument("--shards", help="folder or bucket URL (s3://...) of WebDataset shards (train and val splits)")
    data.add_argument("--synthetic", type=int, metavar="N", help="train on N fixed moving-square samples")
    ap.add_argument("--steps", type=int, help="override steps")
    ap.add_argument("--image-size", type=int, nargs=2, default=[384, 320], metavar=("H", "W"),
                    help="synthetic frame size (default 384 320)")
    ap.add_argument("--num-workers", type=int, default=0, help="shard loader workers per process (threads unless loader.worker_kind: process)")
    ap.add_argument("--no-resume", action="store_true", help="start over even if checkpoints/last.pt exists")
    ap.add_argument("--quiet", action="store_true", help="no log lines")
    args = ap.parse_args(argv)
    try:  # a bad config, a refused resume, batches that do not fit the model: the message says why
        cfg, loader = load_train_config(args.config, steps=args.steps)
        if args.synthetic is not None:
            train_set = SyntheticMotion(args.synthetic, cfg.model, args.image_size, seed=cfg.seed)
            val_set = SyntheticMotion(max(1, cfg.eval_windows), cfg.model, args.image_size, seed=cfg.seed + 1)
            make_train = train_set.train_batches(cfg.batch_size, cfg.seed)

            def make_val() -> list[Batch]:
                return val_set.val_batches(cfg.batch_size)
        else:
            make_train, make_val = shard_batches(args.shards, loader, cfg, args.num_workers)
        result = train(cfg, make_train, make_val, args.out, resume=not args.no_resume, progress=not args.quiet)
    except ValueError as e:
        ap.exit(2, f"error: {e}\n")
    rank = int(os.environ.get("RANK", "0"))
    # one line per process on stdout: a launcher (or test) compares the ranks' weights through param_digest. One
    # write call, so the ranks' lines cannot interleave (print writes the newline separately when unbuffered)
    report = {"rank": rank, "step": result.steps, "resumed_from": result.resumed_from,
              "param_digest": result.param_digest, "loss": result.last.get("loss"),
              "samples_per_s": result.samples_per_s, "mode_shares": result.mode_shares, "mixture": result.mixture,
              "eval": result.eval}
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    return 0


__all__ = ["ACTION_ERRORS", "CHECKPOINT_KIND", "ActionMeans", "SyntheticMotion", "TrainConfig", "TrainResult",
           "derive_seed", "evaluate", "format_eval", "load_motus", "load_train_config", "main", "param_digest", "read_checkpoint",
           "shard_batches", "train", "window_groups"]


if __name__ == "__main__":
    sys.exit(main())
