"""`pyramid vae train`: train the latent-action VAE on flow from every tier, streaming pairs from the flow manifest,
with exact resume (docs/vae.md#train)."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pyarrow.parquet as pq
import torch
from rich.console import Console

from manifests.checkpoints import content_identity, load_checkpoint, save_checkpoint
from common.run_kit import MetricsLog, derive_seed
from latent_action_vae.data import ActionStats, PairSampler, compute_action_stats
from latent_action_vae.losses import end_point_error_px, vae_loss
from latent_action_vae.model import LatentActionVAE
from latent_action_vae.pca_init import PCA_INIT_PAIRS, init_from_pca
from latent_action_vae.config import VAEConfig
from common.progress import StageProgress, make_console

CHECKPOINT_KIND = "motus-pyramid/latent-action-vae/v1"
METRICS = ("step", "loss", "recon", "kl", "align", "epe_px", "labelled", "lr", "samples_per_s", "wall_s")


# VAE settings that do not change what the model learns: a resumed run may change them freely
RUN_ONLY_SETTINGS = ("steps", "threads", "log_every", "checkpoint_every", "eval_max_pairs", "cache_items", "output")


def flow_manifest_rows(manifests_dir: str | os.PathLike, workdir: str | os.PathLike,
                       exclude: Mapping[str, str] | None = None) -> tuple[list[dict[str, Any]], str]:
    """Rows of the flow manifest in `manifests_dir`, less the `exclude`d item ids, and a hash of their content
    (recorded in checkpoints; a rerun of the flow stage that changes nothing keeps the hash, and so does another
    workdir: artifact paths enter it relative to `workdir`)."""
    path = Path(manifests_dir) / "flow.parquet"
    if not path.exists():
        raise FileNotFoundError(f"no flow manifest at {path}: run `pyramid flow` first")
    rows = [r for r in pq.read_table(path).to_pylist() if r["item_id"] not in (exclude or {})]
    return rows, _manifest_digest(rows, Path(workdir).resolve())


def _manifest_digest(rows: list[dict[str, Any]], root: Path | None) -> str:
    """blake2b-128 of the rows' identities; artifact paths relative to `root` (None: as stored, the hash
    checkpoints recorded before it was relative)."""
    prefix = root.as_posix().rstrip("/") + "/" if root is not None else None

    def rel(p: str) -> str:
        return p[len(prefix):] if prefix and p.startswith(prefix) else p

    keys = [(r["item_id"], r["split"], rel(r["artifact_path"]), r["n_pairs"], r["delta_frames"]) for r in rows]
    return hashlib.blake2b(repr(sorted(keys)).encode(), digest_size=16).hexdigest()


def _learning_settings(vc: dict[str, Any]) -> dict[str, Any]:
    """The settings a resume must match; one a checkpoint predates counts as its default value."""
    defaults = {f.name: getattr(VAEConfig(), f.name) for f in dataclasses.fields(VAEConfig)}
    return {k: v for k, v in {**defaults, **vc}.items() if k not in RUN_ONLY_SETTINGS}


def read_vae_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A VAE checkpoint's contents (tensors and plain types only), or a ValueError saying why not."""
    state = load_checkpoint(path, "VAE checkpoint")
    kind = state.get("kind") if isinstance(state, dict) else None
    if kind != CHECKPOINT_KIND:
        raise ValueError(f"{path} is not a latent-action VAE checkpoint (kind={kind!r})")
    return state


def checkpoint_identity(state: Mapping[str, Any]) -> str:
    """What names a VAE checkpoint in labels' and shards' provenance: a hash of its weights, its learning
    settings and its action statistics (not of the file's bytes, which differ between equal checkpoints)."""
    heads = {"align_heads": list(state["align_heads"])} if state.get("align_heads") else {}  # older ones: as before
    return content_identity(state["model"], {"kind": state["kind"], "vae_config": _learning_settings(state["vae_config"]),
                                             "action_stats": state["action_stats"], **heads})


def load_vae(path: str | os.PathLike) -> tuple[LatentActionVAE, dict[str, Any]]:
    """Model (eval mode) and the checkpoint's other contents (config, step, action stats, manifest hash)."""
    state = read_vae_checkpoint(path)
    model = LatentActionVAE(VAEConfig(**state["vae_config"]), align_heads=state.get("align_heads", ()))
    model.load_state_dict(state["model"])
    return model.eval(), state


