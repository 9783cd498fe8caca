"""DPFlow optical flow through ptlflow 0.4.2: checkpoint resolution, the backend, and checkpoint writing. Weights,
colour order and import cost: docs/flow.md#dpflow."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from common.storage import sha256_file
from flow_extraction.base import FlowConfigError

log = logging.getLogger(__name__)

MODEL_NAME = "dpflow"
RELEASE_URL = "https://github.com/hmorimitsu/ptlflow/releases/download/weights1/"

# The file names of `ptlflow.models.dpflow.DPFlow.pretrained_checkpoints` (ptlflow 0.4.2), copied here so that
# checking the hub cache does not cost a ptlflow import. The 8 hex digits are the start of the file's sha256
# (torch.hub checks them only when it downloads, never for a file already in the cache).
CHECKPOINT_FILES: dict[str, str] = {
    "chairs": "dpflow-chairs-f94e717a.ckpt",
    "kitti": "dpflow-kitti-4e97eac6.ckpt",
    "sintel": "dpflow-sintel-b44b072c.ckpt",
    "spring": "dpflow-spring-69bac7fa.ckpt",
    "things": "dpflow-things-2012b5d6.ckpt",
}

# Random weights are seeded so that two random backends agree (tests compare them).
RANDOM_SEED = 0


# ----------------------------------------------------------------------------------------------------------
# Checkpoint resolution
# ----------------------------------------------------------------------------------------------------------


def hub_checkpoint_dir() -> Path:
    """The folder torch.hub (hence ptlflow) looks in for downloaded weights: `$TORCH_HOME/hub/checkpoints`."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_checkpoint_path(name: str) -> Path:
    """Where the released checkpoint `name` has to be for ptlflow to load it offline."""
    return hub_checkpoint_dir() / CHECKPOINT_FILES[name]


def _missing_checkpoint_message(name: str) -> str:
    cached = cached_checkpoint_path(name)
    return (
        f"DPFlow checkpoint {name!r} is not in the torch hub cache and downloading is off. "
        "Supply the weights in one of three ways:\n"
        f"  1. let ptlflow download it where github.com is reachable: "
        f"DPFlowBackend(checkpoint={name!r}, allow_download=True);\n"
        f"  2. put the file in the torch hub cache, as {cached}\n"
        f"     (file name {cached.name}, from {RELEASE_URL}{cached.name}; set TORCH_HOME to move the cache);\n"
        "  3. pass the path of a local checkpoint file instead of a name "
        '(a torch.save\'d dict with "state_dict", see flow_extraction.dpflow.save_checkpoint).'
    )


def resolve_checkpoint(
    ckpt: str | os.PathLike | None, allow_random: bool = False, allow_download: bool = False
) -> str | None:
    """Check that DPFlow weights can be had, without importing ptlflow.

    Returns the checkpoint name (released weights: cached, or `allow_download`), the absolute path of a local file,
    or None (random weights, only with `allow_random`). Raises FlowConfigError saying how to fix it otherwise.
    Names win over paths: a stray file called "things" in the working directory does not shadow the release.
    """
    if ckpt is None:
        if allow_random:
            return None
        raise FlowConfigError(
            "DPFlow needs a checkpoint: one of "
            f"{', '.join(CHECKPOINT_FILES)} (released weights) or a local checkpoint file path. "
            "Random weights are only for tests (allow_random=True)."
        )
    text = os.fspath(ckpt)
    if text in CHECKPOINT_FILES:
        if allow_download or cached_checkpoint_path(text).is_file():
            return text
        raise FlowConfigError(_missing_checkpoint_message(text))
    path = Path(text).expanduser()
    if not path.is_file():
        raise FlowConfigError(
            f"DPFlow checkpoint file {text!r} does not exist (resolved to {path.absolute()}); "
            f"a checkpoint is a file path or one of the names {', '.join(CHECKPOINT_FILES)}."
        )
    return str(path.absolute())


def _hash_from_file_name(file_name: str) -> str:
    """The 8-hex sha256 prefix a release file carries in its name (`dpflow-things-2012b5d6.ckpt` → `2012b5d6`)."""
    return file_name.rsplit("-", 1)[-1].split(".", 1)[0]


# ----------------------------------------------------------------------------------------------------------
# Model building and saving
# ----------------------------------------------------------------------------------------------------------


