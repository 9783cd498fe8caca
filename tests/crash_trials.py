"""Crash trials: each stage's CLI run in a subprocess, its whole process group killed with SIGKILL at a seeded random
moment, then run again; the invariants a user relies on are checked and its outputs compared with an uninterrupted
run's. Used by `tests/test_crash_trials.py` (one trial per stage) and `bench/chaos.py` (many, as a table).

A reference workdir runs every stage once, uninterrupted, and keeps a snapshot of itself before each stage; a
trial copies the snapshot to a new folder (so it also checks that outputs do not depend on where the workdir is),
kills the stage there, reruns it and compares that stage's outputs with the reference's.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import duckdb
import yaml

STAGES = ("ingest", "flow", "vae", "label", "shard", "train")

CONFIG = {
    "sources": [{"kind": "robotwin", "root": "samples/robotwin"},
                {"kind": "task_agnostic", "root": "samples/task_agnostic/aloha_random"}],
    "runner": {"engine": "local"},
    "flow": {"store_size": [32, 32]},
    "vae": {"image_size": 32, "widths": [8, 16, 32, 64, 128], "latent_channels": 64, "hidden": 64, "batch_size": 8,
            "steps": 60, "checkpoint_every": 10, "log_every": 5, "threads": 1},
    "shards": {"target_mb": 1},
}
TRAIN = {"steps": 40, "batch_size": 2, "checkpoint_every": 10, "log_every": 5, "eval_every": 1000, "eval_windows": 0,
         "threads": 1, "warmup_steps": 4,
         "model": {"work_size": [24, 20], "patch_size": 4, "n_layers": 2, "n_heads": 4, "head_dim": 16, "d_video": 64,
                   "d_action": 32, "d_und": 32, "num_video_frames": 4, "action_dim": 14, "text_dim": 384},
         "loader": {"height": 48, "width": 40, "video_step": 2, "max_text_len": 8, "shuffle_buffer": 4}}


def command(stage: str, workdir: Path) -> list[str]:
    base = [sys.executable, "-m", "jobs.cli"]
    cfg = ["--config", str(workdir / "pyramid.yaml"), "--workdir", str(workdir)]
    if stage == "vae":
        return [*base, "vae", "train", *cfg]
    if stage == "train":
        return [*base, "train", "--shards", str(workdir / "shards"), "--out", str(workdir / "motus"),
                "--config", str(workdir / "train.yaml")]
    return [*base, stage, *cfg]


def make_workdir(root: Path) -> Path:
    """A small sample pyramid (3 task-agnostic and 2 RoboTwin episodes) with the trial configs."""
    from samples.sim_robotwin import write_robotwin
    from samples.sim_task_agnostic import write_task_agnostic

    write_task_agnostic(root / "samples" / "task_agnostic" / "aloha_random", n_episodes=3, n_frames=20, seed=1)
    write_robotwin(root / "samples" / "robotwin", n_episodes=2, seed=0)
    (root / "pyramid.yaml").write_text(yaml.safe_dump(CONFIG))
    (root / "train.yaml").write_text(yaml.safe_dump(TRAIN))
    return root


def marker(stage: str, workdir: Path) -> Path:
    """The file whose appearance says the stage has started its work (imports and setup done)."""
    return {"vae": workdir / "vae" / "metrics.csv", "train": workdir / "motus" / "metrics.csv"}.get(
        stage, workdir / "progress" / f"{stage}.json")


def run(stage: str, workdir: Path, kill_after_s: float | None = None, timeout_s: float = 600,
        kill_when: Callable[[], bool] | None = None) -> tuple[int | None, float, float]:
    """(return code, wall s, s until the stage started its work) of one stage; with `kill_after_s`, its process
    group is killed that long after the work started (return code None), if it is still running then; with
    `kill_when`, as soon as that returns True."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    started_file = marker(stage, workdir)
    started_file.unlink(missing_ok=True)
    t0 = time.perf_counter()
    started = float("nan")
    with (workdir / f".{stage}.log").open("a") as log:
        proc = subprocess.Popen(command(stage, workdir), env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        while proc.poll() is None and time.perf_counter() - t0 < timeout_s:
            if started != started and started_file.exists():
                started = time.perf_counter() - t0
            if (kill_after_s is not None and started == started and time.perf_counter() - t0 >= started + kill_after_s
                    or kill_when is not None and kill_when()):
                os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started
                proc.wait()
                return None, time.perf_counter() - t0, started
            time.sleep(0.02)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            raise TimeoutError(f"{stage} ran past {timeout_s} s")
    return proc.returncode, time.perf_counter() - t0, started


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple]:
    return [tuple(r) for r in con.execute(sql).fetchall()]


