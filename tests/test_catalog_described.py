"""The catalog explains itself: a comment on every table and column (read back through duckdb_columns()),
checksum columns that name their algorithm (older catalogs keep working), and the item_status view that holds
every item — quarantined ones included — with its last stage state."""

from __future__ import annotations

import duckdb

from catalog import Catalog
from catalog.described import COLUMN_COMMENTS, TABLE_COMMENTS, VIEW_COLUMN_COMMENTS
from manifests.schemas import SCHEMAS
from tests.test_catalog import row


def test_every_table_view_and_column_has_a_comment(tmp_path):
    path = tmp_path / "catalog.duckdb"
    with Catalog(path):
        pass
    con = duckdb.connect(str(path), read_only=True)  # a plain client, no code of ours
    ours = "WHERE database_name = current_database() AND schema_name = 'main'"
    tables = dict(con.execute(f"SELECT table_name, comment FROM duckdb_tables() {ours}").fetchall())
    columns = con.execute(f"SELECT table_name, column_name, comment FROM duckdb_columns() {ours}").fetchall()
    view = con.execute("SELECT comment FROM duckdb_views() WHERE view_name = 'item_status'").fetchone()[0]
    con.close()
    assert set(tables) == set(SCHEMAS) and all(tables[t] == TABLE_COMMENTS[t] for t in SCHEMAS)
    assert "quarantined" in view
    missing = [f"{t}.{c}" for t, c, comment in columns if not comment]
    assert missing == []
    assert {(t, c) for t, c, _ in columns} == {(t, c) for t in SCHEMAS for c in SCHEMAS[t].names} | {
        ("item_status", c) for c in VIEW_COLUMN_COMMENTS["item_status"]}
    by_name = {(t, c): comment for t, c, comment in columns}
    assert by_name[("items", "input_blake2b")].startswith("blake2b-128")
    assert by_name[("artifacts", "blake2b")].startswith("blake2b-128")
    assert by_name[("shards", "sha256")].startswith("SHA-256")
    assert set(COLUMN_COMMENTS) == set(SCHEMAS)


def test_item_status_holds_every_item_with_its_last_stage_state(tmp_path):
    with Catalog(tmp_path / "catalog.duckdb") as cat:
        run = cat.start_run("ingest", {})
        cat.upsert_items([row(0), row(1)])
        cat.record_stage_results([
            {"item_id": "robotwin/ep0", "stage": "ingest", "status": "done", "run_id": run},
            {"item_id": "robotwin/ep1", "stage": "ingest", "status": "done", "run_id": run},
            {"item_id": "robotwin/ep9", "stage": "ingest", "status": "quarantined", "reason": "missing key x", "run_id": run},
        ])
        cat.record_stage_results([
            {"item_id": "robotwin/ep0", "stage": "flow", "status": "done", "run_id": run},
            {"item_id": "robotwin/ep1", "stage": "flow", "status": "quarantined", "reason": "0 frames decode", "run_id": run},
        ])
        status = {r["item_id"]: r for r in cat.sql("SELECT * FROM item_status").to_pylist()}
    assert set(status) == {"robotwin/ep0", "robotwin/ep1", "robotwin/ep9"}
    assert status["robotwin/ep9"]["ingested"] is False and status["robotwin/ep9"]["last_status"] == "quarantined"
    assert status["robotwin/ep9"]["problems"] == ["ingest: missing key x"] and status["robotwin/ep9"]["split"] is None
    assert (status["robotwin/ep0"]["last_stage"], status["robotwin/ep0"]["last_status"]) == ("flow", "done")
    assert status["robotwin/ep1"]["last_reason"] == "0 frames decode" and status["robotwin/ep1"]["split"] == "train"


def test_a_catalog_with_the_old_checksum_column_names_still_works(tmp_path):
    path = tmp_path / "catalog.duckdb"
    con = duckdb.connect(str(path))  # the two tables as catalogs before the rename had them
    con.execute("CREATE TABLE items (item_id VARCHAR PRIMARY KEY, source VARCHAR NOT NULL, tier TINYINT, "
                "split VARCHAR, embodiment VARCHAR, input_checksum VARCHAR)")
    con.execute("INSERT INTO items VALUES ('oxe/a', 'oxe', 5, 'train', 'kuka', 'abc')")
    con.execute("CREATE TABLE artifacts (item_id VARCHAR, stage VARCHAR NOT NULL, kind VARCHAR NOT NULL, "
                "path VARCHAR NOT NULL PRIMARY KEY, bytes BIGINT NOT NULL, checksum VARCHAR NOT NULL, "
                "run_id VARCHAR NOT NULL, created_at TIMESTAMPTZ NOT NULL)")
    con.execute("INSERT INTO artifacts VALUES ('oxe/a', 'flow', 'flow', '/f', 3, 'def', 'r', now())")
    con.execute("CREATE TABLE item_stages (item_id VARCHAR, stage VARCHAR, status VARCHAR, reason VARCHAR, "
                "run_id VARCHAR, updated_at TIMESTAMPTZ)")
    con.close()
    with Catalog(path, read_only=True) as cat:  # readers see the new names without changing the file
        assert cat.sql("SELECT input_blake2b FROM items").to_pylist() == [{"input_blake2b": "abc"}]
        assert cat.sql("SELECT blake2b FROM artifacts").to_pylist() == [{"blake2b": "def"}]
        assert cat.sql("SELECT count(*) AS n FROM item_status").to_pylist() == [{"n": 1}]
    with Catalog(path) as cat:  # a writer renames the columns; rows written with the old key still go in
        cat.add_artifacts([{"item_id": "oxe/a", "stage": "label", "kind": "latent_action", "path": "/l", "bytes": 1,
                            "checksum": "ghi", "run_id": "r"}])
        got = cat.sql("SELECT path, blake2b FROM artifacts ORDER BY path").to_pylist()
        names = set(cat.sql("SELECT column_name FROM duckdb_columns() WHERE table_name = 'items'")
                    .column("column_name").to_pylist())
    assert got == [{"path": "/f", "blake2b": "def"}, {"path": "/l", "blake2b": "ghi"}]
    assert "input_blake2b" in names and "input_checksum" not in names
