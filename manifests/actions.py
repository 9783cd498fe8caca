"""What each action dim means (recorded per item at ingest), and the one rule (`pair_action`) that turns actions into
"the action over a flow pair" for alignment, statistics, probes, audits and shards: docs/formats.md#action-semantics."""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

KINDS = ("absolute", "delta", "velocity")
PARTS = ("joint", "ee_pos", "ee_rot", "ee", "gripper", "base", "other")
CONTROL = "control"  # the kind of episode-control fields (kept out of the action vector)
TIMINGS = ("after", "at")
# What rows ingested before semantics were recorded (or hand-built manifests) are read as: today's historical
# rule a[t2] − a[t1]. `pyramid status` shows such sources as "not recorded".
LEGACY = ("absolute:other", "at")

_GRIPPER_WORDS = ("gripper", "jaw", "finger", "grasp", "claw", "closedness")
_JOINT_WORDS = {"joint", "qpos", "wrist", "elbow", "shoulder", "waist", "forearm"}
_ROT_WORDS = {"roll", "pitch", "yaw", "rx", "ry", "rz", "rot", "rotation", "orientation", "quat", "qx", "qy", "qz",
              "qw", "euler"}
_POS_WORDS = {"x", "y", "z", "xyz", "pos", "position", "translation", "cartesian", "world"}


def parse(semantic: str) -> tuple[str, str]:
    """`kind:part` → (kind, part); a clear ValueError for anything else."""
    kind, _, part = str(semantic).partition(":")
    if kind == CONTROL:
        return kind, part or "other"
    if kind not in KINDS or (part and part not in PARTS):
        raise ValueError(f"action semantics {semantic!r}: expected <kind>:<part> with kind in {', '.join(KINDS)} "
                         f"(or {CONTROL} for episode control) and part in {', '.join(PARTS)}")
    return kind, part or "other"


def validate(semantics: Sequence[str], action_dim: int, timing: str, where: str = "") -> list[str]:
    """Checked, normalised per-dim semantics of an action vector (control fields may not be in it)."""
    at = f" of {where}" if where else ""
    semantics = list(semantics)
    if len(semantics) != action_dim:
        raise ValueError(f"action semantics{at}: {len(semantics)} entries for {action_dim} action dims")
    out = []
    for i, s in enumerate(semantics):
        kind, part = parse(s)
        if kind == CONTROL:
            raise ValueError(f"action semantics{at}: dim {i} is episode control ({s}); control fields are recorded "
                             "beside the item, never inside the action vector")
        out.append(f"{kind}:{part}")
    if timing not in TIMINGS:
        raise ValueError(f"action timing{at}: {timing!r}, expected one of {', '.join(TIMINGS)}")
    return out


def part_from_name(name: str) -> str:
    """A best guess of what a dim moves, from its feature name (`left_gripper`, `x`, `wrist_roll`, `joint_3`)."""
    n = str(name).lower()
    words = set(re.split(r"[^a-z0-9]+", n))
    if any(w in n for w in _GRIPPER_WORDS):
        return "gripper"
    if words & _JOINT_WORDS or n.startswith("joint"):  # an arm's wrist_pitch is a joint, not an EE angle
        return "joint"
    if words & _ROT_WORDS:
        return "ee_rot"
    if words & _POS_WORDS:
        return "ee_pos"
    return "joint"


def expand(spec: Any, names: Sequence[str], where: str = "") -> list[str]:
    """Per-dim semantics from a user or table spec: one `kind[:part]` for every dim (the part then comes from each
    dim's name), or a list with one entry per dim."""
    if isinstance(spec, str):
        kind, _, part = spec.partition(":")
        out = [f"{kind}:{part or part_from_name(n)}" for n in names]
        for s in out:
            parse(s)
        return out
    spec = list(spec)
    if len(spec) != len(names):
        at = f" of {where}" if where else ""
        raise ValueError(f"action semantics{at}: {len(spec)} entries for {len(names)} action dims ({list(names)})")
    return [s if ":" in s else f"{s}:{part_from_name(n)}" for s, n in zip(map(str, spec), names)]


