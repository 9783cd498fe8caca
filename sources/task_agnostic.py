"""Task-agnostic robot motion (tier L4): Curobo/AnyPos-style random joint exploration in our own layout, sequential
episodes. Layout: docs/formats.md#task-agnostic."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from sources.media import check_finite, file_checksum, fingerprint, probe_video
from sources.base import ACTION_OPTIONS, Item, ItemRef, SourceAdapter, SourceError, action_meaning, read_json
from common.errors import BadInput

FORMAT = "motus-pyramid/task_agnostic"
_REQUIRED_META = ("embodiment", "fps", "action_names", "cameras")


class TaskAgnosticSource(SourceAdapter):
    name = "task_agnostic"
    default_tier = 4
    OPTIONS = ACTION_OPTIONS

    def __init__(self, root, tier=None, **options):
        super().__init__(root, tier, **options)
        meta_path = self.root / "dataset.json"
        if not meta_path.exists():
            raise SourceError(f"task_agnostic: {meta_path} is missing (is {self.root} a task-agnostic dataset root?)")
        self.meta = read_json(meta_path, "task_agnostic")
        missing = [k for k in _REQUIRED_META if k not in self.meta]
        if missing or self.meta.get("format") != FORMAT:
            raise SourceError(f"task_agnostic: {meta_path} must have format={FORMAT!r} and fields {list(_REQUIRED_META)}; missing {missing}")
        # commanded joint targets applied right after each frame (the generator's contract), unless dataset.json
        # or the source options say otherwise
        default = self.meta.get("action_semantics") or "absolute"
        timing = self.meta.get("action_timing") or "after"
        self.action_semantics, self.action_timing, came_from = action_meaning(
            options, self.meta["action_names"], default, timing, f"task_agnostic {self.root.name}")
        self.semantics_from = came_from or ("dataset.json" if self.meta.get("action_semantics") else "layout")

    def _files(self, episode: Path) -> list[Path]:
        return [episode / "joints.npy", episode / "actions.npy"] + [episode / f"rgb_{c}.mp4" for c in self.meta["cameras"]]

    def discover(self) -> Iterator[ItemRef]:
        dataset = self.root.name
        episodes = sorted(p for p in (self.root / "episodes").glob("*") if p.is_dir())
        if not episodes:
            raise SourceError(f"task_agnostic: no episode folders under {self.root / 'episodes'}")
        for ep in episodes:
            native_id = f"{dataset}/{ep.name}"
            # dataset.json and sim.h5 change the row too (names, fps, whether exact flow is possible)
            watched = self._files(ep) + [self.root / "dataset.json", ep / "sim.h5"]
            yield ItemRef(self.item_id(native_id), native_id, str(ep), fingerprint(watched))

    @classmethod
    def sim_media(cls, row: dict[str, Any], camera: str, uri: str) -> str | None:
        return str(Path(uri).parent / "sim.h5")  # every rendered camera's extras, beside the episode's videos

    @classmethod
    def load_actions(cls, row: dict[str, Any]) -> np.ndarray:
        path = Path(row["input_uri"]) / "actions.npy"
        try:
            actions = np.load(path).astype(np.float64)
        except (OSError, ValueError, EOFError) as e:
            raise BadInput(f"unreadable {path}: {e}") from e
        check_finite(f"actions.npy of {row['item_id']}", actions)
        return actions

    def probe(self, ref: ItemRef) -> Item:
        ep = Path(ref.input_uri)
        meta = self.meta
        for f in self._files(ep):
            if not f.exists():
                raise BadInput(f"missing {f.relative_to(self.root)}")
        try:
            joints = np.load(ep / "joints.npy")
            actions = np.load(ep / "actions.npy")
        except (ValueError, OSError, EOFError) as e:
            raise BadInput(f"unreadable joints/actions in {ep.name}: {e}") from e
        dim = len(meta["action_names"])
        for name, arr in (("actions.npy", actions), ("joints.npy", joints)):
            if arr.ndim != 2 or arr.shape[1] != dim:
                raise BadInput(f"{name} has shape {arr.shape}, expected [T, {dim}]")
            check_finite(name, arr)
        if joints.shape[0] != actions.shape[0]:
            raise BadInput(f"joints.npy has {joints.shape[0]} rows but actions.npy has {actions.shape[0]}")
        frames = actions.shape[0]
        videos = [probe_video(ep / f"rgb_{c}.mp4") for c in meta["cameras"]]
        for cam, info in zip(meta["cameras"], videos):
            if info.frame_count != frames:
                raise BadInput(f"rgb_{cam}.mp4 has {info.frame_count} frames but the episode has {frames} action rows")
        fps = float(meta["fps"])
        files = self._files(ep) + ([ep / "sim.h5"] if (ep / "sim.h5").exists() else [])
        return self.item(
            ref,
            media_uris=[str(ep / f"rgb_{c}.mp4") for c in meta["cameras"]],
            cameras=list(meta["cameras"]),
            fps=fps,
            frame_count=frames,
            width=videos[0].width,
            height=videos[0].height,
            embodiment=meta["embodiment"],
            action_names=list(meta["action_names"]),
            action_semantics=self.action_semantics,
            action_timing=self.action_timing,
            state_dim=joints.shape[1],
            state_names=list(meta.get("state_names", meta["action_names"])),
            language=list(meta.get("language", [])),
            licence=meta.get("licence"),
            input_blake2b=file_checksum(files),
            input_bytes=sum(f.stat().st_size for f in files),
            extras={"action_space": meta.get("action_space"), "mode": meta.get("mode", "sequential"),
                                 "action_semantics_source": self.semantics_from,
                                 "sim_extras": (ep / "sim.h5").exists(),
                                 # layouts before sim_cameras had extras for every camera
                                 "sim_cameras": list(meta.get("sim_cameras", meta["cameras"])),
                                 # layouts before action_applied were written this way too
                                 "action_applied": meta.get("action_applied", "after_frame")},
        )
