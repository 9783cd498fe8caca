"""Reading shard tars: zero-copy mapped members equal the copied ones, truncation and bad JPEGs are errors."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest

from tests.shard_fixtures import footage_clips, write_shard_set
from training_hooks.shard_format import decode_frames, decode_sample, group_samples, map_tar, read_tar


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmt") / "s"
    write_shard_set(root, footage_clips(3, size=(48, 40), n_frames=(10, 12)), samples_per_shard=3)
    return next(root.rglob("*.tar"))


def test_mapped_members_equal_the_copied_ones(shard):
    mapped, copied = list(map_tar(shard)), list(read_tar(shard))
    assert [n for n, _ in mapped] == [n for n, _ in copied] and len(mapped) == 3 * 5  # json mjpeg la14 txt lang
    assert all(isinstance(v, memoryview) and bytes(v) == c for (_, v), (_, c) in zip(mapped, copied))
    assert [n for n, _ in map_tar(shard, ["json"])] == [n for n, _ in copied if n.endswith(".json")]


def test_a_truncated_shard_is_a_read_error(shard, tmp_path):
    cut = tmp_path / "cut.tar"
    data = shard.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(tarfile.ReadError):
        list(map_tar(cut))
    (tmp_path / "empty.tar").write_bytes(b"")
    with pytest.raises(tarfile.ReadError, match="empty"):
        list(map_tar(tmp_path / "empty.tar"))


def test_frames_decode_into_a_given_array_and_bad_jpegs_are_errors(shard):
    key, members = next(group_samples(map_tar(shard)))
    sample = decode_sample(key, members)
    want = sample.frames([0, 3, 3, 9])
    out = np.zeros((4, 48, 40, 3), np.uint8)
    assert sample.frames([0, 3, 3, 9], out) is out and np.array_equal(out, want) and out.std() > 5
    with pytest.raises(ValueError, match="uint8"):
        sample.frames([0], np.zeros((1, 40, 48, 3), np.uint8))
    meta = dict(sample.meta)
    offsets = meta["frame_offsets"]
    cut = bytes(sample.video)[: offsets[1] - 200]  # frame 0 loses its tail
    with pytest.raises(ValueError, match="frame 0 does not decode"):
        decode_frames(meta, cut + bytes(sample.video)[offsets[1]:], [0])
    with pytest.raises(IndexError):
        sample.frames([sample.n_frames])
