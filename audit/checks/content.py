"""Content: is there something worth learning from in each clip (motion, a picture, a sensible length), and do its
frames move when the scene does (no stutter)?"""

from __future__ import annotations

import numpy as np

from audit.checks.integrity import from_quarantine
from audit.config import AuditConfig
from audit.context import AuditContext
from audit.media import MediaFacts
from audit.registry import Outcome, check


@check("static_clip", "content", "warning",
       "The flow stage's motion filter marked the clip static: too many of its flow pairs are near-still. Static "
       "clips teach a latent-action model nothing and are kept out of shards unless asked for.")
def static_clip(ctx: AuditContext) -> Outcome:
    if not ctx.flow_stats:
        return Outcome.skipped("no flow statistics (run `pyramid flow`)")
    out = Outcome(checked=list(ctx.flow_stats))
    for item_id, fs in ctx.flow_stats.items():
        if fs["is_static"]:
            out.fail(item_id, f"{fs['static_reason'] or 'static'} (near-still pairs: {fs['static_pair_fraction']:.0%})")
    return out


@check("jitter", "content", "warning",
       "Camera shake: the median |second difference| of the per-pair mean flow vector is above max_jitter_px "
       "(working-canvas pixels), i.e. the whole picture jerks back and forth between pairs.")
def jitter(ctx: AuditContext) -> Outcome:
    if not ctx.flow_stats:
        return Outcome.skipped("no flow statistics (run `pyramid flow`)")
    limit = ctx.settings.max_jitter_px
    out = Outcome(checked=list(ctx.flow_stats))
    for item_id, fs in ctx.flow_stats.items():
        if fs["jitter_px"] is not None and fs["jitter_px"] > limit:
            out.fail(item_id, f"jitter {fs['jitter_px']:.2f} px > {limit:g} px (mean flow {fs['mean_px']:.2f} px)")
    return out


@check("black_frames", "content", "warning",
       "More than black_fraction of the sampled frames are black (dark and nearly uniform): a lens cap, a dead "
       "camera, a fade that lasts.")
def black_frames(ctx: AuditContext) -> Outcome:
    s = ctx.settings
    out = Outcome(checked=list(ctx.decoded))
    for item_id, facts in ctx.decoded.items():
        black = [i for i, mean, std in zip(facts.indices, facts.mean_luma, facts.std_luma)
                 if mean < s.black_luma and std < s.black_luma]
        if len(black) > s.black_fraction * len(facts.indices):
            out.fail(item_id, f"{len(black)} of {len(facts.indices)} sampled frames are black (frames {black[:5]})")
    return out


@check("frozen_frames", "content", "warning",
       "Every sampled frame, first to last, shows the same picture (mean |difference| below frozen_diff of 255): "
       "the video froze or is one image repeated.")
def frozen_frames(ctx: AuditContext) -> Outcome:
    limit = ctx.settings.frozen_diff
    judged = {k: v for k, v in ctx.decoded.items() if len(v.indices) >= 2}
    out = Outcome(checked=list(judged))
    for item_id, facts in judged.items():
        if facts.max_change < limit:
            out.fail(item_id, f"all {len(facts.indices)} sampled frames identical (largest mean |difference| "
                              f"{facts.max_change:.2f})")
    return out


@check("duration", "content", "warning",
       "Clips shorter than min_duration_s or longer than max_duration_s (and items the flow stage found too short "
       "for a single flow pair).")
def duration(ctx: AuditContext) -> Outcome:
    s = ctx.settings
    out = from_quarantine(ctx, "duration", Outcome(checked=[r["item_id"] for r in ctx.items]))
    for row in ctx.items:
        d = row["duration_s"]
        if d is None:
            out.fail(row["item_id"], "no duration in the catalog")
        elif d < s.min_duration_s:
            out.fail(row["item_id"], f"{d:.2f} s is shorter than {s.min_duration_s:g} s")
        elif d > s.max_duration_s:
            out.fail(row["item_id"], f"{d:.0f} s is longer than {s.max_duration_s:g} s")
    return out


def held_pictures(facts: MediaFacts, steps: np.ndarray | None, s: AuditConfig) -> list[str]:
    """Why each stutter of one item is one: a picture held between moving frames, while its actions (when given, as
    per-step changes [T−1, D]) move. Empty when the clip barely moves or every hold is explained."""
    if facts.median_step < s.stutter_min_motion:
        return []
    floor, jump = s.stutter_neighbour_share * facts.median_step, s.stutter_catch_up * facts.median_step
    typical = np.median(np.abs(steps), axis=0) if steps is not None and len(steps) else None
    found = []
    for r in facts.repeat_runs:
        if r.before is None or r.after is None or r.before < floor or r.after < jump:
            continue  # the picture slows into the hold or starts again slowly: a scene that pauses
        if typical is not None and typical.max() > 0:
            held = np.abs(steps[max(r.first - 1, 0):r.last])  # the action steps while the picture is held
            moving = typical > 0
            if not len(held) or not (held[:, moving].mean(axis=0) >= 0.5 * typical[moving]).any():
                continue  # the robot stood still too: the frames are right to repeat
        found.append(f"frames {r.first - 1}-{r.last} show one picture ({r.repeats + 1} frames), then the picture "
                     f"jumps {r.after / facts.median_step:.1f}× the clip's median step")
    return found


@check("frame_stutter", "content", "warning",
       "Encoder or capture stutter: one picture held for more than stutter_min_repeats frames in a row (each step "
       "at most stutter_repeat_share of the clip's median step; a step is the grey change beyond codec noise), "
       "entered from a moving frame (a step of at least stutter_neighbour_share of the median) and left with a jump "
       "(at least stutter_catch_up × the median: the scene moved on while the picture stood) and, where the item "
       "has actions, with the actions moving during the hold. A still or pausing scene, a clip that barely moves "
       "or a robot that stood still explains repeated frames; a stalled encoder does not, and its frames no "
       "longer match their actions.")
def frame_stutter(ctx: AuditContext) -> Outcome:
    from audit.checks.motion import Motion
    from manifests.actions import row_semantics

    judged = {k: v for k, v in ctx.media.items() if isinstance(v, MediaFacts)}
    out = Outcome(checked=list(judged))
    for item_id, facts in judged.items():
        if not facts.repeat_runs:
            continue
        row, steps = ctx.items_by_id[item_id], None
        actions = ctx.actions.get(item_id) if row.get("has_actions") else None
        if isinstance(actions, np.ndarray) and actions.ndim == 2 and len(actions) >= 2:
            steps = Motion.of(item_id, actions, row_semantics(row)[0], row["fps"] or 1.0).steps
        found = held_pictures(facts, steps, ctx.settings)
        if found:
            out.fail(item_id, f"{len(found)} stutter(s): " + "; ".join(found[:3]))
    return out
