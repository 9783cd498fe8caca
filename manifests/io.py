"""Parquet manifests: written atomically (temp name, fsync, rename), so a reader never sees a half file."""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

import pyarrow as pa
import pyarrow.parquet as pq


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> tuple[int, str]:
    """Write a file through `write(f)` under a temp name in the same folder, fsync, rename; return
    (bytes, blake2b-128 checksum). A crash leaves no file that looks complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        digest = hashlib.blake2b(tmp.read_bytes(), digest_size=16).hexdigest()
        size = tmp.stat().st_size
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return size, digest


_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")  # what atomic_write and write_manifest name their temp files


def remove_stale_temps(*folders: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Delete the temp files (`.<name>.<8 hex>.tmp`) that a killed run's atomic writes left in `folders` (and
    their subfolders when `recursive`); return them. Call it at the start of a stage, while no other writer can use these folders (the
    catalog's writer lock)."""
    removed = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")):
            if _TEMP_NAME.match(path.name) and path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def atomic_write_text(path: str | os.PathLike, text: str) -> tuple[int, str]:
    return atomic_write(path, lambda f: f.write(text.encode()))


ROW_GROUP_ROWS = 131_072  # a streamed manifest's row groups


def write_manifest(table: pa.Table | pa.RecordBatchReader, path: str | os.PathLike,
                   metadata: dict[str, str] | None = None) -> Path:
    """Write `table` (or a stream of record batches, written as it is read) to `path` atomically."""
    writer = ManifestWriter(path, metadata)
    try:
        if isinstance(table, pa.Table):
            writer.write(table)
        else:
            for batch in table:
                writer.write(pa.Table.from_batches([batch], table.schema))
            writer.open(table.schema)  # an empty stream still gives a file with the schema
        return writer.close()
    finally:
        writer.abort()


class ManifestWriter:
    """A manifest written piece by piece (rows as a run produces them) to a temp file renamed into place by
    `close()`; `abort()` (a no-op after close) drops the temp file. Row groups of about `ROW_GROUP_ROWS` rows."""

    def __init__(self, path: str | os.PathLike, metadata: dict[str, str] | None = None):
        self.path, self.metadata = Path(path), dict(metadata or {})
        self.tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp")
        self._writer: pq.ParquetWriter | None = None
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self.rows = 0

    def open(self, schema: pa.Schema) -> None:
        if self._writer is None:
            if self.metadata:
                merged = dict(schema.metadata or {})
                merged.update({k.encode(): v.encode() for k, v in self.metadata.items()})
                schema = schema.with_metadata(merged)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.tmp, schema, compression="zstd")

    def write(self, table: pa.Table) -> None:
        self.open(table.schema)
        self._buffer.append(table.replace_schema_metadata(self._writer.schema.metadata))
        self._buffered += table.num_rows
        self.rows += table.num_rows
        if self._buffered >= ROW_GROUP_ROWS:
            self._drain()

    def _drain(self) -> None:
        if self._buffer:
            self._writer.write_table(pa.concat_tables(self._buffer), row_group_size=max(self._buffered, 1))
            self._buffer, self._buffered = [], 0

    def close(self) -> Path:
        if self._writer is None:
            raise ValueError(f"manifest {self.path}: nothing was written (no schema)")
        self._drain()
        self._writer.close()
        with open(self.tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)
        self._writer = None
        return self.path

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.tmp.unlink(missing_ok=True)


def read_manifest(path: str | os.PathLike, schema: pa.Schema | None = None) -> pa.Table:
    """Read a manifest; with `schema`, check it has every column the contract names."""
    table = pq.read_table(path)
    if schema is not None:
        missing = [n for n in schema.names if n not in table.column_names]
        if missing:
            raise ValueError(f"manifest {path} lacks columns {missing}")
        table = table.select(schema.names).cast(schema)
    return table
