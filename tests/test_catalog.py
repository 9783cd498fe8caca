import contextlib
import json

import pytest

from catalog import Catalog, CatalogLockedError
from manifests import validate_rows
from manifests.schemas import ITEMS


def row(i, **kw):
    base = dict(item_id=f"robotwin/ep{i}", source="robotwin", native_id=f"ep{i}", tier=3, group_id=f"robotwin/ep{i}",
                split="train", has_actions=True, input_uri=f"/x/ep{i}.hdf5", action_dim=14,
                action_names=[f"j{k}" for k in range(14)], language=["pick the cube"], fps=16.7, frame_count=100)
    base.update(kw)
    return base


def test_catalog_round_trip_survives_reopen(tmp_path):
    path = tmp_path / "c.duckdb"
    with Catalog(path) as cat:
        run = cat.start_run("ingest", {"a": 1}, engine="local")
        cat.upsert_items([row(0), row(1)])
        cat.record_stage_results([
            {"item_id": "robotwin/ep0", "stage": "ingest", "status": "done", "run_id": run, "input_fingerprint": "f0"},
            {"item_id": "robotwin/ep9", "stage": "ingest", "status": "quarantined", "reason": "missing key x",
             "input_uri": "/x/ep9.hdf5", "run_id": run},
        ])
        cat.add_artifacts([{"item_id": "robotwin/ep0", "stage": "flow", "kind": "flow", "path": "/f", "bytes": 3,
                            "blake2b": "abc", "run_id": run}])
        cat.finish_run(run, "ok", {"done": 1, "quarantined": 1})
    with Catalog(path, read_only=True) as cat:
        items = cat.items().to_pylist()
        assert [r["item_id"] for r in items] == ["robotwin/ep0", "robotwin/ep1"]
        assert items[0]["language"] == ["pick the cube"] and items[0]["action_dim"] == 14
        assert cat.stage_state("ingest") == {"robotwin/ep0": ("done", "f0"), "robotwin/ep9": ("quarantined", None)}
        q = cat.quarantine().to_pylist()
        assert q[0]["reason"] == "missing key x" and q[0]["input_uri"] == "/x/ep9.hdf5"
        runs = cat.sql("SELECT status, counts, config, ended_at FROM runs").to_pylist()
        assert runs[0]["status"] == "ok" and json.loads(runs[0]["counts"]) == {"done": 1, "quarantined": 1}
        assert json.loads(runs[0]["config"]) == {"a": 1} and runs[0]["ended_at"] is not None
        assert cat.sql("SELECT count(*) AS n FROM artifacts").column("n")[0].as_py() == 1


def test_upsert_replaces_rows_and_counts_attempts(tmp_path):
    with Catalog(tmp_path / "c.duckdb") as cat:
        cat.upsert_items([row(0, frame_count=10)])
        cat.upsert_items(validate_rows(ITEMS, [row(0, frame_count=12, language=["a", "b"])]))
        items = cat.items().to_pylist()
        assert len(items) == 1 and items[0]["frame_count"] == 12 and items[0]["language"] == ["a", "b"]
        for status in ("failed", "done"):
            cat.record_stage_results([{"item_id": "robotwin/ep0", "stage": "ingest", "status": status, "run_id": "r"}])
        state = cat.sql("SELECT status, attempts FROM item_stages").to_pylist()
        assert state == [{"status": "done", "attempts": 2}]


def test_done_lists_only_done_items_and_their_files_in_sql_and_read_only(tmp_path):
    with Catalog(tmp_path / "c.duckdb") as cat:
        cat.upsert_items([row(i) for i in range(3)])
        cat.record_stage_results([{"item_id": f"robotwin/ep{i}", "stage": "flow", "status": s, "run_id": "r"}
                                  for i, s in enumerate(("done", "failed", "quarantined"))])
        cat.record_stage_results([{"item_id": "robotwin/ep1", "stage": "label", "status": "done", "run_id": "r"}])
        cat.add_artifacts([{"item_id": f"robotwin/ep{i}", "stage": "flow", "kind": "flow", "run_id": "r",
                            "path": str(tmp_path / f"ep{i}.flow.npz"), "bytes": 3 + i, "blake2b": f"b{i}"}
                           for i in range(2)])
    with Catalog(tmp_path / "c.duckdb", read_only=True) as cat:
        assert cat.done("flow").to_pylist() == [{"item_id": "robotwin/ep0", "path": str(tmp_path / "ep0.flow.npz"),
                                                 "bytes": 3, "blake2b": "b0", "kind": "flow"}]
        assert cat.done("label").num_rows == 0  # done, but it registered no file for the stage
        joined = cat.sql("SELECT i.item_id FROM items i JOIN done_items('label') USING (item_id)").to_pylist()
        assert joined == [{"item_id": "robotwin/ep1"}]


