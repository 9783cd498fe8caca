"""The sample generators are byte-reproducible: the same seed gives the same files, run after run.

Two runs once differed in most videos (x264's mb-tree rate control read memory it had not written, so a video
depended on what its process had encoded before), in every WebM (random track UIDs), in LeRobot's stats.json (key
order from string hashing) and in AnyPos's qpos.pt (the process id went into the archive). These tests generate
the same small trees in two fresh interpreters with different PYTHONHASHSEED, task-agnostic episodes through the
render pool with 2 workers (jobs land on the workers in any order), and compare every file's sha256.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from samples.files import write_h264
from samples.real_footage import VP9_OPTIONS, encode_video, load_source, resize_to_height

REPO = Path(__file__).resolve().parents[1]

# One subset of every tier whose files once differed between runs.
GENERATE = """
import sys
from pathlib import Path

from samples.anypos_layout import write_anypos
from samples.lerobot_ds import write_lerobot
from samples.real_clips import write_ssv2
from samples.sim_task_agnostic import write_task_agnostic

out = Path(sys.argv[1])
ta = out / "task_agnostic"
write_task_agnostic(ta, n_episodes=4, n_frames=24, seed=3, height=120, width=160, workers=2)
write_anypos(out / "anypos", ta)
write_ssv2(out / "ssv2", 3, seed=0)
video = ta / "episodes" / "episode_000000" / "rgb_front.mp4"
write_lerobot(out / "lerobot_v3", 2, seed=0, version="v3.0", frames_from=video, size=(60, 80))
write_lerobot(out / "lerobot_v21", 2, seed=1, version="v2.1", frames_from=video, size=(60, 80))
"""


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def generate(out: Path, hash_seed: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", GENERATE, str(out)], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    return digests(out)


def test_two_runs_give_identical_files(tmp_path):
    a = generate(tmp_path / "a", "1")
    b = generate(tmp_path / "b", "2")
    assert a.keys() == b.keys()
    kinds = {Path(k).suffix for k in a}
    assert {".mp4", ".webm", ".json", ".pt", ".h5", ".npy", ".parquet"} <= kinds, kinds
    assert any(k.startswith("lerobot_v3/") and k.endswith("meta/stats.json") for k in a)
    differ = sorted(k for k in a if a[k] != b[k])
    assert not differ, f"{len(differ)} of {len(a)} files differ between two runs: {differ[:10]}"


def test_h264_bytes_do_not_depend_on_what_was_encoded_before(tmp_path):
    """The same frames, encoded before and after other clips in one process, give the same file (real footage:
    x264 with mb-tree gave a different file after each noise clip on an AVX-512 machine)."""
    frames = resize_to_height(load_source("bikes").frames[:30], 120)
    rng = np.random.default_rng(0)
    write_h264(tmp_path / "first.mp4", frames, 25)
    for k in range(3):
        write_h264(tmp_path / "noise.mp4", rng.integers(0, 256, frames.shape, dtype=np.uint8), 25)
        write_h264(tmp_path / f"again{k}.mp4", frames, 25)
        assert (tmp_path / f"again{k}.mp4").read_bytes() == (tmp_path / "first.mp4").read_bytes(), k


def test_webm_bytes_are_reproducible(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (6, 64, 96, 3), dtype=np.uint8)
    for name in ("a.webm", "b.webm"):
        encode_video(tmp_path / name, frames, 12, "libvpx-vp9", "webm", VP9_OPTIONS)
    assert (tmp_path / "a.webm").read_bytes() == (tmp_path / "b.webm").read_bytes()
