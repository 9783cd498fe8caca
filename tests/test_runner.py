import pytest

from catalog import Catalog
from pipelines.driver import ItemStage, Manifest, run_item_stage, run_stage
from pipelines.runners import LocalRunner, make_runner
from pipelines.stages import Resources, Stage
from tests import stage_fns

STAGE = Stage("square", stage_fns.square_or_complain, setup=stage_fns.make_context,
              resources=Resources(num_cpus=1, batch_size=2))


def tasks(n=8, fingerprint="v1"):
    return [{"item_id": f"toy/{i}", "x": i, "input_uri": f"mem://{i}", "input_fingerprint": fingerprint} for i in range(n)]


def outcomes_by_id(runner, stage=STAGE, n=8):
    return {o.item_id: o for o in runner.map(stage, tasks(n))}


def check_semantics(out):
    assert len(out) == 8
    assert out["toy/2"].status == "done" and out["toy/2"].result["y"] == 4
    assert out["toy/3"].status == "quarantined" and out["toy/3"].reason == "three is a bad input"
    assert out["toy/5"].status == "failed" and out["toy/5"].reason.startswith("ZeroDivisionError: boom")
    assert all(o.status == "done" for k, o in out.items() if k not in ("toy/3", "toy/5"))


def test_local_runner_records_each_outcome_and_keeps_going():
    out = outcomes_by_id(LocalRunner())
    check_semantics(out)
    assert out["toy/0"].result["context"] is not None  # setup ran and its value reached the stage


def test_ray_runner_same_semantics_and_sets_worker_threads(ray_session):
    out = outcomes_by_id(make_runner("ray"))
    check_semantics(out)
    assert {o.result["context"]["threads"] for o in out.values() if o.result} == {1}
    # the runner's own setting reaches the workers (not only Ray's OMP_NUM_THREADS default)
    two = outcomes_by_id(make_runner("ray", torch_threads=2))
    assert {o.result["context"]["threads"] for o in two.values() if o.result} == {2}
    assert len({o.result["pid"] for o in out.values() if o.result}) == 2  # two workers on two CPUs


def test_ray_runner_survives_a_worker_crash(ray_session):
    stage = Stage("crashy", stage_fns.die_on_seven, resources=Resources(num_cpus=1, batch_size=1))
    out = outcomes_by_id(make_runner("ray"), stage, n=10)
    assert len(out) == 10
    assert out["toy/7"].status == "failed" and "worker died" in out["toy/7"].reason
    assert sum(o.status == "done" for o in out.values()) == 9


def test_ray_runner_reports_a_failing_setup_before_any_item(ray_session):
    stage = Stage("broken", stage_fns.square_or_complain, setup=stage_fns.broken_setup)
    results = []
    with pytest.raises(RuntimeError, match="worker setup failed.*no such checkpoint"):
        for outcome in make_runner("ray").map(stage, tasks(4)):
            results.append(outcome)
    assert results == []  # no item was marked failed for a setup problem


def test_beam_runner_same_semantics_in_worker_processes():
    out = outcomes_by_id(make_runner("beam", num_workers=2))
    check_semantics(out)
    assert {o.result["context"]["threads"] for o in out.values() if o.result} == {1}
    assert len({o.result["pid"] for o in out.values() if o.result}) == 2  # DirectRunner: two worker processes
    one = outcomes_by_id(make_runner("beam", num_workers=1, torch_threads=2))
    check_semantics(one)
    assert {o.result["context"]["threads"] for o in one.values() if o.result} == {2}
    assert len({o.result["pid"] for o in one.values() if o.result}) == 1


def test_beam_runner_reports_a_failing_setup_without_failing_items():
    stage = Stage("broken", stage_fns.square_or_complain, setup=stage_fns.broken_setup)
    results = []
    with pytest.raises(RuntimeError, match="Beam pipeline failed.*no such checkpoint"):
        for outcome in make_runner("beam").map(stage, tasks(4)):
            results.append(outcome)
    assert results == []


def test_beam_runner_stops_with_a_clear_error_when_a_worker_dies():
    stage = Stage("crashy", stage_fns.die_on_seven, resources=Resources(num_cpus=1, batch_size=1))
    results = []
    with pytest.raises(RuntimeError, match="Worker subprocess exited with return code 3.*rerun retries them"):
        for outcome in make_runner("beam").map(stage, tasks(10)):
            results.append(outcome)
    # Beam cannot fail just the dead worker's batch (Ray can): what finished is reported, the rest stays to do
    assert len(results) < 10 and all(o.status == "done" and o.item_id != "toy/7" for o in results)


