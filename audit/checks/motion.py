"""Robot motion: what the actions themselves say about an episode, judged against the other episodes of its
embodiment (idle episodes, frozen dims, jumps, gripper chatter, saturation), as robot-data doctors do.

Each rule is a function over one embodiment's episodes (`Motion`s) returning item id → reason, so it can be tried
on constructed actions; the checks apply it to every embodiment of the catalog."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from audit.config import AuditConfig
from audit.context import AuditContext
from audit.registry import Outcome, check
from manifests.actions import parse, row_semantics


@dataclass
class Motion:
    """One episode's actions read with their meaning: the per-step change `steps` [T−1, D] (the difference of an
    absolute dim, a delta or velocity dim as it is), the per-dim extent `motion` [D] (range of an absolute dim,
    Σ|a| of a delta one) and which dims are grippers."""

    item_id: str
    fps: float
    actions: np.ndarray
    steps: np.ndarray
    motion: np.ndarray
    gripper: np.ndarray
    names: list[str]

    @classmethod
    def of(cls, item_id: str, actions: np.ndarray, semantics: list[str], fps: float,
           names: list[str] | None = None) -> "Motion":
        actions = np.asarray(actions, np.float64)
        dims = actions.shape[1]
        kinds, parts = zip(*(parse(s) for s in semantics)) if len(semantics) == dims else \
            (["absolute"] * dims, ["other"] * dims)
        absolute = np.array([k == "absolute" for k in kinds])
        steps = np.where(absolute, np.diff(actions, axis=0), actions[1:])
        motion = np.where(absolute, np.ptp(actions, axis=0), np.abs(actions).sum(axis=0))
        names = list(names or []) if len(names or []) == dims else [f"dim{d}" for d in range(dims)]
        return cls(item_id, float(fps) or 1.0, actions, steps, motion, np.array([p == "gripper" for p in parts]), names)


def idle(group: list[Motion], s: AuditConfig) -> dict[str, str]:
    """Episodes whose every dim moves less than `idle_fraction` of the embodiment's median extent."""
    if len(group) < s.min_episodes_for_motion:
        return {m.item_id: "no action dim changes at all" for m in group if m.motion.max() == 0}
    typical = np.median(np.stack([m.motion for m in group]), axis=0)
    moving = typical > 0
    out = {}
    for m in group:
        ratio = float(np.max(m.motion[moving] / typical[moving])) if moving.any() else 1.0
        if ratio < s.idle_fraction:
            out[m.item_id] = (f"the largest action extent is {ratio:.1%} of the embodiment's median episode "
                              f"(idle below {s.idle_fraction:.0%})")
    return out


def frozen(group: list[Motion], s: AuditConfig) -> dict[str, str]:
    """Arm dims constant for a whole episode while they move in most of the embodiment's episodes."""
    if len(group) < s.min_episodes_for_motion:
        return {}
    moves = np.median(np.stack([m.motion for m in group]), axis=0) > 0
    out = {}
    for m in group:
        if m.motion.max() == 0:
            continue  # idle: every dim is still, the idle rule says so
        names = [m.names[d] for d in np.nonzero((m.motion == 0) & moves & ~m.gripper)[0]]
        if names:
            out[m.item_id] = (f"{len(names)} dim(s) constant for all {len(m.actions)} steps: "
                              f"{', '.join(names[:4])}{' ...' if len(names) > 4 else ''}")
    return out


def jumps(group: list[Motion], s: AuditConfig) -> dict[str, str]:
    """Arm-dim steps beyond `jump_factor` × the embodiment's 95th-percentile |step| (and `jump_floor`)."""
    pooled = np.abs(np.concatenate([m.steps for m in group]))
    limit = np.maximum(s.jump_factor * np.percentile(pooled, 95, axis=0), s.jump_floor)
    out = {}
    for m in group:
        big = (np.abs(m.steps) > limit) & ~m.gripper
        if big.any():
            t, d = map(int, np.argwhere(big)[0])
            out[m.item_id] = (f"{int(big.sum())} step(s) over the limit; first: {m.names[d]} changes by "
                              f"{m.steps[t, d]:+.3g} at step {t} (limit {limit[d]:.3g})")
    return out


def chatter(group: list[Motion], s: AuditConfig) -> dict[str, str]:
    """Grippers that reverse `chatter_reversals` times within a second, counting moves of at least `chatter_step`
    of the gripper's range over the embodiment."""
    out = {}
    for d in np.nonzero(group[0].gripper)[0]:
        values = np.concatenate([m.actions[:, d] for m in group])
        span = float(np.percentile(values, 99) - np.percentile(values, 1)) or float(np.ptp(values))
        if span <= 0:
            continue
        for m in group:
            moves = np.nonzero(np.abs(m.steps[:, d]) >= s.chatter_step * span)[0]
            signs = np.sign(m.steps[moves, d])
            reversals = moves[1:][signs[1:] != signs[:-1]]  # steps where a move undoes the one before
            window = max(1, int(round(m.fps)))
            counts = [int(np.sum((reversals >= r) & (reversals < r + window))) for r in reversals]
            if counts and max(counts) >= s.chatter_reversals and m.item_id not in out:
                first = int(reversals[int(np.argmax(np.array(counts) >= s.chatter_reversals))])
                out[m.item_id] = f"{m.names[d]} reverses {max(counts)} times within 1 s (from step {first})"
    return out


