"""Which configured source entry (a `kind` and `root` of the config's `sources`) each item came from, so the funnel
counts per dataset root: four LeRobot datasets are four rows, not one `lerobot` row.

An entry's label is `kind:root` as the config writes it (the label ingest prints its notes under). An item belongs
to the entry of its kind whose root holds the item's input file (the longest such root); when no root holds it (the
data moved) and its kind has one entry, that one; otherwise (a root since dropped from the config) its kind alone.
Entries come from the configs of the ingest runs, newest first. A root in a bucket (`s3://...`) holds the items
read from its mirror in the workdir's source cache (pipelines/source_cache.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from catalog import paths
from common import storage


def configured_entries(catalog: Any) -> list[tuple[str, str, list[str]]]:
    """(label, kind, absolute root candidates) of every source entry an ingest run configured, newest first."""
    rows = catalog.con.execute("SELECT config FROM runs WHERE job = 'ingest' ORDER BY started_at DESC").fetchall()
    out, seen = [], set()
    for (config,) in rows:
        try:
            cfg = json.loads(config or "{}")
        except json.JSONDecodeError:
            continue
        for source in cfg.get("sources") or []:
            kind, root = str(source.get("kind")), str(source.get("root"))
            label = f"{kind}:{root}"
            if label in seen:
                continue
            seen.add(label)
            p = Path(root)
            if storage.is_url(root):  # a root in a bucket: its items are read from its mirror in the source cache
                p = Path(cfg.get("source_cache") or "cache/sources") / storage.cache_key(root)
            bases = [p] if p.is_absolute() else [Path(catalog.root) / p] + (
                [Path(cfg["workdir"]) / p] if cfg.get("workdir") else [])
            roots = {os.path.normpath(b) for b in bases} | {b.resolve().as_posix() for b in bases}
            out.append((label, kind, sorted(roots)))
    return out


def entry_of(item_id: str, input_uri: str | None, entries: list[tuple[str, str, list[str]]]) -> str:
    """The label of the entry `item_id` (read from `input_uri`) came from; see the module docstring."""
    kind = item_id.split("/", 1)[0]
    uri = os.path.normpath((input_uri or "").split("#", 1)[0]) if input_uri else ""
    best, label = -1, None
    for lab, k, roots in entries:
        if k != kind:
            continue
        for root in roots:
            if uri and (uri == root or uri.startswith(root.rstrip("/") + "/")) and len(root) > best:
                best, label = len(root), lab
    if label:
        return label
    of_kind = [lab for lab, k, _ in entries if k == kind]
    return of_kind[0] if len(of_kind) == 1 else kind


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# what a stored URI that os.path.normpath might change contains ("./", "../", "//", a trailing "/"; a superset,
# cheap to test): such items are mapped in Python by `entry_of`
_MAYBE_NOT_NORMAL = ("contains(input_uri, '/.') OR contains(input_uri, '//') OR starts_with(input_uri, '.') "
                     "OR input_uri LIKE '%/' OR input_uri LIKE '%/#%'")
_INGEST_URIS = ("SELECT item_id, split_part(item_id, '/', 1) AS kind, split_part(input_uri, '#', 1) AS uri "
                "FROM item_stages WHERE stage = 'ingest'")


class EntryMap:
    """`entry_of` for every item, in DuckDB: the configured roots become one CASE expression (longest root first),
    so mapping a million items is one scan and no Python object per item. The few items whose input URI is not in
    normal form are mapped by `entry_of` and registered as `_odd_entries` while the map is open (`with`)."""

    def __init__(self, catalog: Any):
        self.con = catalog.con
        self.entries = configured_entries(catalog)
        odd = []
        if self.multi:  # an item of a kind with one entry (or none) needs no root matching
            # tested on the stored column (no path resolving for the million that pass), resolved for the few
            odd = self.con.execute(
                f"SELECT item_id, {paths._resolve_sql('input_uri', Path(catalog.root))} "
                f"FROM {catalog.table('item_stages')} WHERE stage = 'ingest' "
                f"AND split_part(item_id, '/', 1) IN ({self._kinds}) AND ({_MAYBE_NOT_NORMAL})").fetchall()
        self.odd = [(item_id, entry_of(item_id, uri, self.entries)) for item_id, uri in odd]

    def __enter__(self) -> "EntryMap":
        """Registers `_odd_entries` (item_id, label): a VALUES list for the usual few (building an Arrow table
        would import pandas, seconds of `pyramid status`), an Arrow table for many."""
        if len(self.odd) > 1000:
            import pyarrow as pa

            self.con.register("_odd_entries", pa.Table.from_pylist(
                [{"item_id": i, "label": label} for i, label in self.odd]))
        else:
            rows = ", ".join(f"({_lit(i)}, {_lit(label)})" for i, label in self.odd)
            self.con.execute("CREATE OR REPLACE TEMP VIEW _odd_entries AS " + (
                f"SELECT * FROM (VALUES {rows}) v(item_id, label)" if rows else
                "SELECT NULL::VARCHAR AS item_id, NULL::VARCHAR AS label WHERE false"))
        return self

    def __exit__(self, *exc: Any) -> None:
        if len(self.odd) > 1000:
            self.con.unregister("_odd_entries")
        else:
            self.con.execute("DROP VIEW IF EXISTS _odd_entries")

    def by_root(self, kind: str, uri: str) -> str:
        """SQL: the label of the entry whose root holds `uri` (the longest; the newest of equal ones), else NULL."""
        roots = sorted(((len(root), -i, label, k, root) for i, (label, k, rs) in enumerate(self.entries)
                        for root in rs), reverse=True)
        whens = [f"WHEN {kind} = {_lit(k)} AND ({uri} = {_lit(root)} OR starts_with({uri}, "
                 f"{_lit(root.rstrip('/') + '/')})) THEN {_lit(label)}" for _, _, label, k, root in roots]
        return f"(CASE WHEN {uri} IS NULL OR {uri} = '' THEN NULL {' '.join(whens)} ELSE NULL END)"

    def fallback(self, kind: str) -> str:
        """SQL: an item no root holds belongs to its kind's only entry, else to its kind."""
        labels: dict[str, list[str]] = {}
        for label, k, _ in self.entries:
            labels.setdefault(k, []).append(label)
        whens = [f"WHEN {kind} = {_lit(k)} THEN {_lit(ls[0])}" for k, ls in labels.items() if len(ls) == 1]
        return f"(CASE {' '.join(whens)} ELSE {kind} END)" if whens else kind

    @property
    def multi(self) -> list[str]:
        """Kinds with more than one configured entry: only their items need their URI matched against roots (an
        item of a kind with one entry belongs to it, of a kind with none to the kind)."""
        kinds = [k for _, k, _ in self.entries]
        return sorted({k for k in kinds if kinds.count(k) > 1})

    @property
    def _kinds(self) -> str:
        return ", ".join(_lit(k) for k in self.multi) or "NULL"

    def own(self, kind: str, uri: str) -> str:
        """SQL: the entry of a row that carries its item's ingest URI (an ingest row, an items row: both hold the
        adapter's `input_uri`); the query LEFT JOINs `_odd_entries odd USING (item_id)`."""
        if not self.multi:
            return self.fallback(kind)
        uri = f"split_part({uri}, '#', 1)"
        return (f"(CASE WHEN {kind} IN ({self._kinds}) THEN coalesce(odd.label, {self.by_root(kind, uri)}, {kind}) "
                f"ELSE {self.fallback(kind)} END)")

    def sql(self) -> str:
        """A SELECT of (item_id, entry) for the items of the `multi` kinds with an ingest row; join it with LEFT
        JOIN and take `coalesce(entry, kind)` for the others of those kinds."""
        return (f"SELECT item_id, coalesce(odd.label, {self.by_root('kind', 'uri')}, kind) AS entry "
                f"FROM ({_INGEST_URIS}) LEFT JOIN _odd_entries odd USING (item_id) WHERE kind IN ({self._kinds})")

    def union(self, template: str, kind: str) -> str:
        """`template` (a SELECT with `{entry}`, `{join}` and `{where}` to fill; its table aliased so that `kind`
        reads the item id) once for the kinds whose entry follows from the kind and, joined with `sql()`, once for
        the `multi` kinds: UNION ALL. Most corpora have one root per kind and pay for no join."""
        single = template.format(entry=self.fallback(kind), join="",
                                 where=f"{kind} NOT IN ({self._kinds})" if self.multi else "true")
        if not self.multi:
            return single
        joined = template.format(entry=f"coalesce(e.entry, {kind})", join=f"LEFT JOIN ({self.sql()}) e USING (item_id)",
                                 where=f"{kind} IN ({self._kinds})")
        return f"{single} UNION ALL {joined}"


def item_entries(catalog: Any) -> dict[str, str]:
    """item id -> entry label, for every item some stage recorded."""
    kind = "split_part(s.item_id, '/', 1)"
    with EntryMap(catalog) as m:
        return dict(catalog.con.execute(m.union(
            "SELECT DISTINCT s.item_id, {entry} FROM item_stages s {join} WHERE {where}", kind)).fetchall())
