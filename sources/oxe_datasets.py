"""The per-dataset key table of the Open X-Embodiment mixture (53 datasets, as Octo and OpenVLA name them): cameras,
state, action and episode-control keys, what each action dim means, language. Sources: docs/formats.md#oxe."""

from __future__ import annotations

from typing import Any

RTX_LANG = "observation/natural_language_instruction"  # the RT-X conversions (a string Tensor)
LANG = "language_instruction"  # the `*_converted_externally_to_rlds` conversions (Text)
RT1 = ["action/world_vector", "action/rotation_delta", "action/gripper_closedness_action"]
TERMINATE = ["action/terminate_episode"]


def sem(spec: str) -> list[str]:
    """'3*delta:ee_pos 3*delta:ee_rot absolute:gripper' -> one semantics entry per dim."""
    out: list[str] = []
    for part in spec.split():
        count, _, kind = part.rpartition("*")
        out += [kind] * int(count or 1)
    return out


def _row(cams: str, action: list[str] | str, semantics: dict[str, Any] | str, state: str = "",
         lang: str | list[str] = LANG, control: list[str] | None = None, assumed: str = "", **extra: Any):
    actions = [action] if isinstance(action, str) else list(action)
    if isinstance(semantics, str):  # one flat action key: its dims in order
        semantics = {actions[0]: sem(semantics)}
    row = {"cameras": cams.split(), "state": state.split(), "action": actions, "action_semantics": semantics,
           "language": lang, "control": list(control or [])}
    if assumed:
        row["assumed"] = assumed
    row.update(extra)
    return row


# RT-1-style action dicts: world_vector / rotation_delta (per-step EE deltas, OpenVLA ActionEncoding.EEF_POS) and a
# gripper that is relative (+1 close, -1 open, 0 keep; Octo rel2abs) or absolute (Octo clips/inverts it)
def _rt1(gripper: str, pos: str = "delta:ee_pos", rot: str = "delta:ee_rot") -> dict[str, str]:
    return {RT1[0]: pos, RT1[1]: rot, RT1[2]: gripper}


