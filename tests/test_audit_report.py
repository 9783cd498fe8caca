"""The audit end to end on a small pyramid with every planted defect: it finds those and nothing else, stores its
verdicts, writes audit.json and an HTML report that a headless browser renders, and gates the CLI's exit code."""

import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from audit import run_audit
from catalog import Catalog
from jobs.cli import app
from pipelines.config import load_config
from pipelines.flow import run_flow
from pipelines.ingest import ingest
from pipelines.runners import make_runner
from samples import defects

CHROMIUM = Path("/usr/bin/chromium-headless-shell")


@pytest.fixture(scope="module")
def defect_pyramid(tmp_path_factory, sim_samples):
    """Task-agnostic, RoboTwin, SSv2 and a LeRobot v2.1 sample with every planted defect, ingested and with flow (a
    small working canvas keeps DIS quick); no VAE, so the label checks do not run. Read-only for the tests: copy to
    change."""
    from samples.lerobot_ds import write_lerobot
    from samples.pyramid import _first_episode_video
    from samples.real_clips import write_ssv2

    workdir = tmp_path_factory.mktemp("audit_pyramid")
    shutil.copytree(sim_samples, workdir / "samples")
    samples = workdir / "samples"
    write_ssv2(samples / "ssv2", 3, seed=0)
    defects.add_task_agnostic_defects(samples / "task_agnostic" / "aloha_random")
    defects.add_robotwin_defects(samples / "robotwin")
    defects.add_duplicate_defects(samples / "task_agnostic" / "aloha_random")
    defects.add_static_ssv2_clip(samples / "ssv2")
    # 4 episodes with planted action defects, 13 with planted file, timestamp, video, language and state defects
    # (frames cut from a task-agnostic episode, as the demo's: drawn frames bounce a square, which jitter may flag)
    write_lerobot(samples / "lerobot" / "aloha_demo_v21", 17, seed=1, version="v2.1", size=(48, 64),
                  frames_from=_first_episode_video(samples), damage=defects.LEROBOT_ACTION_DEFECTS["aloha_demo_v21"])
    defects.damage_lerobot_files(samples / "lerobot" / "aloha_demo_v21", defects.LEROBOT_FILE_DEFECTS["aloha_demo_v21"])
    cfg = config(workdir)
    with Catalog(cfg.catalog_path) as cat:
        ingest(cfg, cat, make_runner("local"), progress=False)
        run_flow(cfg, cat, make_runner("local"), progress=False)
    return workdir


def config(workdir):
    cfg = load_config(None, workdir=str(workdir), **{"runner.engine": "local", "flow.working_size": [192, 160],
                                                      "flow.store_size": [48, 40]})
    cfg.sources = [s for s in cfg.sources if s.kind in ("task_agnostic", "robotwin", "ssv2")
                   or s.root.endswith("aloha_demo_v21")]
    return cfg


def audited(workdir, **kw):
    cfg = config(workdir)
    with Catalog(cfg.catalog_path) as cat:
        result = run_audit(cfg, cat, console=Console(file=io.StringIO()), **kw)
        stored = cat.sql("SELECT * FROM audit_results WHERE audit_run_id = ?", [result.run_id]).to_pylist()
    return cfg, result, stored


@pytest.fixture(scope="module")
def audit_run(defect_pyramid):
    return audited(defect_pyramid)


def test_the_audit_finds_every_planted_defect_and_nothing_else(audit_run):
    cfg, result, _ = audit_run
    found: dict[str, set[str]] = {}
    for r in result.results:
        for item_id in r.outcome.failures:
            found.setdefault(item_id, set()).add(r.check.name)
    planted_here = {k for k, d in defects.DEFECTS.items()
                    if d.planted and not k.startswith(("ego4d", "lerobot/aloha_demo_v3"))}
    assert defects.unexplained(found, planted_here) == {}
    assert {defects.defect_key(i) for i in found} == planted_here  # no VAE here: no known flaw of the latents
    for r in result.results:
        assert r.status != "crashed", r.crashed
    assert {r.check.name for r in result.results if r.status == "not run"} == {
        "normalisation_from_train", "latent_values", "latent_drift", "latent_outliers", "latent_collapse",
        "latent_action_agreement", "label_checkpoint", "shard_files", "shard_membership", "shard_sizes",
        "flow_backend_mixing"}


def test_quarantine_reasons_match_the_planted_defects(audit_run):
    cfg, result, _ = audit_run
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        reasons = {r["item_id"]: r["reason"] for r in cat.quarantine().to_pylist()}
    assert reasons and all(defects.defect_for(i).reason in why for i, why in reasons.items())


def test_verdicts_are_stored_per_item_and_summarised_in_audit_json(audit_run):
    cfg, result, stored = audit_run
    assert len(stored) == sum(len(set(r.outcome.checked)) for r in result.results)
    failed = {(r["check_name"], r["item_id"]) for r in stored if not r["passed"]}
    assert failed == {(r.check.name, i) for r in result.results for i in r.outcome.failures}
    summary = json.loads(result.json_path.read_text())
    assert result.json_path == cfg.path("reports") / "audit.json" and summary["audit_run_id"] == result.run_id
    near = next(c for c in summary["checks"] if c["name"] == "near_duplicates")
    assert near["severity"] == "warning" and near["n_failed"] == 1 and near["n_checked"] >= 9
    assert near["failing_item_ids"] == [f"task_agnostic/aloha_random/{defects.NEAR_COPY}"]
    assert near["sets"] == [sorted(["task_agnostic/aloha_random/episode_000000", near["failing_item_ids"][0]])]
    assert "dHash" in near["explanation"] and near["status"] == "fail"
    assert [c["name"] for c in summary["checks"]][:2] == ["media_readable", "stream_matches_metadata"]


