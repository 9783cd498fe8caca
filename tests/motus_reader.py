"""A folder tree read the way the released Motus stage-2 loader (`LatentActionDataset`,
`data/latent_action/latent_action_dataset.py`) reads it, written from its documented behaviour
(research/motus_and_formats.md §1.3), not from its code, so tests can check our Motus-layout export without Motus:

- a dataset folder is the first folder, recursing from the root, holding `videos/`, `umt5_wan/` and
  `latent_action_dim14/`; its `metas/` is listed too, outside any error handling, so it must exist;
- episodes are the stems present as `videos/*.mp4`, `umt5_wan/*.pt`, `latent_action_dim14/*.pt` and `metas/*.txt`;
- the latent file is a tensor (or a dict with a `latent_action` tensor; a list is refused), cast to float, [T−1, D];
  T is taken from its rows, never from the video; fewer than 2 rows makes the sample None;
- the language file is a list of [L, E] tensors (one picked at random) or one tensor; the metas line with the same
  index is the instruction, and a metas file without a non-blank line raises "Empty instruction text";
- a window: condition frame c in [0, T−1−F·step] (0 when negative), video frames c + (i+1)·step clamped to T−1,
  latent rows c + i·step clamped to T−2 and to rows − 1 (F = 8, step = 6).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

TRIPLET = ("videos", "umt5_wan", "latent_action_dim14")


def leaf_dirs(root: Path) -> list[Path]:
    root = Path(root)
    if all((root / sub).is_dir() for sub in TRIPLET):
        return [root]
    return [leaf for child in sorted(root.iterdir()) if child.is_dir() for leaf in leaf_dirs(child)]


def scan_episodes(root: Path) -> list[dict[str, Path]]:
    episodes = []
    for d in leaf_dirs(root):
        stems = [{p.stem for p in (d / sub).iterdir() if p.suffix == ext}
                 for sub, ext in (("videos", ".mp4"), ("umt5_wan", ".pt"), ("latent_action_dim14", ".pt"), ("metas", ".txt"))]
        for stem in sorted(set.intersection(*stems)):
            episodes.append({"video": d / "videos" / f"{stem}.mp4", "lang": d / "umt5_wan" / f"{stem}.pt",
                             "latent": d / "latent_action_dim14" / f"{stem}.pt", "text": d / "metas" / f"{stem}.txt"})
    return episodes


def instruction(text_path: Path, index: int) -> str:
    lines = [ln.strip() for ln in Path(text_path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"Empty instruction text: {text_path}")
    return lines[max(0, min(index, len(lines) - 1))]


def read_episode(ep: dict[str, Path], frames: int = 8, step: int = 6, rng: random.Random | None = None
                 ) -> dict[str, Any] | None:
    rng = rng or random.Random(0)
    latent = torch.load(ep["latent"], map_location="cpu")
    if isinstance(latent, dict):
        latent = latent["latent_action"]
    if not isinstance(latent, torch.Tensor):
        raise ValueError(f"latent_action must be a single Tensor: {ep['latent']}")
    latent = latent.float()
    total = latent.shape[0] + 1
    if latent.shape[0] < 2:
        return None
    top = total - 1 - frames * step
    c = rng.randint(0, top) if top >= 0 else 0
    video_idx = [min(c + (i + 1) * step, total - 1) for i in range(frames)]
    rows = [min(c + i * step, total - 2, latent.shape[0] - 1) for i in range(frames)]
    language = torch.load(ep["lang"], map_location="cpu")
    picked = rng.randrange(len(language)) if isinstance(language, list) else 0
    embedding = language[picked] if isinstance(language, list) else language
    if embedding.dim() == 3:
        embedding = embedding.squeeze(0)
    with av.open(str(ep["video"])) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    wanted = [c] + video_idx
    if max(wanted) >= len(decoded):
        raise IndexError(f"{ep['video']}: frame {max(wanted)} of {len(decoded)}")
    clip = np.stack([decoded[i] for i in wanted])
    return {"first_frame": clip[0], "video_frames": clip[1:], "action_sequence": latent[rows],
            "language_embedding": embedding, "instruction": instruction(ep["text"], picked),
            "language_index": picked, "video_frame_count": len(decoded), "latent_rows": latent.shape[0]}