def lr_at(step: int, vc: VAEConfig, warmup: int = 20) -> float:
    """Linear warmup, then constant — or a cosine decay to 10% over `lr_decay_steps` (a learning setting, not
    `steps`, so a run resumed with more steps keeps the schedule it started with)."""
    lr = vc.lr * min(1.0, (step + 1) / warmup)
    if vc.lr_decay_steps:
        progress = min(1.0, step / vc.lr_decay_steps)
        lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    return lr


def source_balance(rows: list[dict[str, Any]], vc: VAEConfig) -> dict[str, float]:
    """item id → reconstruction weight. `per_source`: 1 / (the source's pair-weighted train mean |flow|, in
    network units), squared for the squared-error loss, floored at `recon_floor_px`, so every source's zero-flow
    error is about the same size; `none`: 1 for every item."""
    if vc.recon_balance == "none":
        return {r["item_id"]: 1.0 for r in rows}
    sums: dict[str, list[float]] = {}
    for r in rows:
        if r.get("mean_px") is None:
            raise ValueError(f"{r['item_id']}: the flow manifest has no mean_px (rerun `pyramid flow`)")
        acc = sums.setdefault(r["source"], [0.0, 0.0])
        acc[0] += float(r["mean_px"]) * int(r["n_pairs"])
        acc[1] += int(r["n_pairs"])
    scale = {s: max(total / max(n, 1), vc.recon_floor_px) / vc.flow_scale_px for s, (total, n) in sums.items()}
    power = 1 if vc.recon_loss == "epe" else 2  # the loss is linear, or quadratic, in the flow's size
    return {r["item_id"]: 1.0 / scale[r["source"]] ** power for r in rows}


@dataclass
class TrainResult:
    checkpoint: Path
    steps: int
    resumed_from: int
    last: dict[str, float]
    samples_per_s: float
    metrics_path: Path


def _world() -> tuple[int, int]:
    """(rank, world size) of a `torch.distributed` run (`pyramid vae train --nproc N`), else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _average_gradients(model: torch.nn.Module, world: int) -> None:
    """Sum every parameter's gradient over the processes and divide by their number (what DDP does; by hand so the
    model's own methods stay callable). A parameter this process did not use (an embodiment's alignment head
    with no sample here) contributes zeros, so every process joins every reduction in the same order."""
    import torch.distributed as dist

    for p in model.parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= world


def train_step(model, optimiser, batch, vc: VAEConfig, step: int,
               item_weights: dict[str, float] | None = None) -> dict[str, float]:
    model.train()
    rank, world = _world()
    # the noise of step k is the same on a resumed run (and differs between the processes of one)
    torch.manual_seed(derive_seed(vc.seed, step) if rank == 0 else derive_seed(vc.seed, step, rank))
    for group in optimiser.param_groups:
        group["lr"] = lr_at(step, vc) * group.get("lr_scale", 1.0)
    x, target, mask = model.prepare(batch["flow"], batch["valid"])
    out = model(x, frame=model.prepare_frame(batch.get("frame")))
    weight = None
    if item_weights is not None and vc.recon_balance != "none":
        weight = torch.tensor([item_weights[i] for i in batch["item_ids"]], dtype=target.dtype, device=target.device)
    align_pred = None
    if vc.align_head == "linear":
        if "embodiments" not in batch:
            raise ValueError("vae.align_head: linear needs each sample's embodiment in the batch ('embodiments')")
        align_pred = model.predict_action(out["mu"], batch["embodiments"], batch["labelled"])
    losses = vae_loss(out, target, mask, batch["action"], batch["action_mask"], batch["labelled"], vc.beta,
                      vc.lambda_align, weight, vc.moving_weight, vc.moving_px / vc.flow_scale_px, vc.recon_loss,
                      vc.coarse_weight, align_pred)
    optimiser.zero_grad(set_to_none=True)
    losses["loss"].backward()
    if world > 1:
        _average_gradients(model, world)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimiser.step()
    with torch.no_grad():
        epe = end_point_error_px(out["recon"], target, mask, vc.flow_scale_px)
        logged = torch.stack([losses["loss"], losses["recon"], losses["kl"], losses["align"], epe,
                              batch["labelled"].sum().to(epe.dtype)]).detach()
        if world > 1:  # the figures of the whole step, over every process's batch
            import torch.distributed as dist

            dist.all_reduce(logged)
            logged[:5] /= world
    loss, recon, kl, align, epe, labelled = logged.tolist()
    return {"loss": loss, "recon": recon, "kl": kl, "align": align, "epe_px": epe, "labelled": int(labelled),
            "lr": lr_at(step, vc)}


def make_optimiser(model: LatentActionVAE, vc: VAEConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; the alignment heads, if any, in a second group whose lr is scaled by
    `align_head_lr` (`train_step` applies each group's `lr_scale` to the schedule)."""
    heads = [p for name, p in model.named_parameters() if name.startswith("align_")]
    rest = [p for name, p in model.named_parameters() if p.requires_grad and not name.startswith("align_")]
    groups = [{"params": rest}] + ([{"params": heads, "lr_scale": vc.align_head_lr}] if heads else [])
    return torch.optim.AdamW(groups, lr=vc.lr, weight_decay=vc.weight_decay)


