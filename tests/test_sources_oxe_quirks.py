"""Open X-Embodiment as published: the quirks real RLDS shards have (issue 14), each in the real builder layout.

Shards come from the sample writer and are then edited the way real downloads differ from it (records re-encoded
with the Example codec; the features.json of a dataset outside the key table written here from its published
schema). Expected values come from the records read with the independent protobuf oracle of test_sources_oxe.
"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from catalog import Catalog
from jobs.cli import app
from pipelines.config import config_from_dict
from samples.oxe_rlds import write_oxe
from media.tfrecord import encode_example, parse_example, write_records
from tests.test_sources_oxe import oracle_example, oracle_records

FRACTAL, BRIDGE = "fractal20220817_data", "bridge_dataset"


def shard(root: Path, dataset: str, split: str = "train") -> Path:
    return root / dataset / "0.1.0" / f"{dataset}-{split}.tfrecord-00000-of-00001"


def edit_records(path: Path, edits: dict[int, dict]) -> None:
    """Replace features of some records of a shard (record index -> {feature: new value})."""
    records = oracle_records(path)
    for i, change in edits.items():
        ep = parse_example(records[i])
        ep.update(change)
        records[i] = encode_example(ep)
    write_records(path, records)


def cli_ingest(workdir: Path, sources: list[dict]):
    """`pyramid ingest` as a user runs it; returns the CLI result and the catalog's items and stage states."""
    cfg = workdir / "pyramid.yaml"
    cfg.write_text(json.dumps({"sources": sources}))  # YAML is a superset of JSON
    result = CliRunner().invoke(app, ["ingest", "--config", str(cfg), "--workdir", str(workdir), "--engine", "local"])
    with Catalog(config_from_dict({"workdir": str(workdir)}).catalog_path, read_only=True) as cat:
        items = {r["item_id"]: r for r in cat.items().to_pylist()}
        state = {r["item_id"]: r for r in cat.sql("SELECT * FROM item_stages").to_pylist()}
    return result, items, state


def test_empty_or_undecodable_camera_bytes_use_another_camera_else_quarantine(tmp_path):
    root = tmp_path / "oxe"
    write_oxe(root, 3, seed=0, dataset=FRACTAL, steps=(8, 10), image_size=(48, 64))
    write_oxe(root, 2, seed=1, dataset=BRIDGE, steps=(8, 10), image_size=(48, 64))
    fractal, bridge = shard(root, FRACTAL), shard(root, BRIDGE)
    t0, t1 = (len(oracle_example(r)["steps/is_first"]) for r in oracle_records(fractal)[:2])
    # fractal has one camera: record 0 stores it as b'' in every step, record 1 as bytes that are no image
    edit_records(fractal, {0: {"steps/observation/image": [b""] * t0},
                           1: {"steps/observation/image": [b"\x00not a jpeg"] * t1}})
    # bridge has two: image_0 is empty in record 0, image_1 still decodes
    b0 = len(oracle_example(oracle_records(bridge)[0])["steps/is_first"])
    edit_records(bridge, {0: {"steps/observation/image_0": [b""] * b0}})

    result, items, state = cli_ingest(tmp_path, [{"kind": "oxe", "root": str(root)}])
    assert result.exit_code == 0, result.output  # bad input is quarantined, not a failed run
    by_status = {k: v["status"] for k, v in state.items()}
    assert "failed" not in by_status.values()
    reasons = {k: v["reason"] for k, v in state.items() if v["status"] == "quarantined"}
    assert set(reasons) == {f"oxe/{FRACTAL}/train/0", f"oxe/{FRACTAL}/train/1"}
    assert reasons[f"oxe/{FRACTAL}/train/0"] == (
        f"no camera of {fractal.name} record 0 decodes: steps/observation/image {t0} of {t0} steps are empty bytes")
    assert reasons[f"oxe/{FRACTAL}/train/1"] == (
        f"no camera of {fractal.name} record 1 decodes: steps/observation/image step 0 does not decode (not JPEG/PNG)")
    # the bridge episode ingests with the camera that decodes, and says which one it left out and why
    it = items[f"oxe/{BRIDGE}/train/0"]
    assert it["cameras"] == ["image_1"] and it["frame_count"] == b0 and (it["height"], it["width"]) == (48, 64)
    assert it["media_uris"][0].endswith("key=steps/observation/image_1")
    assert json.loads(it["extras"])["cameras_skipped"] == {"image_0": f"{b0} of {b0} steps are empty bytes"}
    assert items[f"oxe/{BRIDGE}/train/1"]["cameras"] == ["image_0", "image_1"]
    assert json.loads(items[f"oxe/{BRIDGE}/train/1"]["extras"])["cameras_skipped"] == {}
    assert f"oxe/{FRACTAL}/val/0" in items  # the undamaged episode

    status = CliRunner().invoke(app, ["status", "--workdir", str(tmp_path)])
    assert status.exit_code == 0 and "empty bytes" in status.output


