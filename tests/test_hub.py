"""The Hub side, local only (HF_HUB_OFFLINE=1; nothing here may reach the network): `fetch` from a hub cache laid
out the way `snapshot_download` writes it, then ingest from the fetched folder; `push`'s card and upload plan."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from huggingface_hub import DatasetCard, scan_cache_dir, try_to_load_from_cache

from catalog import Catalog
from pipelines import hub
from pipelines.config import config_from_dict
from pipelines.ingest import ingest
from pipelines.runners import LocalRunner
from samples.lerobot_ds import write_lerobot
from sources import SOURCES
from sources.lerobot import LeRobotSource

REPO_ID = "acme/aloha_demo"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_lerobot(tmp_path_factory.mktemp("hub") / "aloha_demo", 2, seed=4, version="v2.1", wrists=True)


@pytest.fixture
def cache(tmp_path, dataset) -> Path:
    cache = tmp_path / "hf_cache"
    hub.add_to_cache(dataset, REPO_ID, cache_dir=cache)
    return cache


def tree(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_the_seeded_cache_is_a_hub_cache_that_huggingface_hub_recognises(cache, dataset):
    info = scan_cache_dir(cache)
    assert not info.warnings
    (repo,) = info.repos
    assert (repo.repo_id, repo.repo_type, repo.nb_files) == (REPO_ID, "dataset", len(tree(dataset)))
    assert [rev.refs for rev in repo.revisions] == [frozenset({"main"})]
    cached = try_to_load_from_cache(REPO_ID, "meta/info.json", cache_dir=cache, repo_type="dataset")
    assert Path(cached).read_bytes() == (dataset / "meta" / "info.json").read_bytes()


def test_fetch_offline_links_the_allowed_files_and_ingest_reads_them(cache, dataset, tmp_path, monkeypatch):
    local = tmp_path / "datasets" / "aloha_demo"
    patterns = ["meta/*", "data/*", "videos/*/observation.images.cam_high/*"]
    got = hub.fetch(REPO_ID, local, allow_patterns=patterns, cache_dir=cache)
    assert got == local
    expected = {f for f in tree(dataset) if f.startswith(("meta/", "data/")) or "/observation.images.cam_high/" in f}
    assert tree(local) == expected and "cam_left_wrist" not in " ".join(expected)
    for rel in expected:  # links into the cache, same bytes
        assert (local / rel).is_symlink() and (local / rel).read_bytes() == (dataset / rel).read_bytes()
    assert hub.fetch(REPO_ID, local, allow_patterns=patterns, cache_dir=cache) == local  # again: nothing changes
    # without local_dir: the cache's snapshot folder itself
    snapshot = hub.fetch(REPO_ID, cache_dir=cache)
    assert snapshot.parent.name == "snapshots" and tree(snapshot) == tree(dataset)

    # ingest straight from the fetched folder: only the fetched camera is asked for
    monkeypatch.setitem(SOURCES, "lerobot", LeRobotSource)
    cfg = config_from_dict({"workdir": str(tmp_path / "work"), "runner": {"engine": "local"},
                            "sources": [{"kind": "lerobot", "root": str(local), "options": {"cameras": ["cam_high"]}}]})
    with Catalog(cfg.catalog_path) as cat:
        report = ingest(cfg, cat, LocalRunner(), progress=False)
        items = cat.items().to_pylist()
    assert report.stage.counts == Counter({"done": 2})
    lengths = [json.loads(line)["length"] for line in (dataset / "meta" / "episodes.jsonl").read_text().splitlines()]
    assert sorted(it["frame_count"] for it in items) == sorted(lengths)
    assert all(it["cameras"] == ["cam_high"] and it["media_uris"][0].startswith(str(local)) for it in items)


def test_fetch_offline_without_the_repo_names_it_and_says_how_to_supply_it(cache, tmp_path):
    with pytest.raises(hub.HubError) as err:
        hub.fetch("acme/not_cached", tmp_path / "x", cache_dir=cache)
    msg = str(err.value)
    assert "'acme/not_cached'" in msg and "HF_HUB_OFFLINE=1" in msg and str(cache) in msg
    assert "add_to_cache" in msg and "network" in msg
    with pytest.raises(hub.HubError, match=r"revision v9.*not in the hub cache"):
        hub.fetch(REPO_ID, tmp_path / "y", revision="v9", cache_dir=cache)
    with pytest.raises(hub.HubError, match=r"no file matches allow_patterns \['nothing/\*'\].*offline"):
        hub.fetch(REPO_ID, tmp_path / "z", allow_patterns="nothing/*", cache_dir=cache)


def test_push_dry_run_plans_the_upload_with_a_dataset_card(tmp_path, monkeypatch):
    shards = tmp_path / "shards"
    for rel, n in (("train/shard-000000.tar", 300), ("train/shard-000001.tar", 200), ("validation/shard-000000.tar", 100),
                   ("manifests/items.parquet", 50), (".cache/lock", 1)):
        (shards / rel).parent.mkdir(parents=True, exist_ok=True)
        (shards / rel).write_bytes(b"x" * n)

    def no_network(*args, **kwargs):
        raise AssertionError("push touched HfApi")

    monkeypatch.setattr("huggingface_hub.HfApi", no_network)
    plan = hub.push(shards, "acme/motus-shards", dry_run=True, licence="cc-by-4.0",
                    summary={"items": 12, "tiers": "L1-L6"})
    assert not plan.uploaded and plan.private
    assert plan.files == [("manifests/items.parquet", 50), ("train/shard-000000.tar", 300),
                          ("train/shard-000001.tar", 200), ("validation/shard-000000.tar", 100)]
    assert plan.total_bytes == 650
    card = DatasetCard(plan.card)
    meta = card.data.to_dict()
    assert meta["license"] == "cc-by-4.0" and meta["task_categories"] == ["robotics"]
    assert "motus-pyramid" in meta["tags"] and meta["size_categories"] == ["n<1K"]
    assert meta["configs"] == [{"config_name": "default", "data_files": [
        {"split": "train", "path": ["train/*.tar"]}, {"split": "validation", "path": ["validation/*.tar"]}]}]
    assert "| .tar | 3 |" in card.text and "| items | 12 |" in card.text and "pyramid fetch acme/motus-shards" in card.text

    # a given card is used as is; a real push while offline is refused before any request
    assert hub.push(shards, "acme/x", card="---\nlicense: mit\n---\nhi", dry_run=True).card.endswith("hi")
    with pytest.raises(hub.HubError, match="HF_HUB_OFFLINE=1.*dry_run"):
        hub.push(shards, "acme/x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(hub.HubError, match="holds no files"):
        hub.push(tmp_path / "empty", "acme/x", dry_run=True)


def test_a_hub_token_never_reaches_the_output_or_the_catalog(tmp_path, cache, monkeypatch):
    """The token is the user's: `fetch`, `push --dry-run` and a failing push print nothing of it, and an ingest of
    the fetched data stores no environment in the catalog's run records."""
    from typer.testing import CliRunner

    from jobs.cli import app

    secret = "hf_" + "Zq" * 17
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    cli = CliRunner()
    shards = tmp_path / "shards"
    (shards / "train").mkdir(parents=True)
    (shards / "train" / "shard-000000.tar").write_bytes(b"x" * 10)
    outputs = [cli.invoke(app, ["fetch", REPO_ID, "--out", str(tmp_path / "fetched")]),
               cli.invoke(app, ["fetch", "acme/not_cached", "--out", str(tmp_path / "missing")]),
               cli.invoke(app, ["push", str(shards), "acme/x", "--dry-run"]),
               cli.invoke(app, ["push", str(shards), "acme/x"])]
    assert [o.exit_code for o in outputs] == [0, 2, 0, 2], [o.output for o in outputs]
    assert all(secret not in o.output for o in outputs)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"sources:\n  - {{kind: lerobot, root: {tmp_path / 'fetched'}}}\nrunner: {{engine: local}}\n")
    ingested = cli.invoke(app, ["ingest", "--config", str(cfg), "--workdir", str(tmp_path / "work")])
    assert ingested.exit_code == 0, ingested.output
    assert secret not in ingested.output
    with Catalog(tmp_path / "work" / "catalog.duckdb", read_only=True) as cat:
        stored = json.dumps(cat.sql("SELECT * FROM runs").to_pylist(), default=str)
    assert "ingest" in stored and secret not in stored


