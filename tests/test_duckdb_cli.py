"""The catalog opens in the DuckDB command-line tool (the `duckdb-cli` package, a 1.x release), not only in the
Python client that wrote it; a catalog written before in DuckDB 2.0's own format still opens, and is rewritten
in the readable format by the next writer."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from catalog import Catalog
from catalog.storage import STORAGE_VERSION, storage_number
from tests.test_catalog import row


def duckdb_cli() -> str:
    beside = Path(sys.executable).parent / "duckdb"  # the venv's bin/, where `duckdb-cli` puts it
    found = str(beside) if beside.exists() else shutil.which("duckdb")
    if not found:
        pytest.skip("the DuckDB CLI is not installed (`duckdb-cli` from requirements.lock provides it)")
    return found


def cli_query(path: Path, sql: str) -> subprocess.CompletedProcess:
    return subprocess.run([duckdb_cli(), "-readonly", "-json", str(path), "-c", sql], capture_output=True,
                          text=True, timeout=60)


def fill(cat: Catalog) -> None:
    run = cat.start_run("ingest", {}, engine="local")
    cat.upsert_items([row(0), row(1), row(2)])
    cat.record_stage_results([{"item_id": "robotwin/ep9", "stage": "ingest", "status": "quarantined",
                               "reason": "missing key x", "run_id": run}])
    cat.finish_run(run, "ok", {"done": 2, "quarantined": 1})


def test_the_duckdb_cli_reads_a_new_catalog(tmp_path):
    version = subprocess.run([duckdb_cli(), "--version"], capture_output=True, text=True).stdout
    assert version.startswith("v1.")  # an older major than the Python client that writes the catalog
    path = tmp_path / "catalog.duckdb"
    with Catalog(path) as cat:
        fill(cat)
        assert cat.storage_version.startswith(STORAGE_VERSION)
    out = cli_query(path, "SELECT item_id, language FROM items ORDER BY item_id")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"item_id": f"robotwin/ep{i}", "language": ["pick the cube"]} for i in range(3)]
    out = cli_query(path, "SELECT reason FROM item_stages WHERE status = 'quarantined'")
    assert json.loads(out.stdout) == [{"reason": "missing key x"}]
    out = cli_query(path, "SELECT item_id, last_status, problems FROM item_status WHERE NOT ingested")
    assert out.returncode == 0, out.stderr  # the view's SQL runs on the 1.x CLI too
    assert json.loads(out.stdout) == [{"item_id": "robotwin/ep9", "last_status": "quarantined",
                                       "problems": ["ingest: missing key x"]}]
    out = cli_query(path, "SELECT comment FROM duckdb_columns() WHERE table_name = 'items' AND column_name = 'input_blake2b'")
    assert json.loads(out.stdout)[0]["comment"].startswith("blake2b-128")


def test_a_catalog_in_the_newer_format_still_opens_and_the_next_writer_makes_it_readable(tmp_path):
    path = tmp_path / "catalog.duckdb"
    with Catalog(path) as cat:
        fill(cat)
    # the catalog as earlier versions wrote it: DuckDB 2.0's default storage, which 1.x cannot read
    con = duckdb.connect(str(tmp_path / "old.duckdb"))
    con.execute(f"ATTACH '{path}' AS src (READ_ONLY)")
    con.execute("COPY FROM DATABASE src TO old")
    con.close()
    path.unlink()
    (tmp_path / "old.duckdb").rename(path)
    newer = storage_number(path)
    assert newer > 64  # v1.0.0 is 64
    refused = cli_query(path, "SELECT count(*) AS n FROM items")
    assert refused.returncode != 0 and "version" in refused.stderr

    with Catalog(path, read_only=True) as cat:  # readers open it as it is
        assert len(cat.items()) == 3
    assert storage_number(path) == newer
    with Catalog(path) as cat:  # the first writer rewrites it
        assert cat.storage_backup is not None and storage_number(cat.storage_backup) == newer
        assert [r["item_id"] for r in cat.items().to_pylist()] == [f"robotwin/ep{i}" for i in range(3)]
        with pytest.raises(duckdb.ConstraintException):  # keys came along
            cat.con.execute(f"INSERT INTO {cat.table('items')} SELECT * FROM items LIMIT 1")
        cat.upsert_items([row(3)])
    out = cli_query(path, "SELECT count(*) AS n FROM items")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"n": 4}]