def build(vc: VAEConfig, rows: list[dict[str, Any]]):
    train_rows = [r for r in rows if r["split"] == "train"]
    if not train_rows:
        raise ValueError("the flow manifest has no train-split items to train on")
    # only embodiments with action statistics count as labelled (the sampler treats the rest as unlabelled)
    labelled = [r for r in train_rows if r["has_actions"]
                and (not vc.align_embodiments or r["embodiment"] in vc.align_embodiments)]
    action_stats = compute_action_stats(labelled)
    sampler = PairSampler(train_rows, vc, action_stats, seed=vc.seed, cache_items=vc.cache_items)
    torch.manual_seed(vc.seed)
    model = LatentActionVAE(vc, align_heads=sorted(action_stats))  # linear alignment: a head per labelled embodiment
    optimiser = make_optimiser(model, vc)
    return model, optimiser, sampler, action_stats, source_balance(train_rows, vc)


class ResumeMismatch(ValueError):
    """The checkpoint to resume was trained on other data or with other learning settings."""


def train_vae(vc: VAEConfig, workdir: str | os.PathLike, manifests_dir: str | os.PathLike, out_dir: str | os.PathLike,
              resume: bool = True, steps: int | None = None, progress: bool = True, console: Console | None = None,
              exclude: Mapping[str, str] | None = None) -> TrainResult:
    """Train (or resume) into `out_dir` on the train items of the flow manifest in `manifests_dir` (artifact paths
    hashed relative to `workdir`), less `exclude` (item id → reason: audit-flagged
    duplicates and static clips, recorded in the checkpoint). Inside a `torch.distributed` run (`pyramid vae train
    --nproc N`) every process trains on batches of its own (`vae.batch_size` each) with gradients averaged; rank 0
    writes the metrics and checkpoints, and every rank resumes from the same checkpoint."""
    console = console or make_console(stderr=True)
    rank, world = _world()
    progress = progress and rank == 0
    exclude = dict(sorted((exclude or {}).items()))
    steps = vc.steps if steps is None else steps
    torch.set_num_threads(max(1, vc.threads // world))
    out_dir = Path(out_dir)
    ckpt_path = out_dir / "checkpoints" / "last.pt"
    rows, manifest_hash = flow_manifest_rows(manifests_dir, workdir, exclude)
    model, optimiser, sampler, action_stats, item_weights = build(vc, rows)
    start = 0
    if resume and ckpt_path.exists():
        state = read_vae_checkpoint(ckpt_path)
        old, new = _learning_settings(state["vae_config"]), _learning_settings(dataclasses.asdict(vc))
        changed = sorted(k for k in new if old.get(k) != new[k])
        # a checkpoint written before the hash was workdir-relative names the same rows by absolute paths
        same_rows = state["manifest_hash"] in (manifest_hash, _manifest_digest(rows, None))
        same_heads = list(state.get("align_heads", [])) == model.align_heads
        if changed or not same_rows or not same_heads:
            if changed:
                what = f"VAE settings {changed}"
            elif not same_rows:
                what = "the flow manifest (items or their flow changed)"
            else:
                what = f"alignment heads {state.get('align_heads', [])} (now {model.align_heads})"
            raise ResumeMismatch(
                f"{ckpt_path} was trained with other {what}; use --no-resume to start over "
                "(or a different vae.output folder)"
            )
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        start = state["step"]
        if rank == 0:
            console.print(f"[vae] resuming from step {start} ({ckpt_path})", markup=False, highlight=False)
    if start == 0 and vc.coarse_skip_init == "pca":  # every rank fits the same PCA (one ordered pass)
        fitted = init_from_pca(model, sampler.iter_batches(vc.batch_size, max_pairs=PCA_INIT_PAIRS))
        if rank == 0:
            console.print(f"[vae] μ starts as PCA-{fitted['components']} of the pooled flow of {fitted['pairs']} train "
                          f"pairs ({fitted['explained']:.0%} of its variance)", markup=False, highlight=False)
    metrics_path = out_dir / "metrics.csv"
    if rank > 0:  # the other processes train; rank 0 writes
        return _train_quietly(model, optimiser, sampler, vc, item_weights, start, steps, rank, ckpt_path,
                              metrics_path)
    summary = sampler.summary()
    tiers = ", ".join(f"L{t}: {v['items']} items/{v['pairs']} pairs" for t, v in sorted(summary["by_tier"].items()))
    lab = summary["by_labelled"].get("labelled", {"items": 0, "pairs": 0})
    ranks = f"; {world} processes, each its own batch" if world > 1 else ""
    if exclude:
        console.print(f"[vae] left out {len(exclude)} audit-flagged items (duplicates, static): "
                      + ", ".join(list(exclude)[:5]) + (" ..." if len(exclude) > 5 else ""), markup=False, highlight=False)
    console.print(f"[vae] training on {summary['items']} train items ({tiers}); labelled {lab['items']} items / "
                  f"{lab['pairs']} pairs, {summary['labelled_per_batch']} per batch of {summary['batch_size']}{ranks}",
                  markup=False, highlight=False)

    def state_at(step: int) -> dict[str, Any]:
        from catalog.db import code_version  # here, not at import: train_step runs where DuckDB is not installed

        return {"kind": CHECKPOINT_KIND, "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                "step": step, "vae_config": dataclasses.asdict(vc), "manifest_hash": manifest_hash,
                "excluded": exclude, **({"align_heads": list(model.align_heads)} if model.align_heads else {}),
                "action_stats": {k: v.to_dict() for k, v in action_stats.items()},
                "code_version": code_version(), "describe": model.describe()}

    bar = StageProgress("vae-train", total=max(steps - start, 0), skipped=start, console=console, enabled=progress,
                        unit="steps")
    last: dict[str, float] = {}
    t0 = time.perf_counter()
    with MetricsLog(metrics_path, METRICS, start) as metrics:
        for step in range(start, steps):
            last = train_step(model, optimiser, sampler.batch(step), vc, step, item_weights)
            wall = time.perf_counter() - t0
            last.update(step=step, wall_s=wall, samples_per_s=(step - start + 1) * vc.batch_size * world / wall)
            bar.update("done", note=f"loss {last['loss']:.4f} recon {last['recon']:.4f} kl {last['kl']:.2f} "
                                     f"align {last['align']:.4f} epe {last['epe_px']:.2f}px")
            if step % vc.log_every == 0 or step == steps - 1:
                metrics.write(last)
            if (step + 1) % vc.checkpoint_every == 0 or step == steps - 1:
                save_checkpoint(ckpt_path, state_at(step + 1))
    bar.close()
    if start >= steps and not ckpt_path.exists():
        save_checkpoint(ckpt_path, state_at(start))
    rate = last.get("samples_per_s", 0.0)
    return TrainResult(ckpt_path, steps, start, last, rate, metrics_path)


def _train_quietly(model, optimiser, sampler, vc: VAEConfig, item_weights, start: int, steps: int, rank: int,
                   ckpt_path: Path, metrics_path: Path) -> TrainResult:
    """A rank other than 0: the same steps on its own batches, joining every gradient reduction; writes nothing."""
    last: dict[str, float] = {}
    for step in range(start, steps):
        last = train_step(model, optimiser, sampler.batch(step, rank=rank), vc, step, item_weights)
    return TrainResult(ckpt_path, steps, start, last, 0.0, metrics_path)


__all__ = ["ActionStats", "CHECKPOINT_KIND", "ResumeMismatch", "TrainResult", "checkpoint_identity",
           "flow_manifest_rows", "load_vae", "read_vae_checkpoint", "train_vae"]
