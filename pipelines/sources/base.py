"""The source-adapter interface every tier plugs into.

An adapter reads one dataset exactly as its publisher ships it. `discover()` runs in the driver and only
lists inputs (cheap: no decoding); `probe(ref)` runs in workers, opens the input, validates it and returns the
item's catalog row (`discover()` may add source-level lines to `notes`). The driver assigns `split` from a hash of `group_id` unless the row carries the publisher's
official split (e.g. SSv2's label files) as "train", "val" or "test". Unusable input raises
`BadInput(reason)` so the item is quarantined with the reason and the run goes on.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import numpy as np

from manifests import actions


class SourceError(Exception):
    """The source as a whole cannot be read (wrong root, missing dataset-level metadata)."""


def read_json(path: Path, who: str, shown: str | Path | None = None) -> Any:
    """A dataset-level JSON file, or `SourceError` naming it when it is not JSON (or not UTF-8 text)."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SourceError(f"{who}: {shown if shown is not None else path} is not valid JSON: {e}") from e


@dataclass(frozen=True)
class ItemRef:
    """What discovery knows about an item: enough for a worker to find and probe it."""

    item_id: str
    native_id: str
    input_uri: str
    fingerprint: str
    details: dict[str, Any] = field(default_factory=dict)


class SourceAdapter(ABC):
    name: ClassVar[str]
    default_tier: ClassVar[int]

    def __init__(self, root: str | Path, tier: int | None = None, **options: Any):
        self.root = Path(root)
        self.tier = tier or self.default_tier
        self.options = options
        # one line per source-level finding of discover() (e.g. "5 listed clips are not on disk"), shown by ingest
        # and `pyramid status` instead of one quarantine row per item
        self.notes: list[str] = []
        if not self.root.exists():
            raise SourceError(f"{self.name}: root {self.root} does not exist")

    def item_id(self, native_id: str) -> str:
        return f"{self.name}/{native_id}"

    @abstractmethod
    def discover(self) -> Iterator[ItemRef]: ...

    @abstractmethod
    def probe(self, ref: ItemRef) -> dict[str, Any]: ...

    @classmethod
    def load_actions(cls, row: dict[str, Any]) -> np.ndarray:
        """The item's actions, float64 [frame_count, action_dim] at the item's native fps (labelled sources only)."""
        raise NotImplementedError(f"{cls.name} items carry no actions")

    def base_row(self, ref: ItemRef) -> dict[str, Any]:
        return {"item_id": ref.item_id, "source": self.name, "native_id": ref.native_id, "tier": self.tier,
                "input_uri": ref.input_uri}


# The action/state columns of video-only items (human video: nothing to align latent actions with).
HUMAN_VIDEO = dict(embodiment="human", action_dim=0, action_names=[], action_semantics=[], action_timing=None,
                   state_dim=0, state_names=[], has_actions=False)


def action_meaning(options: Mapping[str, Any], names: Sequence[str], default: Any, timing: str,
                   where: str) -> tuple[list[str], str, str]:
    """(per-dim semantics, timing, where they came from) of a source's actions: the source options
    `action_semantics` (one `kind[:part]` for all dims, or a list per dim) and `action_timing` win over the
    adapter's own reading `default` (same forms). Bad values are a SourceError naming the source."""
    spec, came_from = (options["action_semantics"], "option") if options.get("action_semantics") else (default, "")
    timing = str(options.get("action_timing") or timing)
    try:
        semantics = actions.validate(actions.expand(spec, names, where), len(names), timing, where)
    except ValueError as e:
        raise SourceError(str(e)) from None
    return semantics, timing, came_from


def dumps_extras(extras: dict[str, Any]) -> str:
    return json.dumps(extras, sort_keys=True, default=str)
