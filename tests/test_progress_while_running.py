"""A long job holds the catalog (DuckDB: one writing process, no readers beside it); `pyramid status` in another
process still shows how far each stage got, from the progress file the driver replaces at every flush, and the
full status once the job has ended."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

from typer.testing import CliRunner

from pipelines.cli import app

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
        line = next(l for l in seen.output.splitlines() if "squares" in l)
        assert "running" in line
        done = int(line.split("│")[3])
        assert 4 <= done < 20
    finally:
        assert job.wait(timeout=120) == 0
    final = json.loads((tmp_path / "progress" / "squares.json").read_text())
    assert final["state"] == "ended" and final["done"] == 20
    after = cli.invoke(app, ["status", "--workdir", str(tmp_path)])
    assert after.exit_code == 0 and "held by a running job" not in after.output and "Funnel" in after.output


def _repo():
    from pathlib import Path

    return Path(__file__).resolve().parents[1]
