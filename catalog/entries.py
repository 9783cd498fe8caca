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


def item_entries(catalog: Any) -> dict[str, str]:
    """item id -> entry label, for every item some stage recorded."""
    entries = configured_entries(catalog)
    rows = catalog.con.execute(
        "SELECT item_id, max(input_uri) FILTER (WHERE stage = 'ingest') FROM item_stages GROUP BY item_id").fetchall()
    return {item_id: entry_of(item_id, uri, entries) for item_id, uri in rows}
