"""Open X-Embodiment (L5): the TFRecord/Example codec without TensorFlow, and RLDS ingest of write_oxe output.

Expected values never come from the code under test: records are re-read here with a plain struct loop, Examples
are decoded with protobuf message classes built in this file from descriptors (an independent decoder), and
JPEGs are decoded with cv2 directly. Each damaging test works on a private copy of the sample tree.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections import Counter
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from catalog import Catalog
from media.tfrecord import (TFRecordError, _update_bytewise, crc32c, encode_example, encode_record, iter_records,
                            masked_crc32c, parse_example, scan_records, write_records)
from media.tfrecord_frames import frame_uri, iter_tfrecord_frames, parse_frame_uri
from pipelines.config import config_from_dict
from pipelines.ingest import ingest
from pipelines.runners import LocalRunner
from samples.oxe_rlds import write_oxe
from sources import SOURCES, SourceError
from sources.oxe import OXESource
from pipelines.stages import BadInput

FRACTAL, BRIDGE = "fractal20220817_data", "bridge_dataset"
N_FRACTAL, N_BRIDGE = 4, 3
FRACTAL_ACTION = ("world_vector", "rotation_delta", "gripper_closedness_action")


# ------------------------------------------------------------------------------------------------ oracle


def oracle_classes(packed: bool):
    """tf.train.Example and friends as protobuf classes built from descriptors (TF's feature.proto shape)."""
    pkg = f"oracle_{'packed' if packed else 'unpacked'}"
    f = descriptor_pb2.FileDescriptorProto(name=f"{pkg}.proto", package=pkg, syntax="proto3")
    fd = descriptor_pb2.FieldDescriptorProto
    for name, ftype in (("BytesList", fd.TYPE_BYTES), ("FloatList", fd.TYPE_FLOAT), ("Int64List", fd.TYPE_INT64)):
        m = f.message_type.add(name=name)
        field = m.field.add(name="value", number=1, label=fd.LABEL_REPEATED, type=ftype)
        if ftype != fd.TYPE_BYTES:
            field.options.packed = packed
    feature = f.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for number, (name, t) in enumerate((("bytes_list", "BytesList"), ("float_list", "FloatList"),
                                        ("int64_list", "Int64List")), start=1):
        feature.field.add(name=name, number=number, label=fd.LABEL_OPTIONAL, type=fd.TYPE_MESSAGE,
                          type_name=f".{pkg}.{t}", oneof_index=0)
    features = f.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, label=fd.LABEL_OPTIONAL, type=fd.TYPE_STRING)
    entry.field.add(name="value", number=2, label=fd.LABEL_OPTIONAL, type=fd.TYPE_MESSAGE, type_name=f".{pkg}.Feature")
    features.field.add(name="feature", number=1, label=fd.LABEL_REPEATED, type=fd.TYPE_MESSAGE,
                       type_name=f".{pkg}.Features.FeatureEntry")
    example = f.message_type.add(name="Example")
    example.field.add(name="features", number=1, label=fd.LABEL_OPTIONAL, type=fd.TYPE_MESSAGE,
                      type_name=f".{pkg}.Features")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{pkg}.Example"))


EXAMPLE_PACKED, EXAMPLE_UNPACKED = oracle_classes(True), oracle_classes(False)


def oracle_records(path: Path) -> list[bytes]:
    """Record payloads by the TFRecord framing, read with struct (CRCs not checked)."""
    data, out, pos = path.read_bytes(), [], 0
    while pos < len(data):
        (n,) = struct.unpack_from("<Q", data, pos)
        out.append(data[pos + 12 : pos + 12 + n])
        pos += 12 + n + 4
    return out


def oracle_example(payload: bytes) -> dict:
    msg = EXAMPLE_PACKED.FromString(payload)
    out = {}
    for key, feat in msg.features.feature.items():
        kind = feat.WhichOneof("kind")
        out[key] = list(getattr(feat, kind).value) if kind else []
    return out


def oracle_episodes(builder: Path, dataset: str, split: str) -> list[dict]:
    return [oracle_example(r) for r in oracle_records(builder / f"{dataset}-{split}.tfrecord-00000-of-00001")]


