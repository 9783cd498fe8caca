"""The label stage: encode every item's flow pairs with the trained VAE into latent actions.

Output per item: float32 [T−1, 14], row j = the motion starting at frame j (the Motus loader's convention),
where T is the item's frame count at the flow fps. Densifying rule: row j takes μ of the last flow pair that
starts at or before frame j. On the native grid (a pair at every frame) that is pair j itself, and the last
Δ−1 rows, which have no pair of their own, repeat the last pair; on the `delta` grid each pair's μ holds for
the Δ rows it starts. After the stage the driver computes per-dim statistics (mean, std, q01, q99) for the
corpus and per source.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
from rich.console import Console

from catalog import Catalog
from common.column_stats import ColumnStats
from common.fingerprint import fingerprint
from flow_extraction.artifacts import artifact_path, read_flow_artifact
from manifests.io import atomic_write, atomic_write_text
from pipelines.config import PipelineConfig
from pipelines.driver import ItemStage, Manifest, StageReport, run_item_stage
from pipelines.stages import BadInput, Resources, Stage

LATENT_FORMAT = "motus-pyramid/latent-action/v1"


def densify(mu: np.ndarray, starts: np.ndarray, n_frames: int) -> np.ndarray:
    """Pair latents [N, D] with start frames [N] → rows [n_frames − 1, D] (see the module docstring)."""
    rows = np.arange(n_frames - 1)
    idx = np.clip(np.searchsorted(starts, rows, side="right") - 1, 0, len(starts) - 1)
    return mu[idx].astype(np.float32)


def load_labeller(checkpoint: str, threads: int = 1):
    import torch

    from latent_action_vae.train import load_vae

    torch.set_num_threads(threads)
    model, state = load_vae(checkpoint)
    return model


def label_item(task: Mapping[str, Any], model) -> dict[str, Any]:
    import torch

    art = read_flow_artifact(task["flow_path"])
    flow = art.flow.astype(np.float32)
    if not np.isfinite(flow).all():
        raise BadInput(f"non-finite flow in {task['item_id']} ({task['flow_path']})")
    mus = []
    with torch.inference_mode():
        for i in range(0, len(flow), 128):
            x, _, _ = model.prepare(torch.from_numpy(flow[i : i + 128]), torch.from_numpy(art.valid[i : i + 128]))
            mus.append(model.encode(x)[0].numpy())
    mu = np.concatenate(mus)
    n_frames = int(art.meta["n_frames"])
    latents = densify(mu, art.pairs[:, 0], n_frames)
    meta = {"format": LATENT_FORMAT, "item_id": task["item_id"], "checkpoint": task["checkpoint"],
            "checkpoint_blake2b": task["checkpoint_sha"], "fps": art.meta["fps"], "n_frames": n_frames,
            "delta_frames": art.meta["delta_frames"], "grid": art.meta["grid"], "flow_backend": art.meta["backend"],
            "rule": "row j = mu of the last flow pair starting at or before frame j"}
    path = Path(task["out_path"])
    size, checksum = _write_npz(path, latent_action=latents, pair_mu=mu.astype(np.float32),
                                meta=np.array(json.dumps(meta, sort_keys=True)))
    return {"path": str(path), "bytes": size, "checksum": checksum, "rows": len(latents)}


def _write_npz(path: Path, **arrays) -> tuple[int, str]:
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def read_latents(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    with np.load(path, allow_pickle=False) as z:
        return z["latent_action"], json.loads(str(z["meta"]))


def latents_fingerprint(flow_blake2b: str, checkpoint_identity: str) -> str:
    """The flow artifact's bytes and the model: a rewritten flow or another VAE relabels the item."""
    return fingerprint(str(flow_blake2b), str(checkpoint_identity), sep=":")


def _workdir_relative(path: Path, cfg: PipelineConfig) -> str:
    """`path` relative to the workdir when it lies under it, else absolute."""
    try:
        return path.relative_to(cfg.path(".")).as_posix()
    except ValueError:
        return str(path)


@dataclass
class LabelReport:
    run_id: str
    stage: StageReport
    stats: dict[str, Any] = field(default_factory=dict)