def test_fetch_writes_nothing_outside_local_dir_and_links_nothing_outside_the_cache(cache, tmp_path):
    """A repo file name that is absolute or climbs with `..`, a folder of local_dir that links out of it, and a
    cached snapshot entry that links out of the cache (a doctored cache copied from elsewhere) are refused, each
    with an error naming it, before anything is written."""
    snapshot = hub.fetch(REPO_ID, cache_dir=cache)
    local = tmp_path / "datasets" / "aloha_demo"
    before = tree(tmp_path)
    for name in ("../escaped.json", "meta/../../escaped.json", "/tmp/escaped.json"):
        with pytest.raises(hub.HubError, match=r"absolute or climbs out of the repo"):
            hub._link_tree(snapshot, ["meta/info.json", name], local)  # the names the Hub would hand over
    assert tree(tmp_path) == before and not local.exists() and not Path("/tmp/escaped.json").exists()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    local.mkdir(parents=True)
    (local / "data").symlink_to(elsewhere)
    with pytest.raises(hub.HubError, match=r"data is a symlink out of .*remove the link"):
        hub.fetch(REPO_ID, local, allow_patterns=["meta/*", "data/*"], cache_dir=cache)
    assert list(elsewhere.iterdir()) == [] and not (local / "meta").exists()
    (local / "data").unlink()

    secret = tmp_path / "home" / "id_ed25519"
    secret.parent.mkdir()
    secret.write_text("private key")
    (snapshot / "meta" / "stolen.json").symlink_to(secret)
    with pytest.raises(hub.HubError, match=r"meta/stolen.json of the cached snapshot .* outside the repo's cache"):
        hub.fetch(REPO_ID, local, cache_dir=cache)
    assert tree(local) == set()
