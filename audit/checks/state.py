"""State against action: how many steps the observed state trails the command (cross-correlation of the command's
per-step change with the state's), and joints whose state never moves while their command does.

Reads LeRobot datasets' action and observation.state columns (audit/lerobot_tables.py), every listed episode;
action semantics come from the catalog rows of the dataset (absolute when none is catalogued)."""

from __future__ import annotations

import numpy as np

from audit.config import AuditConfig
from audit.context import AuditContext
from audit.lerobot_tables import Tables, dataset_tables
from audit.registry import Outcome, check
from manifests.actions import parse


def commanded_change(action: np.ndarray, semantics: list[str]) -> np.ndarray:
    """[T, D]: what the command asks to change at each step: a[t] − a[t−1] of an absolute dim (row 0 NaN), the
    value itself of a delta or velocity dim."""
    absolute = np.array([parse(s)[0] == "absolute" for s in semantics]) if len(semantics) == action.shape[1] \
        else np.ones(action.shape[1], bool)
    diff = np.vstack([np.full((1, action.shape[1]), np.nan), np.diff(action, axis=0)])
    return np.where(absolute, diff, action)


def delay_of(action: np.ndarray, state: np.ndarray, semantics: list[str], max_lag: int) -> tuple[int, float] | None:
    """(lag k, its mean correlation) maximising the correlation of the command's change at t with the state's
    change at t+k, over dims that move in both; None when nothing moves or the episode is too short."""
    d = min(action.shape[1], state.shape[1])
    du = commanded_change(action[:, :d], semantics[:d])
    dv = np.vstack([np.full((1, d), np.nan), np.diff(state[:, :d], axis=0)])
    n = len(action)
    best = None
    for k in range(0, max_lag + 1):
        x, y = du[1:n - k], dv[1 + k:n]
        if len(x) < 8:
            break
        x, y = x - x.mean(0), y - y.mean(0)
        sx, sy = np.sqrt((x * x).sum(0)), np.sqrt((y * y).sum(0))
        moving = (sx > 1e-9) & (sy > 1e-9)
        if not moving.any():
            continue
        r = float(np.mean((x * y).sum(0)[moving] / (sx * sy)[moving]))
        if best is None or r > best[1]:
            best = (k, r)
    return best


def _semantics(ctx: AuditContext | None, t: Tables) -> list[str]:
    if ctx is not None:
        for row in ctx.items:
            if row["item_id"].startswith(t.prefix + "/") and row.get("action_semantics"):
                return list(row["action_semantics"])
    return []


def delays(t: Tables, s: AuditConfig, semantics: list[str] | None = None) -> tuple[dict[str, str], dict[str, float]]:
    """(failures, stats): episodes whose delay is delay_tolerance_steps or more from the dataset's median."""
    if t.action is None or t.state is None:
        return {}, {}
    rows = t.rows()
    found = {}
    for index in sorted(t.episodes):
        r = rows.get(index)
        if r is None or not np.isfinite(t.action[r]).all() or not np.isfinite(t.state[r]).all():
            continue
        est = delay_of(t.action[r], t.state[r], semantics or [], s.max_delay_steps)
        if est and est[1] >= s.min_delay_correlation:
            found[index] = est
    if not found:
        return {}, {}
    median = float(np.median([k for k, _ in found.values()]))
    out = {t.item_id(i): (f"the state follows the action by {k} steps (correlation {r:.2f}), the dataset's episodes "
                          f"by {median:g} (observation and action shifted against each other)")
           for i, (k, r) in found.items() if abs(k - median) >= s.delay_tolerance_steps}
    return out, {"median_delay_steps": median, "median_delay_s": round(median / t.fps, 4) if t.fps else None,
                 "episodes_judged": len(found)}


def dead(t: Tables, s: AuditConfig, semantics: list[str] | None = None) -> dict[str, str]:
    """State dims constant for a whole episode while the action of the same dim moves."""
    if t.action is None or t.state is None:
        return {}
    d = min(t.action.shape[1], t.state.shape[1])
    names = [str(n) for n in ((t.info.get("features") or {}).get(t.state_key) or {}).get("names") or []]
    names = names if len(names) >= d and all(isinstance(n, str) for n in names) else [f"dim{i}" for i in range(d)]
    out = {}
    for index, r in sorted(t.rows().items()):
        if index not in t.episodes or len(r) < 2:
            continue
        a, st = t.action[r, :d], t.state[r, :d]
        moves = np.nan_to_num(np.abs(commanded_change(a, semantics or [])[1:]).sum(0)) > 1e-9
        still = np.ptp(st, axis=0) == 0
        bad = np.nonzero(moves & still)[0]
        if bad.size:
            out[t.item_id(index)] = (f"{bad.size} state dim(s) never move while the action does: "
                                     + ", ".join(names[i] for i in bad[:4]) + (" ..." if bad.size > 4 else ""))
    return out


def _run(ctx: AuditContext, rule) -> Outcome:
    tables = [t for t in dataset_tables(ctx) if t.action is not None and t.state is not None]
    if not tables:
        return Outcome.skipped("no LeRobot dataset with action and observation.state among the sources")
    out = Outcome()
    for t in tables:
        out.checked += [t.item_id(i) for i in sorted(t.episodes)]
        found = rule(t, ctx.settings, _semantics(ctx, t))
        if isinstance(found, tuple):
            found, out.stats[t.name] = found
        for subject, reason in found.items():
            out.fail(subject, reason)
    return out


@check("action_delay", "motion", "warning",
       "The observed state trails the action by a lag (the peak of the cross-correlation of the command's change "
       "and the state's, 0..max_delay_steps) that sits delay_tolerance_steps or more from its dataset's median: "
       "that episode's observations and actions are shifted against each other. The dataset's delay is in stats.")
def action_delay(ctx: AuditContext) -> Outcome:
    return _run(ctx, delays)


@check("dead_joints", "motion", "warning",
       "A state dim that never changes in an episode while the action of the same dim moves: a dead joint, an "
       "encoder that stopped reporting, or a state column copied from the first frame.")
def dead_joints(ctx: AuditContext) -> Outcome:
    return _run(ctx, dead)
