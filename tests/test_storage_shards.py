"""Shards on object storage: the shard stage writes a set to a bucket on a real S3-protocol server (moto on
localhost), our loader and the `webdataset` package read it back, and nothing half-written looks complete."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from catalog import Catalog
from common import storage
from manifests.shard_format import INDEX_NAME, read_index, sample_key, webdataset_urls
from pipelines.runners import make_runner
from pipelines.shard import run_shard
from tests.pipeline_setup import labelled_workdir
from tests.s3_server import SECRET_KEY
from training_hooks.loader import LoaderConfig, make_loader

TARGET_MB = 0.3

@pytest.fixture(scope="module")
def s3_env(s3_server):
    """The AWS_* variables for this module's tests, pointing at the moto server, and a bucket."""
    import boto3

    with pytest.MonkeyPatch.context() as mp:
        for var in storage.S3_ENV:
            mp.delenv(var, raising=False)
        for var, value in s3_server.env().items():
            mp.setenv(var, value)
        boto3.client("s3", endpoint_url=s3_server.endpoint).create_bucket(Bucket="pyramid-shards")
        yield "s3://pyramid-shards"


@pytest.fixture(scope="module")
def built(tmp_path_factory, sim_samples, s3_env):
    """The sample sources put in the bucket, a workdir that ingests them from there (through its source cache) and
    labels them, and one shard set written to local disk and the same set to the bucket."""
    for path in sorted(p for p in sim_samples.rglob("*") if p.is_file()):
        storage.put_file(path, f"{s3_env}/samples/{path.relative_to(sim_samples).as_posix()}")
    cfg = labelled_workdir(tmp_path_factory.mktemp("s3shards"), sim_samples, sources_at=s3_env,
                           **{"shards.target_mb": TARGET_MB})
    runner = make_runner("local")
    with Catalog(cfg.catalog_path) as cat:
        local = run_shard(cfg, cat, runner, progress=False)
        cfg.shards.output = f"{s3_env}/sets/v1"
        remote = run_shard(cfg, cat, runner, progress=False)
    return cfg, local, remote


def test_the_pipeline_ran_from_sources_in_the_bucket(built):
    cfg, local, _ = built
    assert all(s.root.startswith("s3://pyramid-shards/samples/") for s in cfg.sources)
    assert not (Path(cfg.workdir) / "samples").exists()
    cache = cfg.path(cfg.source_cache)
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        items = cat.items().to_pylist()
        text = str(cat.sql("SELECT * FROM item_stages").to_pylist()) + str(items)
    assert len(items) == 5 and all(Path(i["input_uri"]).is_relative_to(cache) for i in items)
    assert sorted(i for sh in read_index(local.root)["shards"] for i in sh["item_ids"]) == sorted(
        i["item_id"] for i in items)
    assert SECRET_KEY not in text and os.environ["AWS_ACCESS_KEY_ID"] not in text


def test_the_bucket_holds_the_same_set_as_local_disk(built):
    cfg, local, remote = built
    assert remote.root == cfg.shards.output and not remote.unchanged and remote.stage.counts["done"] == 0
    objects = storage.list_files(remote.root)
    index = read_index(remote.root)  # checks every listed object is there at its size
    assert sorted(objects) == sorted([INDEX_NAME] + [sh["path"] for sh in index["shards"]])
    assert len(index["shards"]) >= 2 and index == read_index(local.root)  # same entries, stats and settings
    for sh in index["shards"]:  # byte-identical tars
        data = storage.read_bytes(f"{remote.root}/{sh['path']}")
        assert hashlib.sha256(data).hexdigest() == sh["sha256"] == \
            hashlib.sha256((local.root / sh["path"]).read_bytes()).hexdigest()
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        rows = cat.sql("SELECT path, sha256 FROM shards WHERE shard_set = ? ORDER BY path", [remote.root]).to_pylist()
        text = str(cat.sql("SELECT * FROM runs").to_pylist())
    assert [r["path"] for r in rows] == sorted(f"{remote.root}/{sh['path']}" for sh in index["shards"])
    assert SECRET_KEY not in text and os.environ["AWS_ACCESS_KEY_ID"] not in text


