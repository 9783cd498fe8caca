"""Adding a source: an adapter module and its registration are what ingest, flow and the action file need."""

from __future__ import annotations

import numpy as np
import pytest

from catalog import Catalog
from pipelines.config import config_from_dict
from pipelines.flow import run_flow
from pipelines.ingest import ingest
from pipelines.runners import make_runner
from samples.files import write_h264
from sources import SOURCES, item_actions
from tests.folder_source import FolderSource


def test_a_source_added_by_its_module_and_one_registry_entry_runs_through_ingest_and_flow(tmp_path, monkeypatch):
    monkeypatch.setitem(SOURCES, "folder", FolderSource)
    root = tmp_path / "clips"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name, shift in (("a", 2), ("b", 0)):
        base = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
        frames = np.stack([np.roll(base, shift * t, axis=1) for t in range(12)])  # "a" pans, "b" stands still
        write_h264(root / f"{name}.mp4", frames, 10)
        np.save(root / f"{name}.npy", np.stack([np.arange(12.0), np.full(12, shift)], 1))
    cfg = config_from_dict({"workdir": str(tmp_path / "work"), "runner": {"engine": "local"},
                            "sources": [{"kind": "folder", "root": str(root)}]})
    with Catalog(cfg.catalog_path) as cat:
        report = ingest(cfg, cat, make_runner("local"), progress=False)
        items = {r["item_id"]: r for r in cat.items().to_pylist()}
        files = {r["item_id"]: r["path"] for r in cat.done("ingest").to_pylist()}
        flow = run_flow(cfg, cat, make_runner("local"), progress=False)
        stats = {r["item_id"]: r for r in cat.sql("SELECT * FROM flow_stats").to_pylist()}
    assert report.stage.counts["done"] == 2 and flow.stage.counts["done"] == 2
    a = items["folder/a"]
    # what the adapter did not say follows from what it did
    assert (a["group_id"], a["tier"], a["action_dim"], a["state_dim"], a["has_actions"]) == ("folder/a", 6, 2, 0, True)
    assert a["duration_s"] == pytest.approx(1.2) and a["split"] in ("train", "val", "test")
    np.testing.assert_array_equal(item_actions({**a, "actions_path": files["folder/a"]})[:, 1], np.full(12, 2.0))
    assert stats["folder/a"]["mean_px"] > 1.0 > stats["folder/b"]["mean_px"]


def test_an_item_redone_without_actions_keeps_no_action_file_registration(tmp_path, monkeypatch):
    from manifests.items import Item

    class VideoOnly(FolderSource):  # the same clips, now read as video without actions
        def probe(self, ref):
            return Item(**{**super().probe(ref).row(), "action_names": [], "action_semantics": [],
                           "action_dim": None, "has_actions": None, "action_timing": None, "split": None})

    root = tmp_path / "clips"
    root.mkdir()
    write_h264(root / "a.mp4", np.random.default_rng(1).integers(0, 255, (6, 64, 80, 3), dtype=np.uint8), 10)
    np.save(root / "a.npy", np.zeros((6, 2)))
    source = {"kind": "folder", "root": str(root)}

    def ingest_once(adapter, tier):
        monkeypatch.setitem(SOURCES, "folder", adapter)
        cfg = config_from_dict({"workdir": str(tmp_path / "work"), "runner": {"engine": "local"},
                                "sources": [{**source, "tier": tier}]})
        with Catalog(cfg.catalog_path) as cat:
            report = ingest(cfg, cat, make_runner("local"), progress=False)
            return report, cat.done("ingest").to_pylist(), cat.items().to_pylist()

    _, files, _ = ingest_once(FolderSource, 6)
    assert [f["kind"] for f in files] == ["actions"]
    report, files, items = ingest_once(VideoOnly, 5)  # a changed tier redoes the item
    assert report.stage.counts["done"] == 1 and files == [] and items[0]["has_actions"] is False
    assert not (tmp_path / "work" / "artifacts" / "actions" / "folder" / "a.actions.parquet").exists()
    report, _, _ = ingest_once(VideoOnly, 5)
    assert (report.stage.counts["done"], report.stage.skipped) == (0, 1)  # nothing stale makes it redo the item