def outputs(workdir: Path, stage: str) -> Any:
    """What a stage made, by content: catalog rows without run ids or times, file checksums, checkpoint identity."""
    from manifests.checkpoints import load_checkpoint
    from latent_action_vae.train import checkpoint_identity

    if stage == "vae":
        return checkpoint_identity(load_checkpoint(workdir / "vae" / "checkpoints" / "last.pt"))
    if stage == "train":
        return (workdir / "motus" / "checkpoints" / "last.pt").read_bytes()
    con = duckdb.connect(str(workdir / "catalog.duckdb"), read_only=True)
    try:
        if stage == "ingest":
            return _rows(con, "SELECT * EXCLUDE (extras) FROM items ORDER BY item_id")
        if stage == "shard":
            return _rows(con, "SELECT split, index, n_samples, sha256, item_ids FROM shards ORDER BY split, index")
        return _rows(con, f"SELECT item_id, kind, bytes, blake2b FROM artifacts WHERE stage = '{stage}' "
                          "ORDER BY item_id, kind")
    finally:
        con.close()


def shard_files(workdir: Path) -> dict[str, str]:
    """sha256 of every file under the workdir's shards/, by path relative to it."""
    import hashlib

    root = workdir / "shards"
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def temp_files(workdir: Path) -> list[str]:
    return sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*") if ".tmp" in p.name)


def state_after_kill(workdir: Path, stage: str) -> str:
    """What a user finds after the kill: whether the catalog opens, how far the stage got, the killed run's
    status, temp files left."""
    from manifests.checkpoints import load_checkpoint

    path = workdir / "catalog.duckdb"
    if not path.exists():
        return "no catalog yet"
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as e:
        return f"catalog does not open: {e}"
    try:
        running = con.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchone()[0]
        done = con.execute("SELECT count(*) FROM item_stages WHERE stage = ? AND status = 'done'",
                           [stage]).fetchone()[0]
    finally:
        con.close()
    ckpt = {"vae": workdir / "vae" / "checkpoints" / "last.pt", "train": workdir / "motus" / "checkpoints" / "last.pt"}
    if stage in ckpt:
        got = f"checkpoint at step {load_checkpoint(ckpt[stage])['step']}" if ckpt[stage].exists() else "no checkpoint"
    else:
        got = f"{done} items done"
    return f"{got}; {running} run(s) marked running; {len(temp_files(workdir))} temp file(s)"


def check_invariants(workdir: Path) -> list[str]:
    """Broken invariants after the rerun (empty: all hold)."""
    import hashlib

    problems = []
    con = duckdb.connect(str(workdir / "catalog.duckdb"), read_only=True)
    try:
        for table, key in (("item_stages", "item_id, stage"), ("artifacts", "item_id, stage, kind")):
            dup = con.execute(f"SELECT count(*) - count(DISTINCT ({key})) FROM {table} "
                              f"WHERE item_id IS NOT NULL").fetchone()[0]
            if dup:
                problems.append(f"{dup} duplicated {table} rows")
        if con.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchone()[0]:
            problems.append("a run is still marked running")
        for path, size, sha in con.execute("SELECT path, bytes, sha256 FROM shards").fetchall():
            f = workdir / path
            if not f.exists():
                problems.append(f"registered shard missing: {path}")
            elif f.stat().st_size != size or hashlib.sha256(f.read_bytes()).hexdigest() != sha:
                problems.append(f"registered shard off its size or checksum: {path}")
    finally:
        con.close()
    left = temp_files(workdir)
    if left:
        problems.append(f"temp files left: {left[:3]}")
    return problems