def test_beam_outcome_files_are_data_that_round_trip():
    """Outcome files are JSON, read without unpickling; what a stage returns comes back as it was, and a result
    that is not data fails its item with a reason instead of being pickled."""
    import datetime as dt
    import json

    import numpy as np

    from pipelines.runners.beam_runner import decode_outcomes, encode_outcomes
    from pipelines.stages import Outcome

    result = {"path": "/w/a.npz", "bytes": 3, "stats": {"mean": [1.5, float("nan")], "shape": (2, 3)},
              "by_tier": {3: 1, 4: 2}, "raw": b"\x00\xff", "at": dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.timezone.utc),
              "n": np.int64(7), "arr": np.arange(6, dtype=np.float32).reshape(2, 3), "__tricky__": 1}
    data = encode_outcomes([Outcome("toy/0", "done", result=result, duration_s=0.5),
                            Outcome("toy/1", "quarantined", reason="bad"),
                            Outcome("toy/2", "done", result={"model": object()})])
    assert json.loads(data)[1] == {"item_id": "toy/1", "status": "quarantined", "result": None, "reason": "bad",
                                   "duration_s": 0.0, "node": None}
    back = decode_outcomes(data)
    got = back[0].result
    assert got["stats"]["shape"] == (2, 3) and got["by_tier"] == {3: 1, 4: 2} and got["raw"] == b"\x00\xff"
    assert got["at"] == result["at"] and got["n"] == 7 and got["__tricky__"] == 1 and np.isnan(got["stats"]["mean"][1])
    assert got["arr"].dtype == np.float32 and np.array_equal(got["arr"], result["arr"])
    assert back[1] == Outcome("toy/1", "quarantined", reason="bad")
    assert back[2].status == "failed" and "result not storable: object is not data" in back[2].reason
    with pytest.raises(ValueError):  # a pickle planted where outcomes are read is not JSON: refused, not run
        decode_outcomes(b"\x80\x04\x95cos\nsystem\n")


def test_beam_options_reach_the_pipeline():
    runner = make_runner("beam", num_workers=2,
                         options=["--direct_running_mode=multi_threading", "--job_name=pyramid-test"])
    opts = runner.pipeline_options(STAGE, n_batches=4).get_all_options()
    assert opts["direct_running_mode"] == "multi_threading" and opts["job_name"] == "pyramid-test"
    assert opts["direct_num_workers"] == 2 and opts["runner"] == "DirectRunner"
    with pytest.raises(ValueError, match="unknown engine 'spark'"):
        make_runner("spark")


@pytest.mark.parametrize("engine", ["local", "ray", "beam"])
def test_rerun_skips_done_and_quarantined_redoes_failed_and_changed(tmp_path, engine, request):
    if engine == "ray":
        request.getfixturevalue("ray_session")
    runner = make_runner(engine)
    with Catalog(tmp_path / "c.duckdb") as cat:
        first = run_stage(STAGE, tasks(), cat, runner, "run1", progress=False)
        assert first.as_dict() == {"total": 8, "skipped": 0, "done": 6, "quarantined": 1, "failed": 1}
        second = run_stage(STAGE, tasks(), cat, runner, "run2", progress=False)
        assert second.skipped == 7 and second.counts["failed"] == 1 and second.processed == 1
        changed = tasks()
        changed[2]["input_fingerprint"] = "v2"  # the input file changed on disk
        third = run_stage(STAGE, changed, cat, runner, "run3", progress=False)
        assert third.processed == 2  # item 2 (changed) and item 5 (still failing)
        rows = cat.sql("SELECT item_id, attempts, run_id FROM item_stages ORDER BY item_id").to_pylist()
        assert len(rows) == 8  # no duplicate rows, ever
        attempts = {r["item_id"]: r["attempts"] for r in rows}
        assert attempts["toy/5"] == 3 and attempts["toy/2"] == 2 and attempts["toy/0"] == 1


