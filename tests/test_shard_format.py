"""Reading shard tars: zero-copy mapped members equal the copied ones, truncation and bad JPEGs are errors."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest

from samples.shard_sets import footage_clips, write_shard_set
from manifests.shard_format import SampleMeta, decode_sample, group_samples, map_tar, read_tar
from manifests.shard_video import decode_frames


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
    meta = sample.meta
    offsets = meta.frame_offsets
    cut = bytes(sample.video)[: offsets[1] - 200]  # frame 0 loses its tail
    with pytest.raises(ValueError, match="frame 0 does not decode"):
        decode_frames(meta, cut + bytes(sample.video)[offsets[1]:], [0])
    with pytest.raises(IndexError):
        sample.frames([sample.n_frames])


def _v1_members(key: str, meta: SampleMeta, video: bytes, latent: np.ndarray) -> list[tuple[str, bytes]]:
    """A sample without actions or language as format v1 wrote it: only the members that had content, nulls."""
    import io
    import json

    buf = io.BytesIO()
    np.save(buf, latent)
    meta = {**meta.to_dict(), "format": "motus-pyramid/shard-sample/v1", "language_encoder": None, "action_timing": None}
    del meta["has_actions"]  # v1 had no such field
    return [(f"{key}.json", json.dumps(meta).encode()), (f"{key}.frames.mjpeg", video), (f"{key}.la14.npy", buf.getvalue())]


def _v1_language(key: str, lines: list[str], language: list[np.ndarray]) -> list[tuple[str, bytes]]:
    """v1's language members: the lines, and one npz array `line<i>` per line."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **{f"line{i}": e for i, e in enumerate(language)})
    return [(f"{key}.txt", "\n".join(lines).encode()), (f"{key}.lang.npz", buf.getvalue())]


def test_every_sample_has_the_same_members_and_v1_samples_still_read(shard):
    from samples.shard_sets import clip_members, index_coded_clip

    bare = index_coded_clip("bare/0", 8)  # no actions, no language
    full = index_coded_clip("full/0", 8, action_dim=3, lines=["lift it", "raise it"],
                            language=[np.full((3, 384), 0.5, np.float16), np.full((5, 384), -1, np.float16)])
    suffixes = [[n.partition(".")[2] for n, _ in clip_members(c)] for c in (bare, full)]
    assert suffixes[0] == suffixes[1] == ["json", "frames.mjpeg", "la14.npy", "actions.npy", "txt", "lang.npz"]
    (_, b), (_, f) = (next(group_samples(clip_members(c))) for c in (bare, full))
    b, f = decode_sample("bare/0", b), decode_sample("full/0", f)
    assert b.actions is None and b.lines == [] and b.language == [] and b.meta.has_actions is False
    assert f.meta.has_actions and f.actions.shape == (8, 3) and f.lines == ["lift it", "raise it"]
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

    from samples.shard_sets import index_coded_clip

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
    from samples.shard_sets import clip_members, index_coded_clip
    from manifests.shard_format import write_tar

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

    from samples.shard_sets import footage_clips
    from manifests.shard_video import _decode_mp4, encode_mp4

    frames = list(footage_clips(1, size=(384, 320), n_frames=(12, 12))[0].frames)  # the working canvas
    encoded = [encode_mp4(iter([f.copy() for f in frames]), 30.0)[0] for _ in range(3)]  # fresh arrays
    encoded += [encode_mp4(iter(frames), 30.0)[0] for _ in range(2)]  # views into one array
    script = ("import sys, numpy as np; from manifests.shard_video import encode_mp4; "
              "f = np.load(sys.argv[1]); sys.stdout.buffer.write(encode_mp4(iter(f), 30.0)[0])")
    np.save(tmp_path / "frames.npy", np.stack(frames))
    other = subprocess.run([sys.executable, "-c", script, str(tmp_path / "frames.npy")], capture_output=True,
                           timeout=120, check=True).stdout  # another process
    assert all(e == encoded[0] for e in encoded) and other == encoded[0]
    decoded = _decode_mp4(encoded[0], list(range(12))).astype(float)
    assert np.abs(decoded - np.stack(frames)).mean() < 3  # the same picture (H.264 at crf 20, BT.601 colours)