@dataclass
class Trial:
    n: int
    stage: str
    kill_s: float
    state: str  # after the kill
    rerun_ok: bool
    identical: bool
    problems: list[str]

    def row(self) -> str:
        return (f"| {self.n} | {self.stage} | {self.kill_s:.1f} | {self.state} | {'yes' if self.rerun_ok else 'NO'} | "
                f"{'yes' if self.identical else 'NO'} | {'; '.join(self.problems) or '—'} |")


HEADER = ("| trial | stage | killed (s into its work) | state after kill | rerun ok | identical | broken invariants |\n"
          "|---|---|---|---|---|---|---|")


class Reference:
    """Every stage run once, uninterrupted, with a snapshot of the workdir before each stage."""

    def __init__(self, root: Path):
        self.root = root
        self.workdir = make_workdir(root / "reference")
        self.durations: dict[str, float] = {}
        self.work: dict[str, float] = {}  # seconds from the stage's start of work to its end
        self.outputs: dict[str, Any] = {}
        for stage in STAGES:
            shutil.copytree(self.workdir, root / "before" / stage, symlinks=True)
            code, wall, started = run(stage, self.workdir)
            if code != 0:
                log = (self.workdir / f".{stage}.log").read_text()[-3000:]
                raise RuntimeError(f"reference run of {stage} exited {code}:\n{log}")
            self.durations[stage] = wall
            self.work[stage] = wall - started if started == started else wall
            self.outputs[stage] = outputs(self.workdir, stage)
            if stage == "shard":
                self.shards = shard_files(self.workdir)

    def trial(self, n: int, stage: str, rng: random.Random) -> Trial:
        """Kill `stage` at a random moment of its reference duration, rerun it, check and compare."""
        workdir = self.root / "trials" / f"{n:03d}_{stage}"
        shutil.copytree(self.root / "before" / stage, workdir, symlinks=True)
        kill_s = rng.uniform(0.05, 0.95) * self.work[stage]
        code, _, _ = run(stage, workdir, kill_after_s=kill_s)
        state = "finished before the kill" if code is not None else state_after_kill(workdir, stage)
        code, _, _ = run(stage, workdir)
        rerun_ok = code == 0
        problems = check_invariants(workdir) if rerun_ok else [(workdir / f".{stage}.log").read_text()[-500:]]
        identical = rerun_ok and outputs(workdir, stage) == self.outputs[stage]
        return Trial(n, stage, kill_s, state, rerun_ok, identical, problems)


def killed_in_vae_training(ref: Reference, workdir: Path) -> tuple[int, dict[str, str]]:
    """A second run of the reference's config in its own folder (the same samples and config files, copied before
    ingest): ingest, flow, VAE training killed (process group, SIGKILL) once its first checkpoint is on disk and
    resumed by a rerun, label, shard. Returns (the step of the checkpoint the kill left, its shard files)."""
    from manifests.checkpoints import load_checkpoint

    shutil.copytree(ref.root / "before" / "ingest", workdir, symlinks=True)
    ckpt = workdir / "vae" / "checkpoints" / "last.pt"

    def must(stage: str, code: int | None) -> None:
        if code != 0:
            log = (workdir / f".{stage}.log").read_text()[-3000:]
            raise RuntimeError(f"{stage} in {workdir} exited {code}:\n{log}")

    for stage in ("ingest", "flow"):
        must(stage, run(stage, workdir)[0])
    code, _, _ = run("vae", workdir, kill_when=ckpt.exists)
    if code is not None:
        raise RuntimeError(f"VAE training ended (exit {code}) before the kill")
    killed_at = int(load_checkpoint(ckpt)["step"])
    for stage in ("vae", "label", "shard"):
        must(stage, run(stage, workdir)[0])
    return killed_at, shard_files(workdir)


def summary(trials: list[Trial]) -> str:
    by = lambda ok: sum(1 for t in trials if ok(t))  # noqa: E731
    return json.dumps({"trials": len(trials), "rerun_ok": by(lambda t: t.rerun_ok),
                       "identical": by(lambda t: t.identical), "broken": by(lambda t: bool(t.problems))})
