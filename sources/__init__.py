"""Source adapters, one per dataset format, registered by name."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from common.errors import BadInput
from manifests.action_files import read_action_file

from sources.anypos import AnyPosSource
from sources.base import Item, ItemRef, SourceAdapter, SourceError
from sources.ego4d import Ego4DSource
from sources.lerobot import LeRobotSource
from sources.oxe import OXESource
from sources.robotwin import RoboTwinSource
from sources.ssv2 import SSv2Source
from sources.task_agnostic import TaskAgnosticSource

SOURCES: dict[str, type[SourceAdapter]] = {
    cls.name: cls for cls in (SSv2Source, Ego4DSource, RoboTwinSource, TaskAgnosticSource, AnyPosSource, OXESource,
                              LeRobotSource)
}


def make_source(kind: str, root: str, tier: int | None = None, **options: Any) -> SourceAdapter:
    try:
        cls = SOURCES[kind]
    except KeyError:
        raise SourceError(f"unknown source kind {kind!r}; known: {', '.join(sorted(SOURCES))}") from None
    return cls(root, tier=tier, **options)


def load_actions(row: dict[str, Any]):
    """Actions [T, D] of an items-table row, read by the adapter of its source (BadInput when unusable)."""
    return SOURCES[row["source"]].load_actions(row)


def item_actions(row: Mapping[str, Any]) -> np.ndarray:
    """Actions [T, D] float64 of an item: from the action file ingest wrote (the row's `actions_path`, as the
    stages' queries join it), else, for rows without one (a manifest from before action files), from the source.
    BadInput when the file is gone or unreadable."""
    path = row.get("actions_path")
    if not path:
        return np.asarray(load_actions(dict(row)), np.float64)
    try:
        return read_action_file(path, row["item_id"])
    except (OSError, ValueError) as e:
        raise BadInput(f"action file of {row['item_id']}: {e} (run `pyramid ingest` again to rewrite it)") from e


__all__ = ["Item", "ItemRef", "SOURCES", "SourceAdapter", "SourceError", "item_actions", "load_actions", "make_source"]