def test_a_rerun_into_the_bucket_is_unchanged(built, capsys):
    cfg, _, remote = built
    with Catalog(cfg.catalog_path) as cat:
        again = run_shard(cfg, cat, make_runner("local"), progress=False)
    assert again.unchanged and [r["sha256"] for r in again.shards] == [r["sha256"] for r in remote.shards]


def test_the_loader_reads_the_bucket_as_it_reads_local_disk(built):
    _, local, remote = built
    cfg = LoaderConfig(height=32, width=32, num_video_frames=2, video_step=2, shuffle_buffer=4)
    torch.manual_seed(0)
    from_bucket = list(make_loader(remote.root, "train", cfg, batch_size=2, seed=3, drop_last=False))
    from_disk = list(make_loader(local.root, "train", cfg, batch_size=2, seed=3, drop_last=False))
    assert len(from_bucket) == len(from_disk) >= 1
    for a, b in zip(from_bucket, from_disk):
        assert a["item_id"] == b["item_id"]
        assert a["video_frames"].shape == (len(a["item_id"]), 2, 3, 32, 32)
        for key in ("first_frame", "video_frames", "action_sequence"):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_webdataset_reads_the_bucket_through_pipe_urls(built):
    import webdataset as wds

    _, _, remote = built
    urls = webdataset_urls(remote.root)
    index = read_index(remote.root, check_files=False)
    assert len(urls) == len(index["shards"]) and all(u.startswith("pipe:") and remote.root in u for u in urls)
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in samples] == [sample_key(i) for sh in index["shards"] for i in sh["item_ids"]]
    first = samples[0]
    la = np.load(io.BytesIO(first["la14.npy"]))
    assert la.ndim == 2 and la.shape[1] == 14 and {"json", "frames.mjpeg", "actions.npy"} <= set(first)


def test_a_killed_upload_leaves_no_index_and_the_next_run_rewrites_the_set(built, monkeypatch):
    cfg, _, remote = built
    real_put, calls = storage.put_file, []

    def dying_put(local, url):
        calls.append(url)
        if len(calls) == 1:
            raise KeyboardInterrupt("killed mid-upload")
        return real_put(local, url)

    monkeypatch.setattr(storage, "put_file", dying_put)
    assert storage.exists(f"{remote.root}/{INDEX_NAME}")
    monkeypatch.setattr(cfg.shards, "target_mb", 100.0)  # a different set (one shard per split): the run writes
    with Catalog(cfg.catalog_path) as cat, pytest.raises(KeyboardInterrupt):
        run_shard(cfg, cat, make_runner("local"), progress=False)
    assert len(calls) == 1 and not storage.exists(f"{remote.root}/{INDEX_NAME}")
    with pytest.raises(FileNotFoundError, match="no shard index"):
        make_loader(remote.root, "train", LoaderConfig(), batch_size=1)
    monkeypatch.setattr(storage, "put_file", real_put)
    monkeypatch.setattr(cfg.shards, "target_mb", TARGET_MB)
    with Catalog(cfg.catalog_path) as cat:
        again = run_shard(cfg, cat, make_runner("local"), progress=False)
    assert not again.unchanged and [r["sha256"] for r in again.shards] == [r["sha256"] for r in remote.shards]
    assert sorted(storage.list_files(remote.root)) == sorted([INDEX_NAME] + [
        sh["path"] for sh in read_index(remote.root)["shards"]])


# --- the CLI and the readers of a set in a bucket -----------------------------------------------------------------

