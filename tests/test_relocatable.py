"""Catalog paths under the workdir are stored relative to it and resolved on read, so a moved workdir's catalog
points at the moved files; paths outside the workdir stay as they are."""

from __future__ import annotations

import duckdb

from catalog import Catalog
from tests.test_catalog import row


def test_paths_follow_a_moved_workdir(tmp_path):
    first = tmp_path / "a" / "work"
    with Catalog(first / "catalog.duckdb") as cat:
        run = cat.start_run("flow", {})
        cat.upsert_items([row(0, media_uris=[f"{first}/samples/ep0.hdf5#observation/head_camera/rgb"],
                              input_uri="/data/robotwin/ep0.hdf5")])
        cat.add_artifacts([{"item_id": "robotwin/ep0", "stage": "flow", "kind": "flow",
                            "path": f"{first}/artifacts/flow/ep0.flow.npz", "bytes": 3, "blake2b": "x", "run_id": run}])
        cat.replace_shard_set(str(first / "shards"), [{"path": f"{first}/shards/train/s-000000.tar", "split": "train",
                                                       "index": 0, "n_samples": 1, "bytes": 1, "sha256": "y",
                                                       "item_ids": ["robotwin/ep0"], "run_id": run}])
    raw = duckdb.connect(str(first / "catalog.duckdb"), read_only=True)  # what is stored, seen by any client
    assert raw.execute("SELECT path FROM artifacts").fetchall() == [("artifacts/flow/ep0.flow.npz",)]
    assert raw.execute("SELECT media_uris, input_uri FROM items").fetchall() == [
        (["samples/ep0.hdf5#observation/head_camera/rgb"], "/data/robotwin/ep0.hdf5")]
    raw.close()

    moved = tmp_path / "b" / "moved"
    moved.parent.mkdir()
    first.rename(moved)
    with Catalog(moved / "catalog.duckdb", read_only=True) as cat:
        assert cat.sql("SELECT path FROM artifacts").column(0).to_pylist() == [f"{moved}/artifacts/flow/ep0.flow.npz"]
        item = cat.items().to_pylist()[0]
        assert item["media_uris"] == [f"{moved}/samples/ep0.hdf5#observation/head_camera/rgb"]
        assert item["input_uri"] == "/data/robotwin/ep0.hdf5"  # outside the workdir: unchanged
        shards = cat.sql("SELECT path FROM shards WHERE shard_set = ?", [str(moved / "shards")]).to_pylist()
        assert shards == [{"path": f"{moved}/shards/train/s-000000.tar"}]
    with Catalog(moved / "catalog.duckdb") as cat:  # writes by the new absolute path replace, never duplicate
        cat.add_artifacts([{"item_id": "robotwin/ep0", "stage": "flow", "kind": "flow",
                            "path": f"{moved}/artifacts/flow/ep0.flow.npz", "bytes": 4, "blake2b": "z", "run_id": "r"}])
        cat.replace_shard_set(str(moved / "shards"), [])
        assert cat.sql("SELECT path, bytes FROM artifacts").to_pylist() == [
            {"path": f"{moved}/artifacts/flow/ep0.flow.npz", "bytes": 4}]
        assert cat.sql("SELECT count(*) AS n FROM shards").to_pylist() == [{"n": 0}]
