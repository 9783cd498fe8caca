"""The label checks: collapse and latent/action agreement per source (from the labels and `pyramid vae eval`'s
eval.json), flow backends mixed in one shard set, and shard samples naming another VAE checkpoint than the labels'.

One pipeline run end to end (ingest → flow → a few VAE steps → eval → label → shard) gives the real files; the
failing cases edit copies of them the way a stale or mixed run leaves them."""

import io
import json
import shutil
import tarfile

import numpy as np
import pytest

from audit import AuditConfig
from audit.context import AuditContext
from audit.registry import CHECKS
from catalog import Catalog
from pipelines.label import run_label
from pipelines.runners import make_runner
from samples import defects
from pipelines.shard import run_shard
from jobs.vae import run_vae_eval, run_vae_train
from tests.test_vae_train_label import prepared

LABEL_CHECKS = ("latent_collapse", "latent_action_agreement", "flow_backend_mixing", "label_checkpoint")


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, sim_samples):
    """A workdir with labels, eval.json and a shard set, all of one checkpoint. Read-only: copy to change."""
    workdir = tmp_path_factory.mktemp("labelled")
    shutil.copytree(sim_samples, workdir / "samples")
    cfg = prepared(workdir, **{"shards.language_encoder": "none"})
    with Catalog(cfg.catalog_path) as cat:
        run_vae_train(cfg, cat, steps=2, progress=False)
        run_vae_eval(cfg, cat)
        run_label(cfg, cat, make_runner("local"), progress=False)
        run_shard(cfg, cat, make_runner("local"), progress=False)
    return workdir


def run_checks(workdir, *names, **settings):
    cfg = prepared_config(workdir)
    with Catalog(cfg.catalog_path) as cat:
        ctx = AuditContext(cfg, cat, AuditConfig(**settings))
        return {name: CHECKS[name].run(ctx) for name in names}


def prepared_config(workdir):
    from pipelines.config import load_config
    from tests.test_vae_train_label import TINY_VAE

    cfg = load_config(None, workdir=str(workdir), **{"runner.engine": "local", "flow.store_size": [32, 32],
                                                     **TINY_VAE, "shards.language_encoder": "none"})
    cfg.sources = [s for s in cfg.sources if s.kind in ("robotwin", "task_agnostic")]
    return cfg


def copy_run(pipeline_run, tmp_path):
    """A private copy (paths in the catalog are absolute: the copy is at the same place as the original's name)."""
    shutil.copytree(pipeline_run, tmp_path / "w")
    cfg = prepared_config(tmp_path / "w")
    with Catalog(cfg.catalog_path) as cat:  # repoint the catalog's artifact and shard paths at the copy
        old, new = str(pipeline_run), str(tmp_path / "w")
        for table, column in (("artifacts", "path"), ("shards", "path"), ("shards", "shard_set")):
            cat.con.execute(f"UPDATE {cat.table(table)} SET {column} = replace({column}, ?, ?)", [old, new])
    return tmp_path / "w"


def eval_json(workdir):
    return workdir / "vae" / "eval" / "eval.json"


def test_a_consistent_run_is_judged_per_source_and_names_its_checkpoint(pipeline_run):
    report = json.loads(eval_json(pipeline_run).read_text())
    assert len(report["meta"]["checkpoint"]["identity"]) >= 16
    lenient = run_checks(pipeline_run, *LABEL_CHECKS, min_probe_r2=-1e9, max_s_pcfc=1.0, min_informative_dims=0)
    assert {n: o.failures for n, o in lenient.items()} == {n: {} for n in LABEL_CHECKS}
    assert all(not o.not_run for o in lenient.values()), {n: o.not_run for n, o in lenient.items()}
    assert lenient["latent_collapse"].checked == ["robotwin", "task_agnostic"]
    # both RoboTwin episodes are in train: eval.json has no held-out RoboTwin scope, so only its labels are judged
    assert report["meta"]["scopes"] == ["overall", "task_agnostic"]
    assert lenient["latent_action_agreement"].checked == ["task_agnostic"]
    agreement = lenient["latent_action_agreement"].stats["per_source"]
    assert agreement["task_agnostic"]["r2"] == report["task_agnostic"]["probe"]["trained"]["r2"]
    assert set(lenient["latent_collapse"].stats["per_source"]["robotwin"]) == {"active_dims"}
    with Catalog(prepared_config(pipeline_run).catalog_path, read_only=True) as cat:
        sharded = sorted(i for r in cat.sql("SELECT item_ids FROM shards").to_pylist() for i in r["item_ids"])
    assert sorted(lenient["label_checkpoint"].checked) == sharded and len(sharded) >= 4
    assert lenient["flow_backend_mixing"].stats and list(lenient["flow_backend_mixing"].stats.values()) == [
        {"dis": len(sharded)}]


def test_weak_latents_fail_collapse_and_agreement_at_strict_thresholds(pipeline_run):
    strict = run_checks(pipeline_run, "latent_collapse", "latent_action_agreement", min_probe_r2=1.01,
                        max_s_pcfc=-1.01, min_active_dims=15)
    assert list(strict["latent_action_agreement"].failures) == ["task_agnostic"]
    assert "probe R²" in strict["latent_action_agreement"].failures["task_agnostic"]
    collapse = strict["latent_collapse"].failures
    assert sorted(collapse) == ["robotwin", "task_agnostic"]
    assert "S-PCFC" in collapse["task_agnostic"]
    assert "of 14 latent dims vary in its stored labels" in collapse["robotwin"]