def test_sample_tars_and_the_index_keep_their_bytes(tmp_path):
    """The bytes of a sample tar (every member kind, with and without actions and language) and of index.json,
    pinned: a change to the format's code that changes them is a format change (bump SAMPLE_FORMAT/SHARDS_FORMAT)."""
    import hashlib
    import io

    from manifests.shard_format import encode_sample, index_entry, write_index, write_tar

    full = SampleMeta(item_id="oxe/bridge:ep 1", source="oxe", tier=3, split="train", group_id="oxe/bridge:ep",
                      embodiment="widowx", fps=5.0, n_frames=4, frame_size=[64, 48], video_format="jpeg",
                      frame_offsets=[0, 3, 6, 9, 12], delta_frames=2, delta_s=0.4, grid="native",
                      flow_backend="farneback", vae_checkpoint_blake2b="ab" * 16, latent_dim=14, action_dim=3,
                      action_names=["x", "y", "g"], action_semantics=["delta", "delta", "absolute"],
                      action_timing="after", language_encoder="all-MiniLM-L6-v2", language_dim=8)
    bare = SampleMeta(**{**full.to_dict(), "item_id": "ssv2/7", "video_format": "mp4", "frame_offsets": None,
                         "action_dim": 0, "action_names": [], "action_semantics": [], "action_timing": None,
                         "language_encoder": None, "language_dim": None})
    latent = np.arange(3 * 14, dtype=np.float32).reshape(3, 14) / 7
    actions = np.arange(12, dtype=np.float32).reshape(4, 3)
    language = [np.full((2, 8), 0.5, np.float16), np.full((3, 8), -1.0, np.float16)]
    digests = []
    for meta, a, lines, emb in ((full, actions, ["pick up", "place"], language), (bare, None, [], [])):
        buf = io.BytesIO()
        write_tar(buf, encode_sample(meta, b"\xff\xd8video\xff\xd9" * 3, latent, a, lines, emb))
        digests.append(hashlib.sha256(buf.getvalue()).hexdigest())
    assert digests == ["eaa20cc1a86ff1d3b5eff5ef1f30c3e12ed7a1ed6531886b7cd8553a58bad9c5",
                       "fa9c17a19e5ae97e2e2165702f2aeb9e22e174e986883cd8f7238c70381f4858"]
    shard = tmp_path / "train" / "pyramid-train-000000.tar"
    shard.parent.mkdir()
    write_tar(shard, [m for meta, a in ((full, actions), (bare, None))
                      for m in encode_sample(meta, b"\xff\xd8v\xff\xd9", latent, a)])
    entry = index_entry(tmp_path, "train/pyramid-train-000000.tar", "train", None, 0, ["oxe/bridge:ep 1", "ssv2/7"])
    assert entry["sha256"] == "bdf39835a579a6df625e71d31f1301b8ecf78c6edb23606f14eb7c794e8427e1"
    index = write_index(tmp_path, [entry], {"split": "train", "actions": {}}, {"video_format": "jpeg"})
    assert hashlib.sha256(index.read_bytes()).hexdigest() == \
        "468db736a1a3f13169e306b27b3e014aba69653e31083a0ef00569aca4127ab4"


def test_sample_meta_reads_old_json_keeps_unknown_fields_and_names_what_is_missing():
    """v1 nulls read as typed empties, fields the code does not know survive a rewrite, a missing required field or a
    sample without a format is an error that names it."""
    import json

    v1 = {"format": "motus-pyramid/shard-sample/v1", "item_id": "a/1", "n_frames": 5, "frame_size": [8, 8], "fps": 10.0,
          "action_timing": None, "language_encoder": None, "language_dim": None, "camera_height_m": 1.2}
    meta = SampleMeta.from_json(json.dumps(v1).encode(), "a_1")
    assert (meta.action_timing, meta.language_encoder, meta.language_dim) == ("", "", 0)
    assert meta.has_actions and meta.embodiment == "none" and meta.tier == -1
    assert json.loads(meta.to_json())["camera_height_m"] == 1.2
    with pytest.raises(ValueError, match="sample a_1: JSON member lacks n_frames, fps"):
        SampleMeta.from_json({"item_id": "a/1", "frame_size": [8, 8]}, "a_1")
    members = dict(encode_sample_for_test(SampleMeta(item_id="a/1", n_frames=2, frame_size=[8, 8], fps=10.0)))
    members["json"] = json.dumps({k: v for k, v in json.loads(members["json"]).items() if k != "format"}).encode()
    with pytest.raises(ValueError, match="format '', expected one of"):
        decode_sample("a_1", members)


def encode_sample_for_test(meta: SampleMeta) -> list[tuple[str, bytes]]:
    from manifests.shard_format import encode_sample, split_member

    members = encode_sample(meta, b"\xff\xd8\xff\xd9", np.zeros((meta.n_frames - 1, 14), np.float32))
    return [(split_member(name)[1], data) for name, data in members]