def saturated(group: list[Motion], s: AuditConfig) -> dict[str, str]:
    """Arm dims held for `saturation_min_steps` or more mid-episode at exactly the embodiment's extreme value, in
    two or more episodes with different actions: a limit the commands were clipped at. (One episode holding the
    highest target of all is a hold, not a clip: the extreme of continuous data is reached once; copies of that
    episode are the duplicate checks' business.)"""
    stacked = np.concatenate([m.actions for m in group])
    ends = np.cumsum([len(m.actions) for m in group])
    found: dict[str, list[str]] = {}
    for d in np.nonzero(~group[0].gripper)[0]:
        for edge, name in ((stacked[:, d].max(), "maximum"), (stacked[:, d].min(), "minimum")):
            at = np.abs(stacked[:, d] - edge) <= 1e-9 * max(1.0, abs(edge))
            touching = np.unique(np.searchsorted(ends, np.nonzero(at)[0], side="right"))  # episodes reaching it
            runs = {group[i].item_id: longest_inner_run(at[ends[i] - len(group[i].actions):ends[i]]) for i in touching}
            held = {i: run for i, run in runs.items() if run >= s.saturation_min_steps}
            if len({m.actions.tobytes() for m in group if m.item_id in held}) < 2:
                continue
            for m in group:
                if m.item_id in held:
                    found.setdefault(m.item_id, []).append(
                        f"{m.names[d]} at the {name} {edge:.4g} for {held[m.item_id]} steps "
                        f"in {len(held)} episodes)")
    return {i: "clipped mid-episode: " + "; ".join(v[:3]) + (" ..." if len(v) > 3 else "") for i, v in found.items()}


def longest_inner_run(flags: np.ndarray) -> int:
    """The longest run of True that touches neither end of the sequence (rest poses at the ends are fine)."""
    edges = np.diff(np.concatenate([[0], np.asarray(flags, np.int8), [0]]))
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    inner = (starts > 0) & (ends < len(flags))
    return int((ends - starts)[inner].max()) if inner.any() else 0


# --------------------------------------------------------------------------------------------- the checks
def embodiments(ctx: AuditContext) -> dict[str, list[Motion]]:
    """(embodiment, action width) → the readable, finite actions of its items (other checks report the rest)."""
    def compute() -> dict[str, list[Motion]]:
        out: dict[str, list[Motion]] = {}
        for item_id, actions in ctx.actions.items():
            if isinstance(actions, str) or actions.ndim != 2 or len(actions) < 2 or not np.isfinite(actions).all():
                continue
            row = ctx.items_by_id[item_id]
            m = Motion.of(item_id, actions, row_semantics(row)[0], row["fps"] or 0, row["action_names"])
            out.setdefault(f"{row['embodiment']}/{actions.shape[1]}", []).append(m)
        return out
    return ctx.memo("motion", compute)


def apply(ctx: AuditContext, rule) -> Outcome:
    groups = embodiments(ctx)
    out = Outcome(checked=[m.item_id for g in groups.values() for m in g])
    for group in groups.values():
        for item_id, reason in rule(group, ctx.settings).items():
            out.fail(item_id, reason)
    return out


@check("idle_actions", "motion", "warning",
       "The robot hardly moves: every action dim's extent (range of a position, Σ|Δ| of a delta) stays below "
       "idle_fraction of its embodiment's median episode. Idle episodes teach an action model to stand still.")
def idle_actions(ctx: AuditContext) -> Outcome:
    return apply(ctx, idle)


@check("frozen_action_dims", "motion", "warning",
       "An arm dim that never changes in an episode while it moves in most episodes of its embodiment: a dead "
       "joint, a disconnected channel, a constant written in place of data. Grippers may rightly stay still.")
def frozen_action_dims(ctx: AuditContext) -> Outcome:
    return apply(ctx, frozen)


@check("action_jumps", "motion", "warning",
       "A per-step change of an arm dim beyond jump_factor × its embodiment's 95th-percentile step: a teleport, a "
       "wrapped angle, a unit slip or a glitch in the recording.")
def action_jumps(ctx: AuditContext) -> Outcome:
    return apply(ctx, jumps)


@check("gripper_chatter", "motion", "warning",
       "A gripper that reverses direction chatter_reversals or more times within one second (each move at least "
       "chatter_step of its range): a noisy teleoperation trigger or a controller fighting itself.")
def gripper_chatter(ctx: AuditContext) -> Outcome:
    return apply(ctx, chatter)


@check("action_saturation", "motion", "warning",
       "An arm dim held at exactly its embodiment's extreme value for saturation_min_steps or more in the middle "
       "of episodes (not a rest pose at their ends), in two or more episodes: actions clipped at a limit, so the "
       "real command is lost.")
def action_saturation(ctx: AuditContext) -> Outcome:
    return apply(ctx, saturated)