def test_gate_by_severity(audit_run):
    _, result, _ = audit_run
    assert {r.check.name for r in result.failed("error")} == {
        "media_readable", "finite_values", "missing_fields", "cross_split_duplicates", "frame_indices", "orphan_rows",
        "task_index_valid", "timestamps_monotonic", "media_files", "global_index"}
    assert {r.check.name for r in result.failed("warning")} >= {"static_clip", "exact_duplicates"}
    assert not result.gate("error") and result.gate("never")


def test_report_is_self_contained_and_links_files_relatively(audit_run):
    cfg, result, _ = audit_run
    text = result.report_path.read_text()
    assert "Funnel per source entry and stage" in text and "data:image/png;base64," in text
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert 'href="../samples/task_agnostic/aloha_random/episodes/episode_900001"' in text


def test_report_renders_in_headless_chromium(audit_run, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (scripts/bootstrap.sh installs chromium-headless-shell)")
    _, result, _ = audit_run
    shot = tmp_path / "audit.png"
    flags = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,2000"]
    url = result.report_path.resolve().as_uri()
    subprocess.run(flags + [f"--screenshot={shot}", url], check=True, capture_output=True, timeout=60)
    dom = subprocess.run(flags + ["--dump-dom", url], check=True, capture_output=True, text=True, timeout=60).stdout
    import cv2

    pixels = cv2.imread(str(shot))
    assert pixels is not None and pixels.shape[:2] == (2000, 1280)
    assert pixels.std() > 20  # a rendered page, not a blank one
    assert "Funnel per source entry and stage" in dom and "task_agnostic" in dom and "ssv2" in dom


def test_cli_gate_exit_codes(defect_pyramid, tmp_path):
    cli = CliRunner()
    cfg_file = tmp_path / "sources.yaml"
    cfg_file.write_text("sources:\n  - {kind: task_agnostic, root: samples/task_agnostic/aloha_random}\n"
                        "  - {kind: robotwin, root: samples/robotwin}\n  - {kind: ssv2, root: samples/ssv2}\n")
    workdir = tmp_path / "w"
    shutil.copytree(defect_pyramid, workdir)
    base = ["audit", "--config", str(cfg_file), "--workdir", str(workdir), "--out", str(tmp_path / "out"),
            "--engine", "local"]
    failing = cli.invoke(app, base)
    assert failing.exit_code == 1, failing.output
    assert "media_readable" in failing.output and "audit gate failed at --fail-on error" in failing.output
    assert (tmp_path / "out" / "audit.html").exists() and (tmp_path / "out" / "audit.json").exists()
    assert cli.invoke(app, base + ["--fail-on", "never"]).exit_code == 0
    thresholds = tmp_path / "audit.yaml"
    thresholds.write_text("max_jitter_px: 0\n")  # every moving item now fails a warning check
    assert cli.invoke(app, base + ["--fail-on", "warning", "--audit-config", str(thresholds)]).exit_code == 1
    assert cli.invoke(app, base + ["--fail-on", "sometimes"]).exit_code == 2


def test_cli_gate_passes_a_clean_catalog(workdir):
    cli = CliRunner()
    cli.invoke(app, ["ingest", "--workdir", str(workdir), "--engine", "local"])  # ssv2 & co. are missing: exit 1
    result = cli.invoke(app, ["audit", "--workdir", str(workdir), "--fail-on", "warning", "--engine", "local"])
    assert result.exit_code == 0, result.output
    assert "media_readable" in result.output and "reports/audit.html" in result.output


def test_a_crashing_check_is_reported_and_fails_the_gate(workdir, monkeypatch):
    from audit.registry import CHECKS, Check

    def broken(ctx):
        raise RuntimeError("bug in a check")

    monkeypatch.setitem(CHECKS, "broken", Check("broken", "labels", "info", "A check with a bug.", broken))
    cfg = config(workdir)
    with Catalog(cfg.catalog_path) as cat:
        ingest(cfg, cat, make_runner("local"), progress=False)
    _, result, _ = audited(workdir)
    crashed = result.result("broken")
    assert crashed.status == "crashed" and "RuntimeError: bug in a check" in crashed.crashed
    assert result.failed("error") == [crashed] and not result.gate("error")
    assert "bug in a check" in result.report_path.read_text()  # the other checks' report is still written


def test_item_facts_say_what_is_missing_instead_of_failing():
    from audit.report import item_facts

    row = {"split": "train", "duration_s": 2.5, "fps": 30.0, "width": 320, "height": 240}
    assert item_facts(row, {"mean_px": 1.234, "is_static": True}) == \
        "train · 2.50 s · 30 fps · 320×240 · mean flow 1.23 px · <b>static</b>"
    # an on-disk audit of a stream with no frame rate has no duration: the line still renders
    assert item_facts({**row, "duration_s": None, "fps": None, "width": None}, None) == "train · ? s · ? fps · ?×240"
    assert item_facts(None, None) == ""
