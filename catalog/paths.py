"""A relocatable catalog: paths under the workdir are stored relative to it and resolved, through views named like the
tables, when read; writes go to the tables themselves. Details: docs/formats.md#catalog ("Relocatable")."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pyarrow as pa

PATH_COLUMNS: dict[str, tuple[str, ...]] = {
    "items": ("media_uris", "input_uri"),
    "item_stages": ("input_uri",),
    "artifacts": ("path",),
    "flow_stats": ("artifact_path",),
    "shards": ("path", "shard_set"),
}


def to_stored(value: str | None, root: Path) -> str | None:
    """The stored form of a path: relative when under `root`, else unchanged."""
    if not value:
        return value
    prefix = root.as_posix().rstrip("/") + "/"
    if value.startswith(prefix):
        return value[len(prefix):]
    if value == prefix[:-1]:
        return "."
    return value


def store_paths(table_name: str, table: pa.Table, root: Path) -> pa.Table:
    """`table` with its path columns in stored form."""
    for name in PATH_COLUMNS.get(table_name, ()):
        if name not in table.column_names:
            continue
        i = table.column_names.index(name)
        col = table.column(i)
        values = col.to_pylist()
        if pa.types.is_list(col.type):
            stored = [None if v is None else [to_stored(x, root) for x in v] for v in values]
        else:
            stored = [to_stored(v, root) for v in values]
        table = table.set_column(i, table.schema.field(i), pa.array(stored, type=col.type))
    return table


def _resolve_sql(expr: str, root: Path) -> str:
    """SQL giving the absolute form of a stored path expression."""
    base = root.as_posix().rstrip("/").replace("'", "''")
    return (f"CASE WHEN {expr} IS NULL OR {expr} LIKE '/%' OR {expr} LIKE '%://%' THEN {expr} "
            f"WHEN {expr} = '.' THEN '{base}' ELSE '{base}/' || {expr} END")


def reading_view(db: str, table: str, columns: Iterable[str], root: Path, renames: dict[str, str]) -> str | None:
    """CREATE TEMP VIEW <table> over the stored table: path columns resolved against `root`, old column names
    shown under their new ones (`renames`); None when the table needs neither."""
    have = set(columns)
    replace = []
    for name in PATH_COLUMNS.get(table, ()):
        if name in have and name == "media_uris":
            replace.append(f"list_transform(media_uris, lambda u: {_resolve_sql('u', root)}) AS media_uris")
        elif name in have:
            replace.append(f'{_resolve_sql(chr(34) + name + chr(34), root)} AS "{name}"')
    rename = [f'"{old}" AS "{new}"' for old, new in renames.items() if old in have and new not in have]
    if not replace and not rename:
        return None
    star = "*" + (f" REPLACE ({', '.join(replace)})" if replace else "") + (f" RENAME ({', '.join(rename)})" if rename else "")
    return f'CREATE OR REPLACE TEMP VIEW {table} AS SELECT {star} FROM "{db}".main.{table}'
