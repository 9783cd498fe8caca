"""Speed of the audit's motion checks (audit/checks/motion.py) per 1,000 episodes, against a baseline measured in
the same run: one vectorised pass over the same actions (per-dim range and step percentiles, what any check must
at least read). Episodes are ALOHA-shaped random walks in memory, so the figure is the checks' own cost, not I/O.

    .venv/bin/python bench/bench_audit_motion.py [--episodes 1000] [--steps 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.checks import motion  # noqa: E402
from audit.config import AuditConfig  # noqa: E402

ALOHA = ["absolute:joint"] * 6 + ["absolute:gripper"] + ["absolute:joint"] * 6 + ["absolute:gripper"]
RULES = (motion.idle, motion.frozen, motion.jumps, motion.chatter, motion.saturated)


def episodes(n: int, steps: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.normal(0, 0.05, (steps, 14)).cumsum(0) + rng.uniform(-0.5, 0.5, 14)).astype(np.float32)
            for _ in range(n)]


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    data = episodes(args.episodes, args.steps)
    s = AuditConfig()

    def baseline() -> None:
        for a in data:
            np.ptp(a, axis=0)
            np.percentile(np.abs(np.diff(a, axis=0)), 95, axis=0)

    group: list[motion.Motion] = []

    def read() -> None:
        group[:] = [motion.Motion.of(f"ep/{i}", a, ALOHA, 30.0) for i, a in enumerate(data)]

    base = best_of(args.repeats, baseline)
    t_read = best_of(args.repeats, read)
    per_rule = {rule.__name__: best_of(args.repeats, lambda rule=rule: rule(group, s)) for rule in RULES}
    total = t_read + sum(per_rule.values())
    scale = 1000 / args.episodes
    print(f"motion checks, {args.episodes} episodes × {args.steps} steps × 14 dims (best of {args.repeats})")
    print(f"{'part':<12}{'s / 1,000 episodes':>20}{'× baseline':>12}")
    for name, t in [("baseline", base), ("read", t_read), *per_rule.items(), ("all five", total)]:
        print(f"{name:<12}{t * scale:>20.3f}{t / base:>12.1f}")


if __name__ == "__main__":
    main()
