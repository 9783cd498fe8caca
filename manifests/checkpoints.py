"""Checkpoints as data: loaded with `torch.load(weights_only=True)` (tensors and plain types only, so a file from
elsewhere cannot run code), and named by a hash of what they hold (`content_identity`) rather than of their bytes."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
from pathlib import Path
from typing import Any, Mapping


class UnsafeCheckpoint(ValueError):
    """A checkpoint holds more than tensors and plain types (an old format, or a file that would run code)."""


def load_checkpoint(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """A checkpoint's contents, loaded on the CPU with `weights_only=True`; anything else is refused clearly."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeCheckpoint(
            f"{path}: refused to load this {what}: it holds objects other than tensors and plain types "
            f"(an older checkpoint format, or a file that would run code when unpickled): {first}. "
            "Only checkpoints written by this version are loaded; train again to get one") from None


def _interned(value: Any) -> Any:
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, dict):
        return {_interned(k): _interned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_interned(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_interned(v) for v in value)
    return value


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> tuple[int, str]:
    """Write `state` with torch.save under a temp name, fsync, rename (manifests.io.atomic_write); equal states
    give equal bytes. Returns (bytes, blake2b-128 of the file).

    The file's bytes are a function of its content: pickle memoises strings by object, so a state whose keys came
    from an unpickled checkpoint (a resumed run's optimiser state) was written with other bytes than an equal state
    built in one process; every string is interned first, so equal strings are one object.
    """
    import torch

    from manifests.io import atomic_write

    plain = _interned(dict(state))
    return atomic_write(Path(path), lambda f: torch.save(plain, f))


def _canonical(value: Any) -> Any:
    """Plain JSON values from tuples, numpy scalars and nested mappings (sorted later by json.dumps)."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


def content_identity(tensors: Mapping[str, Any], facts: Mapping[str, Any]) -> str:
    """blake2b-128 (hex) of `tensors` (name → torch tensor) in sorted name order with dtype, shape and bytes,
    and of `facts` (config, statistics: plain values) as canonical JSON (sorted keys, no spaces). Two checkpoints
    with equal weights, config and statistics get the same identity however they were pickled (e.g. one saved
    after a resume)."""
    import torch

    h = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(json.dumps(_canonical(facts), sort_keys=True, separators=(",", ":")).encode())
    return h.hexdigest()


__all__ = ["UnsafeCheckpoint", "content_identity", "load_checkpoint", "save_checkpoint"]
