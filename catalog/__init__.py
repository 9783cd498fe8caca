"""The DuckDB catalog: runs, items, per-item stage state (done / failed / quarantined), artifacts."""

from catalog.db import Catalog, CatalogLockedError, code_version

__all__ = ["Catalog", "CatalogLockedError", "code_version"]
