"""Source roots in a bucket (`root: s3://...`) on a real S3-protocol server (moto on localhost): ingest mirrors the
tree into the workdir's source cache once and catalogs exactly what a run on the same tree on local disk catalogs;
an unchanged bucket is not downloaded again, a changed object is, and no credential reaches the console, the
catalog, its manifests or an error."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from audit import run_audit
from catalog import Catalog
from catalog.entries import configured_entries, entry_of
from common import storage
from pipelines.config import config_from_dict
from pipelines.ingest import ingest
from pipelines.runners import LocalRunner
from samples.lerobot_ds import write_lerobot
from tests.s3_server import ACCESS_KEY, SECRET_KEY

VIDEO = "videos/chunk-000/observation.images.cam_high/episode_{:06d}.mp4"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A LeRobot v2.1 dataset of 4 episodes, one with a truncated video (quarantined by ingest)."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        root = write_lerobot(tmp_path_factory.mktemp("lerobot_s3") / "aloha_demo", 4, seed=4, version="v2.1")
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old
    video = root / VIDEO.format(3)
    shutil.copyfile(video, root.parent / "episode_3_intact.mp4")
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    return root


def upload(tree: Path, url: str) -> None:
    for path in sorted(p for p in tree.rglob("*") if p.is_file()):
        storage.put_file(path, f"{url}/{path.relative_to(tree).as_posix()}")


def run(workdir: Path, root: str) -> tuple[object, str]:
    cfg = config_from_dict({"workdir": str(workdir), "runner": {"engine": "local"},
                            "sources": [{"kind": "lerobot", "root": root}]})
    out = io.StringIO()
    with Catalog(cfg.catalog_path) as cat:
        report = ingest(cfg, cat, LocalRunner(), progress=False, console=Console(file=out, width=200))
    return report, out.getvalue()


def catalogued(workdir: Path) -> dict:
    """What a user compares between two runs: the items and their rows, and the quarantined ids and reasons."""
    with Catalog(workdir / "catalog.duckdb", read_only=True) as cat:
        items = {r["item_id"]: (r["split"], r["frame_count"], r["fps"], r["tier"], r["embodiment"])
                 for r in cat.items().to_pylist()}
        quarantined = {r["item_id"]: (r["stage"], r["status"], r["reason"].replace(str(workdir), "<workdir>"))
                       for r in cat.quarantine().to_pylist()}
    return {"items": items, "quarantined": quarantined}


def everything_written(workdir: Path) -> str:
    """The catalog's tables and every text-ish file the runs wrote, as one string to search for secrets."""
    with Catalog(workdir / "catalog.duckdb", read_only=True) as cat:
        text = "".join(str(cat.sql(f"SELECT * FROM {t}").to_pylist()) for t in ("runs", "items", "item_stages"))
    for path in workdir.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".parquet", ".yaml", ".txt", ".log"):
            text += path.read_bytes().decode("latin-1")
    return text


