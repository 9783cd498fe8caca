"""Damaged copies of every adapter's sample data (`tests/fuzzing.py`): each damage kind once, on the adapters in
turn, ingested and flowed. Every item ends done or quarantined with a reason, or the source is refused as a whole
with an error naming it; nothing fails with an unexpected exception and no run raises.
`bench/fuzz_inputs.py` runs every adapter × damage kind × seeds, in subprocesses with a timeout and their memory."""

from __future__ import annotations

import pytest

from tests.fuzzing import DAMAGE, make_trial, run_trial


@pytest.fixture(scope="module")
def samples(tmp_path_factory, sim_samples):
    """Small trees of five adapters: RoboTwin and task-agnostic (the shared sim samples), LeRobot v3.0, OXE RLDS
    and SSv2."""
    import shutil

    from samples.lerobot_ds import write_lerobot
    from samples.oxe_rlds import write_oxe
    from samples.real_clips import write_ssv2

    root = tmp_path_factory.mktemp("fuzz_samples")
    shutil.copytree(sim_samples, root, dirs_exist_ok=True)
    write_lerobot(root / "lerobot" / "aloha_demo", 2, seed=0, version="v3.0", size=(48, 64))
    write_oxe(root / "oxe", 2, seed=0)
    write_ssv2(root / "ssv2", 3, seed=0)
    return root


ENTRIES = [("robotwin", {"kind": "robotwin", "root": "robotwin"}),
           ("task_agnostic", {"kind": "task_agnostic", "root": "task_agnostic/aloha_random"}),
           ("lerobot", {"kind": "lerobot", "root": "lerobot/aloha_demo"}),
           ("oxe", {"kind": "oxe", "root": "oxe"}),
           ("ssv2", {"kind": "ssv2", "root": "ssv2"})]


@pytest.mark.parametrize("k,damage", list(enumerate(sorted(DAMAGE))))
def test_damaged_input_is_quarantined_or_refused_never_a_crash(samples, tmp_path, k, damage):
    name, entry = ENTRIES[k % len(ENTRIES)]
    trial, damaged = make_trial(entry, name, samples, tmp_path / "copies", damage, seed=k)
    run_trial(trial, damaged, tmp_path / "work")
    assert not trial.failed, (trial.file, trial.what, trial.failed)
    if trial.source_error:  # refused as a whole: the error says which source and what is wrong
        assert trial.source_error.startswith((entry["kind"], "unexpected")), trial.source_error
    else:
        assert trial.items["ingest:done"] + trial.items["ingest:quarantined"] >= 1, trial
        assert all(reason for reason in trial.reasons), trial
