"""Actions with their meaning: the action over a flow pair on constructed cases with known answers, and the
semantics each adapter records from real on-disk layouts (an RLDS fractal builder dir, LeRobot v2.1 datasets with
absolute and with delta actions)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from catalog import Catalog
from latent_action_vae.data import action_changes, compute_action_stats
from manifests import actions as sem
from media.tfrecord_frames import parse_episode, read_episode_record
from samples.lerobot_ds import JOINT_NAMES, sample_episodes, write_lerobot
from samples.oxe_rlds import write_oxe
from sources import SourceError
from sources.lerobot import LeRobotSource
from sources.oxe import OXESource

RAMP = np.arange(10, dtype=np.float64)[:, None] * np.array([1.0, 10.0])  # a[t] = (t, 10 t)


# --- the one rule, on constructed cases -----------------------------------------------------------------------------
def test_delta_actions_sum_over_the_window_and_absolute_ones_difference():
    pairs = np.array([[0, 3], [2, 5], [4, 4]])
    out = sem.pair_action(RAMP, ["delta:ee_pos", "absolute:joint"], pairs, 10.0, "after")
    # delta: Σ a[t1:t2] (0+1+2, 2+3+4, empty); absolute: a[t2−1] − a[t1−1] with a[−1] := a[0]
    np.testing.assert_allclose(out[:, 0], [3.0, 9.0, 0.0])
    np.testing.assert_allclose(out[:, 1], [20.0, 30.0, 0.0])
    at = sem.pair_action(RAMP, ["delta:ee_pos", "absolute:joint"], pairs, 10.0, "at")
    np.testing.assert_allclose(at[:, 0], [1 + 2 + 3, 3 + 4 + 5, 0.0])  # Σ a[t1+1 : t2+1]
    np.testing.assert_allclose(at[:, 1], [30.0, 30.0, 0.0])  # a[t2] − a[t1]


def test_velocity_integrates_over_time_and_the_gripper_is_a_difference_too():
    a = np.c_[np.full(8, 2.0), np.r_[np.zeros(4), np.ones(4)]]  # 2 m/s; gripper closes at row 4
    out = sem.pair_action(a, ["velocity:ee_pos", "absolute:gripper"], np.array([[0, 4], [3, 7]]), 4.0, "after")
    np.testing.assert_allclose(out[:, 0], [2.0, 2.0])  # 4 rows × 0.25 s × 2 m/s
    np.testing.assert_allclose(out[:, 1], [0.0, 1.0])  # a[6] − a[2]: the gripper closed inside the 2nd window


def test_the_rule_rejects_control_in_the_vector_and_pairs_past_the_end():
    with pytest.raises(ValueError, match="episode control"):
        sem.pair_action(RAMP, ["delta:ee_pos", "control:terminate"], np.array([[0, 1]]), 10.0, "after")
    with pytest.raises(ValueError, match="item7: flow pairs reach native frame 12"):
        sem.pair_action(RAMP, ["delta", "delta"], np.array([[0, 12]]), 10.0, "after", where="item7")
    with pytest.raises(ValueError, match="kind in absolute, delta, velocity"):
        sem.expand("position", ["x"])
    assert sem.summary(["delta:ee_pos"] * 3 + ["delta:ee_rot"] * 3 + ["delta:gripper"]) == \
        "delta:ee_pos×3, delta:ee_rot×3, delta:gripper"


def test_one_embodiment_may_not_pool_deltas_with_positions(tmp_path):
    from flow_extraction.artifacts import write_flow_artifact

    rows = []
    for i, kind in enumerate(("delta", "absolute")):
        ep = tmp_path / f"ep{i}"
        ep.mkdir()
        np.save(ep / "actions.npy", RAMP)
        art = tmp_path / f"ep{i}.flow.npz"
        pairs = np.array([[0, 2], [2, 4]])
        write_flow_artifact(art, np.zeros((2, 2, 4, 4), np.float32), np.ones((2, 4, 4), bool), pairs,
                            {"item_id": f"task_agnostic/ep{i}", "fps": 10.0})
        rows.append({"item_id": f"task_agnostic/ep{i}", "source": "task_agnostic", "split": "train",
                     "embodiment": "arm", "has_actions": True, "action_dim": 2, "native_fps": 10.0,
                     "action_semantics": [f"{kind}:joint"] * 2, "action_timing": "after", "frame_count": 10,
                     "input_uri": str(ep), "extras": "{}", "artifact_path": str(art), "n_pairs": 2})
    np.testing.assert_allclose(action_changes(rows[0], np.array([[0, 2]]), 10.0), [[1.0, 10.0]])
    with pytest.raises(ValueError, match="embodiment arm: task_agnostic/ep1 has action semantics"):
        compute_action_stats(rows)


# --- OXE: the dataset table as data ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fractal(tmp_path_factory):
    root = tmp_path_factory.mktemp("oxe")
    write_oxe(root, 2, seed=3, dataset="fractal20220817_data", image_size=(64, 80))
    src = OXESource(root)
    return [src.probe(ref).row() for ref in src.discover()]


def test_rt1_dict_action_keeps_terminate_out_of_the_vector(fractal):
    row = fractal[0]
    assert row["action_dim"] == 7
    assert row["action_names"] == ["world_vector_0", "world_vector_1", "world_vector_2", "rotation_delta_0",
                                   "rotation_delta_1", "rotation_delta_2", "gripper_closedness_action"]
    assert row["action_semantics"] == ["delta:ee_pos"] * 3 + ["delta:ee_rot"] * 3 + ["delta:gripper"]
    assert row["action_timing"] == "after"
    extras = json.loads(row["extras"])
    assert extras["episode_control"] == {"steps/action/terminate_episode": 3}
    assert extras["action_semantics_source"] == "table"
    assert OXESource.load_actions(row).shape == (row["frame_count"], 7)


def test_rt1_delta_over_a_pair_is_the_pose_change_between_its_frames(fractal):
    row = {**fractal[0], "native_fps": fractal[0]["fps"]}
    extras = json.loads(row["extras"])
    feats = parse_episode(read_episode_record(row["input_uri"], extras["record"], extras["offset"]), "test")
    pose = np.asarray(feats["steps/observation/base_pose_tool_reached"], np.float64).reshape(-1, 7)
    t = row["frame_count"]
    pairs = np.array([[0, 6], [5, 11], [t - 7, t - 1]])
    got = action_changes(row, pairs, row["fps"])
    # the sample's world_vector[t] moves the tool from pose t to t+1: the sum over the window is the move
    np.testing.assert_allclose(got[:, :3], pose[pairs[:, 1], :3] - pose[pairs[:, 0], :3], atol=1e-5)


def test_oxe_semantics_option_overrides_the_table(tmp_path):
    write_oxe(tmp_path, 1, seed=0, dataset="fractal20220817_data", image_size=(64, 80))
    src = OXESource(tmp_path, action_semantics="velocity", action_timing="at")
    row = src.probe(next(src.discover())).row()
    assert row["action_semantics"][:3] == ["velocity:ee_pos"] * 3 and row["action_timing"] == "at"
    assert json.loads(row["extras"])["action_semantics_source"] == "option"


# --- LeRobot: the data check ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["absolute", "delta"])
def test_lerobot_check_finds_how_actions_relate_to_the_state(tmp_path, kind):
    root = write_lerobot(tmp_path / "aloha_demo", 3, seed=2, version="v2.1", actions=kind)
    src = LeRobotSource(root)
    parts = ["gripper" if "gripper" in n else "joint" for n in JOINT_NAMES]
    assert src.action_semantics == [f"{kind}:{p}" for p in parts]
    row = src.probe(next(iter(src.discover()))).row()
    assert row["action_semantics"] == src.action_semantics and row["action_timing"] == "after"
    extras = json.loads(row["extras"])
    assert extras["action_semantics_source"] == "data check"
    errors = extras["action_check"]["median_error"]
    assert errors[kind] < 0.01 < min(v for k, v in errors.items() if k != kind)
    # either way, the action over a pair is the state change between the pair's frames
    ep = sample_episodes(3, seed=2, actions=kind)[0]
    pairs = np.array([[1, 7], [4, 10], [10, 16]])
    got = action_changes({**row, "native_fps": row["fps"]}, pairs, row["fps"])
    state = ep.state.astype(np.float64)
    np.testing.assert_allclose(got, state[pairs[:, 1]] - state[pairs[:, 0]], atol=1e-5)


def test_lerobot_semantics_option_wins_and_bad_values_are_named(tmp_path):
    root = write_lerobot(tmp_path / "aloha_demo", 2, seed=1, version="v2.1", actions="delta")
    src = LeRobotSource(root, action_semantics="absolute:joint")
    assert set(src.action_semantics) == {"absolute:joint"} and src.semantics_from == "option"
    with pytest.raises(SourceError, match="lerobot aloha_demo: 2 entries for 14 action dims"):
        LeRobotSource(root, action_semantics=["delta", "delta"])


# --- the catalog -------------------------------------------------------------------------------------------------
def test_an_older_catalog_gains_the_semantics_columns(tmp_path):
    import duckdb

    path = tmp_path / "catalog.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE items (item_id VARCHAR PRIMARY KEY, source VARCHAR NOT NULL)")
    con.execute("INSERT INTO items VALUES ('oxe/a', 'oxe')")
    con.close()
    with Catalog(path) as cat:
        row = cat.sql("SELECT item_id, action_semantics, action_timing FROM items").to_pylist()
    assert row == [{"item_id": "oxe/a", "action_semantics": None, "action_timing": None}]
