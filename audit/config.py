"""The audit's thresholds, declared once. Defaults are tuned so the genuine sample pyramid passes and each
planted defect (`samples/defects.py`) is caught; a YAML file (`pyramid audit --audit-config`) overrides
any of them."""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
from dataclasses import dataclass, field


from common.config import ConfigError, build_dataclass, read_yaml_mapping


@dataclass
class BoundRule:
    """Actions of embodiments matching `embodiment` (a glob) whose name matches `match` (a regex, searched) must lie
    in [min, max]. The first matching rule decides a dimension."""

    embodiment: str
    match: str
    min: float
    max: float


def _default_bounds() -> list[BoundRule]:
    return [
        # RoboTwin grippers: 0 open .. 1 closed; joints in radians, |x| <= 4 as Motus's RoboTwin loader expects
        BoundRule("so100*", "gripper", 0.0, 1.0),
        BoundRule("aloha-agilex*", "gripper", 0.0, 1.0),
        BoundRule("*", "gripper", -1.0, 1.0),  # normalised open/close (RLDS gripper_closedness is in [-1, 1])
        BoundRule("*", "arm|joint|waist|shoulder|elbow|wrist|forearm", -4.0, 4.0),  # joint angles in radians
        BoundRule("*", ".*", -100.0, 100.0),  # anything else: catches sentinels (1e9, -999) and unit slips
    ]


