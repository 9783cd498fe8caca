"""A long job holds the catalog (DuckDB: one writing process, no readers beside it); `pyramid status` in another
process still shows how far each stage got, from the progress file the driver replaces at every flush, and the
catalog as of a snapshot copy; `pyramid catalog sql` and `pyramid audit` read such a snapshot too, and say so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

from typer.testing import CliRunner

from jobs.cli import app

JOB = textwrap.dedent("""
    import sys
    from catalog import Catalog
    from pipelines.driver import run_stage
    from pipelines.runners import LocalRunner
    from pipelines.stages import Stage
    from tests.stage_fns import slow_square

    with Catalog(sys.argv[1]) as cat:
        run_id = cat.start_run("squares", {})
        tasks = [{"item_id": f"toy/{i}", "x": i, "sleep": 0.3} for i in range(20)]
        run_stage(Stage("squares", slow_square), tasks, cat, LocalRunner(), run_id, progress=False, flush_every=2)
        cat.finish_run(run_id, "ok", {})
""")


def test_status_shows_a_running_stage_s_progress_while_the_catalog_is_held(tmp_path):
    job = subprocess.Popen([sys.executable, "-c", JOB, str(tmp_path / "catalog.duckdb")], cwd=str(_repo()))
    cli = CliRunner()
    try:
        seen = None
        deadline = time.time() + 120
        while time.time() < deadline and job.poll() is None:
            progress = tmp_path / "progress" / "squares.json"
            if progress.exists() and json.loads(progress.read_text())["done"] >= 4:
                out = cli.invoke(app, ["status", "--workdir", str(tmp_path)])
                if "held by a running job" in out.output:
                    seen = out
                    break
            time.sleep(0.2)
        assert seen is not None and seen.exit_code == 0, "status never showed the running job"
        line = next(l for l in seen.output.splitlines() if "squares" in l and "│" in l)
        assert "running" in line
        done = int(line.split("│")[3])
        assert 4 <= done < 20
    finally:
        assert job.wait(timeout=120) == 0
    final = json.loads((tmp_path / "progress" / "squares.json").read_text())
    assert final["state"] == "ended" and final["done"] == 20
    after = cli.invoke(app, ["status", "--workdir", str(tmp_path)])
    assert after.exit_code == 0 and "held by a running job" not in after.output and "Funnel" in after.output


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from catalog import Catalog
    from tests.test_catalog import row

    path, ready, release = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    with Catalog(path) as cat:
        run_id = cat.start_run("hold", {})
        cat.upsert_items([row(i, duration_s=6.0) for i in range(3)])
        ready.write_text(run_id)
        deadline = time.time() + 120
        while not release.exists() and time.time() < deadline:
            time.sleep(0.05)
        cat.upsert_items([row(3, duration_s=6.0)])
        cat.finish_run(run_id, "ok", {})
""")


def test_catalog_sql_status_and_audit_read_a_snapshot_while_a_job_holds_the_catalog(tmp_path, monkeypatch):
    import tempfile

    from catalog import Catalog

    work, scratch = tmp_path / "work", tmp_path / "scratch"
    work.mkdir(), scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the snapshots are copied
    ready, release = tmp_path / "ready", tmp_path / "release"
    job = subprocess.Popen([sys.executable, "-c", HOLDER, str(work / "catalog.duckdb"), str(ready), str(release)],
                           cwd=str(_repo()), env={**os.environ, "PYTHONPATH": str(_repo())})
    cli = CliRunner()
    try:
        deadline = time.time() + 120
        while not ready.exists() and job.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the holding job never started"
        run_id = ready.read_text()
        sql = cli.invoke(app, ["catalog", "sql", "SELECT item_id FROM items ORDER BY item_id", "--workdir", str(work)])
        assert sql.exit_code == 0, sql.output
        assert "robotwin/ep0" in sql.stdout and "robotwin/ep2" in sql.stdout and "robotwin/ep3" not in sql.stdout
        said = _flat(sql.stderr)
        assert f"held by a running job, hold (run {run_id}" in said and "snapshot taken at" in said

        status = cli.invoke(app, ["status", "--workdir", str(work)])
        assert status.exit_code == 0, status.output
        assert "snapshot taken at" in _flat(status.stderr) and "Funnel" in status.stdout

        audit = cli.invoke(app, ["audit", "--workdir", str(work), "--fail-on", "never", "--out", str(tmp_path / "r")])
        assert audit.exit_code == 0, audit.output
        said = _flat(audit.stderr)
        assert "snapshot taken at" in said and "audit.json and audit.html only" in said
        assert "catalog_snapshot_taken_at" in json.loads((tmp_path / "r" / "audit.json").read_text())
        assert job.poll() is None  # the job still holds the catalog, untouched by the readers
        assert list(scratch.iterdir()) == []  # each snapshot removed once read
    finally:
        release.write_text("")
        assert job.wait(timeout=120) == 0
    with Catalog(work / "catalog.duckdb", read_only=True) as cat:
        assert cat.sql("SELECT count(*) AS n FROM items").to_pylist() == [{"n": 4}]
        # the job's own record is whole, and the audit of the snapshot left no run in the catalog
        assert cat.sql("SELECT job, status FROM runs").to_pylist() == [{"job": "hold", "status": "ok"}]


def _flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines


def _repo():
    from pathlib import Path

    return Path(__file__).resolve().parents[1]
