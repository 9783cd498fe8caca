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


def _changes(t: Tables, semantics: list[str]):
    """Per-episode views of the concatenated rows (cached on `t`): (episodes, starts, ends, command change du
    [D, N], state change dv [D, N], finite episodes); row 0 of each episode has no change (0 in du and dv). Dims
    come first so that sums along the rows run over contiguous memory."""
    cache = t.__dict__.setdefault("_state_cache", {})
    key = tuple(semantics)
    if key in cache:
        return cache[key]
    order, episodes, starts = t.segments()
    d = min(t.action.shape[1], t.state.shape[1])
    a, st = t.action[order, :d], t.state[order, :d]
    ends = np.append(starts[1:], len(order)).astype(np.int64)
    du = np.ascontiguousarray(np.nan_to_num(commanded_change(a, semantics[:d] if len(semantics) >= d else [])).T)
    dv = np.ascontiguousarray(np.nan_to_num(np.vstack([np.zeros((1, d)), np.diff(st, axis=0)])).T)
    du[:, starts], dv[:, starts] = 0.0, 0.0
    finite = np.logical_and.reduceat(np.isfinite(a).all(1) & np.isfinite(st).all(1), starts) if len(order) else \
        np.zeros(0, bool)
    cache[key] = episodes, starts, ends, du, dv, finite
    return cache[key]


def _prefix(x: np.ndarray) -> np.ndarray:
    """[D, N] → [D, N + 1] running sums along the rows, 0 first."""
    out = np.empty((x.shape[0], x.shape[1] + 1))
    out[:, 0] = 0.0
    np.cumsum(x, axis=1, out=out[:, 1:])
    return out


def window_sums(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """[D, E]: x[:, lo_e:hi_e].sum(1) for sorted, disjoint windows (0 where a window is empty), in one pass."""
    idx = np.stack([lo, hi], 1).ravel()
    keep = idx < x.shape[1]  # only trailing bounds can reach the end: the last kept window then runs to it
    sums = np.zeros((x.shape[0], len(idx)))
    if keep.any():
        sums[:, keep] = np.add.reduceat(x, idx[keep], axis=1)
    out = sums[:, 0::2]
    out[:, hi <= lo] = 0.0
    return out


def episode_delays(t: Tables, semantics: list[str], max_lag: int) -> dict[int, tuple[int, float]]:
    """episode → (lag k, its mean correlation) maximising the correlation of the command's change at t with the
    state's change at t+k over dims that move in both (Pearson per dim, averaged), for episodes with at least 8
    pairs at that lag. All episodes at once: single-array sums over each episode's pairs come from prefix sums,
    the cross sums from one windowed reduction of the product, so a lag costs one pass over the rows."""
    episodes, starts, ends, du, dv, finite = _changes(t, semantics)
    if not len(episodes):
        return {}
    cx, cy, cxx, cyy = _prefix(du), _prefix(dv), _prefix(du * du), _prefix(dv * dv)
    best_k = np.full(len(episodes), -1)
    best_r = np.full(len(episodes), -np.inf)
    lo = starts + 1
    n_rows = du.shape[1]
    for k in range(max_lag + 1):
        hi = np.maximum(ends - k, lo)  # pairs (i, i + k) for i in [lo, hi)
        n = (hi - lo)[:, None].astype(np.float64)
        sx, sxx = (cx[:, hi] - cx[:, lo]).T, (cxx[:, hi] - cxx[:, lo]).T
        sy, syy = (cy[:, hi + k] - cy[:, lo + k]).T, (cyy[:, hi + k] - cyy[:, lo + k]).T
        sxy = window_sums(du[:, :n_rows - k] * dv[:, k:], lo, hi).T
        with np.errstate(invalid="ignore", divide="ignore"):
            cov, vx, vy = sxy - sx * sy / n, sxx - sx * sx / n, syy - sy * sy / n
            moving = (vx > 1e-18) & (vy > 1e-18) & (n >= 8)
            r = np.where(moving, cov / np.sqrt(np.where(moving, vx * vy, 1.0)), 0.0).sum(1) / moving.sum(1)
        better = moving.any(1) & (r > best_r)
        best_k[better], best_r[better] = k, r[better]
    return {int(e): (int(k), float(r)) for e, k, r, ok in zip(episodes, best_k, best_r, finite) if ok and k >= 0}


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
    found = {i: est for i, est in episode_delays(t, semantics or [], s.max_delay_steps).items()
             if est[1] >= s.min_delay_correlation}
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
    episodes, starts, _, du, _, _ = _changes(t, semantics or [])
    if not len(episodes):
        return {}
    moves = (np.add.reduceat(np.abs(du), starts, axis=1) > 1e-9).T
    order = t.segments()[0]
    st = t.state[order, :d]
    still = (np.maximum.reduceat(st, starts, axis=0) - np.minimum.reduceat(st, starts, axis=0)) == 0
    out = {}
    for e, bad in zip(episodes, moves & still):
        if bad.any():
            dims = np.nonzero(bad)[0]
            out[t.item_id(e)] = (f"{dims.size} state dim(s) never move while the action does: "
                                 + ", ".join(names[i] for i in dims[:4]) + (" ..." if dims.size > 4 else ""))
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
