"""Crash trials (slow): each stage (ingest, flow, vae train, label, shard, train) run by the CLI in a subprocess,
its process group killed with SIGKILL at a seeded random moment, then rerun in a copy of the workdir in another
folder. After the rerun: no duplicated rows, no registered shard missing or off its checksum, no temp file left, no
run still marked running, and the stage's outputs identical to an uninterrupted run's (`tests/crash_trials.py`;
`bench/chaos.py` runs many such trials and prints the table). And a second run of the
config in another folder, killed in VAE training and resumed, gives shards byte-identical to the reference's."""

from __future__ import annotations

import random

import pytest

from tests.crash_trials import CONFIG, STAGES, Reference, killed_in_vae_training

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return Reference(tmp_path_factory.mktemp("crash"))


@pytest.mark.parametrize("stage", STAGES)
def test_a_killed_stage_reruns_to_the_uninterrupted_result(reference, stage):
    trial = reference.trial(STAGES.index(stage), stage, random.Random(f"crash-{stage}"))
    assert not trial.state.startswith("catalog does not open"), trial.row()
    assert trial.rerun_ok and not trial.problems, trial.row()
    assert trial.identical, trial.row()


def test_a_run_killed_in_vae_training_elsewhere_gives_the_same_shards(reference):
    """Two runs of one config in two folders, the second killed (kill -9 of its process group) past its first VAE
    checkpoint and resumed: byte-identical shards."""
    killed_at, shards = killed_in_vae_training(reference, reference.root / "elsewhere" / "work")
    assert 0 < killed_at < CONFIG["vae"]["steps"]
    assert shards and shards == reference.shards
