"""Published step features of the OXE datasets in the key table, compactly: the released features.json trees
(tensorflow/datasets `docs/catalog/<name>.md`, version 0.1.0), trimmed to the keys a reader maps plus a few it must
ignore (depth images, embeddings, alternative actions). Rows marked ASSUMED had no catalog page: their keys come
from Octo's standardization transform and their sizes are a guess (sources/oxe_datasets.py says so too).

Notation, keys relative to `steps/`: `img(H,W)` RGB Image, `depth(H,W)` 1-channel Image, `text` Text,
`str` string Tensor, `f32(7)` / `f64(2)` / `i32(3)` / `i64(10)` / `u8(7)` Tensors, `f32` / `bool` scalars.
"""

from __future__ import annotations

import re
from typing import Any

RTX = ("is_first:bool is_last:bool is_terminal:bool reward:f32 observation/natural_language_embedding:f32(512) "
       "observation/natural_language_instruction:str")
RLDS = "is_first:bool is_last:bool is_terminal:bool reward:f32 discount:f32 language_embedding:f32(512) language_instruction:text"
RT1_ACT = "action/world_vector:f32(3) action/rotation_delta:f32(3) action/gripper_closedness_action:f32(1)"

SCHEMAS: dict[str, str] = {
    "fractal20220817_data": f"{RTX} {RT1_ACT} action/terminate_episode:i32(3) action/base_displacement_vector:f32(2) "
                            "observation/image:img(256,320) observation/base_pose_tool_reached:f32(7) "
                            "observation/gripper_closed:f32(1)",
    "kuka": f"{RTX} {RT1_ACT} action/terminate_episode:i32(3) observation/image:img(512,640) "
            "observation/clip_function_input/base_pose_tool_reached:f32(7) "
            "observation/clip_function_input/workspace_bounds:f32(3,3) observation/gripper_closed:f32(1)",
    "bridge_dataset": "is_first:bool is_last:bool is_terminal:bool reward:f32 discount:f32 language_instruction:text "
                      "action:f32(7) observation/image_0:img(256,256) observation/image_1:img(256,256) "
                      "observation/state:f32(7)",
    "taco_play": f"{RTX} action/actions:f32(7) action/rel_actions_gripper:f32(7) action/rel_actions_world:f32(7) "
                 "action/terminate_episode:f32 observation/depth_static:f32(150,200) "
                 "observation/rgb_static:img(150,200) observation/rgb_gripper:img(84,84) observation/robot_obs:f32(15) "
                 "observation/structured_language_instruction:str",
    "jaco_play": f"{RTX} action/world_vector:f32(3) action/gripper_closedness_action:f32(1) "
                 "action/terminate_episode:i32(3) observation/end_effector_cartesian_pos:f32(7) "
                 "observation/image:img(224,224) observation/image_wrist:img(224,224) observation/joint_pos:f32(8)",
    "berkeley_cable_routing": f"{RTX} action/world_vector:f32(3) action/rotation_delta:f32(3) "
                              "action/terminate_episode:f32 observation/image:img(128,128) "
                              "observation/top_image:img(128,128) observation/wrist45_image:img(128,128) "
                              "observation/wrist225_image:img(128,128) observation/robot_state:f32(7)",
    "roboturk": f"{RTX} {RT1_ACT} action/terminate_episode:f32 observation/front_rgb:img(480,640)",
    "nyu_door_opening_surprising_effectiveness": f"{RTX} {RT1_ACT} action/terminate_episode:f32 "
                                                 "observation/image:img(720,960)",
    "viola": f"{RTX} action/world_vector:f32(3) action/rotation_delta:f32(3) action/gripper_closedness_action:f32 "
             "action/terminate_episode:f32 observation/agentview_rgb:img(224,224) observation/ee_states:f32(16) "
             "observation/eye_in_hand_rgb:img(224,224) observation/gripper_states:f32(1) "
             "observation/joint_states:f32(7)",
    "berkeley_autolab_ur5": f"{RTX} action/world_vector:f32(3) action/rotation_delta:f32(3) "
                            "action/gripper_closedness_action:f32 action/terminate_episode:f32 "
                            "observation/hand_image:img(480,640) observation/image:img(480,640) "
                            "observation/image_with_depth:depth(480,640) observation/robot_state:f32(15)",
    "toto": f"{RTX} action/world_vector:f32(3) action/rotation_delta:f32(3) action/open_gripper:bool "
            "action/terminate_episode:f32 observation/image:img(480,640) observation/state:f32(7)",
    # ASSUMED
    "language_table": "is_first:bool is_last:bool is_terminal:bool reward:f32 action:f32(2) "
                      "observation/rgb:img(360,640) observation/effector_translation:f32(2) "
                      "observation/effector_target_translation:f32(2) observation/instruction:i32(512)",
    "columbia_cairlab_pusht_real": f"{RTX} {RT1_ACT} action/terminate_episode:f32 observation/image:img(240,320) "
                                   "observation/wrist_image:img(240,320) observation/robot_state:f32(2)",
    "stanford_kuka_multimodal_dataset_converted_externally_to_rlds": (
        f"{RLDS} action:f32(4) observation/image:img(128,128) observation/depth_image:f32(128,128,1) "
        "observation/ee_position:f32(3) observation/ee_orientation:f32(4) observation/state:f32(8) "
        "observation/joint_pos:f32(7)"),
    "nyu_rot_dataset_converted_externally_to_rlds": f"{RLDS} action:f32(7) observation/image:img(84,84) "
                                                    "observation/state:f32(7)",
    "stanford_hydra_dataset_converted_externally_to_rlds": f"{RLDS} action:f32(7) is_dense:bool "
                                                           "observation/image:img(240,320) "
                                                           "observation/wrist_image:img(240,320) observation/state:f32(27)",
    "austin_buds_dataset_converted_externally_to_rlds": f"{RLDS} action:f32(7) observation/image:img(128,128) "
                                                        "observation/wrist_image:img(128,128) observation/state:f32(24)",
    "nyu_franka_play_dataset_converted_externally_to_rlds": (
        f"{RLDS} action:f32(15) observation/depth:i32(128,128,1) observation/image:img(128,128) "
        "observation/image_additional_view:img(128,128) observation/state:f32(13)"),
    "maniskill_dataset_converted_externally_to_rlds": (
        f"{RLDS} action:f32(7) observation/base_pose:f32(7) observation/depth:depth(256,256) "
        "observation/image:img(256,256) observation/state:f32(18) observation/tcp_pose:f32(7) "
        "observation/wrist_depth:depth(256,256) observation/wrist_image:img(256,256)"),
    # ASSUMED
    "furniture_bench_dataset_converted_externally_to_rlds": f"{RLDS} action:f32(8) observation/image:img(224,224) "
                                                            "observation/wrist_image:img(224,224) observation/state:f32(35)",
    "cmu_franka_exploration_dataset_converted_externally_to_rlds": (
        f"{RLDS} action:f32(8) structured_action:f32(8) observation/highres_image:img(480,640) "
        "observation/image:img(64,64)"),
    "ucsd_kitchen_dataset_converted_externally_to_rlds": f"{RLDS} action:f32(8) observation/image:img(480,640) "
                                                         "observation/state:f32(21)",
    "ucsd_pick_and_place_dataset_converted_externally_to_rlds": f"{RLDS} action:f32(4) observation/image:img(224,224) "
                                                                "observation/state:f32(7)",
    "austin_sailor_dataset_converted_externally_to_rlds": (
        f"{RLDS} action:f32(7) observation/image:img(128,128) observation/state:f32(8) observation/state_ee:f32(16) "
        "observation/state_gripper:f32(1) observation/state_joint:f32(7) observation/wrist_image:img(128,128)"),
    "austin_sirius_dataset_converted_externally_to_rlds": (
        f"{RLDS} action:f32(7) action_mode:f32(1) intv_label:f32(1) observation/image:img(84,84) "
        "observation/state:f32(8) observation/state_ee:f32(16) observation/wrist_image:img(84,84)"),
    "bc_z": (f"{RTX} action/future/axis_angle_residual:f32(30) action/future/target_close:i64(10) "
             "action/future/xyz_residual:f32(30) observation/episode_success:f32 observation/image:img(171,213) "
             "observation/present/axis_angle:f32(3) observation/present/sensed_close:f32(1) "
             "observation/present/xyz:f32(3) observation/present/intervention:i64"),
    "utokyo_pr2_opening_fridge_converted_externally_to_rlds": f"{RLDS} action:f32(8) observation/image:img(128,128) "
                                                              "observation/state:f32(7)",
    "utokyo_pr2_tabletop_manipulation_converted_externally_to_rlds": f"{RLDS} action:f32(8) "
                                                                     "observation/image:img(128,128) "
                                                                     "observation/state:f32(7)",
    "utokyo_xarm_pick_and_place_converted_externally_to_rlds": (
        f"{RLDS} action:f32(7) observation/end_effector_pose:f32(6) observation/hand_image:img(224,224) "
        "observation/image:img(224,224) observation/image2:img(224,224) observation/joint_state:f32(14)"),
    "utokyo_xarm_bimanual_converted_externally_to_rlds": (
        f"{RLDS} action:f32(14) observation/action_l:f32(7) observation/action_r:f32(7) observation/image:img(256,256) "
        "observation/pose_l:f32(6) observation/pose_r:f32(6)"),
    # ASSUMED
    "robo_net": f"{RLDS} action:f32(5) observation/image:img(240,320) observation/image1:img(240,320) "
                "observation/image2:img(240,320) observation/state:f32(5)",
    "berkeley_mvp_converted_externally_to_rlds": f"{RLDS} action:f32(8) observation/gripper:bool "
                                                 "observation/hand_image:img(480,640) observation/joint_pos:f32(7) "
                                                 "observation/pose:f32(7)",
    "berkeley_rpt_converted_externally_to_rlds": f"{RLDS} action:f32(8) observation/gripper:bool "
                                                 "observation/hand_image:img(480,640) observation/joint_pos:f32(7)",
    "kaist_nonprehensile_converted_externally_to_rlds": f"{RLDS} action:f32(20) observation/image:img(480,640) "
                                                        "observation/partial_pointcloud:f32(512,3) observation/state:f32(21)",
    "stanford_mask_vit_converted_externally_to_rlds": (
        f"{RLDS} action:f32(5) observation/end_effector_pose:f32(5) observation/finger_sensors:f32(1) "
        "observation/image:img(480,480) observation/state:f32(15)"),
    "tokyo_u_lsmo_converted_externally_to_rlds": f"{RLDS} action:f32(7) observation/image:img(120,120) "
                                                 "observation/state:f32(13)",
    "dlr_sara_pour_converted_externally_to_rlds": f"{RLDS} action:f32(7) observation/image:img(480,640) "
                                                  "observation/state:f32(6)",
    "dlr_sara_grid_clamp_converted_externally_to_rlds": f"{RLDS} action:f32(7) observation/image:img(480,640) "
                                                        "observation/state:f32(12)",
    "dlr_edan_shared_control_converted_externally_to_rlds": f"{RLDS} action:f32(7) observation/image:img(360,640) "
                                                            "observation/state:f32(7)",
    "asu_table_top_converted_externally_to_rlds": (
        f"{RLDS} action:f32(7) action_delta:f32(7) action_inst:text goal_object:text ground_truth_states/EE:f32(6) "
        "ground_truth_states/cube:f32(6) observation/image:img(224,224) observation/state:f32(7) "
        "observation/state_vel:f32(7)"),
    "stanford_robocook_converted_externally_to_rlds": (
        f"{RLDS} action:f32(7) observation/depth_1:f32(256,256) observation/image_1:img(256,256) "
        "observation/image_2:img(256,256) observation/image_3:img(256,256) observation/image_4:img(256,256) "
        "observation/state:f32(7)"),
    "imperialcollege_sawyer_wrist_cam": f"{RLDS} action:f32(8) observation/image:img(64,64) observation/state:f32(1) "
                                        "observation/wrist_image:img(64,64)",
    "iamlab_cmu_pickup_insert_converted_externally_to_rlds": f"{RLDS} action:f32(8) observation/image:img(360,640) "
                                                             "observation/state:f32(20) "
                                                             "observation/wrist_image:img(240,320)",
    "uiuc_d3field": (f"{RLDS} action:f32(3) observation/depth_1:depth(360,640) observation/image_1:img(360,640) "
                     "observation/image_2:img(360,640) observation/image_3:img(360,640) "
                     "observation/image_4:img(360,640) observation/state:f32(4,4)"),
    "utaustin_mutex": f"{RLDS} action:f32(7) observation/image:img(128,128) observation/state:f32(24) "
                      "observation/wrist_image:img(128,128)",
    "berkeley_fanuc_manipulation": f"{RLDS} action:f32(6) observation/end_effector_state:f32(7) "
                                   "observation/image:img(224,224) observation/state:f32(13) "
                                   "observation/wrist_image:img(224,224)",
    # ASSUMED
    "cmu_playing_with_food": f"{RLDS} action:f32(8) observation/image:img(480,640) "
                             "observation/finger_vision_1:img(480,640) observation/state:f32(7)",
    "cmu_play_fusion": f"{RLDS} action:f32(9) observation/image:img(128,128) observation/state:f32(8)",
    "cmu_stretch": f"{RLDS} action:f32(8) observation/image:img(128,128) observation/state:f32(4)",
    "berkeley_gnm_recon": (f"{RLDS} action:f64(2) action_angle:f64(3) observation/image:img(120,160) "
                           "observation/position:f64(2) observation/state:f64(3) observation/yaw:f64(1)"),
    "berkeley_gnm_cory_hall": (f"{RLDS} action:f64(2) action_angle:f64(3) observation/image:img(64,85) "
                               "observation/position:f64(2) observation/state:f64(3) observation/yaw:f64(1)"),
    "berkeley_gnm_sac_son": (f"{RLDS} action:f64(2) action_angle:f64(3) observation/image:img(120,160) "
                             "observation/position:f64(2) observation/state:f64(3) observation/yaw:f64(1)"),
    "droid": ("is_first:bool is_last:bool is_terminal:bool reward:f32 discount:f32 language_instruction:text "
              "language_instruction_2:text action:f64(7) action_dict/cartesian_position:f64(6) "
              "action_dict/cartesian_velocity:f64(6) action_dict/gripper_position:f64(1) "
              "action_dict/gripper_velocity:f64(1) observation/cartesian_position:f64(6) "
              "observation/exterior_image_1_left:img(180,320) observation/exterior_image_2_left:img(180,320) "
              "observation/gripper_position:f64(1) observation/wrist_image_left:img(180,320)"),
}