def _build_model(ptlflow_ckpt: str | None):
    """ptlflow's DPFlow with the given weights (a name, a file path, or None for seeded random weights)."""
    import torch

    import flow_extraction  # noqa: F401  (installs the torchvision CPU shim before ptlflow imports torchvision)
    import ptlflow

    if ptlflow_ckpt is None:
        # fork_rng keeps the caller's global RNG stream untouched by our seeding.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            return ptlflow.get_model(MODEL_NAME)
    try:
        return ptlflow.get_model(MODEL_NAME, ckpt_path=ptlflow_ckpt)
    except (RuntimeError, KeyError, OSError, ValueError, pickle.UnpicklingError) as exc:
        # Wrong architecture, not a checkpoint dict, unreadable file, failed download: a configuration problem.
        raise FlowConfigError(f"DPFlow could not load checkpoint {ptlflow_ckpt!r}: {type(exc).__name__}: {exc}") from exc


def _unwrap_model(model_or_backend):
    return model_or_backend.model if isinstance(model_or_backend, DPFlowBackend) else model_or_backend


def save_checkpoint(model_or_backend, path: str | os.PathLike) -> Path:
    """Write a checkpoint ptlflow can load (`get_model("dpflow", ckpt_path=path)`, or `DPFlowBackend(path)`).

    The file is {"state_dict": fp32 CPU tensors, "hyper_parameters": {...}}. ptlflow's loader reads only
    train_size, train_avg_length and extra_params from hyper_parameters and builds the architecture from its
    defaults; the constructor arguments are stored too, as a record of what the weights belong to.
    """
    import torch

    model = _unwrap_model(model_or_backend)
    state_dict = {
        key: (value.detach().to("cpu", torch.float32) if value.is_floating_point() else value.detach().cpu())
        for key, value in model.state_dict().items()
    }
    hyper_parameters: dict[str, Any] = dict(getattr(model, "hparams", {}))
    for key in ("train_size", "train_avg_length", "extra_params"):
        value = getattr(model, key, None)
        if value is not None:
            hyper_parameters[key] = value
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a crash never leaves a truncated file that later loads as "the checkpoint".
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"state_dict": state_dict, "hyper_parameters": hyper_parameters}, tmp)
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------------------------------------
# The backend
# ----------------------------------------------------------------------------------------------------------


def _pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FlowConfigError(f"DPFlow device {device!r} was asked for but CUDA is not available")
    return device


def _check_frames(first: np.ndarray, second: np.ndarray) -> None:
    if first.shape != second.shape:
        raise ValueError(f"first and second frames differ in shape: {first.shape} vs {second.shape}")
    if first.ndim != 4 or first.shape[-1] != 3:
        raise ValueError(f"frames must be RGB [N, H, W, 3], got shape {first.shape}")
    if first.dtype != np.uint8 or second.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {first.dtype} and {second.dtype}")