def test_funnel_counts_per_source_and_stage(tmp_path):
    with Catalog(tmp_path / "c.duckdb") as cat:
        cat.record_stage_results(
            [{"item_id": f"robotwin/ep{i}", "stage": "ingest", "status": "done", "run_id": "r"} for i in range(3)]
            + [{"item_id": "task_agnostic/a/e1", "stage": "ingest", "status": "quarantined", "reason": "x", "run_id": "r"}]
        )
        funnel = {(r["source"], r["stage"]): r for r in cat.funnel().to_pylist()}
        assert funnel[("robotwin", "ingest")]["done"] == 3
        assert funnel[("task_agnostic", "ingest")]["quarantined"] == 1


def test_the_status_tables_leave_the_connection_ready_for_the_next_query(tmp_path):
    """The demo prints the funnel, the quarantine table (first N rows and a count) and then queries again on the
    same connection: DuckDB 2 refuses a query while an earlier result is unfinished."""
    from pipelines.report import funnel_table, reasons_table

    with Catalog(tmp_path / "c.duckdb") as cat:
        cat.record_stage_results([{"item_id": f"task_agnostic/a/e{i}", "stage": "ingest", "status": "quarantined",
                                   "reason": "x", "run_id": "r"} for i in range(3)])
        funnel_table(cat)
        assert reasons_table(cat, max_rows=2).caption == "1 more rows not shown"
        assert cat.sql("SELECT count(*) AS n FROM item_stages").to_pylist() == [{"n": 3}]


@contextlib.contextmanager
def other_process(target, path):
    """`target(path, ready, release)` in a spawned process holding the catalog at `path`; yields the process once it
    is ready, releases and joins it on the way out."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=target, args=(str(path), ready, release))
    p.start()
    try:
        assert ready.wait(60)
        yield p
    finally:
        release.set()
        p.join(60)


def test_second_writer_gets_a_clear_lock_error(tmp_path):
    path = tmp_path / "c.duckdb"
    Catalog(path).close()
    with other_process(_hold_catalog, path):
        with pytest.raises(CatalogLockedError, match="held open by another process"):
            Catalog(path)


def _hold_catalog(path, ready, release):
    cat = Catalog(path)
    ready.set()
    release.wait(60)
    cat.close()


def test_read_only_open_of_missing_catalog_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="pyramid ingest"):
        Catalog(tmp_path / "none.duckdb", read_only=True)


def test_a_run_left_running_by_a_dead_driver_is_marked_killed_by_the_next_writer(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "c.duckdb"
    # a driver that starts a run and dies without finishing it (as after kill -9)
    code = ("import os, sys; from catalog import Catalog; c = Catalog(sys.argv[1]); c.start_run('flow', {}); "
            "c.con.execute('CHECKPOINT'); os._exit(9)")
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-c", code, str(path)], check=False, timeout=120, cwd=root, env=env)
    with Catalog(path, read_only=True) as cat:  # a reader changes nothing
        assert cat.killed_runs == []
        assert cat.sql("SELECT status, ended_at FROM runs").to_pylist() == [{"status": "running", "ended_at": None}]
    with Catalog(path) as cat:
        own = cat.start_run("label", {})  # this process's own running run is left alone by a later open
        assert len(cat.killed_runs) == 1
        killed = cat.sql("SELECT run_id, status, ended_at, pid FROM runs WHERE job = 'flow'").to_pylist()[0]
        assert killed["run_id"] == cat.killed_runs[0] and killed["status"] == "killed"
        assert killed["ended_at"] is not None and killed["pid"] > 0
    with Catalog(path) as cat:
        assert cat.killed_runs == []
        assert cat.sql("SELECT status FROM runs WHERE run_id = ?", [own]).column(0).to_pylist() == ["running"]


def _write_batches(path, ready, release):
    cat = Catalog(path)
    cat.start_run("writer", {})
    ready.set()
    n = 0
    while not release.is_set():
        cat.upsert_items([row(n + k) for k in range(5)])  # one transaction of 5 rows
        n += 5
        if n % 100 == 0:
            cat.con.execute("CHECKPOINT")  # folds the WAL into the file: the copy must not mix before and after
    cat.close()


def test_snapshots_of_a_catalog_being_written_show_whole_transactions(tmp_path):
    path = tmp_path / "c.duckdb"
    Catalog(path).close()
    with other_process(_write_batches, path) as p:
        seen = []
        for _ in range(15):
            with Catalog(path, read_only=True, snapshot=True) as cat:
                assert cat.is_snapshot and [r["job"] for r in cat.running_runs()] == ["writer"]
                item_ids = cat.sql("SELECT item_id FROM items").column(0).to_pylist()
            ids = sorted(int(i.removeprefix("robotwin/ep")) for i in item_ids)
            assert ids == list(range(len(ids))) and len(ids) % 5 == 0  # every batch whole, none missing
            seen.append(len(ids))
        assert seen == sorted(seen) and seen[-1] > seen[0]  # the writer went on meanwhile
    assert p.exitcode == 0