def test_ingest_from_a_bucket_catalogs_what_a_local_run_does_and_fetches_only_changes(dataset, s3_bucket, tmp_path):
    url = f"{s3_bucket}/datasets/aloha_demo"
    upload(dataset, url)
    local_tree = tmp_path / "local" / "aloha_demo"
    shutil.copytree(dataset, local_tree)
    run(tmp_path / "local", str(local_tree))
    expected = catalogued(tmp_path / "local")
    assert len(expected["items"]) == 3 and len(expected["quarantined"]) == 1  # the truncated video

    first, said = run(tmp_path / "remote", url)
    assert not first.source_errors and catalogued(tmp_path / "remote") == expected
    n_files = sum(1 for p in dataset.rglob("*") if p.is_file())
    assert f"{n_files} file(s) fetched" in said and url in said
    with Catalog(tmp_path / "remote" / "catalog.duckdb", read_only=True) as cat:  # the funnel's source entry
        entries = configured_entries(cat)
        rows = cat.sql("SELECT item_id, input_uri FROM item_stages WHERE stage = 'ingest'").to_pylist()
    assert {entry_of(r["item_id"], r["input_uri"], entries) for r in rows} == {f"lerobot:{url}"}
    assert all(r["input_uri"].startswith(str(tmp_path / "remote" / "cache" / "sources")) for r in rows)

    verdicts = {}  # the audit reads the LeRobot tables of a bucket root from its mirror
    for name in ("local", "remote"):
        with Catalog(tmp_path / name / "catalog.duckdb") as cat:
            cfg = config_from_dict({"workdir": str(tmp_path / name), "runner": {"engine": "local"}, "sources": [
                {"kind": "lerobot", "root": url if name == "remote" else str(local_tree)}]})
            result = run_audit(cfg, cat, out_dir=tmp_path / name / "reports", console=Console(file=io.StringIO()))
        verdicts[name] = {r.check.name: (r.status, sorted(r.outcome.failures)) for r in result.results}
    assert verdicts["remote"] == verdicts["local"] and "crashed" not in str(verdicts["remote"])

    again, said = run(tmp_path / "remote", url)  # an unchanged bucket: nothing downloaded, nothing redone
    assert "0 file(s) fetched" in said and f"{n_files} unchanged" in said
    assert again.stage.counts.get("done", 0) == 0 and catalogued(tmp_path / "remote") == expected

    # the bucket changes: episode 1's video is truncated there (and in the local tree), episode 3's repaired
    broken = (local_tree / VIDEO.format(1)).read_bytes()[:-2000]
    for tree_or_url in (local_tree, url):
        storage.write_bytes(storage.join(tree_or_url, VIDEO.format(1)), broken)
        storage.put_file(dataset.parent / "episode_3_intact.mp4", storage.join(tree_or_url, VIDEO.format(3)))
    run(tmp_path / "local", str(local_tree))
    changed = catalogued(tmp_path / "local")
    assert changed != expected and "lerobot/aloha_demo/episode_000001" in " ".join(changed["quarantined"])
    _, said = run(tmp_path / "remote", url)
    assert "2 file(s) fetched" in said and f"{n_files - 2} unchanged" in said
    assert catalogued(tmp_path / "remote") == changed

    text = everything_written(tmp_path / "remote") + said
    assert SECRET_KEY not in text and ACCESS_KEY not in text


def test_an_unreachable_root_is_a_source_error_without_credentials(s3_bucket, tmp_path):
    report, said = run(tmp_path, f"{s3_bucket}-missing/datasets/none")
    (label, error), = report.source_errors.items()
    assert label.startswith("lerobot:s3://") and ("no objects" in error or "cannot list" in error)
    assert "AWS_ACCESS_KEY_ID" in error or "credentials" in error  # says which variables were used, not their values
    text = error + said + everything_written(tmp_path)
    assert SECRET_KEY not in text and ACCESS_KEY not in text


@pytest.mark.parametrize("key", ["workdir", "artifacts", "source_cache"])
def test_the_workdir_and_its_artifacts_stay_local(key, tmp_path):
    from pipelines.config import ConfigError

    settings = {"workdir": str(tmp_path), key: "s3://my-bucket/run1"}
    with pytest.raises(ConfigError, match=f"{key}: s3://my-bucket/run1 is not a local path.*docs/storage.md"):
        config_from_dict(settings)


def test_pyramid_train_refuses_a_bucket_as_run_folder(tmp_path):
    from typer.testing import CliRunner

    from jobs.cli import app

    result = CliRunner().invoke(app, ["train", "--shards", "s3://my-bucket/v1", "--out", "s3://my-bucket/runs/a"])
    assert result.exit_code == 2 and "the run folder is local" in result.output
    assert not list(tmp_path.iterdir()) and not Path("s3:").exists()


def test_a_bucket_workdir_on_the_command_line_is_a_config_error():
    from typer.testing import CliRunner

    from jobs.cli import app

    result = CliRunner().invoke(app, ["status", "--workdir", "s3://my-bucket/run1"])  # typer makes it s3:/my-bucket/run1
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "is not a local path" in said and "docs/storage.md" in said
    assert not Path("s3:").exists()


