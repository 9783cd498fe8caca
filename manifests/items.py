"""The item record: one row of the `items` table as a typed value, so a source adapter sets only what it knows."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from manifests.schemas import ITEMS


@dataclass(kw_only=True)
class Item:
    """An item (a clip or an episode) as an adapter's `probe` returns it. The fields are the `items` schema's
    (checked at import); what an adapter leaves out follows from what it set:

    - `group_id`: the item itself (its own recording); `split`: None, so ingest assigns it from `group_id`;
    - `duration_s`: `frame_count / fps`; `start_s`: 0 (a whole episode);
    - `action_dim` / `state_dim`: the number of names; `has_actions`: any action dims;
    - `embodiment`: "unknown"; `extras`: a dict, stored as sorted JSON.
    """

    item_id: str
    source: str
    native_id: str
    tier: int
    group_id: str | None = None
    split: str | None = None
    media_uris: list[str] = field(default_factory=list)
    cameras: list[str] = field(default_factory=list)
    fps: float | None = None
    frame_count: int | None = None
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    start_s: float = 0.0
    embodiment: str = "unknown"
    action_dim: int | None = None
    action_names: list[str] = field(default_factory=list)
    action_semantics: list[str] = field(default_factory=list)
    action_timing: str | None = None
    state_dim: int | None = None
    state_names: list[str] = field(default_factory=list)
    has_actions: bool | None = None
    language: list[str] = field(default_factory=list)
    licence: str | None = None
    input_uri: str
    input_blake2b: str | None = None
    input_bytes: int | None = None
    extras: Mapping[str, Any] | str = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The catalog row: defaults filled in, extras as JSON (`validate_rows(ITEMS, …)` checks the types)."""
        row = dataclasses.asdict(self)
        if row["group_id"] is None:
            row["group_id"] = self.item_id
        if row["duration_s"] is None and self.frame_count is not None and self.fps:
            row["duration_s"] = self.frame_count / self.fps
        if row["action_dim"] is None:
            row["action_dim"] = len(self.action_names)
        if row["state_dim"] is None:
            row["state_dim"] = len(self.state_names)
        if row["has_actions"] is None:
            row["has_actions"] = row["action_dim"] > 0
        if not isinstance(self.extras, str):
            row["extras"] = dumps_extras(self.extras)
        return row


def dumps_extras(extras: Mapping[str, Any]) -> str:
    """An item's source-specific details as the `extras` column stores them: sorted JSON."""
    return json.dumps(extras, sort_keys=True, default=str)


_FIELDS = [f.name for f in dataclasses.fields(Item)]
if _FIELDS != ITEMS.names:  # the record follows the schema, in its order: a column added there must be added here
    raise ImportError(f"manifests.items.Item does not match the items schema: only in the record "
                      f"{sorted(set(_FIELDS) - set(ITEMS.names))}, only in the schema "
                      f"{sorted(set(ITEMS.names) - set(_FIELDS))}")
