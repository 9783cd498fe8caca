"""What the checks read, loaded once per audit and shared: catalog rows, quarantine records, flow statistics,
sampled frames, actions, latent actions and registered shards. Everything is loaded lazily, so a check that
is not run costs nothing."""

from __future__ import annotations

from functools import cached_property
from typing import Any, Callable, TypeVar

import numpy as np

from audit.config import AuditConfig
from audit.frames import FrameFacts
from audit.media import MediaFacts, run_media_stage
from catalog import Catalog
from pipelines.config import PipelineConfig
from common.errors import BadInput

T = TypeVar("T")


class AuditContext:
    def __init__(self, cfg: PipelineConfig, catalog: Catalog, settings: AuditConfig, runner: Any = None):
        self.cfg = cfg
        self.catalog = catalog
        self.settings = settings
        self.runner = runner  # runs the media pass on workers (Ray, Beam); None: in this process, item by item
        self._memo: dict[str, Any] = {}

    def memo(self, key: str, compute: Callable[[], T]) -> T:
        """A value several checks share (duplicate pairs, quarantine claims), computed by the first that asks."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @cached_property
    def items(self) -> list[dict[str, Any]]:
        """Items whose ingest is done (quarantined ones never reach the items table)."""
        return self.catalog.items().to_pylist()

    @cached_property
    def items_by_id(self) -> dict[str, dict[str, Any]]:
        return {r["item_id"]: r for r in self.items}

    @cached_property
    def quarantine(self) -> list[dict[str, Any]]:
        """Quarantined and failed (item, stage) records of every stage, with their reasons."""
        return self.catalog.quarantine().to_pylist()

    @cached_property
    def flow_stats(self) -> dict[str, dict[str, Any]]:
        """Flow statistics of items whose flow stage is done."""
        rows = self.catalog.sql(
            "SELECT f.* FROM flow_stats f JOIN done_items('flow') USING (item_id) ORDER BY f.item_id").to_pylist()
        return {r["item_id"]: r for r in rows}

    @cached_property
    def media(self) -> dict[str, MediaFacts | str]:
        """item id → what decoding every frame of its main camera found (`audit/media.py`), or why it could not."""
        return run_media_stage(self.items, self.settings, self.cfg.flow.camera, self.runner)

    @cached_property
    def frames(self) -> dict[str, FrameFacts | str]:
        """item id → facts about a few of its frames, or the reason they could not be decoded."""
        return {k: v.frames if isinstance(v, MediaFacts) else v for k, v in self.media.items()}

    @cached_property
    def decoded(self) -> dict[str, FrameFacts]:
        """The items whose sampled frames decode (media_readable reports the others)."""
        return {k: v for k, v in self.frames.items() if isinstance(v, FrameFacts)}

    @cached_property
    def actions(self) -> dict[str, np.ndarray | str]:
        """item id → actions [T, D] of items that have them, or the reason they could not be read."""
        from sources import item_actions

        files = {r["item_id"]: r["path"] for r in self.catalog.done("ingest").to_pylist()
                 if r["kind"] == "actions"} if self.catalog is not None else {}  # a dataset on disk: its source
        out: dict[str, np.ndarray | str] = {}
        for row in self.items:
            if not row["has_actions"]:
                continue
            try:
                out[row["item_id"]] = item_actions({**row, "actions_path": files.get(row["item_id"])})
            except Exception as e:  # noqa: BLE001 - as above
                out[row["item_id"]] = str(e) if isinstance(e, BadInput) else f"{type(e).__name__}: {e}"
        return out

    @cached_property
    def latent_paths(self) -> dict[str, str]:
        """item id → latent-action artifact of items whose label stage is done."""
        return {r["item_id"]: r["path"] for r in self.catalog.done("label").to_pylist()}

    @cached_property
    def latents(self) -> dict[str, tuple[np.ndarray, dict[str, Any]] | str]:
        """item id → (latent actions [T−1, 14], their meta), or the reason they could not be read."""
        from pipelines.label import read_latents

        out: dict[str, tuple[np.ndarray, dict[str, Any]] | str] = {}
        for item_id, path in self.latent_paths.items():
            try:
                out[item_id] = read_latents(path)
            except Exception as e:  # noqa: BLE001 - a truncated npz raises zipfile.BadZipFile, among others
                out[item_id] = f"unreadable {path}: {type(e).__name__}: {e}"
        return out

    @cached_property
    def shards(self) -> list[dict[str, Any]]:
        return self.catalog.sql("SELECT * FROM shards ORDER BY shard_set, split, tier, index").to_pylist()

    @cached_property
    def seen(self) -> set[str]:
        """Every item id some stage recorded (done, quarantined or failed): what came in."""
        return {r[0] for r in self.catalog.con.execute("SELECT DISTINCT item_id FROM item_stages").fetchall()}