def test_mixture_weights_read_the_bucket_as_local_disk(built):
    _, local, remote = built
    cfg = LoaderConfig(height=32, width=32, num_video_frames=2, video_step=2, shuffle_buffer=4,
                       source_weights={"robotwin": 1.0, "task_agnostic": 1.0})
    batches = {}
    for name, root in (("bucket", remote.root), ("disk", local.root)):
        loader = make_loader(root, "train", cfg, batch_size=2, seed=3)
        assert loader.dataset.mixture.describe()["weights"] == {"robotwin": 0.5, "task_agnostic": 0.5}
        batches[name] = [b for _, b in zip(range(4), loader)]  # endless: the first four batches
    for a, b in zip(batches["bucket"], batches["disk"]):
        assert a["item_id"] == b["item_id"]
        torch.testing.assert_close(a["video_frames"], b["video_frames"], rtol=0, atol=0)


def test_pyramid_train_reads_shards_from_the_bucket(built, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from jobs.cli import app

    _, _, remote = built
    lang = read_index(remote.root)["stats"].get("language") or {}
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "steps": 2, "batch_size": 1, "log_every": 1, "checkpoint_every": 2, "eval_every": 100, "eval_windows": 0,
        "model": {"work_size": [16, 16], "patch_size": 4, "n_layers": 1, "n_heads": 2, "head_dim": 16, "d_video": 32,
                  "d_action": 16, "d_und": 16, "text_dim": int(lang.get("dim") or 16), "num_video_frames": 2},
        "loader": {"height": 32, "width": 32, "video_step": 2, "shuffle_buffer": 2}}))
    result = CliRunner().invoke(app, ["train", "--shards", remote.root, "--out", str(tmp_path / "run"),
                                      "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    assert SECRET_KEY not in result.output


def test_export_reads_the_bucket_and_writes_to_one(built, tmp_path):
    from typer.testing import CliRunner

    from jobs.cli import app

    cfg, local, remote = built
    runner = CliRunner()

    def export(out: str, shards: str):
        return runner.invoke(app, ["export", "motus", out, "--workdir", str(cfg.workdir), "--shards", shards,
                                   "--allow-text-width"])

    for name, root in (("bucket", remote.root), ("disk", str(local.root))):
        result = export(str(tmp_path / name), root)
        assert result.exit_code == 0, result.output
    files = {name: sorted(p.relative_to(tmp_path / name).as_posix() for p in (tmp_path / name).rglob("*")
                          if p.is_file()) for name in ("bucket", "disk")}
    assert files["bucket"] == files["disk"] and len(files["bucket"]) > 5
    for rel in files["bucket"]:
        assert (tmp_path / "bucket" / rel).read_bytes() == (tmp_path / "disk" / rel).read_bytes(), rel

    out = "s3://pyramid-shards/exports/motus"  # the export itself to a bucket: the same tree, byte for byte
    storage.write_bytes(f"{out}/lerobot/videos/stale.mp4", b"from an older export")
    storage.write_bytes(f"{out}/export.json", b"{}")
    result = export(out, remote.root)
    assert result.exit_code == 0 and out in result.output, result.output
    assert sorted(storage.list_files(out)) == files["disk"]  # the older export's leftovers are gone
    for rel in files["disk"]:
        assert storage.read_bytes(f"{out}/{rel}") == (tmp_path / "disk" / rel).read_bytes(), rel
    before = storage.list_files(remote.root)  # a prefix that is not an export is refused, never emptied
    result = export(remote.root, remote.root)
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "holds objects and no export.json" in said
    assert storage.list_files(remote.root) == before and SECRET_KEY not in said


def test_audit_checks_the_shards_in_the_bucket(built, tmp_path):
    from audit import run_audit

    cfg, _, remote = built
    with Catalog(cfg.catalog_path) as cat:
        result = run_audit(cfg, cat, out_dir=tmp_path / "reports")
    files = result.result("shard_files")
    assert files.status == "pass", files.outcome.failures
    assert any(p.startswith(remote.root) for p in files.outcome.checked)
    assert f"{remote.root}/{INDEX_NAME}" in files.outcome.checked
    assert result.result("shard_membership").status == "pass"
    text = (tmp_path / "reports" / "audit.json").read_text()
    assert SECRET_KEY not in text and remote.root in text
