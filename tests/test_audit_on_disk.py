"""`pyramid audit --source KIND:PATH`: the audit of a dataset on disk, without ingest or a catalog, through the CLI
on datasets in their real layouts (a LeRobot v2.1 root with the sample defects planted, a clean v3.0 one, an RLDS
builder dir): the exit code gates, the checks are listed, the planted defects are found and nothing else."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from jobs.cli import app
from samples import defects
from samples.lerobot_ds import write_lerobot
from samples.oxe_rlds import write_oxe

V21 = "lerobot/aloha_demo_v21"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = write_lerobot(tmp_path_factory.mktemp("lerobot") / "aloha_demo_v21", 17, seed=1, version="v2.1",
                         size=(32, 48), damage=defects.LEROBOT_ACTION_DEFECTS["aloha_demo_v21"])
    defects.damage_lerobot_files(root, defects.LEROBOT_FILE_DEFECTS["aloha_demo_v21"])
    return root


@pytest.fixture(scope="module")
def rlds(tmp_path_factory):
    root = tmp_path_factory.mktemp("oxe")
    write_oxe(root, 4, seed=0, image_size=(48, 64))
    return root / "fractal20220817_data" / "0.1.0"


def audit(tmp_path, *args):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["audit", *args, "--out", str(out)])
    summary = json.loads((out / "audit.json").read_text()) if (out / "audit.json").exists() else None
    return result, summary


def findings(summary) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for c in summary["checks"]:
        for subject in c["failing_item_ids"]:
            found.setdefault(subject, set()).add(c["name"])
    return found


def planted_in_v21() -> set[str]:
    return {k for k, d in defects.DEFECTS.items() if d.planted and k.startswith(V21)}


def test_a_lerobot_root_is_audited_from_its_files_and_fails_the_gate(planted, tmp_path):
    result, summary = audit(tmp_path, "--source", f"lerobot:{planted}")
    assert result.exit_code == 1, result.output
    assert "audit gate failed at --fail-on error" in result.output and "orphan_rows (error)" in result.output
    assert summary["source"] == f"lerobot:{planted}" and summary["decode"] is False
    status = {c["name"]: c["status"] for c in summary["checks"]}
    assert len(status) >= 50 and status["timestamps_monotonic"] == "fail" and status["camera_rates"] == "pass"
    assert status["static_clip"] == status["latent_collapse"] == status["black_frames"] == "not run"
    why = {c["name"]: c["not_run"] for c in summary["checks"]}
    assert why["black_frames"] == "decodes frames: pass --decode" and "needs the pipeline" in why["shard_files"]
    found = findings(summary)
    # without --decode nothing is decoded: the git-lfs pointer in place of an mp4 is media_files' finding alone
    lfs = f"{V21}/episode_000007"
    assert found.pop(lfs) == {"media_files"}
    stutter = f"{V21}/episode_000015"  # and a stutter shows only in decoded frames
    assert stutter not in found
    assert defects.unexplained(found, planted_in_v21() - {lfs, stutter}) == {}
    html = (tmp_path / "out" / "audit.html").read_text()
    assert f"lerobot:{planted}" in html and "(on disk, no pipeline)" in html and "timestamps_monotonic" in html
    assert "data:image/png;base64" not in html.split('id="gallery"')[1]  # no frames decoded for the gallery


def test_decode_adds_the_media_checks_and_finds_exactly_the_planted_defects(planted, tmp_path):
    result, summary = audit(tmp_path, "--source", f"lerobot:{planted}", "--decode", "--fail-on", "never")
    assert result.exit_code == 0, result.output
    assert defects.unexplained(findings(summary), planted_in_v21()) == {}
    media = next(c for c in summary["checks"] if c["name"] == "media_readable")
    assert media["failing_item_ids"] == [f"{V21}/episode_000007"] and "does not decode" in media["reasons"][
        f"{V21}/episode_000007"]
    assert {c["name"]: c["status"] for c in summary["checks"]}["black_frames"] == "pass"
    stutter = next(c for c in summary["checks"] if c["name"] == "frame_stutter")
    assert "show one picture (4 frames), then the picture jumps" in stutter["reasons"][f"{V21}/episode_000015"]


def test_a_clean_dataset_passes_the_strictest_gate(tmp_path):
    root = write_lerobot(tmp_path / "clean_v3", 5, seed=2, version="v3.0", size=(32, 48), wrists=True)
    result, summary = audit(tmp_path, "--source", f"lerobot:{root}", "--fail-on", "warning")
    assert result.exit_code == 0, result.output
    ran = [c for c in summary["checks"] if c["status"] == "pass"]
    assert len(ran) >= 30 and all(c["n_checked"] >= 1 for c in ran if c["category"] != "integrity")
    assert next(c for c in summary["checks"] if c["name"] == "idle_actions")["n_checked"] == 5


def test_an_rlds_builder_dir_is_probed_by_its_reader(rlds, tmp_path):
    result, summary = audit(tmp_path, "--source", f"rlds:{rlds}", "--fail-on", "warning")
    assert result.exit_code == 0, result.output
    checks = {c["name"]: c for c in summary["checks"]}
    assert summary["source"] == f"oxe:{rlds}" and checks["actions_match_frames"]["n_checked"] == 4
    assert checks["idle_actions"]["status"] == "pass" and checks["timestamps_monotonic"]["status"] == "not run"

    broken = shutil.copytree(rlds, tmp_path / "broken")
    val = next(broken.glob("*-val.tfrecord-*"))
    val.write_bytes(val.read_bytes()[: val.stat().st_size // 5])  # a download cut short
    result, summary = audit(tmp_path / "b", "--source", f"rlds:{broken}")
    assert result.exit_code == 1 and "quarantined_other (error)" in result.output
    refused = next(c for c in summary["checks"] if c["name"] == "quarantined_other")
    assert refused["n_failed"] >= 1 and all("quarantined at ingest" in r for r in refused["reasons"].values())


@pytest.mark.parametrize("args, message", [
    (["--source", "lerobot"], "KIND:PATH"),
    (["--source", "hdf9:/tmp"], "is not one of"),
    (["--source", "lerobot:/no/such/dataset"], "does not exist"),
    (["--decode"], "--decode goes with --source"),
])
def test_bad_source_arguments_exit_2(tmp_path, args, message):
    result, summary = audit(tmp_path, *args)
    assert result.exit_code == 2 and message in result.output and summary is None


def test_a_folder_that_is_not_a_lerobot_dataset_exits_2(tmp_path):
    result, _ = audit(tmp_path, "--source", f"lerobot:{tmp_path}")
    assert result.exit_code == 2 and "meta/info.json is missing" in result.output


def test_config_and_workdir_are_honoured_with_a_source(tmp_path):
    root = write_lerobot(tmp_path / "clean_v21", 3, seed=2, version="v2.1", size=(32, 48))
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text("runner: {engine: local}\nsources:\n  - {kind: ssv2, root: elsewhere}\n")
    cli = CliRunner()
    result = cli.invoke(app, ["audit", "--source", f"lerobot:{root}", "--config", str(cfg), "--workdir",
                              str(tmp_path / "w"), "--decode", "--fail-on", "warning"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "w" / "reports" / "clean_v21" / "audit.json").read_text())
    assert summary["source"] == f"lerobot:{root}"  # the config's sources give way to --source
    assert {c["name"]: c["n_checked"] for c in summary["checks"]}["frame_stutter"] == 3
    cfg.write_text("runner: {engine: local}\nno_such_section: 1\n")
    result = cli.invoke(app, ["audit", "--source", f"lerobot:{root}", "--config", str(cfg), "--out",
                              str(tmp_path / "o")])
    assert result.exit_code == 2 and "config error" in result.output
