"""The catalog file's DuckDB storage version: written so that the DuckDB releases users have can open it.

DuckDB 2.0 writes new files in its own storage format by default, which no 1.x release reads (the 1.5 CLI says
"Trying to read a database file with version number 69, but we can only read versions between 64 and 68").
The catalog is written with `storage_compatibility_version` = `STORAGE_VERSION` instead, which every DuckDB
from 1.0.0 on opens (CLI, Python, R, JDBC, ...). A catalog written before in the newer format is rewritten in
this one the first time it is opened for writing (`COPY FROM DATABASE` keeps tables, keys, comments and rows);
the original is kept beside it as `<name>.storage-<N>.bak`.
"""

from __future__ import annotations

import os
import shutil
import struct
import time
from pathlib import Path

import duckdb

STORAGE_VERSION = "v1.0.0"  # DuckDB 1.0.0 and newer open the catalog
STORAGE_NUMBER = 64  # the number DuckDB stores in the file header for STORAGE_VERSION
_HEADER = struct.Struct("<8x4sQ")  # checksum, b"DUCK", storage number


def connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """A connection to the catalog file; new files are created in `STORAGE_VERSION`."""
    return duckdb.connect(str(path), read_only=read_only,
                          config={"storage_compatibility_version": STORAGE_VERSION})


def snapshot(path: Path, into: Path, tries: int = 8) -> Path:
    """Copy the catalog file and its write-ahead log into the folder `into` while another process writes it, and
    return the copy's path. DuckDB appends committed transactions to the WAL and folds it into the file at a
    checkpoint, so a copy of both that neither changed during is the catalog as of its last commit (opening the
    copy replays its WAL). A copy during which the writer changed either file is taken again, up to `tries` times;
    the last one is kept (DuckDB replays only the WAL's complete commits)."""
    files = [path, Path(f"{path}.wal")]
    for attempt in range(tries):
        if attempt:
            time.sleep(0.005 * 2 ** attempt)  # a busy writer: give it a moment between its writes
        before = [_signature(f) for f in files]
        for f in files:
            dst = into / f.name
            dst.unlink(missing_ok=True)
            try:
                shutil.copyfile(f, dst)
            except FileNotFoundError:  # no WAL (nothing since the last checkpoint), or it was just folded in
                pass
        if [_signature(f) for f in files] == before:
            break
    return into / path.name


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns


def storage_number(path: str | os.PathLike) -> int | None:
    """The storage number in a DuckDB file's header (64 for v1.0.0 ... 68 for v1.5.0), or None when the file is
    missing or not a DuckDB file."""
    try:
        with open(path, "rb") as f:
            magic, number = _HEADER.unpack(f.read(_HEADER.size))
    except (OSError, struct.error):
        return None
    return number if magic == b"DUCK" else None


def storage_tag(con: duckdb.DuckDBPyConnection) -> str:
    """The storage version DuckDB reports for the connection's database, e.g. `v1.0.0+`."""
    rows = con.execute("SELECT tags['storage_version'] FROM duckdb_databases() "
                      "WHERE database_name = current_database()").fetchall()
    return str(rows[0][0]) if rows and rows[0][0] else "unknown"


def rewrite_if_newer(path: Path) -> Path | None:
    """Rewrite a catalog stored in a format newer than `STORAGE_VERSION` into it; returns the backup's path (None
    when nothing was done). Only a writer calls this, holding no connection to the file."""
    number = storage_number(path)
    if number is None or number <= STORAGE_NUMBER:
        return None
    fresh = path.with_name(f"{path.name}.storage-{STORAGE_VERSION}.tmp")
    backup = path.with_name(f"{path.name}.storage-{number}.bak")
    for p in (fresh, Path(f"{fresh}.wal")):
        p.unlink(missing_ok=True)
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"ATTACH '{_sql_text(path)}' AS old_catalog (READ_ONLY)")
        con.execute(f"ATTACH '{_sql_text(fresh)}' AS new_catalog (STORAGE_VERSION '{STORAGE_VERSION}')")
        con.execute("COPY FROM DATABASE old_catalog TO new_catalog")
        con.execute("DETACH new_catalog")
        con.execute("DETACH old_catalog")
    finally:
        con.close()
    wal = Path(f"{path}.wal")
    path.rename(backup)
    if wal.exists():  # its contents are in the copy; kept with the backup, which needs it
        wal.rename(f"{backup}.wal")
    fresh.rename(path)
    return backup


def _sql_text(path: Path) -> str:
    return str(path).replace("'", "''")
