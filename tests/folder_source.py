"""A source adapter written for a test: a folder of `<name>.mp4` clips, each with `<name>.npy` actions [T, 2].
Its module and one entry in `sources.SOURCES` are all ingest and the stages after it need
(tests/test_new_source.py); a real source also brings its sample writer and its section in docs/formats.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from common.errors import BadInput
from sources.base import Item, ItemRef, SourceAdapter
from sources.media import check_finite, file_checksum, fingerprint, probe_video


class FolderSource(SourceAdapter):
    name = "folder"
    default_tier = 6

    def discover(self) -> Iterator[ItemRef]:
        for clip in sorted(self.root.glob("*.mp4")):
            yield ItemRef(self.item_id(clip.stem), clip.stem, str(clip), fingerprint([clip, clip.with_suffix(".npy")]))

    def probe(self, ref: ItemRef) -> Item:
        clip = Path(ref.input_uri)
        info = probe_video(clip)
        return self.item(ref, media_uris=[str(clip)], cameras=["front"], fps=info.fps, frame_count=info.frame_count,
                         width=info.width, height=info.height, embodiment="two_axis_arm",
                         action_names=["x", "y"], action_semantics=["absolute:joint"] * 2, action_timing="at",
                         input_blake2b=file_checksum(clip), input_bytes=clip.stat().st_size)

    @classmethod
    def load_actions(cls, row: dict[str, Any]) -> np.ndarray:
        path = Path(row["input_uri"]).with_suffix(".npy")
        if not path.exists():
            raise BadInput(f"{path.name} is missing")
        actions = np.load(path).astype(np.float64)
        check_finite(path.name, actions)
        return actions
