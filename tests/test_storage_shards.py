"""Shards on object storage: the shard stage writes a set to a bucket on a real S3-protocol server (moto on
localhost), our loader and the `webdataset` package read it back, and nothing half-written looks complete."""

from __future__ import annotations

import hashlib
import io
import os
import shutil

import numpy as np
import pytest
import torch

from catalog import Catalog
from common import storage
from manifests.shard_format import INDEX_NAME, read_index, sample_key, webdataset_urls
from pipelines.config import load_config
from pipelines.flow import run_flow
from pipelines.ingest import ingest
from pipelines.label import run_label
from pipelines.runners import make_runner
from pipelines.shard import run_shard
from pipelines.vae import run_vae_train
from tests.s3_server import SECRET_KEY
from training_hooks.loader import LoaderConfig, make_loader

TINY = {"runner.engine": "local", "flow.store_size": [32, 32], "vae.image_size": 32,
        "vae.widths": [8, 16, 32, 64, 128], "vae.latent_channels": 64, "vae.hidden": 64, "vae.batch_size": 8,
        "vae.steps": 2, "vae.threads": 1, "shards.target_mb": 0.3}


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
    """A labelled workdir with one shard set on local disk and the same set written to the bucket."""
    root = tmp_path_factory.mktemp("s3shards")
    shutil.copytree(sim_samples, root / "samples")
    cfg = load_config(None, workdir=str(root), **TINY)
    cfg.sources = [s for s in cfg.sources if s.kind in ("robotwin", "task_agnostic")]
    runner = make_runner("local")
    with Catalog(cfg.catalog_path) as cat:
        ingest(cfg, cat, runner, progress=False)
        run_flow(cfg, cat, runner, progress=False)
        run_vae_train(cfg, cat, progress=False)
        run_label(cfg, cat, runner, progress=False)
        local = run_shard(cfg, cat, runner, progress=False)
        cfg.shards.output = f"{s3_env}/sets/v1"
        remote = run_shard(cfg, cat, runner, progress=False)
    return cfg, local, remote


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
    monkeypatch.setattr(cfg.shards, "target_mb", TINY["shards.target_mb"])
    with Catalog(cfg.catalog_path) as cat:
        again = run_shard(cfg, cat, make_runner("local"), progress=False)
    assert not again.unchanged and [r["sha256"] for r in again.shards] == [r["sha256"] for r in remote.shards]
    assert sorted(storage.list_files(remote.root)) == sorted([INDEX_NAME] + [
        sh["path"] for sh in read_index(remote.root)["shards"]])