class DPFlowBackend:
    """DPFlow (ptlflow) as a FlowBackend: RGB uint8 frame pairs in, float32 flow [N, 2, H, W] out.

    The model is loaded once here. device "auto" takes CUDA when present; fp16 defaults to on for CUDA and
    off on CPU (half precision on CPU is slow and not what DPFlow was validated with).
    """

    name = "dpflow"

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = "things",
        device: str = "auto",
        fp16: bool | None = None,
        batch_size: int = 4,
        allow_random: bool = False,
        allow_download: bool = False,
    ):
        if batch_size < 1:
            raise FlowConfigError(f"batch_size must be >= 1, got {batch_size}")
        # Resolve first: a missing checkpoint fails in milliseconds, before the ~10 s ptlflow import.
        resolved = resolve_checkpoint(checkpoint, allow_random=allow_random, allow_download=allow_download)
        self.device = _pick_device(device)
        self.fp16 = self.device.startswith("cuda") if fp16 is None else bool(fp16)
        if self.fp16 and not self.device.startswith("cuda"):
            raise FlowConfigError("DPFlow fp16 needs a CUDA device; use fp32 on CPU")
        self.batch_size = batch_size
        self.checkpoint = resolved

        # A cached release is loaded from its absolute path: same file ptlflow would pick from the hub cache,
        # but immune to ptlflow treating a same-named file in the working directory as the checkpoint.
        ckpt_file: Path | None = None
        ptlflow_ckpt = resolved
        if resolved in CHECKPOINT_FILES and cached_checkpoint_path(resolved).is_file():
            ckpt_file = cached_checkpoint_path(resolved)
            ptlflow_ckpt = str(ckpt_file)
        elif resolved is not None and resolved not in CHECKPOINT_FILES:
            ckpt_file = Path(resolved)

        model = _build_model(ptlflow_ckpt)
        if resolved in CHECKPOINT_FILES and ckpt_file is None:
            ckpt_file = cached_checkpoint_path(resolved)  # just downloaded by ptlflow
        model.eval()
        model.to(self.device)
        if self.fp16:
            model.half()
        self.model = model
        self._provenance = self._checkpoint_provenance(resolved, ckpt_file)

    @staticmethod
    def _checkpoint_provenance(resolved: str | None, ckpt_file: Path | None) -> dict[str, Any]:
        if resolved is None:
            return {
                "checkpoint": "random",
                "random_weights": True,
                "note": f"RANDOM weights (allow_random, seed {RANDOM_SEED}): flow is meaningless, tests only",
            }
        info: dict[str, Any] = {"checkpoint": resolved, "random_weights": False}
        if ckpt_file is not None and ckpt_file.is_file():
            sha = sha256_file(ckpt_file)
            info.update(checkpoint=resolved if resolved in CHECKPOINT_FILES else ckpt_file.name,
                        checkpoint_path=str(ckpt_file), checkpoint_sha256=sha)
            if resolved in CHECKPOINT_FILES:
                # A hand-copied cache file is never hash-checked by torch.hub; record whether it is the release.
                matches = sha.startswith(_hash_from_file_name(ckpt_file.name))
                info["checkpoint_matches_release_hash"] = matches
                if not matches:
                    log.warning("DPFlow: cached %s has sha256 %s, not the release's %s...; using it anyway",
                                ckpt_file, sha[:8], _hash_from_file_name(ckpt_file.name))
        return info

    @property
    def precision(self) -> str:
        return "fp16" if self.fp16 else "fp32"

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            **self._provenance,
            "device": self.device,
            "precision": self.precision,
            "batch_size": self.batch_size,
            "params": sum(p.numel() for p in self.model.parameters()),
        }

    def _to_input(self, first: np.ndarray, second: np.ndarray):
        """RGB uint8 [B, H, W, 3] pairs → ptlflow's {"images": [B, 2, 3, H, W] BGR in [0, 1]}."""
        import torch

        pairs = np.stack([first, second], axis=1)[..., ::-1]  # [B, 2, H, W, 3], RGB → BGR
        images = torch.from_numpy(np.ascontiguousarray(pairs)).to(self.device)
        images = images.permute(0, 1, 4, 2, 3)
        images = images.to(torch.float16 if self.fp16 else torch.float32) / 255.0
        return {"images": images}

    def compute(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        import torch

        _check_frames(first, second)
        n, h, w, _ = first.shape
        out = np.empty((n, 2, h, w), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                stop = min(start + self.batch_size, n)
                outputs = self.model(self._to_input(first[start:stop], second[start:stop]))
                if outputs is None:
                    # DPFlow.forward logs and returns None when CUDA runs out of memory even in "local" mode.
                    raise RuntimeError(f"DPFlow produced no output for a batch of {stop - start} at {h}x{w} "
                                       "(CUDA out of memory); lower batch_size")
                out[start:stop] = outputs["flows"][:, 0].float().cpu().numpy()
        return out


def prepare(fc: Any) -> Any:
    """Before any worker starts: fail when the weights cannot be found; a local checkpoint file is given to the
    workers (maybe on other nodes) by its absolute path."""
    import dataclasses

    resolved = resolve_checkpoint(fc.dpflow_checkpoint, allow_random=fc.dpflow_random_init,
                                  allow_download=fc.dpflow_allow_download)
    if resolved and Path(resolved).exists():
        fc = dataclasses.replace(fc, dpflow_checkpoint=str(Path(resolved).resolve()))
    return fc


def from_config(fc: Any) -> DPFlowBackend:
    """The DPFlow backend of a FlowConfig: its checkpoint, batch size and weight policy."""
    return DPFlowBackend(fc.dpflow_checkpoint, batch_size=fc.batch_size, allow_random=fc.dpflow_random_init,
                         allow_download=fc.dpflow_allow_download)
