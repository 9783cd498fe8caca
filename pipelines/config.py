"""The pipeline's configuration, declared once as dataclasses, loaded from YAML, printed with every run. Each
package owns its section's dataclass (`FlowConfig` in flow_extraction, `VAEConfig` in latent_action_vae); this
module composes them.

Unknown keys and wrong types are errors that name the key: a typo must never silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common import storage
from common.config import ConfigError, build_dataclass, read_yaml_mapping  # noqa: F401 (ConfigError: the CLI's)
from flow_extraction.config import BACKENDS as FLOW_BACKENDS, FlowConfig, check_dis_knobs
from latent_action_vae.config import VAEConfig


@dataclass
class RunnerConfig:
    engine: str = "ray"  # ray | beam | local
    ray_address: str | None = None  # None: a local Ray instance (or RAY_ADDRESS when set)
    num_cpus: int | None = None  # local Ray instance size, or Beam DirectRunner worker processes (None: all cores)
    torch_threads: int = 1  # per worker process
    beam_runner: str = "DirectRunner"  # or FlinkRunner, SparkRunner, DataflowRunner (with beam_options)
    beam_options: list[str] = field(default_factory=list)  # Beam pipeline flags, e.g. ["--flink_master=host:8081"]
    beam_temp: str | None = None  # where Beam workers write outcomes: shared storage on a cluster (None: local tmp)


@dataclass
class SplitConfig:
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    salt: str = "motus-pyramid/v1"


@dataclass
class SourceConfig:
    kind: str  # an adapter name: robotwin | task_agnostic | ...
    root: str  # relative paths are relative to the workdir
    tier: int | None = None  # override the adapter's default pyramid tier
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class SamplesConfig:
    scale: int = 1  # multiplies every tier's item count
    seed: int = 0
    defects: bool = True  # add deliberately bad items (truncated video, missing HDF5 keys, NaN actions)


@dataclass
class ShardConfig:
    """WebDataset shards: one sample per labelled clip (see manifests/shard_format.py)."""

    output: str = "shards"  # the shard root, relative to workdir (one registered set per root)
    target_mb: float = 512.0  # a shard closes once it passes this size (the last one per split is smaller)
    per_tier: bool = False  # separate shards per (split, tier), for tier-weighted mixing at train time
    video_format: str = "jpeg"  # jpeg (Motion-JPEG stream, random access per frame) | mp4 (H.264, smaller)
    jpeg_quality: int = 90
    mp4_crf: int = 20
    include_static: bool = False  # clips the motion filter marked static stay out unless this is true
    language_encoder: str = "minilm"  # minilm (all-MiniLM-L6-v2, shipped in its wheel) | umt5 | none
    language_encoder_path: str | None = None  # local folder of a T5/UMT5 encoder (for language_encoder: umt5)
    max_text_tokens: int = 64  # tokens per language line (longer lines are truncated)


def _default_sources() -> list[SourceConfig]:
    return [
        SourceConfig(kind="ssv2", root="samples/ssv2"),
        SourceConfig(kind="ego4d", root="samples/ego4d"),
        SourceConfig(kind="robotwin", root="samples/robotwin"),
        SourceConfig(kind="task_agnostic", root="samples/task_agnostic/aloha_random"),
        SourceConfig(kind="oxe", root="samples/oxe"),
        SourceConfig(kind="lerobot", root="samples/lerobot/aloha_demo_v3"),
        SourceConfig(kind="lerobot", root="samples/lerobot/aloha_demo_v21"),
    ]


@dataclass
class PipelineConfig:
    workdir: str = "demo_run"
    catalog: str = "catalog.duckdb"  # relative to workdir
    manifests: str = "manifests"  # relative to workdir
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    splits: SplitConfig = field(default_factory=SplitConfig)
    sources: list[SourceConfig] = field(default_factory=_default_sources)
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    # the compact Motus trainer's YAML (training_hooks/train.py) for the demo's short run from the shards; relative
    # paths are relative to the current directory, like --config (None: the demo skips training)
    train_config: str | None = None
    artifacts: str = "artifacts"  # relative to workdir
    source_cache: str = "cache/sources"  # relative to workdir: local mirrors of source roots in buckets

    # --- derived paths ---
    def path(self, rel: str | os.PathLike) -> Path:
        """An absolute path: relative ones are under the workdir, so catalog paths work from any directory. An
        object-storage URL (`s3://bucket/prefix`, docs/storage.md) is returned as it is, a string."""
        if storage.is_url(rel):
            return str(rel)
        p = Path(rel)
        return p if p.is_absolute() else Path(self.workdir).resolve() / p

    def source_dir(self, root: str) -> Path:
        """The local folder a source root is read from: the root itself, or for a bucket URL its mirror in the
        source cache (pipelines/source_cache.py; ingest brings it up to date)."""
        if storage.is_url(root):
            return self.path(self.source_cache) / storage.cache_key(root)
        return self.path(root)

    @property
    def catalog_path(self) -> Path:
        return self.path(self.catalog)

    @property
    def artifacts_dir(self) -> Path:
        return self.path(self.artifacts)

    @property
    def manifests_dir(self) -> Path:
        return self.path(self.manifests)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def config_from_dict(data: dict[str, Any]) -> PipelineConfig:
    cfg = build_dataclass(PipelineConfig, data, "")
    validate(cfg)
    return cfg


def load_config(path: str | os.PathLike | None = None, **overrides: Any) -> PipelineConfig:
    """Load YAML (or defaults when `path` is None), then apply top-level dotted overrides like runner.engine."""
    data = read_yaml_mapping(path)
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for k in parents:
            if node.get(k) is None:
                node[k] = {}
            if not isinstance(node[k], dict):
                raise ConfigError(f"{k}: expected a mapping to set {dotted}, got {node[k]!r}")
            node = node[k]
        node[leaf] = value
    return config_from_dict(data)


def validate(cfg: PipelineConfig) -> None:
    from pipelines.runners import ENGINES
    from manifests.splits import SplitRatios

    if cfg.runner.engine not in ENGINES:
        raise ConfigError(f"runner.engine: {cfg.runner.engine!r} is not one of {', '.join(ENGINES)}")
    if cfg.runner.torch_threads < 1:
        raise ConfigError("runner.torch_threads must be >= 1")
    # the catalog (DuckDB, one writer, file locks), its manifests and the per-item artifacts (flow, labels:
    # written in place, read back by memory map) stay on a local or shared filesystem; sources and shards may be
    # in a bucket (docs/storage.md)
    for key in ("workdir", "catalog", "manifests", "artifacts", "source_cache"):
        if storage.is_url(getattr(cfg, key)) or re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:/[^/]", str(getattr(cfg, key))):
            raise ConfigError(f"{key}: {storage.redact(getattr(cfg, key))} is not a local path: the workdir, catalog, "
                              "manifests, artifacts and source cache stay on local (or shared) disk; sources "
                              "(sources[].root) and shards (shards.output) may be bucket URLs (docs/storage.md)")
    try:
        SplitRatios(cfg.splits.train, cfg.splits.val, cfg.splits.test, cfg.splits.salt)
    except ValueError as e:
        raise ConfigError(f"splits: {e}") from e
    if cfg.samples.scale < 1:
        raise ConfigError("samples.scale must be >= 1")
    f = cfg.flow
    if f.backend not in FLOW_BACKENDS:
        raise ConfigError(f"flow.backend: {f.backend!r} is not one of {', '.join(FLOW_BACKENDS)}")
    if f.grid not in ("native", "delta"):
        raise ConfigError(f"flow.grid: {f.grid!r} is not one of native, delta")
    if f.delta_s <= 0 or (f.fps is not None and f.fps <= 0):
        raise ConfigError("flow.delta_s and flow.fps must be > 0")
    for name in ("working_size", "store_size"):
        size = getattr(f, name)
        if len(size) != 2 or min(size) < 8:
            raise ConfigError(f"flow.{name} must be [H, W] with both >= 8, got {size}")
    if f.flow_size is not None and (len(f.flow_size) != 2 or min(f.flow_size) < 8
                                    or any(a > b for a, b in zip(f.flow_size, f.working_size))):
        raise ConfigError(f"flow.flow_size must be null (twice store_size, at most the canvas) or [H, W] with both "
                          f">= 8 and no larger than flow.working_size {f.working_size}, got {f.flow_size}")
    if f.batch_size < 1 or f.camera < 0 or f.num_gpus < 0:
        raise ConfigError("flow.batch_size must be >= 1, flow.camera >= 0 and flow.num_gpus >= 0")
    if f.dis_preset not in ("ultrafast", "fast", "medium"):
        raise ConfigError(f"flow.dis_preset: {f.dis_preset!r} is not one of ultrafast, fast, medium")
    try:
        check_dis_knobs(f.dis_preset, f.dis_knobs())
    except ValueError as e:
        raise ConfigError(f"flow.dis_*: {e}") from None
    v = cfg.vae
    if v.input not in ("flow", "colour"):
        raise ConfigError(f"vae.input: {v.input!r} is not one of flow, colour")
    if v.image_size % 2 ** (len(v.widths) - 1):
        raise ConfigError(f"vae.image_size {v.image_size} must be divisible by 2^(len(widths)-1) = {2 ** (len(v.widths) - 1)}")
    if not 0 <= v.labelled_fraction <= 1 or v.beta < 0 or v.lambda_align < 0:
        raise ConfigError("vae.labelled_fraction must be in [0, 1]; vae.beta and vae.lambda_align must be >= 0")
    if v.recon_balance not in ("none", "per_source"):
        raise ConfigError(f"vae.recon_balance: {v.recon_balance!r} is not one of none, per_source")
    if v.recon_loss not in ("squared", "epe"):
        raise ConfigError(f"vae.recon_loss: {v.recon_loss!r} is not one of squared, epe")
    if v.decoder_condition not in ("none", "frame"):
        raise ConfigError(f"vae.decoder_condition: {v.decoder_condition!r} is not one of none, frame")
    if v.decoder_condition == "frame" and not cfg.flow.store_frames:
        raise ConfigError("vae.decoder_condition: frame needs the first frames in the flow artifacts: "
                          "set flow.store_frames: true")
    if v.coarse_weight < 0 or v.coarse_cells < 1 or v.coarse_cells > v.image_size:
        raise ConfigError(f"vae.coarse_weight must be >= 0 and vae.coarse_cells in 1..image_size ({v.image_size}), "
                          f"got {v.coarse_weight} and {v.coarse_cells}")
    if v.align_head not in ("identity", "linear"):
        raise ConfigError(f"vae.align_head: {v.align_head!r} is not one of identity, linear")
    if not v.align_head_lr > 0:
        raise ConfigError(f"vae.align_head_lr must be > 0, got {v.align_head_lr}")
    if v.coarse_skip and v.input != "flow":
        raise ConfigError("vae.coarse_skip reads the pooled input flow: it needs vae.input: flow")
    if v.coarse_residual and (v.coarse_weight <= 0 or v.decoder_condition != "none"):
        raise ConfigError("vae.coarse_residual adds the coarse head's flow to the DC-AE decoder's: it needs "
                          "vae.coarse_weight > 0 and vae.decoder_condition: none")
    if v.coarse_mask not in ("none", "frame"):
        raise ConfigError(f"vae.coarse_mask: {v.coarse_mask!r} is not one of none, frame")
    if v.coarse_mask == "frame" and not v.coarse_residual:
        raise ConfigError("vae.coarse_mask: frame masks the coarse residual's flow: it needs vae.coarse_residual: true")
    if v.coarse_mask == "frame" and not cfg.flow.store_frames:
        raise ConfigError("vae.coarse_mask: frame needs the first frames in the flow artifacts: "
                          "set flow.store_frames: true")
    if v.coarse_skip_init not in ("random", "pca"):
        raise ConfigError(f"vae.coarse_skip_init: {v.coarse_skip_init!r} is not one of random, pca")
    if v.coarse_skip_init == "pca" and not v.coarse_skip:
        raise ConfigError("vae.coarse_skip_init: pca initialises the coarse skip: it needs vae.coarse_skip: true")
    if v.recon_floor_px <= 0 or v.moving_weight < 1 or v.moving_px < 0 or v.lr_decay_steps < 0:
        raise ConfigError("vae.recon_floor_px must be > 0, vae.moving_weight >= 1, vae.moving_px >= 0 and "
                          "vae.lr_decay_steps >= 0")
    for key in ("steps", "checkpoint_every", "log_every", "batch_size", "threads", "eval_max_pairs", "cache_items"):
        if getattr(v, key) < (0 if key == "steps" else 1):
            raise ConfigError(f"vae.{key} must be >= {0 if key == 'steps' else 1}, got {getattr(v, key)}")
    for tier, weight in v.tier_weights.items():
        if str(tier) not in {str(t) for t in range(1, 7)} or not isinstance(weight, (int, float)) or weight < 0:
            raise ConfigError(f"vae.tier_weights: keys are tiers 1..6 and weights numbers >= 0, got {tier!r}: {weight!r}")
    v.tier_weights = {str(t): float(w) for t, w in v.tier_weights.items()}  # YAML may give int keys
    if v.widths[-1] % v.latent_channels:
        raise ConfigError("vae.widths[-1] must be a multiple of vae.latent_channels (DC-AE's output shortcut)")
    sh = cfg.shards
    if sh.video_format not in ("jpeg", "mp4"):
        raise ConfigError(f"shards.video_format: {sh.video_format!r} is not one of jpeg, mp4")
    if sh.language_encoder not in ("minilm", "umt5", "none"):
        raise ConfigError(f"shards.language_encoder: {sh.language_encoder!r} is not one of minilm, umt5, none")
    if sh.language_encoder == "umt5" and not sh.language_encoder_path:
        raise ConfigError("shards.language_encoder: umt5 needs shards.language_encoder_path (a local folder)")
    if sh.target_mb <= 0 or not 1 <= sh.jpeg_quality <= 100 or sh.max_text_tokens < 1:
        raise ConfigError("shards.target_mb must be > 0, shards.jpeg_quality in 1..100, shards.max_text_tokens >= 1")
    for i, s in enumerate(cfg.sources):
        if s.tier is not None and not 1 <= s.tier <= 6:
            raise ConfigError(f"sources[{i}].tier must be 1..6, got {s.tier}")
