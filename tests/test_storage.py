"""common/storage.py: the same calls on local paths and on a real S3-protocol server (moto, localhost)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common import storage
from tests.s3_server import SECRET_KEY


def test_local_paths_stay_paths(tmp_path):
    assert not storage.is_url(tmp_path) and not storage.is_url("relative/dir")
    assert storage.is_url("s3://b/k") and storage.scheme("GS://b/k") == "gs" and storage.scheme("file:///x") is None
    assert storage.join(tmp_path, "a", "b.txt") == tmp_path / "a" / "b.txt"
    assert storage.join("s3://b/prefix/", "/a/", "b.txt") == "s3://b/prefix/a/b.txt"
    assert storage.parent("s3://b/prefix/a.tar") == "s3://b/prefix" and storage.name("s3://b/prefix/a.tar") == "a.tar"
    target = tmp_path / "x" / "y.bin"
    storage.write_bytes(f"file://{target}", b"abc")
    assert target.read_bytes() == b"abc" and storage.read_bytes(target) == b"abc"
    assert storage.list_files(tmp_path / "x") == {"y.bin": 3}
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(ValueError, match="reads only"):
        storage.open_file(target, "wb")


def test_round_trip_on_s3(s3_bucket, tmp_path):
    url = f"{s3_bucket}/set/a/one.bin"
    assert not storage.exists(url)
    storage.write_bytes(url, b"x" * 1000)
    local = tmp_path / "two.bin"
    local.write_bytes(bytes(range(256)) * 40)
    storage.put_file(local, f"{s3_bucket}/set/b/two.bin")
    assert storage.exists(url) and storage.is_file(url) and storage.size(url) == 1000
    assert storage.list_files(f"{s3_bucket}/set") == {"a/one.bin": 1000, "b/two.bin": 10240}
    with storage.open_file(f"{s3_bucket}/set/b/two.bin") as f:
        f.seek(256)
        assert f.read(3) == bytes([0, 1, 2])
    back = storage.get_file(f"{s3_bucket}/set/b/two.bin", tmp_path / "dl" / "two.bin")
    assert back.read_bytes() == local.read_bytes()
    storage.remove(f"{s3_bucket}/set", recursive=True)
    assert storage.list_files(f"{s3_bucket}/set") == {}
    with pytest.raises(FileNotFoundError, match=f"{s3_bucket}/nothing/here"):
        storage.read_bytes(f"{s3_bucket}/nothing/here")


def test_service_endpoint_wins(s3_bucket, monkeypatch):
    """AWS_ENDPOINT_URL_S3 (service-specific) overrides AWS_ENDPOINT_URL, as in botocore's own resolution."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", os.environ["AWS_ENDPOINT_URL"])
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    storage.write_bytes(f"{s3_bucket}/k", b"ok")
    assert storage.read_bytes(f"{s3_bucket}/k") == b"ok"


def test_credentials_never_printed(s3_bucket):
    text = storage.describe(f"{s3_bucket}/shards")
    assert s3_bucket in text and os.environ["AWS_ENDPOINT_URL"] in text and "AWS_SECRET_ACCESS_KEY" in text
    assert SECRET_KEY not in text and os.environ["AWS_ACCESS_KEY_ID"] not in text
    leaky = (f"s3://{os.environ['AWS_ACCESS_KEY_ID']}:{SECRET_KEY}@bucket/k and "
             "https://h/o?X-Amz-Credential=AKIAX%2F&X-Amz-Signature=deadbeef&part=1")
    clean = storage.redact(leaky)
    assert SECRET_KEY not in clean and os.environ["AWS_ACCESS_KEY_ID"] not in clean and "deadbeef" not in clean
    assert "s3://***@bucket/k" in clean and "part=1" in clean


def test_cat_for_webdataset_pipes(s3_bucket):
    storage.write_bytes(f"{s3_bucket}/a", b"first,")
    storage.write_bytes(f"{s3_bucket}/b", b"second")
    out = subprocess.run([sys.executable, "-m", "common.storage", "cat", f"{s3_bucket}/a", f"{s3_bucket}/b"],
                         capture_output=True, check=True, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    assert out.stdout == b"first,second"
    bad = subprocess.run([sys.executable, "-m", "common.storage", "cat", f"{s3_bucket}/missing"],
                         capture_output=True, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    assert bad.returncode != 0 and b"missing" in bad.stderr and SECRET_KEY.encode() not in bad.stderr
