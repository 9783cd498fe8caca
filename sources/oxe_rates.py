"""Embodiment and control rate of each Open X-Embodiment dataset, for datasets outside the full key table.

Source: the OXE dataset overview sheet (columns "Registered Dataset Name", "Robot", "Control Frequency"), as
copied into youliangtan/oxe_contrib `docs/oxe_dataset_overview.csv` (commit 3702f04); research
`motus_and_formats.md` §2.3 has the same rates for fractal, bridge and droid. Robot names are written as slugs;
"Franka" is read as the Franka Emika Panda (an assumption: the sheet does not name the model). Rows the sheet
gives no rate for ("N/A": stanford_mask_vit, tidybot, vima) have None, so their rate stays "assumed" unless the
`fps` option says. lerobot's OXE converter config (`push_dataset_to_hub/openx/configs.yaml`, commit 66a3862)
agrees except io_ai_tech (3 there) and spoc (3 there); the sheet is the publisher's word and is used.
"""

from __future__ import annotations

# registered dataset name -> (embodiment, control rate in Hz or None)
OXE_OVERVIEW: dict[str, tuple[str, float | None]] = {
    "fractal20220817_data": ("google_robot", 3.0),
    "kuka": ("kuka_iiwa", 10.0),
    "bridge": ("widowx", 5.0),
    "taco_play": ("franka_panda", 15.0),
    "jaco_play": ("jaco_2", 10.0),
    "berkeley_cable_routing": ("franka_panda", 10.0),
    "roboturk": ("sawyer", 10.0),
    "nyu_door_opening_surprising_effectiveness": ("hello_stretch", 3.0),
    "viola": ("franka_panda", 20.0),
    "berkeley_autolab_ur5": ("ur5", 5.0),
    "toto": ("franka_panda", 30.0),
    "language_table": ("xarm", 10.0),
    "columbia_cairlab_pusht_real": ("ur5", 10.0),
    "stanford_kuka_multimodal_dataset_converted_externally_to_rlds": ("kuka_iiwa", 20.0),
    "nyu_rot_dataset_converted_externally_to_rlds": ("xarm", 3.0),
    "stanford_hydra_dataset_converted_externally_to_rlds": ("franka_panda", 10.0),
    "austin_buds_dataset_converted_externally_to_rlds": ("franka_panda", 20.0),
    "nyu_franka_play_dataset_converted_externally_to_rlds": ("franka_panda", 3.0),
    "maniskill_dataset_converted_externally_to_rlds": ("franka_panda", 20.0),
    "furniture_bench_dataset_converted_externally_to_rlds": ("franka_panda", 10.0),
    "cmu_franka_exploration_dataset_converted_externally_to_rlds": ("franka_panda", 10.0),
    "ucsd_kitchen_dataset_converted_externally_to_rlds": ("xarm", 2.0),
    "ucsd_pick_and_place_dataset_converted_externally_to_rlds": ("xarm", 3.0),
    "austin_sailor_dataset_converted_externally_to_rlds": ("franka_panda", 20.0),
    "austin_sirius_dataset_converted_externally_to_rlds": ("franka_panda", 20.0),
    "bc_z": ("google_robot", 10.0),
    "usc_cloth_sim_converted_externally_to_rlds": ("franka_panda", 10.0),
    "utokyo_pr2_opening_fridge_converted_externally_to_rlds": ("pr2", 10.0),
    "utokyo_pr2_tabletop_manipulation_converted_externally_to_rlds": ("pr2", 10.0),
    "utokyo_saytap_converted_externally_to_rlds": ("unitree_a1", 50.0),
    "utokyo_xarm_pick_and_place_converted_externally_to_rlds": ("xarm", 10.0),
    "utokyo_xarm_bimanual_converted_externally_to_rlds": ("xarm_bimanual", 10.0),
    "robo_net": ("multi_robot", 1.0),
    "berkeley_mvp_converted_externally_to_rlds": ("xarm", 5.0),
    "berkeley_rpt_converted_externally_to_rlds": ("franka_panda", 30.0),
    "kaist_nonprehensile_converted_externally_to_rlds": ("franka_panda", 10.0),
    "stanford_mask_vit_converted_externally_to_rlds": ("sawyer", None),
    "tokyo_u_lsmo_converted_externally_to_rlds": ("cobotta", 10.0),
    "dlr_sara_pour_converted_externally_to_rlds": ("dlr_sara", 10.0),
    "dlr_sara_grid_clamp_converted_externally_to_rlds": ("dlr_sara", 10.0),
    "dlr_edan_shared_control_converted_externally_to_rlds": ("dlr_edan", 5.0),
    "asu_table_top_converted_externally_to_rlds": ("ur5", 12.5),
    "stanford_robocook_converted_externally_to_rlds": ("franka_panda", 5.0),
    "eth_agent_affordances": ("franka_panda", 66.6),
    "imperialcollege_sawyer_wrist_cam": ("sawyer", 10.0),
    "iamlab_cmu_pickup_insert_converted_externally_to_rlds": ("franka_panda", 20.0),
    "qut_dexterous_manipulation": ("franka_panda", 30.0),
    "uiuc_d3field": ("kinova_gen3", 1.0),
    "utaustin_mutex": ("franka_panda", 20.0),
    "berkeley_fanuc_manipulation": ("fanuc_mate", 10.0),
    "cmu_playing_with_food": ("franka_panda", 10.0),
    "cmu_play_fusion": ("franka_panda", 5.0),
    "cmu_stretch": ("hello_stretch", 10.0),
    "berkeley_gnm_recon": ("jackal", 3.0),
    "berkeley_gnm_cory_hall": ("rc_car", 5.0),
    "berkeley_gnm_sac_son": ("turtlebot_2", 10.0),
    "robot_vqa": ("google_robot", 10.0),
    "droid": ("franka_panda", 15.0),
    "conq_hose_manipulation": ("spot", 30.0),
    "dobbe": ("hello_stretch", 3.75),
    "fmb": ("franka_panda", 10.0),
    "io_ai_tech": ("human", 30.0),
    "mimic_play": ("franka_panda", 15.0),
    "aloha_mobile": ("mobilealoha", 50.0),
    "robo_set": ("franka_panda", 5.0),
    "tidybot": ("tidybot", None),
    "vima_converted_externally_to_rlds": ("ur5", None),
    "spoc": ("hello_stretch", 10.0),
    "plex_robosuite": ("franka_panda", 20.0),
    "bridge_dataset": ("widowx_250", 5.0),  # BridgeData V2's own RLDS release (the sheet lists its OXE copy, "bridge")
}