# ------------------------------------------------------------------------------------------------ generic reader

# columbia_cairlab_pusht_real's published schema (TFDS catalog page) under the name of a dataset the OXE overview sheet
# lists (spot, 30 Hz) and the key table does not
PUSHT = "conq_hose_manipulation"
PUSHT_TASK = "push the T block into the goal and exit"


def tfds_feature(kind: str, shape: tuple = (), dtype: str = "float32") -> dict:
    """One leaf of a TFDS features.json (proto JSON), as TFDS writes Image, Tensor and Scalar features."""
    if kind == "image":
        return {"pythonClassName": "tensorflow_datasets.core.features.image_feature.Image",
                "image": {"shape": {"dimensions": [str(d) for d in shape]}, "dtype": "uint8", "encodingFormat": "jpeg"}}
    cls = "scalar.Scalar" if kind == "scalar" else "tensor_feature.Tensor"
    return {"pythonClassName": f"tensorflow_datasets.core.features.{cls}",
            "tensor": {"shape": {"dimensions": [str(d) for d in shape]} if shape else {}, "dtype": dtype,
                       "encoding": "none"}}


def features_dict(tree: dict) -> dict:
    return {"pythonClassName": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
            "featuresDict": {"features": {k: features_dict(v) if isinstance(v, dict) and "pythonClassName" not in v
                                          else v for k, v in tree.items()}}}