OXE_DATASETS: dict[str, dict[str, Any]] = {
    # RT-1 (Google Robot); images 256x320 JPEG; control rate 3 Hz (OXE overview)
    "fractal20220817_data": _row(
        "observation/image", RT1, _rt1("delta:gripper"), "observation/base_pose_tool_reached observation/gripper_closed",
        RTX_LANG, TERMINATE, control_hz=3.0, licence="CC-BY-4.0"),
    # QT-Opt (KUKA iiwa); 512x640. Octo decodes both state keys as ZLIB-compressed float32 bytes, although the TFDS
    # catalog declares float32 tensors: the reader accepts either (oxe.py)
    "kuka": _row(
        "observation/image", RT1, _rt1("delta:gripper"),
        "observation/clip_function_input/base_pose_tool_reached observation/gripper_closed", RTX_LANG, TERMINATE,
        control_hz=10.0, licence="CC-BY-4.0"),
    # BridgeData V2's own RLDS release (WidowX 250); 256x256; image_1..3 optional; absolute gripper (Octo binarizes)
    "bridge_dataset": _row(
        "observation/image_0 observation/image_1", "action", "3*delta:ee_pos 3*delta:ee_rot absolute:gripper",
        "observation/state", control_hz=5.0, licence="CC-BY-4.0",
        action_names=["x", "y", "z", "roll", "pitch", "yaw", "gripper"],
        state_names=["x", "y", "z", "roll", "pitch", "yaw", "gripper"]),
    # TACO-RL play (Franka): rel_actions_world is x, y, z, yaw, pitch, roll deltas in the base frame and an absolute
    # open_gripper; `actions` (absolute) and rel_actions_gripper are alternatives left out
    "taco_play": _row(
        "observation/rgb_static observation/rgb_gripper", "action/rel_actions_world",
        "3*delta:ee_pos 3*delta:ee_rot absolute:gripper", "observation/robot_obs",
        [RTX_LANG, "observation/structured_language_instruction"], TERMINATE, control_hz=15.0,
        action_names=["x", "y", "z", "yaw", "pitch", "roll", "open_gripper"]),
    "jaco_play": _row(
        "observation/image observation/image_wrist", ["action/world_vector", "action/gripper_closedness_action"],
        {"action/world_vector": "delta:ee_pos", "action/gripper_closedness_action": "delta:gripper"},
        "observation/end_effector_cartesian_pos", RTX_LANG, TERMINATE),
    # world_vector "Velocity in XYZ", rotation_delta "Angular velocity about the z axis" (features.json); no gripper
    "berkeley_cable_routing": _row(
        "observation/image observation/top_image observation/wrist45_image observation/wrist225_image", RT1[:2],
        {RT1[0]: "velocity:ee_pos", RT1[1]: "velocity:ee_rot"}, "observation/robot_state", RTX_LANG, TERMINATE),
    "roboturk": _row("observation/front_rgb", RT1, _rt1("absolute:gripper"), "", RTX_LANG, TERMINATE),
    # Hello Stretch; world_vector "Velocity in XYZ", rotation_delta "Angular velocity" (features.json)
    "nyu_door_opening_surprising_effectiveness": _row(
        "observation/image", RT1, _rt1("delta:gripper", "velocity:ee_pos", "velocity:ee_rot"), "", RTX_LANG,
        TERMINATE),
    "viola": _row(
        "observation/agentview_rgb observation/eye_in_hand_rgb", RT1, _rt1("absolute:gripper"),
        "observation/joint_states observation/gripper_states", RTX_LANG, TERMINATE),
    # "Delta change in XYZ / roll, pitch, yaw", gripper "1 close, -1 open, 0 no change" (features.json)
    "berkeley_autolab_ur5": _row(
        "observation/image observation/hand_image", RT1, _rt1("delta:gripper"), "observation/robot_state", RTX_LANG,
        TERMINATE),
    # open_gripper is a bool (absolute)
    "toto": _row(
        "observation/image", [*RT1[:2], "action/open_gripper"],
        {RT1[0]: "delta:ee_pos", RT1[1]: "delta:ee_rot", "action/open_gripper": "absolute:gripper"},
        "observation/state", RTX_LANG, TERMINATE),
    # 2-d end-effector motion in the table plane; the instruction is a (512,) int32 array of Unicode code points
    "language_table": _row(
        "observation/rgb", "action", "2*delta:ee_pos", "observation/effector_translation", "observation/instruction",
        assumed="features.json (no catalog page found: keys from Octo's transform), delta"),
    "columbia_cairlab_pusht_real": _row(
        "observation/image observation/wrist_image", RT1, _rt1("absolute:gripper"), "observation/robot_state",
        RTX_LANG, TERMINATE),
    # action "[3x EEF position, 1x gripper open/close]"; Octo pads the rotation with zeros
    "stanford_kuka_multimodal_dataset_converted_externally_to_rlds": _row(
        "observation/image", "action", "3*delta:ee_pos absolute:gripper",
        "observation/ee_position observation/ee_orientation", assumed="delta"),
    "nyu_rot_dataset_converted_externally_to_rlds": _row(
        "observation/image", "action", "3*delta:ee_pos 3*delta:ee_rot absolute:gripper", "observation/state"),
    "stanford_hydra_dataset_converted_externally_to_rlds": _row(
        "observation/image observation/wrist_image", "action", "3*delta:ee_pos 3*delta:ee_rot absolute:gripper",
        "observation/state"),
    "austin_buds_dataset_converted_externally_to_rlds": _row(
        "observation/image observation/wrist_image", "action", "3*delta:ee_pos 3*delta:ee_rot absolute:gripper",
        "observation/state"),
    # action "[7x joint velocities, 3x EE delta xyz, 3x EE delta rpy, 1x gripper position, 1x terminate episode]"
    "nyu_franka_play_dataset_converted_externally_to_rlds": _row(
        "observation/image observation/image_additional_view", "action[:14]",
        "7*velocity:joint 3*delta:ee_pos 3*delta:ee_rot absolute:gripper", "observation/state",
        control=["action[14:]"]),
    # delta target position / axis-angle orientation, gripper target (-1 close, 1 open)
    "maniskill_dataset_converted_externally_to_rlds": _row(
        "observation/image observation/wrist_image", "action", "3*delta:ee_pos 3*delta:ee_rot absolute:gripper",
        "observation/tcp_pose observation/state"),
    # position, quaternion, gripper (Octo converts the quaternion to Euler angles)
    "furniture_bench_dataset_converted_externally_to_rlds": _row(
        "observation/image observation/wrist_image", "action", "3*delta:ee_pos 4*delta:ee_rot absolute:gripper",
        "observation/state", assumed="features.json (no catalog page found: keys and sizes from Octo's transform)"),
    "cmu_franka_exploration_dataset_converted_externally_to_rlds": _row(
        "observation/highres_image observation/image", "action[:7]", "3*delta:ee_pos 3*delta:ee_rot absolute:gripper",
        control=["action[7:]"], assumed="delta"),
    "ucsd_kitchen_dataset_converted_externally_to_rlds": _row(
        "observation/image", "action[:7]", "3*absolute:ee_pos 3*absolute:ee_rot absolute:gripper",
        "observation/state", control=["action[7:]"], assumed="absolute"),
    # "[3x gripper velocities, 1x gripper open/close torque]"
    "ucsd_pick_and_place_dataset_converted_externally_to_rlds": _row(
        "observation/image", "action", "3*velocity:ee_pos absolute:gripper", "observation/state"),
    "austin_sailor_dataset_converted_externally_to_rlds": _row(
        "observation/image observation/wrist_image", "action", "3*delta:ee_pos 3*delta:ee_rot absolute:gripper",
        "observation/state"),
    "austin_sirius_dataset_converted_externally_to_rlds": _row(
        "observation/image observation/wrist_image", "action", "3*delta:ee_pos 3*delta:ee_rot absolute:gripper",
        "observation/state"),
    # each action key holds the next 10 actions; the first one is the step's action (Octo keeps [:3], [:3], [:1]);
    # target_close is the gripper closure to reach ("not a delta")
    "bc_z": _row(
        "observation/image", ["action/future/xyz_residual[:3]", "action/future/axis_angle_residual[:3]",
                              "action/future/target_close[:1]"],
        {"action/future/xyz_residual[:3]": "delta:ee_pos", "action/future/axis_angle_residual[:3]": "delta:ee_rot",
         "action/future/target_close[:1]": "absolute:gripper"},
        "observation/present/xyz observation/present/axis_angle observation/present/sensed_close", RTX_LANG),
    "utokyo_pr2_opening_fridge_converted_externally_to_rlds": _row(
        "observation/image", "action[:7]", "3*absolute:ee_pos 3*absolute:ee_rot absolute:gripper",
        "observation/state", control=["action[7:]"], assumed="absolute"),
    "utokyo_pr2_tabletop_manipulation_converted_externally_to_rlds": _row(
        "observation/image", "action[:7]", "3*absolute:ee_pos 3*absolute:ee_rot absolute:gripper",
        "observation/state", control=["action[7:]"],
        assumed="absolute; features.json taken to be the fridge dataset's (no catalog page read)"),
    "utokyo_xarm_pick_and_place_converted_externally_to_rlds": _row(
        "observation/image observation/image2 observation/hand_image", "action",
        "3*absolute:ee_pos 3*absolute:ee_rot absolute:gripper", "observation/end_effector_pose", assumed="absolute"),
    "utokyo_xarm_bimanual_converted_externally_to_rlds": _row(
        "observation/image", "action", "3*absolute:ee_pos 3*absolute:ee_rot absolute:gripper " * 2,
        "observation/pose_l observation/pose_r", assumed="absolute"),
    # x, y, z, yaw deltas and a gripper (Octo keeps [:4] and [-1:])
    "robo_net": _row(
        "observation/image observation/image1", "action", "3*delta:ee_pos delta:ee_rot absolute:gripper",
        "observation/state", assumed="features.json (no catalog page found: keys and sizes from Octo's transform)"),
    # "[7 delta joint pos, 1x gripper binary state]"
    "berkeley_mvp_converted_externally_to_rlds": _row(
        "observation/hand_image", "action", "7*delta:joint absolute:gripper", "observation/joint_pos observation/gripper"),
    "berkeley_rpt_converted_externally_to_rlds": _row(
        "observation/hand_image", "action", "7*delta:joint absolute:gripper", "observation/joint_pos observation/gripper"),
    # EE position and axis-angle residuals, then 14 controller gains (not motion: left out)
    "kaist_nonprehensile_converted_externally_to_rlds": _row(
        "observation/image", "action[:6]", "3*delta:ee_pos 3*delta:ee_rot", "observation/state"),
    # "[3x change in EE position, 1x gripper yaw, 1x open/close gripper]"; no control rate in the OXE sheet
    "stanford_mask_vit_converted_externally_to_rlds": _row(
        "observation/image", "action", "3*delta:ee_pos delta:ee_rot absolute:gripper", "observation/end_effector_pose",
        assumed="yaw as a delta; control rate"),
    "tokyo_u_lsmo_converted_externally_to_rlds": _row(
        "observation/image", "action", "3*absolute:ee_pos 3*absolute:ee_rot absolute:gripper", "observation/state",
        assumed="absolute"),
    "dlr_sara_pour_converted_externally_to_rlds": _row(
        "observation/image", "action", "3*absolute:ee_pos 3*absolute:ee_rot absolute:gripper", "observation/state",
        assumed="absolute; the 7th dim (the description names 6) as the gripper"),
    "dlr_sara_grid_clamp_converted_externally_to_rlds": _row(
        "observation/image", "action", "3*absolute:ee_pos 3*absolute:ee_rot absolute:gripper", "observation/state",
        assumed="absolute; features.json taken to be sara_pour's with a 12-d state (no catalog page read)"),
    "dlr_edan_shared_control_converted_externally_to_rlds": _row(
        "observation/image", "action", "3*absolute:ee_pos 3*absolute:ee_rot absolute:gripper", "observation/state",
        assumed="absolute; the 7th dim as the gripper"),
    # the action's description ("7x joint velocities, 2x gripper velocities, 1x terminate") disagrees with its 7 dims
    "asu_table_top_converted_externally_to_rlds": _row(
        "observation/image", "action", "6*velocity:joint absolute:gripper", "observation/state ground_truth_states/EE",
        assumed="6 joint velocities and a gripper"),
    # "[3x EE velocities, 3x EE angular velocities, 1x gripper velocity]"
    "stanford_robocook_converted_externally_to_rlds": _row(
        "observation/image_1 observation/image_2 observation/image_3 observation/image_4", "action",
        "3*velocity:ee_pos 3*velocity:ee_rot velocity:gripper", "observation/state"),
    "imperialcollege_sawyer_wrist_cam": _row(
        "observation/image observation/wrist_image", "action[:7]", "3*delta:ee_pos 3*delta:ee_rot absolute:gripper",
        "observation/state", control=["action[7:]"]),
    "iamlab_cmu_pickup_insert_converted_externally_to_rlds": _row(
        "observation/image observation/wrist_image", "action", "3*absolute:ee_pos 4*absolute:ee_rot absolute:gripper",
        "observation/state", assumed="absolute"),
    # "Robot displacement from last frame"
    "uiuc_d3field": _row(
        "observation/image_1 observation/image_2 observation/image_3 observation/image_4", "action", "3*delta:ee_pos",
        "observation/state"),
    "utaustin_mutex": _row(
        "observation/image observation/wrist_image", "action", "3*delta:ee_pos 3*delta:ee_rot absolute:gripper",
        "observation/state"),
    # "[dx, dy, dz] and [droll, dpitch, dyaw]"; no gripper action (Octo takes it from the state)
    "berkeley_fanuc_manipulation": _row(
        "observation/image observation/wrist_image", "action", "3*delta:ee_pos 3*delta:ee_rot",
        "observation/state observation/end_effector_state"),
    "cmu_playing_with_food": _row(
        "observation/image observation/finger_vision_1", "action", "3*delta:ee_pos 4*delta:ee_rot absolute:gripper",
        "observation/state", assumed="delta; features.json (no catalog page found: keys and sizes from Octo's transform)"),
    # "[7x delta eef (pos + quat), 1x gripper open/close (binary), 1x terminate episode]"
    "cmu_play_fusion": _row(
        "observation/image", "action[:8]", "3*delta:ee_pos 4*delta:ee_rot absolute:gripper", "observation/state",
        control=["action[8:]"]),
    "cmu_stretch": _row(
        "observation/image", "action[:7]", "3*absolute:ee_pos 3*absolute:ee_rot absolute:gripper",
        "observation/state", control=["action[7:]"], assumed="absolute"),
    # navigation: the action is a 2-d position (a relative waypoint), state [x, y, yaw]
    "berkeley_gnm_recon": _row("observation/image", "action", "2*delta:base", "observation/state", assumed="delta"),
    "berkeley_gnm_cory_hall": _row(
        "observation/image", "action", "2*delta:base", "observation/state",
        assumed="delta; features.json taken to be gnm_recon's (no catalog page read)"),
    "berkeley_gnm_sac_son": _row(
        "observation/image", "action", "2*delta:base", "observation/state",
        assumed="delta; features.json taken to be gnm_recon's (no catalog page read)"),
    # DROID (Franka Panda); 180x320; cartesian_velocity and an absolute gripper_position (DROID features.json)
    "droid": _row(
        "observation/exterior_image_1_left observation/exterior_image_2_left observation/wrist_image_left",
        ["action_dict/cartesian_velocity", "action_dict/gripper_position"],
        {"action_dict/cartesian_velocity": sem("3*velocity:ee_pos 3*velocity:ee_rot"),
         "action_dict/gripper_position": "absolute:gripper"},
        "observation/cartesian_position observation/gripper_position", control_hz=15.0, licence="CC-BY-4.0"),
}
