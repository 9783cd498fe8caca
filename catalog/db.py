"""The catalog: one embedded DuckDB file that records what every run did to every item.

Only the driver process writes to it; workers return results and the driver records them. Tables are derived
from the Arrow schemas in `manifests.schemas`, so the catalog and the Parquet manifests never disagree.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import duckdb
import pyarrow as pa

from catalog import described, paths, storage
from manifests.schemas import ITEM_STAGES, RUNS, SCHEMAS, validate_rows

_PRIMARY_KEYS = {
    "items": ("item_id",),
    "item_stages": ("item_id", "stage"),
    "runs": ("run_id",),
    "artifacts": ("path",),
    "flow_stats": ("item_id",),
    "evaluations": ("run_id", "scope", "metric"),
    "shards": ("path",),
    "audit_results": ("audit_run_id", "check_name", "item_id"),
}


SNAPSHOT_TRIES = 4  # copies of a catalog being written, each of up to storage.snapshot's own tries


class CatalogLockedError(RuntimeError):
    """Another process holds the catalog open for writing."""


_DUCK_TYPES = {
    pa.string(): "VARCHAR", pa.large_string(): "VARCHAR", pa.bool_(): "BOOLEAN",
    pa.int8(): "TINYINT", pa.int16(): "SMALLINT", pa.int32(): "INTEGER", pa.int64(): "BIGINT",
    pa.float32(): "FLOAT", pa.float64(): "DOUBLE",
}


def _duck_type(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    if pa.types.is_list(t):
        return _duck_type(t.value_type) + "[]"
    if t in _DUCK_TYPES:
        return _DUCK_TYPES[t]
    raise TypeError(f"no DuckDB type for {t}")


def _ddl(name: str, schema: pa.Schema) -> str:
    cols = [f'"{f.name}" {_duck_type(f.type)}{"" if f.nullable else " NOT NULL"}' for f in schema]
    pk = _PRIMARY_KEYS.get(name)
    if pk:
        cols.append(f"PRIMARY KEY ({', '.join(pk)})")
    return f"CREATE TABLE IF NOT EXISTS {name} (\n  " + ",\n  ".join(cols) + "\n)"


def code_version() -> str:
    """The git commit of the code (with '+dirty' for local changes), or the package version outside git."""
    here = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        if sha:
            dirty = subprocess.run(
                ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True, timeout=5,
            ).stdout.strip()
            return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version

        return version("motus-pyramid")
    except Exception:
        return "unknown"


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Catalog:
    """A DuckDB file with the pipeline's tables. Use as a context manager, or call `close()`."""

    def __init__(self, path: str | os.PathLike, read_only: bool = False, snapshot: bool = False):
        """With `snapshot`, a catalog that another process holds (a running job) is read from a copy taken now
        (`snapshot_taken_at` says when; None when the file itself was opened): a read-only copy, or a writable
        one whose writes are discarded at `close()`. Without it, a held catalog is a `CatalogLockedError`."""
        self.path = Path(path)
        self.read_only = read_only
        if (read_only or snapshot) and not self.path.exists():
            raise FileNotFoundError(f"no catalog at {self.path} (run `pyramid ingest` or `pyramid demo` first)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.storage_backup = None  # where a catalog in a newer storage format was kept when it was rewritten
        self.killed_runs: list[str] = []  # runs found `running` with their driver gone, marked killed on open
        self.snapshot_taken_at: dt.datetime | None = None
        self._snapshot_dir: Path | None = None
        try:
            if not read_only:
                self.storage_backup = storage.rewrite_if_newer(self.path)
            self.con = storage.connect(self.path, read_only)
        except duckdb.IOException as e:
            if "lock" not in str(e).lower():
                raise
            if not snapshot:
                raise CatalogLockedError(
                    f"catalog {self.path} is held open by another process (a running pyramid job?): {e}"
                ) from e
            self.con = self._open_snapshot(read_only)
        # paths under the catalog's folder (the workdir) are stored relative to it and resolved on read
        self.root = self.path.resolve().parent
        try:
            self._db = self.con.execute("SELECT current_database()").fetchall()[0][0]
            if not read_only:
                described.rename_legacy_columns(self.con)  # before new columns are added under the new names
                for name, schema in SCHEMAS.items():
                    self.con.execute(_ddl(name, schema))
                    self._add_missing_columns(name, schema)
                described.describe(self.con)
                if not self.is_snapshot:  # the job holding the catalog closed dead runs when it opened it
                    self.killed_runs = self._close_dead_runs()
            described.reading_views(self.con, self.root)
        except BaseException:
            self.close()  # a snapshot's copy goes with it
            raise

    def _open_snapshot(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        self._snapshot_dir = Path(tempfile.mkdtemp(prefix="pyramid-catalog-snapshot-"))
        try:
            for attempt in range(SNAPSHOT_TRIES):
                taken_at = _now()
                copy = storage.snapshot(self.path, self._snapshot_dir)
                try:
                    con = storage.connect(copy, read_only)
                    break
                except duckdb.Error as e:  # the writer checkpointed while every copy was taken: a torn file
                    if attempt == SNAPSHOT_TRIES - 1:
                        raise CatalogLockedError(f"could not take a consistent snapshot of {self.path} while "
                                                 f"another job writes it ({e}); try again") from e
        except BaseException:
            shutil.rmtree(self._snapshot_dir, ignore_errors=True)
            raise
        self.snapshot_taken_at = taken_at
        return con

    @property
    def is_snapshot(self) -> bool:
        return self.snapshot_taken_at is not None

    def running_runs(self) -> list[dict[str, Any]]:
        """Runs marked `running` (in a snapshot: the job that holds the catalog, as of the copy)."""
        return self.sql("SELECT run_id, job, started_at, pid, host FROM runs WHERE status = 'running' "
                        "ORDER BY started_at").to_pylist()

    @property
    def storage_version(self) -> str:
        """The DuckDB storage version of the file (`v1.0.0+`: DuckDB 1.0.0 and newer open it)."""
        return storage.storage_tag(self.con)

    def table(self, name: str) -> str:
        """The stored table behind `name` for writes (plain names read through views that resolve paths)."""
        return f'"{self._db}".main.{name}'

    def _add_missing_columns(self, name: str, schema: pa.Schema) -> None:
        """A catalog written by an older version gains the columns added since (as NULL), so it stays usable."""
        have = {r[0] for r in self.con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [name]).fetchall()}
        for f in schema:
            if f.name not in have and f.nullable:
                self.con.execute(f'ALTER TABLE {name} ADD COLUMN "{f.name}" {_duck_type(f.type)}')

    # --- plumbing -------------------------------------------------------------------------------------------
    def close(self) -> None:
        self.con.close()
        if self._snapshot_dir is not None:
            shutil.rmtree(self._snapshot_dir, ignore_errors=True)
            self._snapshot_dir = None

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def sql(self, query: str, params: list[Any] | None = None) -> pa.Table:
        """Run a query and return its rows as an Arrow table (empty for statements that return nothing)."""
        rel = self.con.sql(query, params=params or None)
        return rel.to_arrow_table() if rel is not None else pa.table({})

    def reader(self, query: str, params: list[Any] | None = None, batch_rows: int = 16384) -> pa.RecordBatchReader:
        """The rows of `query` as a stream of record batches, read on a cursor of its own (with the reading views),
        so writes on the main connection can go on while it is read; the cursor closes when the stream ends."""
        cur = self.con.cursor()
        try:
            described.reading_views(cur, self.root)
            batches = cur.sql(query, params=params or None).to_arrow_reader(batch_rows)
        except BaseException:
            cur.close()
            raise

        def read() -> Iterator[pa.RecordBatch]:
            try:
                yield from batches
            finally:
                cur.close()

        return pa.RecordBatchReader.from_batches(batches.schema, read())

    def iter_rows(self, query: str, params: list[Any] | None = None, batch_rows: int = 4096) -> Iterator[dict]:
        """The rows of `query` as dicts, `batch_rows` at a time (see `reader`): what a stage's plan streams."""
        for batch in self.reader(query, params, batch_rows):
            yield from batch.to_pylist()

    def _insert(self, table_name: str, table: pa.Table, on_conflict: str = "") -> None:
        if table.num_rows == 0:
            return
        self.con.register("_incoming", paths.store_paths(table_name, table, self.root))
        try:
            cols = ", ".join(f'"{c}"' for c in table.column_names)
            self.con.execute(f"INSERT INTO {self.table(table_name)} ({cols}) SELECT {cols} FROM _incoming {on_conflict}")
        finally:
            self.con.unregister("_incoming")

    # --- runs -----------------------------------------------------------------------------------------------
    def _close_dead_runs(self) -> list[str]:
        """Mark `killed` (ended now) every run left `running` whose driver is gone: on another host, or here with
        its process no longer alive (rows from before pid was recorded count as gone). This process holds the
        write lock, so no other driver can still be recording into this catalog."""
        rows = self.con.execute(f"SELECT run_id, pid, host FROM {self.table('runs')} WHERE status = 'running'").fetchall()
        here = socket.gethostname()
        dead = [run_id for run_id, pid, host in rows if not (host == here and _alive(pid))]
        if dead:
            self.con.execute(f"UPDATE {self.table('runs')} SET status = 'killed', ended_at = ? "
                             "WHERE list_contains(?, run_id)", [_now(), dead])
        return dead

    def start_run(self, job: str, config: Mapping[str, Any], engine: str = "") -> str:
        run_id = f"{_now():%Y%m%dT%H%M%S}-{job}-{uuid.uuid4().hex[:6]}"
        row = dict(run_id=run_id, job=job, config=json.dumps(config, default=str, sort_keys=True),
                   code_version=code_version(), engine=engine, started_at=_now(), status="running",
                   pid=os.getpid(), host=socket.gethostname())
        self._insert("runs", validate_rows(RUNS, [row]))
        return run_id

    def finish_run(self, run_id: str, status: str, counts: Mapping[str, int]) -> None:
        self.con.execute(
            f"UPDATE {self.table('runs')} SET ended_at = ?, status = ?, counts = ? WHERE run_id = ?",
            [_now(), status, json.dumps(dict(counts), sort_keys=True), run_id],
        )

    # --- items ----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """Statements that land together or not at all (a crash or an error between them rolls all back)."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    def upsert(self, table_name: str, rows: Iterable[Mapping[str, Any]] | pa.Table) -> int:
        """Insert rows into a keyed table, replacing rows with the same primary key."""
        table = rows if isinstance(rows, pa.Table) else validate_rows(SCHEMAS[table_name], rows)
        if table.num_rows == 0:
            return 0
        with self._transaction():
            return self._replace_keyed(table_name, table)

    def _replace_keyed(self, table_name: str, table: pa.Table) -> int:
        """Inside a transaction: delete the rows with the keys of `table`, insert `table`. DuckDB cannot update list
        columns in place under a primary key, so replace = delete + insert."""
        table = paths.store_paths(table_name, table, self.root)  # keys (artifacts.path) compare in stored form
        keys = _PRIMARY_KEYS[table_name]
        self.con.register("_keys", table.select(list(keys)))
        try:
            match = " AND ".join(f't."{k}" = k."{k}"' for k in keys)
            self.con.execute(f"DELETE FROM {self.table(table_name)} t WHERE EXISTS (SELECT 1 FROM _keys k WHERE {match})")
            self._insert(table_name, table)
        finally:
            self.con.unregister("_keys")
        return table.num_rows

    def upsert_items(self, rows: Iterable[Mapping[str, Any]] | pa.Table) -> int:
        return self.upsert("items", rows)

    def drop_items_not_done(self, stage: str = "ingest") -> None:
        """Remove the items rows of items whose latest `stage` outcome is quarantined or failed: an item that was
        fine before but went bad must not feed later stages."""
        self.con.execute(f"DELETE FROM {self.table('items')} WHERE item_id IN (SELECT item_id FROM item_stages "
                         "WHERE stage = ? AND status <> 'done')", [stage])

    def items(self, where: str = "", params: list[Any] | None = None) -> pa.Table:
        return self.sql(f"SELECT * FROM items {('WHERE ' + where) if where else ''} ORDER BY item_id", params)

    # --- per-item stage state -------------------------------------------------------------------------------
    def record_stage_results(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Upsert (item_id, stage) state; `attempts` counts how often the item went through the stage."""
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        for r in rows:
            latest[(r["item_id"], r["stage"])] = {"attempts": 1, "updated_at": _now(), **r}
        if not latest:
            return 0
        table = validate_rows(ITEM_STAGES, latest.values())
        updates = ", ".join(
            f'"{c}" = excluded."{c}"' for c in ITEM_STAGES.names if c not in ("item_id", "stage", "attempts")
        )
        self._insert(
            "item_stages", table,
            f"ON CONFLICT (item_id, stage) DO UPDATE SET {updates}, attempts = item_stages.attempts + 1",
        )
        return table.num_rows

    def stage_state(self, stage: str, item_ids: Sequence[str] | None = None) -> dict[str, tuple[str, str | None]]:
        """item_id -> (status, input_fingerprint) for one stage: of every item, or of `item_ids` only (what the
        driver asks per planned chunk, so it never holds the whole stage's state)."""
        if item_ids is None:
            rows = self.con.execute(
                "SELECT item_id, status, input_fingerprint FROM item_stages WHERE stage = ?", [stage]).fetchall()
            return {item_id: (status, fp) for item_id, status, fp in rows}
        if not item_ids:
            return {}
        self.con.register("_wanted", pa.table({"item_id": pa.array(list(item_ids), pa.string())}))
        try:
            rows = self.con.execute(
                f"SELECT s.item_id, s.status, s.input_fingerprint FROM {self.table('item_stages')} s "
                "SEMI JOIN _wanted w ON s.item_id = w.item_id WHERE s.stage = ?", [stage]).fetchall()
        finally:
            self.con.unregister("_wanted")
        return {item_id: (status, fp) for item_id, status, fp in rows}

    def registered_files(self, stage: str, item_ids: Sequence[str]) -> dict[str, list[str]]:
        """item_id -> the paths of the files `stage` registered for it, for `item_ids` (items without any are left
        out)."""
        if not item_ids:
            return {}
        self.con.register("_wanted", pa.table({"item_id": pa.array(list(item_ids), pa.string())}))
        try:
            rows = self.con.execute(
                "SELECT a.item_id, a.path FROM artifacts a SEMI JOIN _wanted w ON a.item_id = w.item_id "
                "WHERE a.stage = ?", [stage]).fetchall()
        finally:
            self.con.unregister("_wanted")
        out: dict[str, list[str]] = {}
        for item_id, path in rows:
            out.setdefault(item_id, []).append(path)
        return out

    def done(self, stage: str) -> pa.Table:
        """The files `stage` registered for the items whose `stage` is done (item_id, path, bytes, blake2b, kind),
        by item id. SQL that joins other tables reads the same rule as `JOIN done_items('<stage>') USING (item_id)`,
        which also serves a stage whose items may write no file (ingest: action files of labelled items only)."""
        return self.sql(
            "SELECT a.item_id, a.path, a.bytes, a.blake2b, a.kind FROM done_items(?) d "
            "JOIN artifacts a ON a.item_id = d.item_id AND a.stage = ? ORDER BY a.item_id, a.path", [stage, stage])

    def quarantine(self, stage: str | None = None, limit: int | None = None) -> pa.Table:
        where = "status IN ('quarantined', 'failed')" + (" AND stage = ?" if stage else "")
        return self.sql(
            f"SELECT item_id, stage, status, reason, input_uri, run_id, attempts FROM item_stages WHERE {where} "
            "ORDER BY stage, item_id" + (f" LIMIT {int(limit)}" if limit is not None else ""),
            [stage] if stage else None,
        )

    # --- artifacts ------------------------------------------------------------------------------------------
    def replace_item_files(self, stage: str, item_ids: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> int:
        """Register the files `stage` wrote for `item_ids` this time, in place of every file it registered for
        them before (an item redone without a file, or whose file moved, keeps no stale registration), in one
        transaction."""
        table = validate_rows(SCHEMAS["artifacts"], [{"created_at": _now(), **r} for r in rows])
        self.con.register("_items", pa.table({"item_id": pa.array(list(item_ids), pa.string())}))
        try:
            with self._transaction():
                self.con.execute(f"DELETE FROM {self.table('artifacts')} a WHERE a.stage = ? AND EXISTS "
                                 "(SELECT 1 FROM _items i WHERE i.item_id = a.item_id)", [stage])
                return self._replace_keyed("artifacts", table) if table.num_rows else 0
        finally:
            self.con.unregister("_items")

    def add_artifacts(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Record produced files; a file rewritten at the same path replaces its old record."""
        return self.upsert("artifacts", [{"created_at": _now(), **r} for r in rows])

    def replace_shard_set(self, shard_set: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Register a shard set whole: the old rows of `shard_set` go and the new ones come in one transaction,
        so readers see either the old set or the new one, never a mix."""
        table = validate_rows(SCHEMAS["shards"], [{"created_at": _now(), "shard_set": shard_set, **r} for r in rows])
        with self._transaction():
            self.con.execute(f"DELETE FROM {self.table('shards')} WHERE shard_set = ? OR shard_set = ?",
                             [shard_set, paths.to_stored(shard_set, self.root)])
            self._insert("shards", table)
        return table.num_rows

    def add_evaluation(self, run_id: str, results: Mapping[str, Mapping[str, float]]) -> int:
        """results: {scope: {metric: value}} (non-numeric values are skipped)."""
        rows = [{"run_id": run_id, "scope": scope, "metric": metric, "value": float(value), "created_at": _now()}
                for scope, metrics in results.items() for metric, value in metrics.items()
                if isinstance(value, (int, float)) and not isinstance(value, bool)]
        return self.upsert("evaluations", rows)

    # --- reports --------------------------------------------------------------------------------------------
    def funnel(self, entries: Any = None) -> pa.Table:
        """Per source kind, configured source entry (`kind:root`, catalog/entries.py) and stage: items in, done,
        quarantined, failed. `entries`: an open `EntryMap` to reuse."""
        from catalog.entries import EntryMap

        if entries is None:
            with EntryMap(self) as m:
                return self.funnel(m)
        kind = "split_part(s.item_id, '/', 1)"
        select = f"""SELECT {kind} AS source, {{entry}} AS entry, s.stage, count(*) AS seen,
                            count(*) FILTER (WHERE s.status = 'done') AS done,
                            count(*) FILTER (WHERE s.status = 'quarantined') AS quarantined,
                            count(*) FILTER (WHERE s.status = 'failed') AS failed, min(s.updated_at) AS first_at
                     FROM item_stages s {{join}} WHERE {{where}} GROUP BY ALL"""
        # ingest rows carry the URI their entry is read from; later stages' rows are joined with them
        ingest = select.format(entry=entries.own(kind, "s.input_uri"), where="s.stage = 'ingest'",
                               join="LEFT JOIN _odd_entries odd USING (item_id)")
        later = entries.union(select.replace("{where}", "s.stage <> 'ingest' AND {where}"), kind)
        return self.sql(f"SELECT * EXCLUDE (first_at) FROM ({ingest} UNION ALL {later}) "
                        "ORDER BY source, entry, first_at")