def write_pusht(root: Path, lengths=(9, 12, 10)) -> Path:
    """columbia_cairlab_pusht_real 0.1.0 as published (tensorflow/datasets docs/catalog/columbia_cairlab_pusht_real.md):
    an RT-1-style action dict with a scalar terminate_episode, robot_state (2,), a string Tensor instruction."""
    import cv2
    import numpy as np

    from media.tfrecord import TFRecordWriter

    builder = root / PUSHT / "0.1.0"
    builder.mkdir(parents=True)
    steps = features_dict({
        "action": {"gripper_closedness_action": tfds_feature("tensor"), "rotation_delta": tfds_feature("tensor", (3,)),
                   "terminate_episode": tfds_feature("tensor"), "world_vector": tfds_feature("tensor", (3,))},
        "is_first": tfds_feature("tensor", dtype="bool"), "is_last": tfds_feature("tensor", dtype="bool"),
        "is_terminal": tfds_feature("tensor", dtype="bool"),
        "observation": {"image": tfds_feature("image", (240, 320, 3)),
                        "natural_language_embedding": tfds_feature("tensor", (512,)),
                        "natural_language_instruction": tfds_feature("tensor", dtype="string"),
                        "robot_state": tfds_feature("tensor", (2,)), "wrist_image": tfds_feature("image", (240, 320, 3))},
        "reward": tfds_feature("scalar"),
    })
    spec = features_dict({})
    spec["featuresDict"]["features"]["steps"] = {
        "pythonClassName": "tensorflow_datasets.core.features.dataset_feature.Dataset",
        "sequence": {"feature": steps, "length": "-1"}}
    (builder / "features.json").write_text(json.dumps(spec))
    rng = np.random.default_rng(0)
    episodes = []
    with TFRecordWriter(builder / f"{PUSHT}-train.tfrecord-00000-of-00001") as w:
        for t in lengths:
            ep = {"world_vector": rng.normal(0, 0.01, (t, 3)), "rotation_delta": rng.normal(0, 0.01, (t, 3)),
                  "gripper_closedness_action": rng.choice([-1.0, 0.0, 1.0], (t, 1)),
                  "terminate_episode": (np.arange(t) == t - 1).astype(float)[:, None],
                  "robot_state": rng.uniform(0, 1, (t, 2))}
            episodes.append(ep)
            frames = [cv2.imencode(".jpg", rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))[1].tobytes()
                      for _ in range(t)]
            w.write(encode_example({
                **{f"steps/action/{k}": np.asarray(ep[k], np.float32) for k in
                   ("world_vector", "rotation_delta", "gripper_closedness_action", "terminate_episode")},
                "steps/is_first": np.arange(t) == 0, "steps/is_last": np.arange(t) == t - 1,
                "steps/is_terminal": np.arange(t) == t - 1,
                "steps/observation/image": frames, "steps/observation/wrist_image": frames[::-1],
                "steps/observation/natural_language_embedding": np.zeros(t * 512, np.float32),
                "steps/observation/natural_language_instruction": [PUSHT_TASK] * t,
                "steps/observation/robot_state": np.asarray(ep["robot_state"], np.float32),
                "steps/reward": np.zeros(t, np.float32)}))
    (builder / "dataset_info.json").write_text(json.dumps({
        "name": PUSHT, "version": "0.1.0", "fileFormat": "tfrecord",
        "splits": [{"name": "train", "shardLengths": [str(len(lengths))], "filepathTemplate":
                    "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"}]}))
    return builder


def test_generic_reader_keeps_language_state_rt1_actions_embodiment_and_rate(tmp_path):
    import numpy as np

    from sources.oxe import OXESource

    root = tmp_path / "oxe"
    write_pusht(root)
    truth = [oracle_example(r) for r in oracle_records(root / PUSHT / "0.1.0" / f"{PUSHT}-train.tfrecord-00000-of-00001")]
    result, items, state = cli_ingest(tmp_path, [{"kind": "oxe", "root": str(root)}])
    assert result.exit_code == 0, result.output
    assert {v["status"] for v in state.values()} == {"done"} and len(items) == 3
    for i, ep in enumerate(truth):
        it = items[f"oxe/{PUSHT}/train/{i}"]
        t = len(ep["steps/is_first"])
        assert it["frame_count"] == t and it["cameras"] == ["image", "wrist_image"]
        # the instruction is a string Tensor, not Text: still the item's language
        assert it["language"] == [PUSHT_TASK]
        # observation/robot_state is the state
        assert it["state_dim"] == 2 and it["state_names"] == ["robot_state_0", "robot_state_1"]
        # the dict action in RT-1's order, terminate_episode out of the vector and recorded
        assert it["action_names"] == ["world_vector_0", "world_vector_1", "world_vector_2", "rotation_delta_0",
                                      "rotation_delta_1", "rotation_delta_2", "gripper_closedness_action"]
        assert it["action_semantics"] == ["delta:ee_pos"] * 3 + ["delta:ee_rot"] * 3 + ["delta:gripper"]
        want = np.concatenate([np.reshape(ep[f"steps/action/{k}"], (t, -1)) for k in
                               ("world_vector", "rotation_delta", "gripper_closedness_action")], axis=1)
        np.testing.assert_array_equal(OXESource.load_actions(it), np.asarray(want, np.float32).astype(np.float64))
        extras = json.loads(it["extras"])
        assert extras["episode_control"] == {"steps/action/terminate_episode": 1}
        assert extras["language_keys"] == ["steps/observation/natural_language_instruction"]
        # embodiment and control rate from the OXE overview, said so
        assert it["embodiment"] == "spot" and it["fps"] == 30.0
        assert extras["fps_source"] == "OXE overview" and extras["embodiment_source"] == "OXE overview"
        assert extras["key_map_source"] == "features.json"

    status = CliRunner().invoke(app, ["status", "--workdir", str(tmp_path)], terminal_width=250)
    table = status.output.split("Embodiment and rate per source", 1)[1].split("Action semantics", 1)[0]
    line = next(line for line in table.splitlines() if PUSHT in line)
    assert "spot" in line and "OXE overview" in line and " 30 " in line and " 3 " in line


