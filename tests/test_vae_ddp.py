"""`pyramid vae train --nproc 2`: two CPU processes (torchrun, gloo) train on batches of their own with gradients
averaged; a run stopped at a checkpoint and resumed ends with the same checkpoint content as one that never stopped,
and it differs from a one-process run (it saw twice the data). Slow: torchrun starts two Python processes each time."""

from __future__ import annotations

import csv
import shutil

import pytest
from typer.testing import CliRunner

from latent_action_vae.train import checkpoint_identity
from manifests.checkpoints import load_checkpoint
from jobs.cli import app

pytestmark = pytest.mark.slow

CONFIG = """
sources:
  - {kind: robotwin, root: samples/robotwin}
  - {kind: task_agnostic, root: samples/task_agnostic/aloha_random}
runner: {engine: local}
flow: {store_size: [32, 32]}
vae: {image_size: 32, widths: [8, 16, 32, 64, 128], latent_channels: 64, hidden: 64, batch_size: 8, steps: 4,
      checkpoint_every: 2, log_every: 1, threads: 1}
"""


def _identity(workdir):
    state = load_checkpoint(workdir / "vae" / "checkpoints" / "last.pt")
    return state["step"], checkpoint_identity(state)


def test_two_processes_train_and_resume_exactly(workdir, tmp_path):
    cli = CliRunner()
    (workdir / "cfg.yaml").write_text(CONFIG)
    base = ["--config", str(workdir / "cfg.yaml"), "--workdir", str(workdir)]
    for stage in ("ingest", "flow"):
        assert cli.invoke(app, [stage, *base]).exit_code == 0
    runs = {name: tmp_path / name for name in ("straight", "resumed", "single")}
    for wd in runs.values():
        shutil.copytree(workdir, wd)
    args = lambda wd: ["vae", "train", "--config", str(wd / "cfg.yaml"), "--workdir", str(wd)]  # noqa: E731

    straight = cli.invoke(app, [*args(runs["straight"]), "--nproc", "2"])
    assert straight.exit_code == 0, straight.output
    stopped = cli.invoke(app, [*args(runs["resumed"]), "--nproc", "2", "--steps", "2"])
    assert stopped.exit_code == 0 and _identity(runs["resumed"])[0] == 2
    resumed = cli.invoke(app, [*args(runs["resumed"]), "--nproc", "2"])
    assert resumed.exit_code == 0, resumed.output
    single = cli.invoke(app, args(runs["single"]))
    assert single.exit_code == 0, single.output

    assert _identity(runs["resumed"]) == _identity(runs["straight"])
    assert _identity(runs["straight"])[0] == 4 and _identity(runs["single"]) != _identity(runs["straight"])
    def losses(wd):
        with open(wd / "vae" / "metrics.csv") as f:
            return [(int(r["step"]), r["loss"], r["recon"], r["kl"]) for r in csv.DictReader(f)]

    assert [s for s, *_ in losses(runs["resumed"])] == [0, 1, 2, 3]
    assert losses(runs["resumed"]) == losses(runs["straight"])  # the step's loss over both processes' batches