def latent_statistics(catalog: Catalog) -> dict[str, Any]:
    """Per-dim mean, std, min, max, q01, q99 of every labelled row, for the corpus and per source: two streaming
    passes over the latent files (`ColumnStats`; quantiles to within (max − min) / 4096), so memory does not grow
    with the corpus."""
    corpus, by_source = ColumnStats(), {}
    items: dict[str, int] = {}
    for first_pass in (True, False):
        for r in catalog.iter_rows("SELECT a.item_id, a.path FROM done_items('label') d JOIN artifacts a "
                                   "ON a.item_id = d.item_id AND a.stage = 'label' ORDER BY a.item_id"):
            latents, _ = read_latents(r["path"])
            source = r["item_id"].split("/", 1)[0]
            if first_pass:
                corpus.add(latents)
                by_source.setdefault(source, ColumnStats()).add(latents)
                items[source] = items.get(source, 0) + 1
            else:
                corpus.add_to_histogram(latents)
                by_source[source].add_to_histogram(latents)
    if not items:
        return {}
    return {"corpus": {**corpus.describe(), "items": sum(items.values())},
            "per_source": {s: {**stats.describe(), "items": items[s]} for s, stats in sorted(by_source.items())}}


def run_label(cfg: PipelineConfig, catalog: Catalog, runner: Any, checkpoint: str | None = None, force: bool = False,
              progress: bool = True, console: Console | None = None) -> LabelReport:
    from latent_action_vae.train import checkpoint_identity, load_vae

    ckpt = (Path(checkpoint) if checkpoint else cfg.path(cfg.vae.output) / "checkpoints" / "last.pt").resolve()
    if not ckpt.exists():
        raise FileNotFoundError(f"no VAE checkpoint at {ckpt}: run `pyramid vae train` first (or pass --checkpoint)")
    _, state = load_vae(ckpt)  # a wrong file fails here, once, not in every worker
    ckpt_sha = checkpoint_identity(state)  # of the weights, config and stats: equal models label alike
    named = _workdir_relative(ckpt, cfg)  # what the latents' meta records: the same in any workdir
    root = cfg.artifacts_dir / "latents"

    def plan(catalog: Catalog) -> Iterator[dict[str, Any]]:  # streamed: the driver draws it in chunks
        flows = catalog.iter_rows(
            """SELECT f.item_id, f.artifact_path, a.blake2b FROM flow_stats f
               JOIN artifacts a ON a.path = f.artifact_path JOIN done_items('flow') d ON d.item_id = f.item_id
               ORDER BY f.item_id""")
        return ({"item_id": r["item_id"], "input_uri": r["artifact_path"], "flow_path": r["artifact_path"],
                 "checkpoint": named, "checkpoint_sha": ckpt_sha,
                 "out_path": str(artifact_path(root, r["item_id"], ".latent.npz")),
                 "input_fingerprint": latents_fingerprint(r["blake2b"], ckpt_sha)}
                for r in flows)

    def after(catalog: Catalog, run_id: str) -> dict[str, Any]:
        stats = latent_statistics(catalog)
        out = cfg.manifests_dir / "latent_stats.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps({"run_id": run_id, "checkpoint": named, **stats}, indent=1))
        return stats

    stage = Stage("label", label_item, setup=functools.partial(load_labeller, str(ckpt), cfg.runner.torch_threads),
                  resources=Resources(num_cpus=1, batch_size=4))
    run = run_item_stage(ItemStage(
        stage, plan, {**cfg.to_dict(), "checkpoint": str(ckpt)}, folders=[root], artifact_kind="latent_action",
        after=after, manifest=Manifest(cfg.manifests_dir / "latents.parquet", "latents", latents_manifest),
    ), catalog, runner, force=force, progress=progress, console=console)
    return LabelReport(run.run_id, run.report, run.after)


def latents_manifest(catalog: Catalog):
    """Items with latent actions: what the shard stage and readers use instead of listing folders."""
    return catalog.sql(
        """SELECT a.item_id, i.source, i.tier, i.split, a.path AS latent_path, a.blake2b
           FROM artifacts a JOIN items i USING (item_id) JOIN done_items('label') USING (item_id)
           WHERE a.stage = 'label' ORDER BY a.item_id""")
