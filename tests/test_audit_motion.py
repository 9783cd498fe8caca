"""The robot-motion checks on constructed episodes with known answers: each rule names the damaged episode and
dim, and passes the smooth episodes beside it (the end-to-end planted cases are in test_audit_report.py)."""

import numpy as np
import pytest

from audit.checks import motion
from audit.config import AuditConfig
from samples.defects import damage_actions

ALOHA = ["absolute:joint"] * 6 + ["absolute:gripper"] + ["absolute:joint"] * 6 + ["absolute:gripper"]
NAMES = [f"{arm}_{j}" for arm in ("left", "right") for j in ("waist", "shoulder", "elbow", "forearm", "wrist", "roll",
                                                             "gripper")]


def walks(n: int = 5, length: int = 40, seed: int = 0) -> list[np.ndarray]:
    """Smooth random-walk joint targets, as the LeRobot samples write them."""
    rng = np.random.default_rng(seed)
    return [(rng.normal(0, 0.05, (length, 14)).cumsum(0) + rng.uniform(-0.5, 0.5, 14)).astype(np.float32)
            for _ in range(n)]


def group(episodes: list[np.ndarray], semantics=ALOHA, fps: float = 30) -> list[motion.Motion]:
    return [motion.Motion.of(f"ds/episode_{i}", a, semantics, fps, NAMES) for i, a in enumerate(episodes)]


@pytest.mark.parametrize("rule", [motion.idle, motion.frozen, motion.jumps, motion.chatter, motion.saturated])
def test_smooth_episodes_pass_every_rule(rule):
    assert rule(group(walks()), AuditConfig()) == {}


@pytest.mark.parametrize("damage,rule,names", [
    ("idle", motion.idle, "idle below 5%"),
    ("frozen", motion.frozen, "left_forearm"),
    ("jump", motion.jumps, "left_shoulder changes by +1.5"),
    ("chatter", motion.chatter, "left_gripper reverses"),
])
def test_each_damage_is_found_in_its_episode_only(damage, rule, names):
    episodes = walks()
    episodes[2] = damage_actions(episodes[2], damage)
    found = rule(group(episodes), AuditConfig())
    assert list(found) == ["ds/episode_2"] and names in found["ds/episode_2"]


def test_saturation_needs_the_same_limit_in_two_different_episodes():
    s = AuditConfig()
    episodes = walks()
    episodes[1] = damage_actions(episodes[1], "saturation")  # one episode at the top: a hold, not a clip
    assert motion.saturated(group(episodes), s) == {}
    episodes[3] = damage_actions(episodes[3], "saturation")
    found = motion.saturated(group(episodes), s)
    assert sorted(found) == ["ds/episode_1", "ds/episode_3"]
    assert "left_waist at the maximum 2" in found["ds/episode_1"] and "in 2 episodes" in found["ds/episode_1"]
    # an exact copy of the clipped episode is not a second witness (duplicates are their own check)
    episodes[3] = episodes[1].copy()
    assert motion.saturated(group(episodes), s) == {}
    # a rest pose held at the start of every episode is not a clip
    rest = walks()
    for a in rest:
        a[:10, 0] = 3.0
    assert motion.saturated(group(rest), s) == {}


def test_delta_actions_are_judged_as_steps():
    """A delta dim's value is its step: a spike in a delta dim is a jump, and an all-zero one is frozen."""
    rng = np.random.default_rng(1)
    semantics = ["delta:ee_pos"] * 3 + ["delta:gripper"]
    episodes = [np.c_[rng.normal(0, 0.01, (30, 3)), np.zeros(30)] for _ in range(4)]
    episodes[0][15, 1] = 0.5
    episodes[3][:, 2] = 0.0
    found = motion.jumps(group(episodes, semantics), AuditConfig())
    assert list(found) == ["ds/episode_0"] and "dim1 changes by +0.5" in found["ds/episode_0"]
    assert list(motion.frozen(group(episodes, semantics), AuditConfig())) == ["ds/episode_3"]
    # the all-zero delta gripper is a gripper that never moved, which may be right
    assert "dim3" not in motion.frozen(group(episodes, semantics), AuditConfig()).get("ds/episode_3", "")


def test_too_few_episodes_to_compare_judge_only_what_needs_no_comparison():
    s = AuditConfig()
    still = np.zeros((20, 14), np.float32)
    two = group([walks(1)[0], still])
    assert motion.idle(two, s) == {"ds/episode_1": "no action dim changes at all"}
    assert motion.frozen(two, s) == {}


def test_chatter_counts_reversals_per_second_of_its_own_clock():
    """The same flips recorded at 2 Hz are two reversals a second: slow gripper use, not chatter."""
    episodes = walks()
    episodes[0] = damage_actions(episodes[0], "chatter")
    assert list(motion.chatter(group(episodes, fps=30), AuditConfig())) == ["ds/episode_0"]
    assert motion.chatter(group(episodes, fps=2), AuditConfig()) == {}


def test_longest_inner_run_ignores_runs_at_the_ends():
    assert motion.longest_inner_run(np.array([1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1], bool)) == 3
    assert motion.longest_inner_run(np.array([0, 1, 1, 0], bool)) == 2
    assert motion.longest_inner_run(np.ones(5, bool)) == 0 and motion.longest_inner_run(np.zeros(5, bool)) == 0