# ------------------------------------------------------------------------------------------------ key table coverage

# taco_play 0.1.0 as published (tensorflow/datasets docs/catalog/taco_play.md): flat key -> (class, shape, dtype)
TACO_PLAY = {
    "action/actions": ("tensor", (7,), "float32"), "action/rel_actions_gripper": ("tensor", (7,), "float32"),
    "action/rel_actions_world": ("tensor", (7,), "float32"), "action/terminate_episode": ("tensor", (), "float32"),
    "is_first": ("tensor", (), "bool"), "is_last": ("tensor", (), "bool"), "is_terminal": ("tensor", (), "bool"),
    "observation/depth_gripper": ("tensor", (84, 84), "float32"),
    "observation/depth_static": ("tensor", (150, 200), "float32"),
    "observation/natural_language_embedding": ("tensor", (512,), "float32"),
    "observation/natural_language_instruction": ("tensor", (), "string"),
    "observation/rgb_gripper": ("image", (84, 84, 3), "uint8"),
    "observation/rgb_static": ("image", (150, 200, 3), "uint8"),
    "observation/robot_obs": ("tensor", (15,), "float32"),
    "observation/structured_language_instruction": ("tensor", (), "string"),
    "reward": ("scalar", (), "float32"),
}


def features_json_from_flat(flat: dict) -> dict:
    tree: dict = {}
    for key, (kind, shape, dtype) in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = tfds_feature(kind, shape, dtype)
    spec = features_dict({})
    spec["featuresDict"]["features"]["steps"] = {
        "pythonClassName": "tensorflow_datasets.core.features.dataset_feature.Dataset",
        "sequence": {"feature": features_dict(tree), "length": "-1"}}
    return spec


def write_builder(root: Path, name: str, flat: dict, lengths=(6, 8), text: str = "put the block in the drawer"):
    """An RLDS builder dir whose episodes hold values of the published shapes (JPEG images, random numbers)."""
    import cv2
    import numpy as np

    from media.tfrecord import TFRecordWriter

    builder = root / name / "0.1.0"
    builder.mkdir(parents=True)
    (builder / "features.json").write_text(json.dumps(features_json_from_flat(flat)))
    rng = np.random.default_rng(1)
    with TFRecordWriter(builder / f"{name}-train.tfrecord-00000-of-00001") as w:
        for t in lengths:
            ep = {}
            for key, (kind, shape, dtype) in flat.items():
                if kind == "image":
                    ep[f"steps/{key}"] = [cv2.imencode(".jpg", rng.integers(0, 255, shape, dtype=np.uint8))[1].tobytes()
                                          for _ in range(t)]
                elif dtype == "string":
                    ep[f"steps/{key}"] = [text] * t
                elif dtype == "bool":
                    ep[f"steps/{key}"] = np.arange(t) == (0 if key == "is_first" else t - 1)
                else:
                    ep[f"steps/{key}"] = rng.normal(0, 0.1, (t, *shape)).astype(np.float32).ravel()
            w.write(encode_example(ep))
    (builder / "dataset_info.json").write_text(json.dumps({
        "name": name, "version": "0.1.0", "splits": [{"name": "train", "shardLengths": [str(len(lengths))]}]}))
    return builder