def test_the_driver_draws_a_streamed_plan_in_chunks_and_skips_per_chunk(tmp_path):
    """A plan that is a stream is drawn a chunk at a time as the runner asks for more (the driver never holds the
    corpus), and a rerun decides skip/redo chunk by chunk from the catalog."""
    drawn = []

    def stream(n=50):
        for t in tasks(n):
            drawn.append(t["item_id"])
            yield t

    seen_at_first_flush = []

    def on_done(outcomes):
        if not seen_at_first_flush:
            seen_at_first_flush.append(len(drawn))

    with Catalog(tmp_path / "c.duckdb") as cat:
        first = run_stage(STAGE, stream(), cat, LocalRunner(), "run1", on_done=on_done, progress=False,
                          flush_every=1, plan_chunk=8)
        assert first.as_dict() == {"total": 50, "skipped": 0, "done": 48, "quarantined": 1, "failed": 1}
        assert seen_at_first_flush == [8]  # one chunk drawn when the first outcome was recorded
        assert cat.sql("SELECT count(*) AS n FROM item_stages").column(0).to_pylist() == [50]
        drawn.clear()
        second = run_stage(STAGE, stream(), cat, LocalRunner(), "run2", progress=False, plan_chunk=8)
        assert second.skipped == 49 and second.processed == 1 and len(drawn) == 50  # the failed one is redone


def squares_stage(tmp_path, plan_error=False):
    """A toy per-item stage on the driver: 5 items, one file each, item 3 quarantined."""
    def plan(catalog):
        if plan_error:
            raise ValueError("two items map to one key")
        return [{"item_id": f"toy/{i}", "x": i, "input_uri": f"mem://{i}", "input_fingerprint": "v1",
                 "out_path": str(tmp_path / "out" / f"{i}.txt")} for i in range(5)]

    def after(catalog, run_id):
        return catalog.done("square").num_rows

    return ItemStage(Stage("square", stage_fns.write_square), plan, {"setting": 1}, folders=[tmp_path / "out"],
                     artifact_kind="square", after=after,
                     manifest=Manifest(tmp_path / "manifests" / "squares.parquet", "squares",
                                       lambda c: c.sql("SELECT item_id, path FROM artifacts ORDER BY item_id")))


def test_the_driver_owns_the_lifecycle_and_redoes_an_item_whose_output_was_deleted(tmp_path):
    import json

    import pyarrow.parquet as pq

    leftover = tmp_path / "out" / ".2.txt.0123abcd.tmp"  # as a killed run leaves it
    leftover.parent.mkdir(parents=True)
    leftover.write_text("half")
    with Catalog(tmp_path / "c.duckdb") as cat:
        first = run_item_stage(squares_stage(tmp_path), cat, LocalRunner(), progress=False)
        assert first.report.as_dict() == {"total": 5, "skipped": 0, "done": 4, "quarantined": 1, "failed": 0}
        assert first.after == 4 and not leftover.exists()
        assert (tmp_path / "out" / "4.txt").read_text() == "16"
        arts = cat.sql("SELECT item_id, kind, bytes FROM artifacts ORDER BY item_id").to_pylist()
        assert [a["item_id"] for a in arts] == ["toy/0", "toy/1", "toy/2", "toy/4"] and arts[3]["bytes"] == 2
        assert pq.read_table(first.manifest_path).num_rows == 4
        assert pq.read_schema(first.manifest_path).metadata[b"kind"] == b"squares"
        run = cat.sql("SELECT job, status, counts, config FROM runs").to_pylist()[0]
        assert run["job"] == "square" and run["status"] == "ok" and json.loads(run["config"]) == {"setting": 1}
        (tmp_path / "out" / "2.txt").unlink()  # done means the output still exists
        second = run_item_stage(squares_stage(tmp_path), cat, LocalRunner(), progress=False)
        assert second.report.processed == 1 and second.report.skipped == 4  # the quarantined item stays skipped
        assert (tmp_path / "out" / "2.txt").read_text() == "4"
        with pytest.raises(ValueError, match="two items map to one key"):
            run_item_stage(squares_stage(tmp_path, plan_error=True), cat, LocalRunner(), progress=False)
        statuses = cat.sql("SELECT status FROM runs ORDER BY started_at").column(0).to_pylist()
        assert statuses == ["ok", "ok", "failed"]


def test_a_local_ray_start_keeps_token_auth_without_its_warning(tmp_path):
    """Ray 2.60 turns token auth on for a local `ray.init()` and logs a warning on every start: the local default
    keeps the auth and drops the line (a fresh process, HOME in tmp so Ray's generated token stays there)."""
    import os
    import subprocess
    import sys

    code = ("import os, ray\nfrom pipelines.runners.ray_runner import RayRunner\n"
            "RayRunner(num_cpus=1)._ensure_started()\nprint('auth', os.environ.get('RAY_AUTH_MODE'))\nray.shutdown()\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(HOME=str(tmp_path), RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=os.getcwd())
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "auth token" in out.stdout  # Ray's default for a local instance is kept
    assert "Token authentication" not in out.stderr + out.stdout
    assert (tmp_path / ".ray" / "auth_token").exists()
