"""`pyramid samples`: the whole sample pyramid, generated offline in each dataset's official layout; `scale`
multiplies every item count. Tiers: README.md ("The sample pyramid"); generators: docs/samples.md."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rich.console import Console

from common.progress import make_console

from samples import defects as defects_mod


@dataclass
class SampleSummary:
    root: Path
    counts: dict[str, int] = field(default_factory=dict)
    defects: list[Path] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


# Bumped whenever the generators' output changes, so a demo workdir regenerates its samples instead of reusing them.
SAMPLES_VERSION = 10  # 3: task-agnostic front + wrist views, varied motion; 4: OXE frames caused by its actions;
                      # 5: an AnyPos/ATARA-layout set; 6: task-agnostic walks bounce off their box, planted
                      # LeRobot action defects; 7: LeRobot grippers kept in [-1, 1]; 8: the v2.1 LeRobot set gets
                      # 11 more episodes with planted file, timestamp, index, stats, language and state defects;
                      # 9: 2 more v2.1 episodes, a head camera that stutters and one whose frame times jitter
                      # 10: byte-reproducible (x264 without mb-tree, bit-exact WebM, ordered LeRobot stats)

def sample_sizes(scale: int) -> dict[str, int]:
    # task-agnostic episodes are the main labelled data for aligning latent actions, so they get the most items
    return {"task_agnostic": 16 * scale, "robotwin": 4 * scale, "ssv2": 8 * scale, "ego4d": 2 * scale, "oxe": 4 * scale,
            "lerobot": 4 * scale, "anypos": 2 * scale}


def _first_episode_video(root: Path) -> Path | None:
    """The main view (first camera in dataset.json) of the first task-agnostic episode."""
    ta = root / "task_agnostic" / "aloha_random"
    meta = ta / "dataset.json"
    main = json.loads(meta.read_text())["cameras"][0] if meta.exists() else "*"
    videos = sorted((ta / "episodes").glob(f"episode_0*/rgb_{main}.mp4"))
    return videos[0] if videos else None


def write_anypos_sample(out: Path, n_episodes: int, seed: int) -> list[Path]:
    """Render task-agnostic episodes into a scratch folder and store them in the AnyPos/ATARA layout at `out`."""
    import tempfile

    from samples.anypos_layout import write_anypos
    from samples.sim_task_agnostic import write_task_agnostic

    with tempfile.TemporaryDirectory(dir=out.parent.parent) as scratch:
        src = Path(scratch) / "aloha_random"
        write_task_agnostic(src, n_episodes, n_frames=60, seed=seed)
        return write_anypos(out, src)


def generate_sample_pyramid(out: str | Path, scale: int = 1, seed: int = 0, defects: bool = True,
                            console: Console | None = None) -> SampleSummary:
    from samples.lerobot_ds import write_lerobot
    from samples.oxe_rlds import write_oxe
    from samples.real_clips import write_ego4d, write_ssv2
    from samples.sim_robotwin import write_robotwin, write_robotwin_2026
    from samples.sim_task_agnostic import write_task_agnostic

    console = console or make_console(stderr=True)
    root = Path(out)
    sizes = sample_sizes(scale)
    summary = SampleSummary(root)
    # the v2.1 set gets one more episode for each planted file defect and dead or delayed state
    planted = {**defects_mod.LEROBOT_FILE_DEFECTS["aloha_demo_v21"],
               **{i: k for i, k in defects_mod.LEROBOT_ACTION_DEFECTS["aloha_demo_v21"].items()
                  if k in defects_mod.STATE_DAMAGE}}
    lerobot_episodes = {"aloha_demo_v3": sizes["lerobot"],
                        "aloha_demo_v21": sizes["lerobot"] + (len(planted) if defects else 0)}
    steps: list[tuple[str, Callable[[], list]]] = [
        ("task_agnostic", lambda: write_task_agnostic(root / "task_agnostic" / "aloha_random", sizes["task_agnostic"], n_frames=75, seed=seed)),
        # the 2026-layout episode starts after every seed the 2.0 episodes may use, and keeps its cube away from theirs
        ("robotwin", lambda: write_robotwin(root / "robotwin", sizes["robotwin"], seed=seed)
         + write_robotwin_2026(root / "robotwin", seed=seed + 4 * sizes["robotwin"],
                               avoid_seeds=range(seed, seed + 4 * sizes["robotwin"]))),
        # AnyPos/ATARA layout: episodes of their own (seeds after the task-agnostic ones, so no duplicates)
        ("anypos", lambda: write_anypos_sample(root / "anypos" / "atara", sizes["anypos"], seed + sizes["task_agnostic"])),
        ("ssv2", lambda: write_ssv2(root / "ssv2", sizes["ssv2"], seed=seed)),
        ("ego4d", lambda: write_ego4d(root / "ego4d", sizes["ego4d"], seed=seed)),
        # RLDS episodes (fractal layout) rendered from an arm that the episodes' delta actions move
        ("oxe", lambda: write_oxe(root / "oxe", sizes["oxe"], seed=seed)),
        ("lerobot", lambda: [
            write_lerobot(root / "lerobot" / name, lerobot_episodes[name], seed=seed + k, version=version,
                          frames_from=_first_episode_video(root), size=(120, 160),
                          damage=defects_mod.LEROBOT_ACTION_DEFECTS[name] if defects else None)
            for k, (name, version) in enumerate((("aloha_demo_v3", "v3.0"), ("aloha_demo_v21", "v2.1")))
        ]),
    ]
    # what the writers return: episode folders/files, except oxe (shards) and lerobot (one folder per dataset)
    per_item = {"oxe": sizes["oxe"], "lerobot": sum(lerobot_episodes.values())}
    for name, step in steps:
        t0 = time.perf_counter()
        written = step()
        summary.counts[name] = per_item.get(name, len(written))
        summary.seconds[name] = time.perf_counter() - t0
        console.print(f"[samples] {name}: {summary.counts[name]} items in {summary.seconds[name]:.1f}s",
                      highlight=False, markup=False)
    if defects:
        summary.defects += defects_mod.add_task_agnostic_defects(root / "task_agnostic" / "aloha_random")
        summary.defects += defects_mod.add_robotwin_defects(root / "robotwin")
        summary.defects += defects_mod.add_duplicate_defects(root / "task_agnostic" / "aloha_random")
        summary.defects += defects_mod.add_static_ssv2_clip(root / "ssv2")
        summary.defects += defects_mod.damage_lerobot_files(root / "lerobot" / "aloha_demo_v21",
                                                            defects_mod.LEROBOT_FILE_DEFECTS["aloha_demo_v21"])
        console.print(f"[samples] added {len(summary.defects)} deliberately bad items", highlight=False, markup=False)
    return summary
