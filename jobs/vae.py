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



def _train_args(cfg: PipelineConfig) -> tuple:
    """What `train_vae` takes of the pipeline config: the VAE's own settings, the workdir, the manifests and
    output folders."""
    return cfg.vae, cfg.path("."), cfg.manifests_dir, cfg.path(cfg.vae.output)


def run_vae_train(cfg: PipelineConfig, catalog: Catalog, resume: bool = True, steps: int | None = None,
                  progress: bool = True, console: Console | None = None, nproc: int = 1):
    """Train the VAE in this process, or in `nproc` processes on this machine (torchrun, gloo: each trains on its
    own batches, gradients averaged; this process keeps the catalog and records the run)."""
    from latent_action_vae.train import train_vae

    console = console or make_console(stderr=True)
    remove_leftovers("vae-train", [cfg.path(cfg.vae.output) / "checkpoints"], console)
    run_id = catalog.start_run("vae-train", {**cfg.to_dict(), "nproc": nproc}, engine="torch")
    status, counts = "failed", {}
    try:
        exclude = excluded_items(cfg, catalog)
        if nproc > 1:
            result = _train_in_processes(cfg, nproc, resume, steps, exclude)
        else:
            result = train_vae(*_train_args(cfg), resume=resume, steps=steps, progress=progress, console=console,
                               exclude=exclude)
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


def _train_in_processes(cfg: PipelineConfig, nproc: int, resume: bool, steps: int | None, exclude: dict[str, str]):
    """`torchrun --standalone --nproc_per_node N -m jobs.vae` with the resolved config and the excluded items
    in a temp folder; the ranks' output passes through; rank 0 reports the result as its last line."""
    import json
    import subprocess
    import sys
    import tempfile

    import yaml

    from latent_action_vae.train import TrainResult

    with tempfile.TemporaryDirectory(prefix="vae-ddp-") as tmp:
        data = {**cfg.to_dict(), "workdir": str(Path(cfg.workdir).resolve())}  # the ranks may start elsewhere
        (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        (Path(tmp) / "exclude.json").write_text(json.dumps(exclude))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "jobs.vae", "--config", str(Path(tmp) / "config.yaml"),
               "--exclude", str(Path(tmp) / "exclude.json"), "--result", str(Path(tmp) / "result.json")]
        cmd += (["--steps", str(steps)] if steps is not None else []) + ([] if resume else ["--no-resume"])
        done = subprocess.run(cmd)
        if done.returncode != 0:
            raise RuntimeError(f"VAE training in {nproc} processes failed (exit {done.returncode}); see above")
        r = json.loads((Path(tmp) / "result.json").read_text())
    return TrainResult(Path(r["checkpoint"]), r["steps"], r["resumed_from"], r["last"], r["samples_per_s"],
                       Path(r["metrics_path"]))


def main(argv: list[str] | None = None) -> int:
    """One rank of `pyramid vae train --nproc N` (started by torchrun, which sets RANK / WORLD_SIZE)."""
    import argparse
    import json

    import torch.distributed as dist

    from latent_action_vae.train import train_vae
    from pipelines.config import load_config

    ap = argparse.ArgumentParser(prog="python -m jobs.vae")
    ap.add_argument("--config", required=True)
    ap.add_argument("--exclude", required=True)
    ap.add_argument("--result", required=True)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--no-resume", action="store_true")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    dist.init_process_group("gloo")
    try:
        result = train_vae(*_train_args(cfg), resume=not args.no_resume, steps=args.steps,
                           exclude=json.loads(Path(args.exclude).read_text()))
        dist.barrier()  # rank 0's last checkpoint is written before any rank exits
        if dist.get_rank() == 0:
            Path(args.result).write_text(json.dumps({
                "checkpoint": str(result.checkpoint), "steps": result.steps, "resumed_from": result.resumed_from,
                "last": result.last, "samples_per_s": result.samples_per_s, "metrics_path": str(result.metrics_path)}))
    finally:
        dist.destroy_process_group()
    return 0


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
    rows, _ = flow_manifest_rows(cfg.manifests_dir, cfg.path("."), excluded)
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


if __name__ == "__main__":
    raise SystemExit(main())