def test_the_mirror_follows_the_bucket_and_a_killed_download_is_finished_next_time(s3_bucket, tmp_path, monkeypatch):
    from pipelines import source_cache

    url, local = f"{s3_bucket}/data/tree", tmp_path / "cache" / "tree"
    storage.write_bytes(f"{url}/a.bin", b"a" * 10)
    storage.write_bytes(f"{url}/sub/b.bin", b"b" * 20)
    storage.write_bytes(f"{s3_bucket}/data/tree-other/c.bin", b"not under the root")
    first = source_cache.mirror(url, local)
    assert sorted(first.fetched) == ["a.bin", "sub/b.bin"] and first.bytes_fetched == 30
    assert (local / "sub" / "b.bin").read_bytes() == b"b" * 20

    storage.remove(f"{url}/sub/b.bin")
    storage.write_bytes(f"{url}/a.bin", b"A" * 10)  # same size, new ETag
    storage.write_bytes(f"{url}/d.bin", b"d")
    storage.write_bytes(f"{url}/e.bin", b"e")
    real_get, calls = storage.get_file, []

    def dying_get(path, dest):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed mid-download")
        return real_get(path, dest)

    monkeypatch.setattr(storage, "get_file", dying_get)
    monkeypatch.setattr(source_cache, "CHECKPOINT_S", 0.0)  # record progress after every file
    with pytest.raises(KeyboardInterrupt):
        source_cache.mirror(url, local)
    vouched = json.loads((local / source_cache.LISTING).read_text())["files"]
    assert sorted(vouched) == ["a.bin"]  # the new a.bin, fetched before the kill; nothing stale or unfetched
    assert (local / "a.bin").read_bytes() == b"A" * 10 and not (local / "d.bin").exists()
    monkeypatch.setattr(storage, "get_file", real_get)
    again = source_cache.mirror(url, local)
    assert sorted(again.fetched) == ["d.bin", "e.bin"] and again.removed == ["sub/b.bin"]
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) == [
        source_cache.LISTING, "a.bin", "d.bin", "e.bin"]
    assert (local / "a.bin").read_bytes() == b"A" * 10
    assert not source_cache.mirror(url, local).fetched
    listing = (local / source_cache.LISTING).read_text()
    assert SECRET_KEY not in listing and ACCESS_KEY not in listing


def test_audit_source_reads_a_bucket_root_through_its_mirror(dataset, s3_bucket, tmp_path):
    """`pyramid audit --source lerobot:s3://...`: the same verdicts as the audit of the same tree on disk, the report
    names the bucket URL, a second audit downloads nothing, and a root that is not there exits 2 without a secret."""
    from typer.testing import CliRunner

    from jobs.cli import app

    url = f"{s3_bucket}/datasets/aloha_demo"
    upload(dataset, url)
    cli = CliRunner()

    def verdicts(summary: dict) -> dict:
        return {c["name"]: (c["status"], sorted(c["failing_item_ids"])) for c in summary["checks"]}

    local = cli.invoke(app, ["audit", "--source", f"lerobot:{dataset}", "--out", str(tmp_path / "local"),
                             "--decode", "--fail-on", "never"])
    assert local.exit_code == 0, local.output
    expected = json.loads((tmp_path / "local" / "audit.json").read_text())

    said = ""
    for attempt in range(2):
        result = cli.invoke(app, ["audit", "--source", f"lerobot:{url}", "--workdir", str(tmp_path / "w"),
                                  "--decode", "--fail-on", "never"])
        assert result.exit_code == 0, result.output
        said += result.output
        n_files = sum(1 for p in dataset.rglob("*") if p.is_file())
        fetched = n_files if attempt == 0 else 0
        assert f"{fetched} file(s) fetched" in " ".join(result.output.split())
    summary = json.loads((tmp_path / "w" / "reports" / "aloha_demo" / "audit.json").read_text())
    assert summary["source"] == f"lerobot:{url}"
    assert verdicts(summary) == verdicts(expected)
    assert any(c["failing_item_ids"] for c in summary["checks"])  # the truncated video is found from the bucket too
    assert list((tmp_path / "w" / "cache" / "sources").glob("*/aloha_demo/meta/info.json"))

    missing = cli.invoke(app, ["audit", "--source", f"lerobot:{s3_bucket}/datasets/none", "--workdir",
                               str(tmp_path / "w")])
    assert missing.exit_code == 2 and "cannot audit" in missing.output and "no objects" in " ".join(
        missing.output.split())
    text = said + missing.output + (tmp_path / "w" / "reports" / "aloha_demo" / "audit.html").read_text()
    assert SECRET_KEY not in text and ACCESS_KEY not in text