def test_collapsed_labels_of_one_source_fail_without_an_evaluation(pipeline_run, tmp_path):
    workdir = copy_run(pipeline_run, tmp_path)
    eval_json(workdir).unlink()
    cfg = prepared_config(workdir)
    with Catalog(cfg.catalog_path) as cat:
        for row in cat.done("label").to_pylist():
            if row["item_id"].startswith("robotwin/"):  # every latent row the same: a constant encoder
                with np.load(row["path"]) as z:
                    arrays = dict(z)
                arrays["latent_action"] = np.zeros_like(arrays["latent_action"]) + 0.3
                np.savez(row["path"], **arrays)
    out = run_checks(workdir, "latent_collapse", "latent_action_agreement")
    assert out["latent_collapse"].failures == {"robotwin": "0 of 14 latent dims vary in its stored labels"}
    assert "no eval.json" in out["latent_collapse"].stats["eval_not_used"]
    assert out["latent_action_agreement"].not_run.startswith("no eval.json")


def test_an_evaluation_of_another_checkpoint_is_not_used(pipeline_run, tmp_path):
    workdir = copy_run(pipeline_run, tmp_path)
    report = json.loads(eval_json(workdir).read_text())
    report["meta"]["checkpoint"]["identity"] = "0" * 32
    eval_json(workdir).write_text(json.dumps(report))
    out = run_checks(workdir, "latent_action_agreement")["latent_action_agreement"]
    assert "evaluates checkpoint 000000000000, the labels were computed by" in out.not_run


def rewrite_samples(tar_path, edit):
    """Rewrite the `<key>.json` members of a shard tar through `edit(meta) -> meta` (other members unchanged)."""
    members = []
    with tarfile.open(tar_path) as tar:
        for info in tar:
            data = tar.extractfile(info).read()
            if info.name.endswith(".json") and "." not in info.name.rpartition("/")[2].partition(".")[2]:
                data = json.dumps(edit(json.loads(data))).encode()
            members.append((info.name, data))
    with tarfile.open(tar_path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_mixed_backends_and_a_checkpoint_other_than_the_labels_fail(pipeline_run, tmp_path):
    workdir = copy_run(pipeline_run, tmp_path)
    cfg = prepared_config(workdir)
    with Catalog(cfg.catalog_path) as cat:
        shards = cat.sql("SELECT path, item_ids FROM shards ORDER BY path").to_pylist()
    shard = next(s for s in shards if len(s["item_ids"]) >= 2)
    first, second = shard["item_ids"][:2]

    def edit(meta):
        if meta["item_id"] == first:
            return {**meta, "flow_backend": "dpflow", "vae_checkpoint_blake2b": "f" * 32}
        if meta["item_id"] == second:  # exact simulator flow beside an estimator's is by design, not mixing
            return {**meta, "flow_backend": "sim"}
        return meta

    rewrite_samples(shard["path"], edit)
    out = run_checks(workdir, "flow_backend_mixing", "label_checkpoint")
    assert list(out["flow_backend_mixing"].failures) == [first]
    assert out["flow_backend_mixing"].failures[first].startswith("flow by dpflow; ")
    reason = out["label_checkpoint"].failures[first]
    assert list(out["label_checkpoint"].failures) == [first]
    assert "names checkpoint ffffffffffff" in reason and "relabelled after sharding" in reason
    assert len(out["label_checkpoint"].checked) == sum(len(s["item_ids"]) for s in shards)


def test_the_demo_contract_accepts_known_weak_latents_and_nothing_unplanted():
    planted = {"robotwin/episode900"}
    assert defects.unexplained({"robotwin/x/episode900": {"missing_fields"}, "robotwin": {"latent_action_agreement"}},
                               planted) == {}
    assert defects.unexplained({"robotwin/x/episode900": {"missing_fields"}}, planted) == {}
    bad = defects.unexplained({"robotwin": {"label_checkpoint"}, "robotwin/x/episode_7": {"jitter"}}, planted)
    assert set(bad) == {"robotwin", "robotwin/x/episode_7", "robotwin/episode900"}
    assert bad["robotwin/episode900"] == "planted but not reported"


def test_the_full_audit_reports_label_quality_per_source_and_nothing_unexplained(pipeline_run, tmp_path):
    from rich.console import Console

    from audit import run_audit

    workdir = copy_run(pipeline_run, tmp_path)
    cfg = prepared_config(workdir)
    with Catalog(cfg.catalog_path) as cat:
        result = run_audit(cfg, cat, console=Console(file=io.StringIO()))
    found: dict[str, set[str]] = {}
    for r in result.results:
        assert r.status != "crashed", r.crashed
        for subject in r.outcome.failures:
            found.setdefault(subject, set()).add(r.check.name)
    assert defects.unexplained(found, set()) == {}  # clean samples: at most the known weak latents of a tiny VAE
    assert {r.check.name: r.status for r in result.results}["label_checkpoint"] == "pass"
    html = result.report_path.read_text()
    section = html.split("<h3>Collapse and agreement with the actions</h3>")[1].split("<h2")[0]
    assert "eval.json" in section and "task_agnostic" in section and "robotwin" in section