def test_sample_datasets_map_to_keys_their_written_features_json_has():
    from samples.oxe_rlds import SCHEMAS, features_json
    from sources.oxe_keys import OXE_DATASETS, flatten_features, resolve_key_map

    # the trees the sample generator writes (and taco_play's); all 53 table datasets: tests/test_sources_oxe_table.py
    published = {name: features_json(name, SCHEMAS[name]["size"]) for name in SCHEMAS}
    published["taco_play"] = features_json_from_flat(TACO_PLAY)
    assert set(published) <= set(OXE_DATASETS)
    for name in published:
        specs = flatten_features(published[name])
        km = resolve_key_map(name, specs)
        assert km["source"] == "table" and km["fps_source"] == "table" and km["embodiment"] != "unknown"
        assert km["cameras"] and all(specs[k]["kind"] == "image" for k in km["cameras"]), name
        for k in km["action"] + km["state"]:
            assert specs[k]["kind"] == "tensor" and specs[k]["dtype"].startswith("float"), (name, k)
            assert km["dims"][k], (name, k)
        assert km["language"] and all(specs[k]["kind"] == "text" or specs[k]["dtype"] == "string"
                                      for k in km["language"]), name
        assert all(k in specs for k in km["control"]), name
        dims = sum(km["dims"][k] for k in km["action"])
        assert not km["action_names"] or len(km["action_names"]) == dims, name


def test_taco_play_reads_its_world_frame_deltas_and_an_unknown_dict_of_alternatives_is_not_guessed(tmp_path):
    root = tmp_path / "oxe"
    write_builder(root, "taco_play", TACO_PLAY)
    write_builder(root, "my_taco_copy", TACO_PLAY)  # the same schema under a name the table does not know
    result, items, state = cli_ingest(tmp_path, [{"kind": "oxe", "root": str(root)}])
    assert result.exit_code == 0, result.output
    it = items["oxe/taco_play/train/0"]
    assert it["cameras"] == ["rgb_static", "rgb_gripper"] and (it["height"], it["width"]) == (150, 200)
    assert it["action_dim"] == 7 and it["action_names"][-1] == "open_gripper" and it["state_dim"] == 15
    assert it["action_semantics"][-1] == "absolute:gripper" and it["fps"] == 15.0
    assert it["language"] == ["put the block in the drawer"]
    reasons = {k: v["reason"] for k, v in state.items() if v["status"] == "quarantined"}
    assert set(reasons) == {"oxe/my_taco_copy/train/0", "oxe/my_taco_copy/train/1"}
    assert reasons["oxe/my_taco_copy/train/0"] == (
        "my_taco_copy/0.1.0: the action dict of features.json holds several action vectors (action/actions (7,), "
        "action/rel_actions_gripper (7,), action/rel_actions_world (7,)) and my_taco_copy is not in the key table: "
        "name the one to use with the source option key_maps, e.g. {my_taco_copy: {action: [action/actions]}}")

    # the option names it; everything else still comes from features.json
    src = {"kind": "oxe", "root": str(root), "options": {
        "datasets": ["my_taco_copy"], "key_maps": {"my_taco_copy": {"action": ["action/rel_actions_world"]}}}}
    (tmp_path / "b").mkdir()
    result, items, state = cli_ingest(tmp_path / "b", [src])
    assert result.exit_code == 0 and {v["status"] for v in state.values()} == {"done"}
    it = items["oxe/my_taco_copy/train/1"]
    assert it["action_dim"] == 7 and it["cameras"] == ["rgb_static", "rgb_gripper"]
    assert json.loads(it["extras"])["key_map_source"] == "key_maps option (action) + features.json"