def oracle_rgb(jpeg: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def oxe_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("oxe")
    write_oxe(root, N_FRACTAL, seed=0, dataset=FRACTAL)
    write_oxe(root, N_BRIDGE, seed=1, dataset=BRIDGE, steps=(10, 14), image_size=(96, 128))
    return root


@pytest.fixture
def tree(tmp_path, oxe_tree, monkeypatch) -> Path:
    shutil.copytree(oxe_tree, tmp_path / "oxe")
    monkeypatch.setitem(SOURCES, "oxe", OXESource)
    return tmp_path


def builder(root: Path, dataset: str) -> Path:
    return root / "oxe" / dataset / "0.1.0"


def run(workdir: Path, **options) -> tuple:
    src = {"kind": "oxe", "root": str(workdir / "oxe"), "options": options}
    cfg = config_from_dict({"workdir": str(workdir), "runner": {"engine": "local"}, "sources": [src]})
    with Catalog(cfg.catalog_path) as cat:
        report = ingest(cfg, cat, LocalRunner(), progress=False)
        items = cat.items().to_pylist()
        state = {r["item_id"]: r for r in cat.sql("SELECT * FROM item_stages").to_pylist()}
    return report, items, state


# ------------------------------------------------------------------------------------------------ codec


def test_crc32c_matches_published_vectors_and_the_bytewise_loop():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert crc32c(bytes(32)) == 0x8A9136AA and crc32c(b"\xff" * 32) == 0x62A8AB43  # RFC 3720 B.4
    assert crc32c(bytes(range(32))) == 0x46DD794E
    rng = np.random.default_rng(0)
    for n in (4095, 4096, 4097, 70001, 300000):  # around and far above the vectorised path's threshold
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc32c(data) == _update_bytewise(0xFFFFFFFF, data) ^ 0xFFFFFFFF
        assert crc32c(data[n // 3 :], crc32c(data[: n // 3])) == crc32c(data)
    crc = crc32c(b"abc")
    assert masked_crc32c(b"abc") == ((((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def test_tfrecord_round_trip_framing_and_readable_damage(tmp_path):
    payloads = [b"", b"x", bytes(range(256)) * 20, np.random.default_rng(1).bytes(200_000)]
    path = tmp_path / "r.tfrecord"
    offsets = write_records(path, payloads)
    assert [(o, d) for o, d in iter_records(path)] == list(zip(offsets, payloads))
    assert oracle_records(path) == payloads
    raw = path.read_bytes()
    # the framing, byte for byte: length, masked CRC of the length, data, masked CRC of the data
    n = struct.pack("<Q", len(payloads[1]))
    assert raw[offsets[1] : offsets[2]] == n + struct.pack("<I", masked_crc32c(n)) + b"x" + struct.pack("<I", masked_crc32c(b"x"))
    assert encode_record(b"x") == raw[offsets[1] : offsets[2]]

    flipped = bytearray(raw)
    flipped[offsets[3] + 12 + 1000] ^= 0x01  # inside the data of record 3
    path.write_bytes(bytes(flipped))
    assert scan_records(path) == ([(o, len(p)) for o, p in zip(offsets, payloads)], None)  # headers are intact
    with pytest.raises(TFRecordError, match=rf"r\.tfrecord: record at byte offset {offsets[3]}: corrupt: data CRC mismatch"):
        list(iter_records(path))
    assert len(list(iter_records(path, verify=False))) == 4

    flipped = bytearray(raw)
    flipped[offsets[2] + 2] ^= 0x40  # inside the length of record 2
    path.write_bytes(bytes(flipped))
    found, err = scan_records(path)
    assert [o for o, _ in found] == offsets[:2] and err.offset == offsets[2] and "length CRC mismatch" in str(err)

    path.write_bytes(raw[: len(raw) - 50_000])  # cut inside record 3's data
    with pytest.raises(TFRecordError) as e:
        list(iter_records(path))
    msg = str(e.value)
    assert msg.startswith(f"r.tfrecord: record at byte offset {offsets[3]}: truncated") and "file ends at byte" in msg
    path.write_bytes(raw[: offsets[3] + 5])  # cut inside record 3's header
    with pytest.raises(TFRecordError, match=r"truncated: the 12-byte record header is cut after 5 bytes"):
        list(iter_records(path))


@pytest.mark.parametrize("packed", [True, False])
def test_example_codec_agrees_with_protobuf_both_ways(packed):
    features = {
        "steps/observation/image": [b"\xff\xd8jpeg\x00bytes", b"", b"second"],
        "steps/action": np.array([0.5, -1.25, 3.0e-8, np.inf], np.float32),
        "steps/is_first": np.array([True, False, False]),
        "ints": np.array([0, 1, -1, 2**62, -(2**63), 300], np.int64),
        "text/ünïcode": ["déjà vu"],
        "empty_floats": np.zeros(0, np.float32),
        "empty_ints": np.zeros(0, np.int64),
    }
    ours = encode_example(features, packed=packed)
    theirs = (EXAMPLE_PACKED if packed else EXAMPLE_UNPACKED).FromString(ours)
    got = {k: list(getattr(v, v.WhichOneof("kind")).value) for k, v in theirs.features.feature.items()}
    assert got["steps/observation/image"] == features["steps/observation/image"]
    assert got["steps/action"] == pytest.approx(list(features["steps/action"]))
    assert got["steps/is_first"] == [1, 0, 0] and got["ints"] == list(features["ints"])
    assert got["text/ünïcode"] == ["déjà vu".encode()] and got["empty_floats"] == [] and got["empty_ints"] == []

    msg = (EXAMPLE_PACKED if packed else EXAMPLE_UNPACKED)()
    msg.features.feature["f"].float_list.value.extend([1.5, -2.0, 7.0])
    msg.features.feature["i"].int64_list.value.extend([-5, 0, 2**40])
    msg.features.feature["b"].bytes_list.value.extend([b"a", b"\x00\x01"])
    msg.features.feature["unset"].SetInParent()
    wire = msg.SerializeToString()
    f15 = struct.pack("<f", 1.5)  # packed: one length-delimited run (tag 0x0a); unpacked: a fixed32 tag (0x0d) each
    assert (b"\x0a\x0c" + f15 in wire) == packed and (b"\x0d" + f15 in wire) != packed
    assert (b"\x0a\x0c" + f15 in encode_example({"f": [1.5, -2.0, 7.0]}, packed=packed)) == packed
    decoded = parse_example(wire)
    assert decoded["f"].dtype == np.float32 and decoded["f"].tolist() == [1.5, -2.0, 7.0]
    assert decoded["i"].dtype == np.int64 and decoded["i"].tolist() == [-5, 0, 2**40]
    assert decoded["b"] == [b"a", b"\x00\x01"] and decoded["unset"] == []
    assert set(parse_example(wire, keys={"i"})) == {"i"}
    # our own round trip
    back = parse_example(ours)
    assert back["steps/observation/image"] == features["steps/observation/image"]
    np.testing.assert_array_equal(back["steps/action"], features["steps/action"])
    np.testing.assert_array_equal(back["ints"], features["ints"])


# ------------------------------------------------------------------------------------------------ ingest


def test_ingest_of_write_oxe_output_matches_the_records(tree):
    report, items, state = run(tree)
    assert report.stage.counts == Counter({"done": N_FRACTAL + N_BRIDGE}) and not report.source_errors
    by_id = {it["item_id"]: it for it in items}
    assert Counter((it["native_id"].split("/")[0], it["split"]) for it in items) == Counter(
        {(FRACTAL, "train"): 3, (FRACTAL, "val"): 1, (BRIDGE, "train"): 2, (BRIDGE, "val"): 1})
    for split, n in (("train", 3), ("val", 1)):
        episodes = oracle_episodes(builder(tree, FRACTAL), FRACTAL, split)
        assert len(episodes) == n
        for i, ep in enumerate(episodes):
            it = by_id[f"oxe/{FRACTAL}/{split}/{i}"]
            t = len(ep["steps/is_first"])
            first = oracle_rgb(ep["steps/observation/image"][0])
            assert it["frame_count"] == t == len(ep["steps/observation/image"]) and t >= 24
            assert (it["height"], it["width"]) == first.shape[:2] == (256, 320)
            assert it["fps"] == 3.0 and it["duration_s"] == pytest.approx(t / 3.0)
            assert it["tier"] == 5 and it["group_id"] == it["item_id"] and it["has_actions"]
            assert it["embodiment"] == "google_robot" and it["licence"] == "CC-BY-4.0"
            assert it["cameras"] == ["image"] and it["action_dim"] == 7 and it["state_dim"] == 8
            assert it["action_names"][:3] == ["world_vector_0", "world_vector_1", "world_vector_2"]
            assert it["language"] == sorted({s.decode() for s in ep["steps/observation/natural_language_instruction"]})
            expected = np.concatenate([np.reshape(ep[f"steps/action/{k}"], (t, -1)) for k in FRACTAL_ACTION], axis=1)
            actions = SOURCES["oxe"].load_actions(it)
            assert actions.shape == (t, 7) and actions.dtype == np.float64
            np.testing.assert_array_equal(actions, expected.astype(np.float32).astype(np.float64))
            assert it["input_uri"].endswith(f"{FRACTAL}-{split}.tfrecord-00000-of-00001")
    bridge = by_id[f"oxe/{BRIDGE}/train/1"]
    ep = oracle_episodes(builder(tree, BRIDGE), BRIDGE, "train")[1]
    t = len(ep["steps/is_first"])
    assert bridge["fps"] == 5.0 and (bridge["height"], bridge["width"]) == (96, 128) and bridge["frame_count"] == t
    assert bridge["cameras"] == ["image_0", "image_1"] and bridge["action_names"][-1] == "gripper"
    np.testing.assert_array_equal(SOURCES["oxe"].load_actions(bridge), np.reshape(ep["steps/action"], (t, 7)))
    extras = json.loads(bridge["extras"])
    assert extras["file_path"] == ep["episode_metadata/file_path"][0].decode() and extras["key_map_source"] == "table"
    # rerun: nothing to do
    report2, items2, _ = run(tree)
    assert report2.stage.processed == 0 and report2.stage.skipped == len(items) and items2 == items


def test_frame_iterator_yields_the_recorded_rgb_frames(tree):
    _, items, _ = run(tree)
    it = next(i for i in items if i["item_id"] == f"oxe/{FRACTAL}/train/2")
    uri = it["media_uris"][0]
    shard, record, offset, key = parse_frame_uri(uri)
    assert (record, key) == (2, "steps/observation/image") and uri == frame_uri(shard, 2, offset, key)
    assert uri.startswith(it["input_uri"] + "#record=2&offset=")
    frames = list(iter_tfrecord_frames(uri))
    jpegs = oracle_episodes(builder(tree, FRACTAL), FRACTAL, "train")[2]["steps/observation/image"]
    assert len(frames) == it["frame_count"] == len(jpegs)
    for frame, jpeg in zip(frames, jpegs):
        assert frame.dtype == np.uint8 and frame.shape == (256, 320, 3)
        np.testing.assert_array_equal(frame, oracle_rgb(jpeg))
    assert np.abs(frames[-1].astype(int) - frames[0]).mean() > 1  # the scene moves
    # the record index alone is enough (headers are walked), and damage is a readable BadInput
    assert len(list(iter_tfrecord_frames(f"{shard}#record=2&key={key}"))) == len(frames)
    with pytest.raises(BadInput, match="missing key steps/observation/nope"):
        list(iter_tfrecord_frames(f"{shard}#record=2&offset={offset}&key=steps/observation/nope"))


def test_pure_red_is_red_and_writer_keeps_mp4_colours(tmp_path):
    red_bgr = np.zeros((32, 48, 3), np.uint8)
    red_bgr[..., 2] = 255
    ok, jpeg = cv2.imencode(".jpg", red_bgr)
    path = tmp_path / "x-train.tfrecord-00000-of-00001"
    write_records(path, [encode_example({"steps/observation/image": [jpeg.tobytes()] * 2})])
    frames = list(iter_tfrecord_frames(f"{path}#record=0&offset=0&key=steps/observation/image"))
    assert len(frames) == 2 and frames[0].shape == (32, 48, 3)
    assert np.abs(frames[0].astype(int) - [255, 0, 0]).max() <= 3

    # frames_from: an H.264 mp4 with a red left half and a blue right half keeps its colours through the writer
    mp4 = tmp_path / "rgb_top.mp4"
    with av.open(str(mp4), mode="w") as c:
        s = c.add_stream("libx264", rate=Fraction(10))
        s.width, s.height, s.pix_fmt = 128, 96, "yuv420p"
        for i in range(12):
            f = np.zeros((96, 128, 3), np.uint8)
            f[:, :64] = (255, 0, 0)
            f[:, 64:] = (0, 0, 255)
            f[40:56, 10 + 4 * i : 20 + 4 * i] = (0, 255, 0)
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    shard = write_oxe(tmp_path / "oxe", 1, dataset=FRACTAL, frames_from=mp4, steps=(8, 8), image_size=(96, 128))[0]
    frames = list(iter_tfrecord_frames(frame_uri(shard, 0, 0, "steps/observation/image")))
    assert len(frames) == 8
    for f in frames:
        assert np.abs(f[70:, 5:50].astype(int) - [255, 0, 0]).mean() < 12
        assert np.abs(f[70:, 80:].astype(int) - [0, 0, 255]).mean() < 12


def test_malformed_episodes_are_quarantined_with_reasons_and_the_rest_ingests(tree):
    fractal = builder(tree, FRACTAL)
    train = fractal / f"{FRACTAL}-train.tfrecord-00000-of-00001"
    val = fractal / f"{FRACTAL}-val.tfrecord-00000-of-00001"
    records = oracle_records(train)
    offsets = [o for o, _ in scan_records(train)[0]]
    # train: record 0 loses its world_vector, record 1 gets a flipped data byte, record 2 stays whole
    ep0 = parse_example(records[0])
    del ep0["steps/action/world_vector"]
    records[0] = encode_example(ep0)
    write_records(train, records)
    offsets = [o for o, _ in scan_records(train)[0]]
    raw = bytearray(train.read_bytes())
    raw[offsets[1] + 12 + 500] ^= 0xFF
    train.write_bytes(bytes(raw))
    # val: one image dropped, so T - 1 images meet T actions
    (val_record,) = oracle_records(val)
    ep = parse_example(val_record)
    t = len(ep["steps/is_first"])
    ep["steps/observation/image"] = ep["steps/observation/image"][:-1]
    write_records(val, [encode_example(ep)])
    # bridge: features.json is gone
    (builder(tree, BRIDGE) / "features.json").unlink()

    report, items, state = run(tree)
    reasons = {k: v["reason"] for k, v in state.items() if v["status"] == "quarantined"}
    assert set(reasons) == {f"oxe/{FRACTAL}/train/0", f"oxe/{FRACTAL}/train/1", f"oxe/{FRACTAL}/val/0"} | {
        f"oxe/{BRIDGE}/{s}/{i}" for s, n in (("train", 2), ("val", 1)) for i in range(n)}
    name = train.name
    assert reasons[f"oxe/{FRACTAL}/train/0"].startswith(f"missing key steps/action/world_vector in {name} record 0 "
                                                        f"(key map {FRACTAL} from table")
    assert reasons[f"oxe/{FRACTAL}/train/1"] == (f"{name}: record at byte offset {offsets[1]}: corrupt: data CRC "
                                                 f"mismatch over its {len(records[1])} bytes")
    assert reasons[f"oxe/{FRACTAL}/val/0"].startswith(f"steps disagree: {t - 1} images, {t} actions (")
    for key in (f"oxe/{BRIDGE}/train/0", f"oxe/{BRIDGE}/train/1", f"oxe/{BRIDGE}/val/0"):
        assert reasons[key] == f"dataset dir {BRIDGE}/0.1.0 has no features.json (incomplete download? TFDS cannot read it either)"
    assert [it["item_id"] for it in items] == [f"oxe/{FRACTAL}/train/2"]
    assert items[0]["frame_count"] == len(parse_example(records[2])["steps/is_first"])
    assert report.stage.counts == Counter({"quarantined": len(reasons), "done": 1})


def test_truncated_shard_keeps_its_whole_episodes_and_names_the_missing_ones(tree):
    train = builder(tree, FRACTAL) / f"{FRACTAL}-train.tfrecord-00000-of-00001"
    found, _ = scan_records(train)
    train.write_bytes(train.read_bytes()[: found[1][0] + 30])  # record 1 is cut in its data; record 2 is gone
    report, items, state = run(tree, datasets=[FRACTAL])
    reasons = {k: v["reason"] for k, v in state.items() if v["status"] == "quarantined"}
    assert set(reasons) == {f"oxe/{FRACTAL}/train/1", f"oxe/{FRACTAL}/train/2"}
    assert reasons[f"oxe/{FRACTAL}/train/1"].startswith(f"{train.name}: record at byte offset {found[1][0]}: truncated")
    assert "record 2 cannot be located" in reasons[f"oxe/{FRACTAL}/train/2"]
    assert {it["item_id"] for it in items} == {f"oxe/{FRACTAL}/train/0", f"oxe/{FRACTAL}/val/0"}


def test_unknown_dataset_falls_back_to_features_json_and_bad_roots_are_source_errors(tree, tmp_path):
    src, dst = builder(tree, BRIDGE), tree / "oxe" / "my_robot_data" / "1.0.0"
    dst.mkdir(parents=True)
    for p in src.iterdir():
        (dst / p.name.replace(BRIDGE, "my_robot_data")).write_bytes(p.read_bytes())
    info = json.loads((dst / "dataset_info.json").read_text())
    (dst / "dataset_info.json").write_text(json.dumps({**info, "name": "my_robot_data"}))
    _, items, _ = run(tree, datasets=["my_robot_data"])
    assert len(items) == N_BRIDGE
    it = min(items, key=lambda i: i["item_id"])
    extras = json.loads(it["extras"])
    assert extras["key_map_source"] == "features.json" and extras["fps_source"] == "assumed" and it["fps"] == 10.0
    assert it["cameras"] == ["image_0", "image_1"] and it["action_dim"] == 7 and it["state_dim"] == 7
    assert it["embodiment"] == "unknown" and it["language"]

    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no TFDS builder dir"):
        OXESource(tmp_path / "empty")
    with pytest.raises(SourceError, match="none of the datasets"):
        OXESource(tree / "oxe", datasets=["nope"])
