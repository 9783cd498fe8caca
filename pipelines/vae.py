"""VAE jobs as the driver runs them: training and evaluation, each recorded as a run in the catalog."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from rich.console import Console

from catalog import Catalog
from pipelines.config import PipelineConfig
from common.progress import make_console
from pipelines.driver import remove_leftovers


def excluded_items(cfg: PipelineConfig, catalog: Catalog) -> dict[str, str]:
    """Items VAE training and evaluation leave out (item id → reason); empty when `vae.exclude_flagged` is off."""
    if not cfg.vae.exclude_flagged:
        return {}
    from audit.flags import flagged_items

    return flagged_items(cfg, catalog)


def run_vae_train(cfg: PipelineConfig, catalog: Catalog, resume: bool = True, steps: int | None = None,
                  progress: bool = True, console: Console | None = None):
    from latent_action_vae.train import train_vae

    console = console or make_console(stderr=True)
    remove_leftovers("vae-train", [cfg.path(cfg.vae.output) / "checkpoints"], console)
    run_id = catalog.start_run("vae-train", cfg.to_dict(), engine="torch")
    status, counts = "failed", {}
    try:
        result = train_vae(cfg, resume=resume, steps=steps, progress=progress, console=console,
                           exclude=excluded_items(cfg, catalog))
        ckpt = result.checkpoint
        catalog.add_artifacts([{"item_id": None, "stage": "vae-train", "kind": "vae_checkpoint", "path": str(ckpt),
                                "bytes": ckpt.stat().st_size,
                                "blake2b": hashlib.blake2b(ckpt.read_bytes(), digest_size=16).hexdigest(),
                                "run_id": run_id}])
        counts = {"steps": result.steps, "resumed_from": result.resumed_from}
        status = "ok"
        return result
    finally:
        catalog.finish_run(run_id, status, counts)


def run_vae_eval(cfg: PipelineConfig, catalog: Catalog, checkpoint: str | None = None,
                 console: Console | None = None) -> dict[str, Any]:
    """Probes (trained μ / PCA-k / pooled flow / random init / mean), EPEs against zero flow and mean fields,
    information per dim and S-PCFC on held-out (val + test) groups, audit-flagged items left out."""
    import torch

    from latent_action_vae.data import ActionStats, PairSampler
    from latent_action_vae.evaluate import evaluate
    from latent_action_vae.model import LatentActionVAE
    from latent_action_vae.train import checkpoint_identity, flow_manifest_rows, load_vae

    console = console or make_console(stderr=True)
    vc = cfg.vae
    torch.set_num_threads(vc.threads)
    ckpt = (Path(checkpoint) if checkpoint else cfg.path(vc.output) / "checkpoints" / "last.pt").resolve()
    if not ckpt.exists():
        raise FileNotFoundError(f"no VAE checkpoint at {ckpt}: run `pyramid vae train` first (or pass --checkpoint)")
    model, state = load_vae(ckpt)
    torch.manual_seed(vc.seed + 1)
    random_model = LatentActionVAE(model.cfg).eval()
    stats = {k: ActionStats.from_dict(v) for k, v in state["action_stats"].items()}
    excluded = excluded_items(cfg, catalog)
    rows, _ = flow_manifest_rows(cfg, excluded)
    train_rows = [r for r in rows if r["split"] == "train"]
    heldout_rows = [r for r in rows if r["split"] in ("val", "test")]
    if not heldout_rows:
        raise ValueError("no held-out (val/test) items with flow to evaluate on")
    per_pass = max(1, vc.eval_max_pairs)

    def batches(rows_, labelled_only):
        return lambda: PairSampler(rows_, model.cfg, stats, seed=vc.seed).iter_batches(
            64, max_pairs=per_pass, labelled_only=labelled_only)

    run_id = catalog.start_run("vae-eval", {**cfg.to_dict(), "checkpoint": str(ckpt)}, engine="torch")
    status = "failed"
    try:
        results = evaluate(model, random_model, batches(train_rows, True), batches(heldout_rows, False),
                           cfg.path(vc.output) / "eval", vc.flow_scale_px, rows=rows,
                           train_all_batches_fn=batches(train_rows, False), excluded=excluded,
                           checkpoint={"path": str(ckpt), "identity": checkpoint_identity(state)})
        catalog.add_evaluation(run_id, _flatten(results))
        status = "ok"
        return results
    finally:
        catalog.finish_run(run_id, status, {})


def _flatten(results: dict[str, Any], prefix: str = "") -> dict[str, dict[str, float]]:
    """{scope: {metric: value}} from the nested evaluation dict (scopes are its top-level keys)."""
    out: dict[str, dict[str, float]] = {}

    def walk(node: Any, scope: str, name: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, scope, f"{name}.{k}" if name else str(k))
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            out.setdefault(scope, {})[name] = float(node)

    for scope, node in results.items():
        if scope != "meta":  # counts, settings and timings, kept in eval.json only
            walk(node, scope, "")
    return out
