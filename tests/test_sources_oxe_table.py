"""The OXE key table covers the Octo/OpenVLA mixture: every dataset maps to cameras, state, action columns, episode
control and language that its published features.json holds (tests/oxe_schemas.py), and a few datasets the older
tests do not cover go end to end through `pyramid ingest` on RLDS TFRecord shards in their published layout."""

from __future__ import annotations

import json
import zlib

import numpy as np

from manifests import actions
from media.tfrecord import encode_example, write_records
from sources.oxe_keys import _names, _table_semantics, flatten_features, resolve_key_map, split_key
from sources.oxe_datasets import OXE_DATASETS
from tests.oxe_schemas import SCHEMAS, features_json, flat_schema
from tests.test_sources_oxe import oracle_example, oracle_records
from tests.test_sources_oxe_quirks import cli_ingest, write_builder

# the datasets of Octo's OXE_STANDARDIZATION_TRANSFORMS (octo/data/oxe/oxe_standardization_transforms.py) and DROID
MIXTURE = {
    "bridge_dataset", "fractal20220817_data", "kuka", "taco_play", "jaco_play", "berkeley_cable_routing", "roboturk",
    "nyu_door_opening_surprising_effectiveness", "viola", "berkeley_autolab_ur5", "toto", "language_table",
    "columbia_cairlab_pusht_real", "stanford_kuka_multimodal_dataset_converted_externally_to_rlds",
    "nyu_rot_dataset_converted_externally_to_rlds", "stanford_hydra_dataset_converted_externally_to_rlds",
    "austin_buds_dataset_converted_externally_to_rlds", "nyu_franka_play_dataset_converted_externally_to_rlds",
    "maniskill_dataset_converted_externally_to_rlds", "furniture_bench_dataset_converted_externally_to_rlds",
    "cmu_franka_exploration_dataset_converted_externally_to_rlds", "ucsd_kitchen_dataset_converted_externally_to_rlds",
    "ucsd_pick_and_place_dataset_converted_externally_to_rlds", "austin_sailor_dataset_converted_externally_to_rlds",
    "austin_sirius_dataset_converted_externally_to_rlds", "bc_z",
    "utokyo_pr2_opening_fridge_converted_externally_to_rlds",
    "utokyo_pr2_tabletop_manipulation_converted_externally_to_rlds",
    "utokyo_xarm_pick_and_place_converted_externally_to_rlds", "utokyo_xarm_bimanual_converted_externally_to_rlds",
    "robo_net", "berkeley_mvp_converted_externally_to_rlds", "berkeley_rpt_converted_externally_to_rlds",
    "kaist_nonprehensile_converted_externally_to_rlds", "stanford_mask_vit_converted_externally_to_rlds",
    "tokyo_u_lsmo_converted_externally_to_rlds", "dlr_sara_pour_converted_externally_to_rlds",
    "dlr_sara_grid_clamp_converted_externally_to_rlds", "dlr_edan_shared_control_converted_externally_to_rlds",
    "asu_table_top_converted_externally_to_rlds", "stanford_robocook_converted_externally_to_rlds",
    "imperialcollege_sawyer_wrist_cam", "iamlab_cmu_pickup_insert_converted_externally_to_rlds", "uiuc_d3field",
    "utaustin_mutex", "berkeley_fanuc_manipulation", "cmu_playing_with_food", "cmu_play_fusion", "cmu_stretch",
    "berkeley_gnm_recon", "berkeley_gnm_cory_hall", "berkeley_gnm_sac_son", "droid",
}


def test_every_dataset_in_the_table_maps_to_keys_its_features_json_has():
    assert set(OXE_DATASETS) == MIXTURE and len(MIXTURE) == 52 + 1
    assert set(SCHEMAS) == set(OXE_DATASETS)
    for name in OXE_DATASETS:
        specs = flatten_features(features_json(flat_schema(name)))
        km = resolve_key_map(name, specs)
        assert km["source"] == "table" and km["embodiment"] != "unknown", name
        assert km["fps_source"] in ("table", "OXE overview") or "control rate" in km["assumed"], name
        # cameras: RGB images of the step, the first the preferred one
        assert km["cameras"] and all(specs[k]["kind"] == "image" and specs[k]["shape"][-1] == 3
                                     for k in km["cameras"]), name
        for k in km["action"] + km["state"] + km["control"]:
            base = split_key(k)[0]
            assert specs[base]["kind"] == "tensor" and specs[base]["dtype"] != "string", (name, k)
            assert km["dims"][k] and km["dims"][k] > 0, (name, k)
        # nothing of the action vector is episode control, and every dim has a meaning
        assert not any("terminate" in k for k in km["action"]), name
        dims = [km["dims"][k] for k in km["action"]]
        names = _names(km["action"], dims, km["action_names"])
        semantics = actions.validate(_table_semantics(km, dims, names), sum(dims), "after", name)
        assert len(semantics) == sum(dims) == len(names), name
        # a column slice keeps the columns that are not control: together they cover the whole feature
        for base in {split_key(k)[0] for k in km["action"] + km["control"] if split_key(k)[1] is not None}:
            taken = sum(km["dims"][k] for k in km["action"] + km["control"] if split_key(k)[0] == base)
            assert taken <= specs[base]["shape"][0], (name, base)
        assert km["language"] and all(k in specs for k in km["language"]), name
        assert all(specs[k]["kind"] == "text" or specs[k]["dtype"] in ("string", "int32") for k in km["language"])