def pair_action(actions: np.ndarray, semantics: Sequence[str], native_pairs: np.ndarray, fps: float,
                timing: str, where: str = "") -> np.ndarray:
    """The action over each flow pair: float64 [N, D] from actions [T, D] and native-frame pairs [N, 2] (t1 < t2
    not required; t1 == t2 gives 0). The one place the table of this module's docstring is implemented."""
    actions = np.asarray(actions, np.float64)
    pairs = np.asarray(native_pairs, np.int64).reshape(-1, 2)
    at = f"{where}: " if where else ""
    if actions.ndim != 2:
        raise ValueError(f"{at}actions of shape {actions.shape}, expected [T, D]")
    semantics = validate(semantics, actions.shape[1], timing, where)
    n = len(actions)
    if len(pairs) and (pairs.min() < 0 or pairs.max() >= n):
        raise ValueError(f"{at}flow pairs reach native frame {pairs.max()} but the actions have {n} rows")
    kinds = np.array([parse(s)[0] for s in semantics])
    out = np.zeros((len(pairs), actions.shape[1]))
    if not len(pairs):
        return out
    t1, t2 = pairs[:, 0], pairs[:, 1]
    absolute = kinds == "absolute"
    if absolute.any():
        if timing == "after":  # row t−1 is the target frame t shows; frame 0 has none: a[0] stands in
            i1, i2 = np.maximum(t1 - 1, 0), np.maximum(t2 - 1, 0)
        else:
            i1, i2 = t1, t2
        out[:, absolute] = actions[i2][:, absolute] - actions[i1][:, absolute]
    summed = ~absolute
    if summed.any():
        # rows [lo, hi) move frame t1 to t2: prefix sums make every window one subtraction
        lo, hi = (t1, t2) if timing == "after" else (t1 + 1, t2 + 1)
        lo, hi = np.minimum(lo, n), np.minimum(hi, n)
        sign = np.where(hi >= lo, 1.0, -1.0)[:, None]  # a reversed pair is the same window, negated
        lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
        cum = np.vstack([np.zeros((1, actions.shape[1])), np.cumsum(actions, axis=0)])
        window = sign * (cum[hi] - cum[lo])
        scale = np.where(kinds == "velocity", 1.0 / float(fps), 1.0)
        out[:, summed] = (window * scale)[:, summed]
    return out


def infer_kinds(actions: np.ndarray, state: np.ndarray, same_episode: np.ndarray, fps: float,
                tolerance: float = 0.5) -> tuple[list[str | None], dict[str, float]]:
    """Per dim, does action[t] track state[t+1] (absolute), state[t+1] − state[t] (delta) or that times fps
    (velocity)? actions and state [T, D] with matching dims; `same_episode[t]` says rows t and t+1 belong to one
    episode. A dim's error for a kind is rms(action − target) / std(target); the smallest wins when below
    `tolerance`, else the dim is None (undecided: a joint that never moves, or none of the three fits). Also returns
    each kind's median error over the dims, for the record."""
    a, s = np.asarray(actions, np.float64), np.asarray(state, np.float64)
    if a.shape != s.shape or a.ndim != 2:
        raise ValueError(f"action {a.shape} and state {s.shape} must both be [T, D] with the same D")
    ok = np.asarray(same_episode, bool)[: len(a) - 1]
    now, nxt, act = s[:-1][ok], s[1:][ok], a[:-1][ok]
    targets = {"absolute": nxt, "delta": nxt - now, "velocity": (nxt - now) * float(fps)}
    errors = {}
    for kind, target in targets.items():
        spread = target.std(axis=0) if len(target) > 1 else np.zeros(a.shape[1])
        rms = np.sqrt(((act - target) ** 2).mean(axis=0)) if len(target) else np.full(a.shape[1], np.inf)
        errors[kind] = np.where(spread > 1e-9, rms / np.maximum(spread, 1e-12), np.inf)
    table = np.stack([errors[k] for k in KINDS])  # [3, D]
    best = table.argmin(axis=0)
    verdict = [KINDS[b] if table[b, d] < tolerance else None for d, b in enumerate(best)]
    medians = {k: float(np.median(v[np.isfinite(v)])) if np.isfinite(v).any() else float("nan")
               for k, v in errors.items()}
    return verdict, medians


def row_semantics(row: Mapping[str, Any]) -> tuple[list[str], str]:
    """(per-dim semantics, timing) of a manifest/catalog row; rows without them read as `LEGACY`."""
    dim = int(row.get("action_dim") or 0)
    semantics, timing = row.get("action_semantics"), row.get("action_timing") or LEGACY[1]
    if semantics is None or (dim and len(semantics) == 0):
        return [LEGACY[0]] * dim, timing
    return list(semantics), timing


def summary(semantics: Iterable[str] | None) -> str:
    """`delta:ee_pos×3, delta:ee_rot×3, delta:gripper` (runs of equal neighbours collapsed), or "not recorded"."""
    if semantics is None:
        return "not recorded"
    semantics = list(semantics)
    if not semantics:
        return "—"
    out, prev, count = [], semantics[0], 0
    for s in semantics + [None]:
        if s == prev:
            count += 1
            continue
        out.append(prev + (f"×{count}" if count > 1 else ""))
        prev, count = s, 1
    return ", ".join(out)


__all__ = ["CONTROL", "KINDS", "LEGACY", "PARTS", "TIMINGS", "expand", "infer_kinds", "pair_action", "parse",
           "part_from_name", "row_semantics", "summary", "validate"]
