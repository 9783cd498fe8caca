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
    assert [n for n, _ in mapped] == [n for n, _ in copied] and len(mapped) == 3 * 6  # json mjpeg la14 actions txt lang
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


def _v1_members(key: str, meta: dict, video: bytes, latent: np.ndarray) -> list[tuple[str, bytes]]:
    """A sample without actions or language as format v1 wrote it: only the members that had content, nulls."""
    import io
    import json

    buf = io.BytesIO()
    np.save(buf, latent)
    meta = {**meta, "format": "motus-pyramid/shard-sample/v1", "language_encoder": None, "action_timing": None}
    return [(f"{key}.json", json.dumps(meta).encode()), (f"{key}.frames.mjpeg", video), (f"{key}.la14.npy", buf.getvalue())]


def _v1_language(key: str, lines: list[str], language: list[np.ndarray]) -> list[tuple[str, bytes]]:
    """v1's language members: the lines, and one npz array `line<i>` per line."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **{f"line{i}": e for i, e in enumerate(language)})
    return [(f"{key}.txt", "\n".join(lines).encode()), (f"{key}.lang.npz", buf.getvalue())]


def test_every_sample_has_the_same_members_and_v1_samples_still_read(shard):
    from tests.shard_fixtures import clip_members, index_coded_clip

    bare = index_coded_clip("bare/0", 8)  # no actions, no language
    full = index_coded_clip("full/0", 8, action_dim=3, lines=["lift it", "raise it"],
                            language=[np.full((3, 384), 0.5, np.float16), np.full((5, 384), -1, np.float16)])
    suffixes = [[n.partition(".")[2] for n, _ in clip_members(c)] for c in (bare, full)]
    assert suffixes[0] == suffixes[1] == ["json", "frames.mjpeg", "la14.npy", "actions.npy", "txt", "lang.npz"]
    (_, b), (_, f) = (next(group_samples(clip_members(c))) for c in (bare, full))
    b, f = decode_sample("bare/0", b), decode_sample("full/0", f)
    assert b.actions is None and b.lines == [] and b.language == [] and b.meta["has_actions"] is False
    assert f.meta["has_actions"] and f.actions.shape == (8, 3) and f.lines == ["lift it", "raise it"]
    assert [e.shape for e in f.language] == [(3, 384), (5, 384)] and f.language[1][4, 383] == -1
    old = decode_sample("bare/0", dict(group_samples(_v1_members("bare/0", b.meta, bytes(b.video), b.latent_action)))
                        ["bare/0"])
    assert old.actions is None and old.lines == [] and old.language == [] and old.n_frames == 8
    members = _v1_members("bare/0", b.meta, bytes(b.video), b.latent_action) + _v1_language("bare/0", f.lines, f.language)
    spoken = decode_sample("bare/0", dict(group_samples(members))["bare/0"])
    assert spoken.lines == f.lines and [e.shape for e in spoken.language] == [(3, 384), (5, 384)]
    assert np.array_equal(old.frames([7]), b.frames([7]))


@pytest.mark.parametrize("video_format", ["jpeg", "mp4"])
def test_hugging_face_datasets_loads_shards_whose_first_samples_lack_actions_and_language(tmp_path, video_format):
    """`datasets` infers one schema from the first five samples of the first shard and casts every later sample to
    it: samples with actions and language after five without must still fit (typed empties, never nulls)."""
    import datasets

    from tests.shard_fixtures import index_coded_clip

    clips = [index_coded_clip(f"bare/{i}", 6) for i in range(5)]
    clips += [index_coded_clip(f"full/{i}", 7, action_dim=2, lines=["push the block"],
                               language=[np.full((4, 384), i + 1, np.float16)]) for i in range(2)]
    write_shard_set(tmp_path / "s", clips, samples_per_shard=4, video_format=video_format)
    files = sorted(str(p) for p in (tmp_path / "s").rglob("*.tar"))
    for streaming in (True, False):
        ds = datasets.load_dataset("webdataset", data_files={"train": files}, split="train", streaming=streaming,
                                   cache_dir=str(tmp_path / f"hf-{streaming}"))
        rows = list(ds)
        assert [r["json"]["item_id"] for r in rows] == [c.item_id for c in clips]
        last = rows[-1]
        assert np.asarray(last["actions.npy"]).shape == (7, 2) and last["txt"] == "push the block"
        assert last["lang.npz"]["lengths"] == [4] and set(last["lang.npz"]["tokens"]) == {2.0}
        assert rows[0]["json"]["has_actions"] is False and rows[0]["txt"] == ""
        assert np.asarray(rows[0]["actions.npy"]).shape == (6, 0)


def test_train_stats_count_only_items_with_actions(tmp_path):
    from pipelines.shard import train_stats
    from tests.shard_fixtures import clip_members, index_coded_clip
    from training_hooks.shard_format import write_tar

    samples = []
    for clip in (index_coded_clip("bare/0", 6), index_coded_clip("full/0", 9, action_dim=2)):
        write_tar(tmp_path / f"{clip.item_id.replace('/', '_')}.tar", clip_members(clip))
        samples.append({"split": "train", "path": tmp_path / f"{clip.item_id.replace('/', '_')}.tar"})
    stats = train_stats(samples)
    assert list(stats["actions"]) == ["aloha"] and stats["actions"]["aloha"]["rows"] == 9
    assert stats["latent_action"]["items"] == 2 and stats["latent_action"]["rows"] == 5 + 8


def test_mp4_encoding_gives_the_same_bytes_every_time(tmp_path):
    """Two exports of the same shards must be byte-identical; x264 with its assembly and the encoder's own RGB
    conversion gave different bytes for the same frames from one call or process to the next."""
    import subprocess
    import sys

    from tests.shard_fixtures import footage_clips
    from training_hooks.shard_format import _decode_mp4, encode_mp4

    frames = list(footage_clips(1, size=(384, 320), n_frames=(12, 12))[0].frames)  # the working canvas
    encoded = [encode_mp4(iter([f.copy() for f in frames]), 30.0)[0] for _ in range(3)]  # fresh arrays
    encoded += [encode_mp4(iter(frames), 30.0)[0] for _ in range(2)]  # views into one array
    script = ("import sys, numpy as np; from training_hooks.shard_format import encode_mp4; "
              "f = np.load(sys.argv[1]); sys.stdout.buffer.write(encode_mp4(iter(f), 30.0)[0])")
    np.save(tmp_path / "frames.npy", np.stack(frames))
    other = subprocess.run([sys.executable, "-c", script, str(tmp_path / "frames.npy")], capture_output=True,
                           timeout=120, check=True).stdout  # another process
    assert all(e == encoded[0] for e in encoded) and other == encoded[0]
    decoded = _decode_mp4(encoded[0], list(range(12))).astype(float)
    assert np.abs(decoded - np.stack(frames)).mean() < 3  # the same picture (H.264 at crf 20, BT.601 colours)
