"""Which configured source entry (a `kind` and `root` of the config's `sources`) each item came from, so the funnel
counts per dataset root: four LeRobot datasets are four rows, not one `lerobot` row.

An entry's label is `kind:root` as the config writes it (the label ingest prints its notes under). An item belongs
to the entry of its kind whose root holds the item's input file (the longest such root); when no root holds it (the
data moved) and its kind has one entry, that one; otherwise (a root since dropped from the config) its kind alone.
Entries come from the configs of the ingest runs, newest first.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa


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


# a URI that os.path.normpath would change ("./", "../", "//", a trailing "/"): mapped in Python, the rest in SQL
_NOT_NORMAL = r"(^|/)\.\.?(/|$)|//|./$"


def entries_sql(catalog: Any) -> str:
    """A SELECT of (item_id, entry) for every item some stage recorded, evaluated in DuckDB (one pass, no Python
    object per item); it reads the registered view `_entry_roots`, so run it inside `with entry_roots(catalog)`."""
    return f"""
        WITH it AS (SELECT item_id, split_part(item_id, '/', 1) AS kind,
                           split_part(max(input_uri) FILTER (WHERE stage = 'ingest'), '#', 1) AS uri
                    FROM item_stages GROUP BY item_id),
        hit AS (SELECT it.item_id, arg_max(r.label, length(r.root) * 1000000 - r.ord) AS label
                FROM it JOIN _entry_roots r ON r.kind = it.kind
                WHERE it.uri <> '' AND NOT regexp_matches(it.uri, '{_NOT_NORMAL}')
                      AND (it.uri = r.root OR starts_with(it.uri, rtrim(r.root, '/') || '/'))
                GROUP BY it.item_id),
        sole AS (SELECT kind, min(label) AS label FROM (SELECT DISTINCT kind, label FROM _entry_roots)
                 GROUP BY kind HAVING count(*) = 1)
        SELECT it.item_id, coalesce(odd.label, hit.label, sole.label, it.kind) AS entry
        FROM it LEFT JOIN hit USING (item_id) LEFT JOIN sole USING (kind) LEFT JOIN _odd_entries odd USING (item_id)
        """


class entry_roots:
    """Registers `_entry_roots` (label, kind, root, ord) of the configured entries and `_odd_entries` (the few
    items whose input URI is not in normal form, mapped by `entry_of`) on the catalog's connection while open."""

    def __init__(self, catalog: Any):
        self.con = catalog.con
        self.entries = configured_entries(catalog)
        rows = [(label, kind, root, i) for i, (label, kind, roots) in enumerate(self.entries) for root in roots]
        self.roots = pa.table({name: pa.array([r[j] for r in rows], t) for j, (name, t) in enumerate(
            (("label", pa.string()), ("kind", pa.string()), ("root", pa.string()), ("ord", pa.int64())))})
        odd = self.con.execute(
            "SELECT item_id, max(input_uri) FILTER (WHERE stage = 'ingest') AS uri FROM item_stages GROUP BY item_id "
            "HAVING regexp_matches(split_part(uri, '#', 1), ?)", [_NOT_NORMAL]).fetchall()
        self.odd = pa.table({"item_id": pa.array([i for i, _ in odd], pa.string()),
                             "label": pa.array([entry_of(i, u, self.entries) for i, u in odd], pa.string())})

    def __enter__(self) -> "entry_roots":
        self.con.register("_entry_roots", self.roots)
        self.con.register("_odd_entries", self.odd)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.con.unregister("_entry_roots")
        self.con.unregister("_odd_entries")


def item_entries(catalog: Any) -> dict[str, str]:
    """item id -> entry label, for every item some stage recorded."""
    with entry_roots(catalog):
        return dict(catalog.con.execute(entries_sql(catalog)).fetchall())