def _shard(root, name):
    return root / name / "0.1.0" / f"{name}-train.tfrecord-00000-of-00001"


def _publish(root, name, lengths):
    """An RLDS builder dir of `name` with its published features.json and episodes of random values."""
    flat = flat_schema(name)
    writable = {k: ("image" if kind == "image" else "tensor", shape, dtype) for k, (kind, shape, dtype) in flat.items()}
    builder = write_builder(root, name, writable, lengths)
    (builder / "features.json").write_text(json.dumps(features_json(flat)))
    return [oracle_example(r) for r in oracle_records(_shard(root, name))]


def test_control_columns_chunked_actions_and_compressed_state_end_to_end(tmp_path):
    from sources.oxe import OXESource

    root = tmp_path / "oxe"
    franka = "nyu_franka_play_dataset_converted_externally_to_rlds"
    truth = {franka: _publish(root, franka, (5, 7)), "bc_z": _publish(root, "bc_z", (6, 4)),
             "kuka": _publish(root, "kuka", (5, 6))}
    # kuka's released shards hold the state as ZLIB-compressed float32 bytes (what Octo's transform decodes)
    records = oracle_records(_shard(root, "kuka"))
    from media.tfrecord import parse_example
    for i, ep in enumerate(truth["kuka"]):
        t = len(ep["steps/is_first"])
        example = parse_example(records[i])
        for key in ("steps/observation/clip_function_input/base_pose_tool_reached", "steps/observation/gripper_closed"):
            rows = np.asarray(ep[key], np.float32).reshape(t, -1)
            example[key] = [zlib.compress(r.tobytes()) for r in rows]
        records[i] = encode_example(example)
    write_records(_shard(root, "kuka"), records)

    result, items, state = cli_ingest(tmp_path, [{"kind": "oxe", "root": str(root)}])
    assert result.exit_code == 0, result.output
    assert {v["status"] for v in state.values()} == {"done"} and len(items) == 6

    # nyu_franka_play: 15 action columns, the last one is terminate: out of the vector, recorded as control
    for i, ep in enumerate(truth[franka]):
        it = items[f"oxe/{franka}/train/{i}"]
        t = len(ep["steps/is_first"])
        assert it["action_dim"] == 14 and it["action_names"][-1] == "action_13"
        assert it["action_semantics"] == (["velocity:joint"] * 7 + ["delta:ee_pos"] * 3 + ["delta:ee_rot"] * 3
                                          + ["absolute:gripper"])
        assert it["cameras"] == ["image", "image_additional_view"] and it["state_dim"] == 13 and it["fps"] == 3.0
        want = np.asarray(ep["steps/action"], np.float32).reshape(t, 15)[:, :14]
        np.testing.assert_array_equal(OXESource.load_actions(it), want.astype(np.float64))
        assert json.loads(it["extras"])["episode_control"] == {"steps/action[14:]": 1}

    # bc_z: each action key holds the next 10 actions; the step's own action is the first of each
    for i, ep in enumerate(truth["bc_z"]):
        it = items[f"oxe/bc_z/train/{i}"]
        t = len(ep["steps/is_first"])
        assert it["action_dim"] == 7 and it["embodiment"] == "google_robot" and it["fps"] == 10.0
        assert it["action_semantics"] == ["delta:ee_pos"] * 3 + ["delta:ee_rot"] * 3 + ["absolute:gripper"]
        assert it["action_names"][:4] == ["xyz_residual_0", "xyz_residual_1", "xyz_residual_2", "axis_angle_residual_0"]
        want = np.concatenate([np.asarray(ep[f"steps/action/future/{k}"], np.float64).reshape(t, -1)[:, :n]
                               for k, n in (("xyz_residual", 3), ("axis_angle_residual", 3), ("target_close", 1))], 1)
        np.testing.assert_allclose(OXESource.load_actions(it), want, rtol=1e-6)
        assert it["state_dim"] == 7 and it["language"] == ["put the block in the drawer"]

    # kuka: the compressed state decodes to the same numbers
    it = items["oxe/kuka/train/1"]
    assert it["state_dim"] == 8 and it["action_dim"] == 7
    assert json.loads(it["extras"])["episode_control"] == {"steps/action/terminate_episode": 3}


def test_language_table_instructions_stored_as_code_points_decode_to_text():
    from sources.oxe import _text

    steps, width = 3, 512
    codes = np.zeros((steps, width), np.int32)
    for t in range(steps):
        line = "push the blue cube to the top left" if t < 2 else "slide the star next to the heart"
        codes[t, :len(line)] = [ord(c) for c in line]
    assert _text(codes.ravel(), steps) == ["push the blue cube to the top left", "slide the star next to the heart"]
    assert _text(codes.ravel()[:-1], steps) == []  # not a whole number of steps: nothing guessed