@dataclass
class AuditConfig:
    frames_per_item: int = 8  # frames decoded per item (evenly spaced) for black/frozen checks and signatures
    frame_size: list[int] = field(default_factory=lambda: [120, 160])  # H, W the sampled frames are fitted into
    black_luma: float = 12.0  # a frame darker than this (mean of 0..255) and nearly uniform is black
    black_fraction: float = 0.25  # an item with more black sampled frames than this fails
    frozen_diff: float = 0.5  # frozen: every sampled frame within this mean |Δ| (0..255) of the first
    max_jitter_px: float = 8.0  # median |2nd difference| of the per-pair mean flow vector (working-canvas px)
    min_duration_s: float = 0.5
    max_duration_s: float = 3600.0
    near_dup_hash_bits: float = 0.02  # share of differing dHash bits (mean over aligned frames) for a near-duplicate
    near_dup_action_distance: float = 0.025  # mean |Δaction| / per-dim std; both items must agree when both have actions
    drift_smd: float = 4.0  # a source whose latent mean sits this many pooled stds from the rest, on any dim
    outlier_z: float = 4.0  # an item whose mean latent sits this many source stds from its source's mean, on any dim
    min_items_for_outliers: int = 4  # fewer items in a source: its outliers are not judged
    shard_small_fraction: float = 0.25  # a shard (not the last of its split) below this share of the median size
    # motion checks (audit/checks/motion.py): each episode against the other episodes of its embodiment
    min_episodes_for_motion: int = 3  # fewer episodes of an embodiment: idle and frozen dims are not judged
    idle_fraction: float = 0.05  # idle: every dim's extent below this share of the embodiment's median episode
    jump_factor: float = 8.0  # a jump: a step beyond this × the embodiment's 95th-percentile |step| of the dim
    jump_floor: float = 1e-6  # ... and beyond this absolute size (dims that barely move)
    chatter_step: float = 0.25  # a gripper move counts when its step is at least this share of the gripper's range
    chatter_reversals: int = 3  # chatter: this many reversals of those moves within one second
    saturation_min_steps: int = 5  # saturation: a mid-episode run this long at the embodiment's extreme value
    # dataset checks (audit/checks/dataset.py): a LeRobot dataset's files against each other
    timestamp_tolerance_s: float = 1e-4  # |Δt − 1/fps| allowed between rows (LeRobot's default tolerance_s)
    stats_tolerance: float = 1e-3  # stored stats may differ from the data's by this share of the dim's range (≥ 1)
    rate_tolerance: float = 0.01  # a camera's rate may differ from the dataset's fps by this share
    pts_tolerance_s: float = 1e-4  # |video pts − recorded timestamp| allowed per frame (+ half a tick of the
    # container's clock); LeRobot's reader rejects a frame further than its tolerance_s (1e-4 s) from the query
    # media pass (audit/media.py): every frame of the main camera decoded once
    stutter_repeat_share: float = 0.1  # a step (grey change of consecutive frames beyond codec noise) at most this
    # share of the clip's median step ...
    stutter_min_repeats: int = 2  # ... repeated this many times in a row (one picture shown 3 times) ...
    stutter_neighbour_share: float = 0.5  # ... entered from a step of at least this share of the median ...
    stutter_catch_up: float = 2.0  # ... and left with a jump of at least this × the median (the scene moved on)
    stutter_min_motion: float = 0.01  # clips whose median step is below this (grey levels) are not judged
    max_concealed_frames: int = 0  # frames FFmpeg may decode by concealing errors before an item fails
    # language (audit/checks/language.py) and state (audit/checks/state.py)
    min_episodes_for_language: int = 10  # fewer: one instruction for all episodes is not judged
    max_delay_steps: int = 10  # the observation/action delay is searched over 0..this many steps
    delay_tolerance_steps: int = 2  # an episode whose delay is this far from its dataset's median fails
    min_delay_correlation: float = 0.5  # below this peak correlation an episode's delay is not judged
    # label quality (audit/checks/label_quality.py): per source, from the labels and from `pyramid vae eval`'s eval.json
    min_active_dims: int = 1  # fewer stored-label dims with std above 10% of the corpus' largest: collapsed
    max_s_pcfc: float = 0.9  # S-PCFC above this (1 = the latent ignores the direction of motion): collapsed
    information_min_bits: float = 0.5  # a dim carries information when its held-out bits reach this ...
    min_informative_dims: int = 1  # ... and a source with fewer such dims is collapsed
    min_probe_r2: float = 0.0  # a labelled source whose latent→action probe R² is below this (0 = the mean guess)
    items_per_source_in_report: int = 3  # contact sheets and flow pictures per source
    failing_items_in_report: int = 50  # failing items listed per check in audit.html (all: audit_failures.csv)
    action_bounds: list[BoundRule] = field(default_factory=_default_bounds)

    def bound_for(self, embodiment: str, name: str) -> BoundRule | None:
        for rule in self.action_bounds:
            if fnmatch.fnmatchcase(embodiment or "", rule.embodiment) and re.search(rule.match, name):
                return rule
        return None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def validate_audit_config(ac: AuditConfig) -> None:
    if ac.frames_per_item < 2:
        raise ConfigError("audit.frames_per_item must be >= 2 (frozen and duplicate checks compare frames)")
    if len(ac.frame_size) != 2 or min(ac.frame_size) < 16:
        raise ConfigError(f"audit.frame_size must be [H, W] with both >= 16, got {ac.frame_size}")
    negative = [f.name for f in dataclasses.fields(ac)
                if isinstance(getattr(ac, f.name), (int, float)) and getattr(ac, f.name) < 0]
    if negative:
        raise ConfigError(f"audit: {', '.join(negative)} must be >= 0")
    if ac.stutter_min_repeats < 1:
        raise ConfigError("audit.stutter_min_repeats must be >= 1 (a picture repeated at least once)")
    if ac.max_duration_s <= ac.min_duration_s:
        raise ConfigError("audit.min_duration_s must be below audit.max_duration_s")
    for i, rule in enumerate(ac.action_bounds):
        if rule.min > rule.max:
            raise ConfigError(f"audit.action_bounds[{i}]: min {rule.min} > max {rule.max}")
        try:
            re.compile(rule.match)
        except re.error as e:
            raise ConfigError(f"audit.action_bounds[{i}].match {rule.match!r} is not a regex: {e}") from e


def load_audit_config(path: str | os.PathLike | None = None) -> AuditConfig:
    """Defaults, or a YAML mapping of AuditConfig fields (unknown keys and wrong types are errors)."""
    ac = build_dataclass(AuditConfig, read_yaml_mapping(path, "audit config"), "audit")
    validate_audit_config(ac)
    return ac
