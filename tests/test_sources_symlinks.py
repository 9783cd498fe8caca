"""Symlinks in a source tree that point out of it: ingest reads an item's files only where they really are inside
the source root (or a folder of the source option `link_roots`, or a hub cache blob), and quarantines an item whose
input or media file is a link out of it, naming the link and its target; links inside the root, and a root that is
itself a link, read as usual. A LeRobot v2.1 tree from the project's generator, with real symlinks."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

from catalog import Catalog
from pipelines.config import config_from_dict
from pipelines.ingest import ingest
from pipelines.runners import LocalRunner
from samples.lerobot_ds import HEAD, write_lerobot


def _move_and_link(path: Path, to: Path) -> Path:
    """Move `path` to `to` and leave a symlink to it in its place."""
    to.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(path, to)
    path.symlink_to(to)
    return to


def _ingest(workdir: Path, root: Path, **options) -> tuple[Counter, dict[str, str]]:
    cfg = config_from_dict({"workdir": str(workdir), "runner": {"engine": "local"},
                            "sources": [{"kind": "lerobot", "root": str(root), "options": options}]})
    with Catalog(cfg.catalog_path) as cat:
        report = ingest(cfg, cat, LocalRunner(), progress=False)
        reasons = {r["item_id"]: r["reason"] for r in cat.quarantine().to_pylist()}
    return report.stage.counts, reasons


def test_items_whose_files_link_out_of_the_source_root_are_quarantined_with_the_link_named(tmp_path):
    root = write_lerobot(tmp_path / "datasets" / "aloha", 4, seed=4, version="v2.1")
    outside = tmp_path / "elsewhere"
    secret = _move_and_link(root / "data" / "chunk-000" / "episode_000001.parquet", outside / "ep1.parquet")
    video = _move_and_link(root / "videos" / "chunk-000" / HEAD / "episode_000002.mp4", outside / "ep2.mp4")
    # a link that stays inside the root is fine
    _move_and_link(root / "videos" / "chunk-000" / HEAD / "episode_000003.mp4", root / "store" / "ep3.mp4")

    counts, reasons = _ingest(tmp_path / "work", root)
    assert counts == Counter({"done": 2, "quarantined": 2})
    assert set(reasons) == {"lerobot/aloha/episode_000001", "lerobot/aloha/episode_000002"}
    for item, target in (("lerobot/aloha/episode_000001", secret), ("lerobot/aloha/episode_000002", video)):
        assert f"to {target}, outside the source root {root}" in reasons[item] and "link_roots" in reasons[item]

    # the folder named in link_roots is read: the same items ingest
    counts, reasons = _ingest(tmp_path / "work", root, link_roots=[str(outside)])
    assert counts == Counter({"done": 4}) and reasons == {}


def test_a_linked_folder_out_of_the_root_is_refused_and_a_linked_root_is_read(tmp_path):
    real = write_lerobot(tmp_path / "disk" / "aloha", 2, seed=4, version="v2.1")
    root = tmp_path / "datasets" / "aloha"
    root.parent.mkdir()
    root.symlink_to(real)  # the root itself a link (a dataset kept on another disk): its files are inside it
    counts, reasons = _ingest(tmp_path / "work", root)
    assert counts == Counter({"done": 2}) and reasons == {}

    videos = real / "videos" / "chunk-000" / HEAD
    _move_and_link(videos, tmp_path / "other_disk" / HEAD)  # a folder of the tree linked out of it
    counts, reasons = _ingest(tmp_path / "fresh_work", root)
    assert counts == Counter({"quarantined": 2})
    assert all(f"outside the source root {root}" in r for r in reasons.values())