_DTYPES = {"f32": "float32", "f64": "float64", "i32": "int32", "i64": "int64", "u8": "uint8", "bool": "bool"}


def flat_schema(dataset: str) -> dict[str, tuple[str, tuple[int, ...], str]]:
    """{key relative to steps/: (kind image|depth|text|tensor, shape, dtype)} of a dataset's published steps."""
    out = {}
    for token in SCHEMAS[dataset].split():
        key, spec = token.rsplit(":", 1)
        m = re.match(r"^(\w+)(?:\(([\d,]+)\))?$", spec)
        kind, shape = m[1], tuple(int(d) for d in m[2].split(",")) if m[2] else ()
        if kind == "img":
            out[key] = ("image", (*shape, 3), "uint8")
        elif kind == "depth":
            out[key] = ("image", (*shape, 1), "uint16")
        elif kind in ("text", "str"):
            out[key] = (kind, (), "string")
        else:
            out[key] = ("tensor", shape, _DTYPES[kind])
    return out


def _leaf(kind: str, shape: tuple[int, ...], dtype: str) -> dict[str, Any]:
    """One leaf of TFDS features.json (proto JSON), as TFDS writes Image, Text and Tensor features."""
    dims = {"dimensions": [str(d) for d in shape]} if shape else {}
    if kind == "image":
        return {"pythonClassName": "tensorflow_datasets.core.features.image_feature.Image",
                "image": {"shape": dims, "dtype": dtype, "encodingFormat": "png" if shape[-1] == 1 else "jpeg"}}
    if kind == "text":
        return {"pythonClassName": "tensorflow_datasets.core.features.text_feature.Text", "text": {}}
    return {"pythonClassName": "tensorflow_datasets.core.features.tensor_feature.Tensor",
            "tensor": {"shape": dims, "dtype": dtype, "encoding": "none"}}


def _features_dict(tree: dict[str, Any]) -> dict[str, Any]:
    return {"pythonClassName": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
            "featuresDict": {"features": {k: v if "pythonClassName" in v else _features_dict(v)
                                          for k, v in tree.items()}}}


def features_json(flat: dict[str, tuple[str, tuple[int, ...], str]]) -> dict[str, Any]:
    """The features.json of an RLDS dataset whose steps hold `flat` (nested dicts under a `steps` Dataset).

    kuka's observation keys contain a "/" in their own names (`clip_function_input/base_pose_tool_reached`); nesting
    them flattens to the same key, which is what a reader sees."""
    tree: dict[str, Any] = {}
    for key, (kind, shape, dtype) in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _leaf(kind, shape, dtype)
    spec = _features_dict({})
    spec["featuresDict"]["features"]["steps"] = {
        "pythonClassName": "tensorflow_datasets.core.features.dataset_feature.Dataset",
        "sequence": {"feature": _features_dict(tree), "length": "-1"}}
    return spec
